"""Event-time spans, per key, whose windows a model must not learn from.

Retraining on recent data would otherwise teach the new model that the anomalies the old one
found (and those operators confirmed) are normal. A window is kept out when its [start, end]
overlaps a span of its key; spans are closed intervals, so a window that merely touches one is
kept out too.

The anomalies found are the episodes the service published, drawn from their alerts by one rule
(`EpisodeSpans`) whether the alerts are the service's own or read back from the alert topic:
replaying the data through a fresh detector would not find them, since a cold detector judges
every key on the global threshold until it warms up, and on data that drifted it sees one
endless episode everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

Span = tuple[str, float, float]  # key, first and last event time


class EpisodeAlert(Protocol):
    """What an episode's span is drawn from: an `Alert`, or the fields of one read back from
    its CloudEvent."""

    @property
    def kind(self) -> str: ...

    @property
    def episode_id(self) -> str: ...

    @property
    def key(self) -> str: ...

    @property
    def window_start(self) -> float: ...

    @property
    def window_end(self) -> float: ...

    @property
    def episode_start(self) -> float: ...


@dataclass
class _Episode:
    """One episode's key and span, as far as its alerts seen so far tell."""

    key: str
    start: float
    end: float = math.inf


class EpisodeSpans:
    """The span of each episode its alerts tell of: from the first event of its opening window
    to the last event of its resolve's window.

    An episode whose resolve was not seen (still open, or published after the data) runs on to
    infinity; one whose open was not seen (before the data, or gone with the topic's retention)
    starts at its resolve's `episode_start`, the end of its opening window. The order the alerts
    come in does not matter, nor does a re-delivered one: alerts are read back from a topic
    whose partitions interleave and whose records may be repeated."""

    def __init__(self) -> None:
        self._episodes: dict[str, _Episode] = {}

    def observe(self, alerts: Iterable[EpisodeAlert]) -> None:
        for alert in alerts:
            episode = self._episodes.setdefault(
                alert.episode_id, _Episode(alert.key, alert.episode_start)
            )
            if alert.kind == "open":
                episode.start = alert.window_start
            else:
                episode.end = alert.window_end

    def spans(self) -> list[Span]:
        """(key, start, end) of every episode. A damaged resolve that ends before its open
        starts leaves the opening window's start as the span, rather than refusing it."""
        return [(e.key, e.start, max(e.start, e.end)) for e in self._episodes.values()]


def episode_spans(alerts: Iterable[EpisodeAlert]) -> list[Span]:
    """The spans of the episodes `alerts` tell of (`EpisodeSpans`)."""
    episodes = EpisodeSpans()
    episodes.observe(alerts)
    return episodes.spans()


class ExcludedSpans:
    """Spans per key, merged into disjoint sorted intervals so that an overlap check is one
    binary search per window."""

    def __init__(self) -> None:
        self._raw: dict[str, list[tuple[float, float]]] = {}
        # Per key, the merged spans as (starts, ends) arrays, both ascending; rebuilt lazily
        # after `add`, so building from many spans costs one sort per key.
        self._merged: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def from_pairs(cls, spans: Iterable[Span]) -> ExcludedSpans:
        """From (key, start, end) triples, e.g. `FeedbackLedger.labelled_spans()`."""
        excluded = cls()
        for key, start, end in spans:
            excluded.add(key, start, end)
        return excluded

    def add(self, key: str, start: float, end: float) -> None:
        """Keep `key`'s windows overlapping [start, end] (event times) out; ValueError when the
        span ends before it starts, which would silently exclude nothing."""
        if end < start:
            raise ValueError(f"span of key {key!r} ends ({end}) before it starts ({start})")
        self._raw.setdefault(key, []).append((float(start), float(end)))
        self._merged.pop(key, None)

    def spans(self, key: str) -> list[tuple[float, float]]:
        """The key's merged spans, earliest first."""
        starts, ends = self._key_spans(key)
        return list(zip(starts.tolist(), ends.tolist(), strict=True))

    def __len__(self) -> int:
        """Merged spans over all keys."""
        return sum(len(self._key_spans(key)[0]) for key in self._raw)

    def overlapping(self, keys: np.ndarray, start_ts: np.ndarray, end_ts: np.ndarray) -> np.ndarray:
        """bool [N]: which windows (key, first and last event time) overlap a span of their key.

        Vectorised per distinct key: windows are grouped by key once, and each group with
        spans is checked against them with one searchsorted."""
        hit = np.zeros(len(keys), dtype=bool)
        if not self._raw or len(keys) == 0:
            return hit
        names, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        groups = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
        for name, rows in zip(names.tolist(), groups, strict=True):
            if name in self._raw:
                hit[rows] = self._overlaps(name, start_ts[rows], end_ts[rows])
        return hit

    def _overlaps(self, key: str, start_ts: np.ndarray, end_ts: np.ndarray) -> np.ndarray:
        """Disjoint sorted spans have ascending ends: the first span ending at or after a
        window's start is the only candidate, and it overlaps when it starts by the window's
        end."""
        starts, ends = self._key_spans(key)
        first = np.searchsorted(ends, start_ts, side="left")
        found = first < len(ends)
        hit = np.zeros(len(start_ts), dtype=bool)
        hit[found] = starts[first[found]] <= end_ts[found]
        return hit

    def _key_spans(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        merged = self._merged.get(key)
        if merged is None:
            merged = self._merged[key] = _merge(self._raw.get(key, []))
        return merged


def _merge(spans: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping or touching spans joined; (starts, ends), both ascending."""
    merged: list[list[float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    bounds = np.asarray(merged, dtype=np.float64).reshape(-1, 2)
    return bounds[:, 0].copy(), bounds[:, 1].copy()
