"""What Alertmanager is told of an alert episode: its labels, annotations and times.

Alertmanager identifies an alert by its label set, so the open and the resolve alert of one
episode must post the same labels, although the resolve's severity and top feature (those of the
episode's peak) may differ from the open's. The labels are therefore made once, from the open
alert, and kept with the episode (`episodes.OpenEpisodes`); the annotations, which Alertmanager
takes from the latest post, follow the latest alert. `episode_id` is a label so that two episodes
of one key are two alerts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from stream_detector.config import LINK_FIELDS
from stream_detector.engine.alerts import Alert, rfc3339

# A firing alert is posted as valid for this many resend intervals (endsAt), as Prometheus does:
# a post or two may be lost or late without the alert flapping, and one the forwarder stops
# refreshing (it lost the episode) still resolves in Alertmanager on its own.
FIRING_VALIDITY_RESENDS: Final = 4

_REASON_TEXT: Final = {
    "cooldown": "back to normal",
    "evicted": "key no longer tracked by the detector",
    "model_changed": "another model version took over",
}


@dataclass(frozen=True)
class AlertState:
    """One episode as Alertmanager should know it: firing while `ends_at` is None."""

    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float
    ends_at: float | None
    generator_url: str | None

    @property
    def firing(self) -> bool:
        return self.ends_at is None

    def payload(self, now: float, valid_for_s: float) -> dict[str, Any]:
        """One element of the list POST /api/v2/alerts takes. A firing alert ends `valid_for_s`
        from now (or from its start, should the detector's clock be ahead of ours: Alertmanager
        refuses an alert that ends before it starts) unless it is posted again."""
        ends_at = self.ends_at
        if ends_at is None:
            ends_at = max(now, self.starts_at) + valid_for_s
        alert: dict[str, Any] = {
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": rfc3339(self.starts_at),
            "endsAt": rfc3339(ends_at),
        }
        if self.generator_url is not None:
            alert["generatorURL"] = self.generator_url
        return alert


@dataclass(frozen=True)
class AlertMapping:
    """Alerts -> `AlertState`s, with the two settings that shape every one of them."""

    alertname: str
    link_template: str | None = None

    def opened(self, alert: Alert) -> AlertState:
        """The firing alert of the episode `alert` opens."""
        return AlertState(
            labels=self.labels(alert),
            annotations=annotations(alert),
            starts_at=alert.episode_start,
            ends_at=None,
            generator_url=self.link(alert),
        )

    def resolved(self, alert: Alert, opened: AlertState | None) -> AlertState:
        """The episode's alert ended at the resolve alert's time, under the labels it was opened
        with; without them (the open was never read) under labels made from the resolve."""
        labels = opened.labels if opened is not None else self.labels(alert)
        starts_at = opened.starts_at if opened is not None else alert.episode_start
        return AlertState(
            labels=labels,
            annotations=annotations(alert),
            starts_at=starts_at,
            ends_at=max(alert.window_end, starts_at),
            generator_url=self.link(alert),
        )

    def labels(self, alert: Alert) -> dict[str, str]:
        labels = {
            "alertname": self.alertname,
            "key": alert.key,
            "severity": alert.severity,
            "model_version": alert.model_version,
            "episode_id": alert.episode_id,
        }
        if alert.top_features:
            labels["top_feature"] = alert.top_features[0].name
        return labels

    def link(self, alert: Alert) -> str | None:
        if self.link_template is None:
            return None
        return self.link_template.format(
            **{name: quote(getattr(alert, name), safe="") for name in LINK_FIELDS}
        )


def annotations(alert: Alert) -> dict[str, str]:
    """What a person reading the alert needs: what happened, to which key, and which features
    the model found furthest from what it expected."""
    ratio = alert.score / alert.threshold if alert.threshold > 0 else float("inf")
    flat = ", ".join(alert.flat_features)
    ended_why = _REASON_TEXT.get(alert.reason or "", "resolved")  # read on a resolve only
    if alert.kind == "open" and alert.reason == "new_key":
        summary = f"{alert.key}: new key, not among the model's training keys"
    elif alert.kind == "open" and flat:
        # A flat line exceeds whatever its score, which is then under the threshold.
        summary = f"{alert.key}: flat line on {flat} ({alert.severity})"
    elif alert.kind == "open":
        summary = (
            f"{alert.key}: anomaly ({alert.severity}), score {alert.score:.4g} is {ratio:.3g}x "
            f"its threshold {alert.threshold:.4g}"
        )
    elif alert.windows_over == 0:  # a new key's episode that no window of it exceeded
        summary = (
            f"{alert.key}: new key's episode resolved ({ended_why}), no window over threshold"
        )
    else:
        summary = (
            f"{alert.key}: anomaly resolved ({ended_why}), peak score {alert.score:.4g} was "
            f"{ratio:.3g}x its threshold {alert.threshold:.4g}"
        )
    features = "; ".join(
        f"{feature.name} {feature.actual:.4g} (expected {feature.expected:.4g}, "
        f"{feature.error:.0%} of the error)"
        for feature in alert.top_features
    )
    if alert.kind == "open":
        where = (
            f"in the opening window ({rfc3339(alert.window_start)} to {rfc3339(alert.window_end)})"
        )
        episode = f"Episode opened at {rfc3339(alert.episode_start)}"
    else:
        where = "at the episode's peak"
        ended = alert.window_end if alert.anomaly_end is None else alert.anomaly_end
        episode = f"Episode from {rfc3339(alert.episode_start)}, anomalous until {rfc3339(ended)}"
    flat_line = (
        f"Flat line: {flat} stood still (one value repeated, or far less variation than ever) "
        "beyond what this key's history makes normal. "
        if flat
        else ""
    )
    description = (
        f"{flat_line}Top features {where}, actual vs expected: {features or 'none reported'}. "
        f"{episode}, {alert.windows_over} window(s) over the threshold; "
        f"model {alert.model_version}."
    )
    result = {
        "summary": summary,
        "description": description,
        "score": f"{alert.score:.6g}",
        "threshold": f"{alert.threshold:.6g}",
        "alert_id": alert.alert_id,
        "episode_id": alert.episode_id,
    }
    if alert.reason is not None:
        result["reason"] = alert.reason
    return result
