"""The episodes opened and not yet resolved: what the forwarder must keep firing.

Alertmanager forgets an alert that is not posted again before its endsAt, and forgets everything
when it restarts, so the forwarder re-posts every open episode on a timer. This table is what it
re-posts. It is rebuilt after a restart or an assignment by reading the partitions back
(`rebuild`), and it holds each episode's labels from its open alert, which the resolve alert must
post again for Alertmanager to know it is the same alert.

Episodes are kept by the partition they were read from: the open and the resolve alert of an
episode share a key, so the detector produces them to one partition, and the partition's next
owner takes its open episodes over when it moves.
"""

from __future__ import annotations

from collections.abc import Iterable

from stream_detector.engine.alerts import Alert
from stream_detector.forward.mapping import AlertMapping, AlertState


class OpenEpisodes:
    """Open episodes by id, each with the partition it was read from and its firing alert."""

    def __init__(self, mapping: AlertMapping) -> None:
        self._mapping = mapping
        self._open: dict[str, tuple[int, AlertState]] = {}

    def apply(self, partition: int, alert: Alert) -> AlertState:
        """Take in one alert read from `partition`; returns what Alertmanager should now know of
        its episode. A re-delivered alert changes nothing but the time it is posted."""
        if alert.kind == "open":
            state = self._mapping.opened(alert)
            self._open[alert.episode_id] = (partition, state)
            return state
        opened = self._open.pop(alert.episode_id, None)
        return self._mapping.resolved(alert, None if opened is None else opened[1])

    def firing(self) -> list[AlertState]:
        """Every open episode's alert, to post again."""
        return [state for _, state in self._open.values()]

    def forget_partitions(self, partitions: Iterable[int]) -> int:
        """Drop the episodes read from `partitions` (revoked: their next owner refreshes them);
        returns how many there were."""
        gone = set(partitions)
        dropped = [eid for eid, (partition, _) in self._open.items() if partition in gone]
        for episode_id in dropped:
            del self._open[episode_id]
        return len(dropped)

    def __len__(self) -> int:
        return len(self._open)
