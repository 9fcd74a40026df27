"""`stream-detector forward alertmanager`: the alert topic's episodes as Alertmanager alerts.

`records` reads an alert-topic record back into an `Alert`, `mapping` says what Alertmanager is
told of an episode, `episodes` remembers the open ones, `alertmanager` posts with retries,
`rebuild` reads a partition back after an assignment, and `forwarder` runs the loop that ties
them together (consume, post, commit).
"""
