"""Scoring against labels that hold for a whole feed (feed_labels.py): who caught each span.

In a network capture an attack is an interval of time (`BAD-SSH-START` .. `BAD-SSH-END` in an
injection log), not a range of one key's events: the attacker's address, its target's and a
bystander's may all change, and an alert on any key inside the span detects it. Alerts are
judged on the feed's clock by when they open (the sample that opened the episode, a bucket
[end - width, end]), because that is what pages someone: where attacks follow each other with
short gaps, an episode left open for ten minutes would otherwise "detect" every attack it
outlasts. An alert opening in no attack span is false; one opening in a benign span (a
labelled event that must not alert, like a good SSH login) is counted apart too, since those
are the false alerts an operator would resent most.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stream_detector.evaluation.datasets import LabelledDataset
from stream_detector.evaluation.feed_labels import FeedLabels
from stream_detector.evaluation.metrics import overlaps
from stream_detector.evaluation.trace import MethodTrace


def opening_times(test_ts: np.ndarray, episodes: np.ndarray, sample_span_s: float) -> np.ndarray:
    """When each of one key's episodes opened, as the event-time interval [start, end] of the
    sample that opened it (float64 [E, 2])."""
    starts = np.asarray(episodes, dtype=np.int64).reshape(-1, 2)[:, 0]
    ends = np.asarray(test_ts, dtype=np.float64)[starts]
    return np.column_stack([ends - sample_span_s, ends])


def alert_times(dataset: LabelledDataset, trace: MethodTrace, sample_span_s: float) -> np.ndarray:
    """`opening_times` of every episode of `trace`, key after key (float64 [E, 2])."""
    opened = [
        opening_times(dataset.channels[key_id].test_ts, episodes, sample_span_s)
        for key_id, episodes in trace.episodes.items()
    ]
    return np.concatenate(opened) if opened else np.empty((0, 2), dtype=np.float64)


def opened_in_attack(opened: np.ndarray, labels: FeedLabels) -> np.ndarray:
    """[E] boolean: the episodes (their `opening_times`) that opened inside any attack span of
    the feed, scored or not; the others are the feed-wide false alerts."""
    attacks = np.array(
        [(s.start_ts, s.end_ts) for s in labels.spans if s.attack], dtype=np.float64
    ).reshape(-1, 2)
    return overlaps(opened, attacks).any(axis=1)


def score_feed(dataset: LabelledDataset, trace: MethodTrace, labels: FeedLabels) -> dict[str, Any]:
    """Span-wise recall (overall and per kind), alert-wise precision, and the false alerts
    inside benign spans, for one method over the test part of the feed."""
    episodes = alert_times(dataset, trace, labels.sample_span_s)
    scored = [s for s in labels.spans if s.end_ts >= labels.test_from_ts]
    attacks = [s for s in scored if s.attack]
    benign = [s for s in labels.spans if not s.attack]
    attack_times = np.array([(s.start_ts, s.end_ts) for s in attacks]).reshape(-1, 2)
    benign_times = np.array([(s.start_ts, s.end_ts) for s in benign]).reshape(-1, 2)
    detected = overlaps(attack_times, episodes).any(axis=1)
    true_episode = opened_in_attack(episodes, labels)
    in_benign = ~true_episode & overlaps(episodes, benign_times).any(axis=1)
    by_kind: dict[str, dict[str, int]] = {}
    for span, hit in zip(attacks, detected.tolist(), strict=True):
        entry = by_kind.setdefault(span.kind, {"detected": 0, "spans": 0})
        entry["spans"] += 1
        entry["detected"] += int(hit)
    n_true, n_episodes = int(true_episode.sum()), len(episodes)
    precision = n_true / n_episodes if n_episodes else 0.0
    recall = float(detected.mean()) if len(detected) else 0.0
    return {
        "attack_spans": len(attacks),
        "detected": int(detected.sum()),
        "recall": recall,
        "episodes": n_episodes,
        "true_episodes": n_true,
        "precision": precision,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "false_episodes": n_episodes - n_true,
        "false_in_benign_spans": int(in_benign.sum()),
        "benign_spans": len([s for s in benign if s.end_ts >= labels.test_from_ts]),
        "by_kind": dict(sorted(by_kind.items())),
    }
