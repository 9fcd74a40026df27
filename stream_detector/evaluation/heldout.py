"""The test part after a cut in event time, as a dataset and traces of its own.

Feedback given on a feed and then replayed on it is judged on the very alerts it was given about
(in-sample). Cutting the test part in two keeps an honest figure: the operator (simulated by
`--write-false-positives`) marks alerts over before the cut only, and the figures of the part
after it are scored on data the feedback never saw.

An episode belongs to the part it opened in, since its alert pages when it opens: the part after
the cut holds the episodes that opened from the cut on, judged exactly as in the whole test part
(a labelled range running across the cut is kept from the cut on, and an episode opened after the
cut can only overlap that piece of it). Such a range counts as detected after the cut only if an
episode opened there overlaps it; point-wise figures see only those episodes too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from stream_detector.evaluation.datasets import Channel, LabelledDataset, Stream
from stream_detector.evaluation.trace import MethodTrace


def cut_time(stream: Stream, share: float) -> float:
    """The event time `share` of the way through the test part (all keys on one clock)."""
    ts = stream.ts[stream.is_test]
    first, last = float(ts.min()), float(ts.max())
    return first + share * (last - first)


def after_cut(
    dataset: LabelledDataset, traces: Sequence[MethodTrace], cut_ts: float
) -> tuple[LabelledDataset, list[MethodTrace]]:
    """The dataset whose test parts start at `cut_ts`, and the traces moved onto them."""
    firsts = [int(np.searchsorted(c.test_ts, cut_ts, side="left")) for c in dataset.channels]
    channels = tuple(_tail(c, first) for c, first in zip(dataset.channels, firsts, strict=True))
    feed = dataset.feed
    if feed is not None:
        feed = dataclasses.replace(feed, test_from_ts=max(feed.test_from_ts, cut_ts))
    tail = dataclasses.replace(dataset, channels=channels, feed=feed)
    return tail, [_shift(trace, firsts) for trace in traces]


def _tail(channel: Channel, first: int) -> Channel:
    return dataclasses.replace(
        channel,
        test_ts=channel.test_ts[first:],
        test_values=channel.test_values[first:],
        test_labels=channel.test_labels[first:],
    )


def _shift(trace: MethodTrace, firsts: list[int]) -> MethodTrace:
    """Positions counted from each key's first row after the cut; only the episodes that opened
    there are kept."""
    episodes, alerts, scores = {}, {}, {}
    for key_id, ranges in trace.episodes.items():
        moved = ranges - firsts[key_id]
        keep = moved[:, 0] >= 0
        episodes[key_id] = moved[keep]
        pairs = trace.alerts.get(key_id, [])
        alerts[key_id] = [pair for pair, kept in zip(pairs, keep.tolist(), strict=False) if kept]
    for key_id, table in trace.scores.items():
        moved = table.copy()
        moved[:, 0] -= firsts[key_id]
        scores[key_id] = moved[moved[:, 0] >= 0]
    return dataclasses.replace(trace, scores=scores, episodes=episodes, alerts=alerts)
