"""Alert-topic records back into `Alert`s, refusing anything that is not one of ours.

The forwarder must never crash on what it reads: the alert topic may carry records from another
producer, a newer schema or plain garbage. Each record is either an `Alert` (the CloudEvent that
`Alert.to_cloudevent` writes; fields it does not know are ignored) or `MalformedAlert` saying
why, which the forwarder logs and skips.
"""

from __future__ import annotations

from typing import Any, Final, get_args

import orjson

from stream_detector.engine.alerts import (
    EVENT_TYPES,
    LATEST_EPOCH_S,
    Alert,
    AlertKind,
    FeatureContribution,
    OpenReason,
    ResolveReason,
    Severity,
)

_EVENT_KINDS: Final[dict[str, AlertKind]] = {
    event_type: kind for kind, event_type in EVENT_TYPES.items()
}
_SEVERITIES: Final = frozenset(get_args(Severity))
# The reasons each kind of alert may give.
_REASONS: Final[dict[AlertKind, frozenset[str]]] = {
    "open": frozenset(get_args(OpenReason)),
    "resolve": frozenset(get_args(ResolveReason)),
}


class MalformedAlert(ValueError):
    """A record that is not a stream-detector alert CloudEvent; the message says what is wrong."""


def decode_alert(value: bytes | None) -> Alert:
    """The alert in one record value, or MalformedAlert."""
    if not value:
        raise MalformedAlert("empty record")
    try:
        envelope = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise MalformedAlert("not JSON") from None
    if not isinstance(envelope, dict):
        raise MalformedAlert("not a JSON object")
    if envelope.get("specversion") != "1.0":
        raise MalformedAlert(f"not a CloudEvent 1.0 (specversion {envelope.get('specversion')!r})")
    event_type = envelope.get("type")
    kind = _EVENT_KINDS.get(event_type) if isinstance(event_type, str) else None
    if kind is None:
        raise MalformedAlert(f"CloudEvent type {event_type!r} is not a stream-detector alert")
    data = envelope.get("data")
    if not isinstance(data, dict):
        raise MalformedAlert("the CloudEvent has no data object")
    if data.get("kind") != kind:
        raise MalformedAlert(f"data.kind {data.get('kind')!r} contradicts type {event_type!r}")
    return Alert(
        kind=kind,
        alert_id=_text(data, "alert_id"),
        episode_id=_text(data, "episode_id"),
        key=_text(data, "key"),
        window_start=_time(data, "window_start"),
        window_end=_time(data, "window_end"),
        score=_number(data, "score"),
        threshold=_number(data, "threshold"),
        severity=_choice(data, "severity", _SEVERITIES),
        top_features=_top_features(data),
        model_version=_text(data, "model_version"),
        episode_start=_time(data, "episode_start"),
        windows_over=_count(data, "windows_over"),
        event_index=-1,  # only meaningful inside the batch that produced the alert
        reason=None if data.get("reason") is None else _choice(data, "reason", _REASONS[kind]),
        flat_features=_flat_features(data),
        anomaly_end=None if data.get("anomaly_end") is None else _time(data, "anomaly_end"),
    )


def _text(data: dict[str, Any], name: str, where: str = "data") -> str:
    return _nonempty_text(data.get(name), f"{where}.{name}")


def _nonempty_text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedAlert(f"{path} is {value!r}, not a non-empty string")
    return value


def _number(data: dict[str, Any], name: str, where: str = "data") -> float:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedAlert(f"{where}.{name} is {value!r}, not a number")
    return float(value)


def _time(data: dict[str, Any], name: str) -> float:
    """An event time (epoch s); Alertmanager gets it as an RFC 3339 timestamp, so it must be one."""
    value = _number(data, name)
    if not 0 <= value <= LATEST_EPOCH_S:
        raise MalformedAlert(f"data.{name} is {value!r}, not an epoch time")
    return value


def _count(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedAlert(f"data.{name} is {value!r}, not an integer")
    return value


def _choice(data: dict[str, Any], name: str, allowed: frozenset[str]) -> Any:
    value = data.get(name)
    if value not in allowed:
        raise MalformedAlert(f"data.{name} is {value!r}, not one of {sorted(allowed)}")
    return value


def _flat_features(data: dict[str, Any]) -> tuple[str, ...]:
    """The optional list of flat-line feature names (absent from alerts of older versions)."""
    names = data.get("flat_features", [])
    if not isinstance(names, list):
        raise MalformedAlert(f"data.flat_features is {names!r}, not a list")
    return tuple(
        _nonempty_text(name, f"data.flat_features[{n}]") for n, name in enumerate(names)
    )


def _top_features(data: dict[str, Any]) -> tuple[FeatureContribution, ...]:
    features = data.get("top_features")
    if not isinstance(features, list):
        raise MalformedAlert(f"data.top_features is {features!r}, not a list")
    contributions = []
    for n, feature in enumerate(features):
        where = f"data.top_features[{n}]"
        if not isinstance(feature, dict):
            raise MalformedAlert(f"{where} is {feature!r}, not an object")
        contributions.append(
            FeatureContribution(
                name=_text(feature, "name", where),
                actual=_number(feature, "actual", where),
                expected=_number(feature, "expected", where),
                error=_number(feature, "error", where),
            )
        )
    return tuple(contributions)
