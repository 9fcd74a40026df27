"""What retraining from the stream needs of it: the most recent events, and the episodes in them.

The service copies each batch's accepted events in; once more than `max_events` are held, the
oldest go. Copies, because the batch's arrays are views the engine may reuse.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from stream_detector.detector.exclusions import EpisodeSpans
from stream_detector.engine.types import Decoded, EventBatch


class RecentEvents:
    """A bounded FIFO of accepted events (keys, times, values), in arrival order."""

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self._chunks: deque[EventBatch] = deque()
        self._held = 0

    def __len__(self) -> int:
        return self._held

    def add(self, batch: EventBatch) -> None:
        if len(batch) == 0:
            return
        if len(batch) > self.max_events:
            batch = batch.rows(len(batch) - self.max_events)
        self._chunks.append(
            EventBatch(
                np.arange(len(batch), dtype=np.int64),
                batch.keys.copy(),
                batch.ts.copy(),
                batch.values.copy(),
            )
        )
        self._held += len(batch)
        while self._held > self.max_events:
            oldest = self._chunks[0]
            surplus = self._held - self.max_events
            if surplus >= len(oldest):
                self._chunks.popleft()
                self._held -= len(oldest)
            else:
                self._chunks[0] = oldest.rows(surplus)
                self._held -= surplus

    def batches(self) -> list[Decoded]:
        """What is held, as decoded batches in arrival order (the chunks themselves: the caller
        must not change them)."""
        return [Decoded(chunk) for chunk in self._chunks]

    def oldest(self) -> float:
        """The earliest event time held (infinity when empty)."""
        return min((float(chunk.ts.min()) for chunk in self._chunks), default=math.inf)


class RecentEpisodes(EpisodeSpans):
    """The spans of the episodes the service raised, to keep out of retraining on the events it
    holds. Spans that end before the oldest event still held are dropped (`forget_before`), so
    this stays as bounded as the events are."""

    def forget_before(self, oldest: float) -> None:
        self._episodes = {
            episode_id: episode
            for episode_id, episode in self._episodes.items()
            if episode.end >= oldest
        }
