"""The detector as a whole: the facade over the engine stages, its model artefact, state
snapshots, training, and the file front doors (sources, replay) that use it."""
