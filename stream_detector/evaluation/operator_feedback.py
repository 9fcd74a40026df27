"""Operator feedback in `evaluate`: a feedback file replayed into the model's ledger, and a
simulated operator who marks the alerts the evaluation judged false.

The two make precision before and after feedback measurable without a person: one run writes a
false_positive for each false alert episode (`--write-false-positives FILE`), a second run of
the same model on the same data replays them (`--feedback FILE`). Each false_positive names its
alert the way `alert_reference` does for a person, so its effect starts at the episode's end: the
marked alerts fire again in the replay and only later repeats can be held back, as in service.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from stream_detector.detector.feedback import (
    FEEDBACK_KINDS,
    FeedbackEvent,
    FeedbackLedger,
    alert_reference,
    feedback_envelope,
)
from stream_detector.engine.alerts import Alert
from stream_detector.evaluation.datasets import Channel, LabelledDataset
from stream_detector.evaluation.feedwide import opened_in_attack, opening_times
from stream_detector.evaluation.metrics import false_alerts, label_ranges
from stream_detector.evaluation.trace import MethodTrace

SIMULATED_SOURCE: Final = "stream-detector/evaluate"
# Event id = prefix + the marked alert's id: a second write of the same run names the same events,
# so the ledger takes a file given twice (or two overlapping files) once.
SIMULATED_ID_PREFIX: Final = "simulated-fp-"
WITH_FEEDBACK: Final = "with feedback"
IN_SAMPLE: Final = "with feedback, in-sample (the feedback was given on this same feed)"


def feedback_summary(
    ledger: FeedbackLedger, muted: int, dataset: LabelledDataset, model_version: str
) -> dict[str, Any]:
    """What the feedback was, for the report: its events by kind, duplicates, alerts muted, and
    whether it names alerts of this very feed (then the figures are in-sample)."""
    kinds = Counter(event.kind for event in ledger.applied)
    refs = [event.alert for event in ledger.applied if event.alert is not None]
    channels = {channel.key: channel for channel in dataset.channels}
    on_feed = sum(
        1 for ref in refs if ref.key in channels and _streamed(channels[ref.key], ref.episode_start)
    )
    return {
        "label": IN_SAMPLE if on_feed else WITH_FEEDBACK,
        "events": len(ledger.applied),
        "by_kind": {kind: kinds[kind] for kind in FEEDBACK_KINDS if kinds[kind]},
        "duplicates": ledger.duplicates,
        "alerts_muted": muted,
        "alerts_of_this_feed": on_feed,
        # A false positive's floor holds for the model that scored the alert only.
        "other_model_version": sum(1 for ref in refs if ref.model_version != model_version),
    }


def _streamed(channel: Channel, at: float) -> bool:
    """Whether event time `at` lies within the key's streamed events (train part first)."""
    times = np.concatenate([channel.train_ts, channel.test_ts])
    return bool(len(times)) and float(times[0]) <= at <= float(times[-1])


def judged_false(dataset: LabelledDataset, key_id: int, episodes: np.ndarray) -> np.ndarray:
    """[E] boolean: the key's episodes the report counts as false positives: opened in no attack
    span where the dataset labels the whole feed, else overlapping no labelled range of the key."""
    channel = dataset.channels[key_id]
    if dataset.feed is not None:
        opened = opening_times(channel.test_ts, episodes, dataset.feed.sample_span_s)
        return ~opened_in_attack(opened, dataset.feed)
    return false_alerts(label_ranges(channel.test_labels), episodes)


def false_positive_event(opened: Alert, resolved: Alert) -> bytes:
    """The false_positive a person would send on `opened`: the episode's peak score and error
    profile (the resolve carries them) and its end, so the effect starts where it ended."""
    data = alert_reference(opened, resolved.score, resolved.window_end, resolved.top_features)
    event_id = SIMULATED_ID_PREFIX + opened.alert_id
    return feedback_envelope(
        "false_positive", event_id, SIMULATED_SOURCE, opened.key, data, resolved.window_end
    )


def simulated_false_positives(
    dataset: LabelledDataset, trace: MethodTrace, before_ts: float | None = None
) -> tuple[list[bytes], dict[str, int]]:
    """A false_positive for each episode of `trace` judged false, in order of its end, and the
    counts of what was and was not marked.

    An episode still open when the data ends is not marked: it has no end for the effect to start
    from, and marking it from its open alert would hold back the very alert it judges. Nor is a
    new key's arrival that none of its windows exceeded (peak score 0): there is no score for a
    false positive to raise the key's threshold to. With `before_ts`, only episodes over before
    it are marked (feedback the part after it never saw)."""
    marked: list[tuple[float, bytes]] = []
    counts = {"written": 0, "still_open": 0, "after_cut": 0, "no_score": 0}
    for key_id, episodes in sorted(trace.episodes.items()):
        false = judged_false(dataset, key_id, episodes)
        for (opened, resolved), is_false in zip(trace.alerts[key_id], false.tolist(), strict=True):
            if not is_false:
                continue
            if resolved is None:
                counts["still_open"] += 1
            elif before_ts is not None and resolved.window_end >= before_ts:
                counts["after_cut"] += 1
            elif resolved.score <= 0:
                counts["no_score"] += 1
            else:
                marked.append((resolved.window_end, false_positive_event(opened, resolved)))
    marked.sort(key=lambda item: item[0])
    counts["written"] = len(marked)
    return [event for _, event in marked], counts


def write_feedback_file(path: Path, events: Sequence[bytes]) -> None:
    """JSONL, one event a line: what `--feedback FILE` reads back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(event + b"\n" for event in events))


def held_out_label(ledger: FeedbackLedger, cut_ts: float) -> str:
    """How to read the figures after the cut: held out unless some feedback takes effect there
    (it was then given knowing of that part)."""
    if not ledger.applied:
        return "held out, without feedback"
    late = sum(1 for event in ledger.applied if _effective(event) >= cut_ts)
    if late:
        return f"with feedback, NOT held out ({late} feedback events take effect after the cut)"
    return "with feedback, held out (all feedback takes effect before the cut)"


def _effective(event: FeedbackEvent) -> float:
    return event.alert.effective if event.alert is not None else event.start
