"""The alert record and its wire format.

Alert schema
------------
Each alert is published as a CloudEvents 1.0 structured-mode JSON message:

- ``specversion``: ``"1.0"``
- ``id``: the alert id (see ``alert_id`` below); a consumer de-duplicates re-deliveries on it
- ``source``: the detector instance, e.g. ``"stream-detector/<group_id>"``
- ``type``: ``"io.streamdetector.anomaly.opened"`` or ``"io.streamdetector.anomaly.resolved"``
- ``subject``: the entity key
- ``time``: RFC 3339 (UTC) event time of ``data.window_end``
- ``datacontenttype``: ``"application/json"``
- ``data``: an object with the fields

  - ``kind``: ``"open"`` or ``"resolve"``
  - ``alert_id``: ``"<episode_id>-<kind>"``; identical for a re-delivered or replayed alert
  - ``episode_id``: 32 hex chars, a hash of (key, end time of the opening window, model
    version); the open and the resolve alert of one episode share it
  - ``key``: the entity key
  - ``window_start``, ``window_end``: event times (epoch s) of the first and last event of the
    window that triggered this alert (open: the opening window; resolve: the last window of
    the cool-down)
  - ``score``: open: the opening window's score; resolve: the peak score of the episode
  - ``threshold``: the key's threshold for that same window (resolve: at the peak)
  - ``severity``: from ``score / threshold``: ``low`` < 1.5 <= ``medium`` < 3 <= ``high`` < 10
    <= ``critical``
  - ``top_features``: list of ``{name, actual, expected, error}`` for the features with the
    largest reconstruction error in that window (resolve: the peak window), largest first;
    ``actual`` is the raw value of the window's last event, ``expected`` the model's
    reconstruction of it in raw units, ``error`` the feature's share (0..1) of the window's error
  - ``model_version``: the model that scored the window
  - ``episode_start``: event time (epoch s) of the end of the window that opened the episode
  - ``windows_over``: exceeding windows in the episode so far
  - ``reason``: on a resolve alert, why the episode ended: ``"cooldown"`` (``episodes.cooldown``
    normal windows in a row) or ``"evicted"`` (the key was forgotten, silent past
    ``window.idle_ttl_s`` or pushed out by ``window.max_keys``, while the episode was open; the
    window fields are then those of the key's last scored window) or ``"model_changed"`` (another
    model version took over while the episode was open; window fields as for ``"evicted"``).
    On an open alert: ``"new_key"`` for a key the model was not trained on, opened at its first
    event (``episodes.alert_new_keys``): no window of it was scored yet, so ``score`` is 0,
    ``threshold`` the one that judges a key in warm-up and ``top_features`` empty, and the
    window fields are that event's time; ``null`` for every other open alert
  - ``flat_features``: the features that stood still in that same window as the key's own
    history makes abnormal: one value repeated far longer than ever (a stuck sensor,
    engine/flat.py), or a spread far under the least its windows had (engine/spread.py); such a
    window exceeds whatever its score, which is then under the threshold. Empty for an anomaly
    found by the reconstruction error alone
  - ``anomaly_end``: resolve only, the event time (epoch s) of the end of the episode's last
    exceeding window: where the anomaly itself ended, ``episodes.cooldown`` windows before the
    resolve; ``null`` on an open alert
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import numpy as np
import orjson

AlertKind = Literal["open", "resolve"]
ResolveReason = Literal["cooldown", "evicted", "model_changed"]
OpenReason = Literal["new_key"]
Severity = Literal["low", "medium", "high", "critical"]

# (lower bound of score/threshold, severity), highest first.
SEVERITY_BANDS: Final[tuple[tuple[float, Severity], ...]] = (
    (10.0, "critical"),
    (3.0, "high"),
    (1.5, "medium"),
)

# The CloudEvent `type` of each alert kind; readers of the alert topic map it back.
EVENT_TYPES: Final[dict[AlertKind, str]] = {
    "open": "io.streamdetector.anomaly.opened",
    "resolve": "io.streamdetector.anomaly.resolved",
}


@dataclass(frozen=True, slots=True)
class FeatureContribution:
    """One feature's part in an anomalous window; `error` is its share (0..1) of the error."""

    name: str
    actual: float
    expected: float
    error: float


@dataclass(frozen=True)
class Alert:
    """One episode transition; see the module docstring for what each field means on the wire."""

    kind: AlertKind
    alert_id: str
    episode_id: str
    key: str
    window_start: float
    window_end: float
    score: float
    threshold: float
    severity: Severity
    top_features: tuple[FeatureContribution, ...]
    model_version: str
    episode_start: float
    windows_over: int
    event_index: int
    reason: ResolveReason | OpenReason | None = None
    flat_features: tuple[str, ...] = ()
    anomaly_end: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (top_features as a list of objects), for logs and the wire."""
        data = asdict(self)
        data["top_features"] = list(data["top_features"])
        data["flat_features"] = list(data["flat_features"])
        return data

    def to_cloudevent(self, source: str) -> bytes:
        """CloudEvents 1.0 structured-mode JSON; `event_index` is left out because it only means
        something inside the batch that produced the alert."""
        data = self.to_dict()
        del data["event_index"]
        return cloudevent(
            self.alert_id, source, EVENT_TYPES[self.kind], self.key, self.window_end, data
        )


def cloudevent(
    event_id: str, source: str, event_type: str, subject: str, time_s: float, data: Any
) -> bytes:
    """A CloudEvents 1.0 structured-mode JSON message with a JSON `data`, as the detector writes
    its alerts and as operator feedback is written."""
    envelope = {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": event_type,
        "subject": subject,
        "time": rfc3339(time_s),
        "datacontenttype": "application/json",
        "data": data,
    }
    return orjson.dumps(envelope)


# 9999-12-31T23:59:59Z: the last instant an RFC 3339 timestamp (and Python's datetime) can write.
LATEST_EPOCH_S: Final = 253_402_300_799.0


def rfc3339(epoch_s: float) -> str:
    """UTC with millisecond precision and a 'Z' suffix, the form most consumers parse."""
    stamp = datetime.fromtimestamp(epoch_s, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def severity_for(score: float, threshold: float) -> Severity:
    """Band of score/threshold; a non-positive threshold means any score is extreme."""
    ratio = score / threshold if threshold > 0 else float("inf")
    for lower, name in SEVERITY_BANDS:
        if ratio >= lower:
            return name
    return "low"


def episode_id_for(key: str, opened_at: float, model_version: str) -> str:
    """Hash of what identifies an episode, so a replay or a restarted consumer names it the same."""
    digest = hashlib.sha256(orjson.dumps([key, float(opened_at), model_version]))
    return digest.hexdigest()[:32]


def alert_id_for(episode_id: str, kind: AlertKind) -> str:
    return f"{episode_id}-{kind}"


def top_contributions(
    names: Sequence[str],
    feature_errors: np.ndarray,
    actual: np.ndarray,
    expected: np.ndarray,
    k: int,
) -> tuple[FeatureContribution, ...]:
    """The k features with the largest error in one window (ties keep feature order)."""
    errors = np.asarray(feature_errors, dtype=np.float64)
    total = float(errors.sum())
    ranked = np.argsort(-errors, kind="stable")[:k]
    return tuple(
        FeatureContribution(
            name=names[i],
            actual=float(actual[i]),
            expected=float(expected[i]),
            error=float(errors[i] / total) if total > 0 else 0.0,
        )
        for i in ranked.tolist()
    )
