"""Operator feedback: the events people send about alerts and keys, and the ledger they build.

A feedback event is a CloudEvents 1.0 structured-mode JSON message (README, "Operator feedback",
has the formats). Its `id` makes it idempotent: a second event with an id already applied
changes nothing. Each effect starts at an event time the feedback names (the alert's time, or the
mute's span), never at the moment it happens to be read, so a replay of the same events with the
same feedback makes the same decisions wherever the stream is cut into batches.

The ledger is the whole of the feedback as a function of the events applied, in their order:
every replica reads the feedback topic from its start and builds the same ledger, so feedback
survives restarts and rebalances without a place in the partition checkpoints.

Effects, per key:
- `sensitivity`: the key's threshold is divided by a multiplier (bounded), from `effective` on;
  the latest event for a key (in topic order) wins from its own effective time.
- `false_positive`: the key's threshold is at least `false_positive_margin` x the alert's score
  for the windows after the marked episode (or alert) that the same model version scores
  (another model's scores are on another scale).
- `true_positive`: the key's threshold learns nothing from the episode's windows (until its
  resolve when known, else for `true_positive_hold_s`); the span is also a labelled anomaly for
  whatever later trains on the stream.
- `mute` / `unmute`: alerts of keys matching a glob pattern, of episodes that opened inside the
  mute's span (event time), are not published, their resolves included; scoring and learning
  go on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import numpy as np
import orjson

from stream_detector.config import FeedbackConfig
from stream_detector.engine.alerts import (
    Alert,
    FeatureContribution,
    alert_id_for,
    cloudevent,
    episode_id_for,
)

FeedbackKind = Literal["false_positive", "true_positive", "mute", "unmute", "sensitivity"]
FEEDBACK_TYPE_PREFIX: Final = "io.streamdetector.feedback."
FEEDBACK_KINDS: Final[tuple[FeedbackKind, ...]] = (
    "false_positive",
    "true_positive",
    "mute",
    "unmute",
    "sensitivity",
)
# The largest feedback event read: feedback is a few hundred bytes; more is not feedback.
MAX_FEEDBACK_BYTES: Final = 65_536


class FeedbackError(ValueError):
    """A feedback event that cannot be applied; the message is the dead letter's reason."""


@dataclass(frozen=True)
class AlertRef:
    """What a false/true positive says of its alert: enough to check that the alert id is one
    this detector raised for that key (ids are hashes of key, episode start and model version)."""

    alert_id: str
    key: str
    episode_start: float
    model_version: str
    score: float
    effective: float  # event time the effect starts (alert_reference says which)
    episode_end: float | None  # the resolve's window end, when the episode is known to be over
    # Each named feature's share of the error at the episode's peak (the alert's top_features):
    # what "the same pattern" means for a false positive. Empty: any window of the key.
    profile: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class FeedbackEvent:
    """One validated feedback event; `target` is the key, or for (un)mute the key pattern."""

    event_id: str
    kind: FeedbackKind
    target: str
    alert: AlertRef | None = None
    multiplier: float = 1.0
    start: float = 0.0  # mute: first event time muted; sensitivity: effective from; unmute: at
    until: float = 0.0  # mute: first event time no longer muted


def feedback_type(kind: FeedbackKind) -> str:
    return FEEDBACK_TYPE_PREFIX + kind


# The CloudEvent `type` of each kind, mapped back.
_KIND_BY_TYPE: Final[dict[str, FeedbackKind]] = {feedback_type(k): k for k in FEEDBACK_KINDS}


def _number(data: dict[str, Any], name: str) -> float:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FeedbackError(f"data.{name} must be a finite number, got {value!r}")
    return float(value)


def _optional_number(data: dict[str, Any], name: str) -> float | None:
    return None if data.get(name) is None else _number(data, name)


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise FeedbackError(f"data.{name} must be a non-empty string, got {value!r}")
    return value


def parse_feedback(payload: bytes | None, config: FeedbackConfig) -> FeedbackEvent:
    """The event in `payload`, validated; raises FeedbackError naming what is wrong."""
    if not payload:
        raise FeedbackError("empty feedback record")
    if len(payload) > MAX_FEEDBACK_BYTES:
        raise FeedbackError(
            f"feedback record of {len(payload)} bytes (at most {MAX_FEEDBACK_BYTES})"
        )
    try:
        envelope = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise FeedbackError(f"not JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise FeedbackError("a feedback event is a JSON object (a CloudEvent)")
    if envelope.get("specversion") != "1.0":
        raise FeedbackError("specversion must be '1.0' (CloudEvents 1.0)")
    event_id = envelope.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise FeedbackError("id must be a non-empty string: it makes feedback idempotent")
    event_type = envelope.get("type")
    kind = _KIND_BY_TYPE.get(event_type) if isinstance(event_type, str) else None
    if kind is None:
        raise FeedbackError(f"unknown type {event_type!r}; one of {', '.join(_KIND_BY_TYPE)}")
    data = envelope.get("data")
    if not isinstance(data, dict):
        raise FeedbackError("data must be a JSON object")
    if kind in ("false_positive", "true_positive"):
        alert = _alert_ref(data, kind)
        return FeedbackEvent(event_id, kind, alert.key, alert=alert)
    if kind == "sensitivity":
        multiplier = _number(data, "multiplier")
        low, high = config.min_sensitivity, config.max_sensitivity
        if not low <= multiplier <= high:
            raise FeedbackError(
                f"data.multiplier {multiplier} is outside [{low}, {high}] "
                "(feedback.min_sensitivity, feedback.max_sensitivity)"
            )
        start = _number(data, "effective")
        return FeedbackEvent(event_id, kind, _text(data, "key"), multiplier=multiplier, start=start)
    pattern = _text(data, "pattern")
    if kind == "unmute":
        return FeedbackEvent(event_id, kind, pattern, start=_number(data, "at"))
    start = _number(data, "from")
    until = _number(data, "until")
    if not start < until <= start + config.max_mute_s:
        raise FeedbackError(
            f"a mute needs from < until <= from + {config.max_mute_s:g} s (feedback.max_mute_s); "
            f"got from={start}, until={until}"
        )
    return FeedbackEvent(event_id, kind, pattern, start=start, until=until)


def read_feedback_file(path: Path, config: FeedbackConfig) -> list[FeedbackEvent]:
    """The feedback CloudEvents of a JSONL file, one a line, in file order (what `stream-detector
    feedback --out FILE` and `--write-false-positives` write); blank lines are skipped.

    Raises ValueError naming the first bad line, since a file applied in part would make figures
    that belong to no feedback anyone gave."""
    events = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                events.append(parse_feedback(line.strip(), config))
            except FeedbackError as exc:
                raise ValueError(f"line {number}: {exc}") from None
    return events


def _alert_ref(data: dict[str, Any], kind: FeedbackKind) -> AlertRef:
    """The alert a false/true positive names, checked against its own id.

    A score of 0 is a new key's arrival that no window of it exceeded: it can be confirmed (a
    true positive holds nothing back by its score), but a false positive would raise the key's
    threshold to nothing."""
    alert_id, key, version = (
        _text(data, "alert_id"),
        _text(data, "key"),
        _text(data, "model_version"),
    )
    episode_start = _number(data, "episode_start")
    episode = episode_id_for(key, episode_start, version)
    if alert_id not in (alert_id_for(episode, "open"), alert_id_for(episode, "resolve")):
        raise FeedbackError(
            f"unknown alert id {alert_id!r}: no alert of key {key!r} opened at {episode_start} by "
            f"model {version!r} has it (`stream-detector feedback` looks the alert up for you)"
        )
    score = _number(data, "score")
    if score < 0 or (score == 0 and kind == "false_positive"):
        hint = (
            "; a new key's arrival that no window exceeded has no score to raise the key's "
            "threshold to: mute the key if its arrivals are not news"
            if score == 0
            else ""
        )
        raise FeedbackError(f"data.score must be positive, got {score}{hint}")
    effective = _number(data, "effective")
    episode_end = _optional_number(data, "episode_end")
    if episode_end is not None and episode_end < episode_start:
        raise FeedbackError("data.episode_end is before data.episode_start")
    profile = _profile(data.get("profile"))
    return AlertRef(alert_id, key, episode_start, version, score, effective, episode_end, profile)


def _profile(value: Any) -> tuple[tuple[str, float], ...]:
    """data.profile: an object of feature name -> share of the error (0..1), or absent."""
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > 1024:
        raise FeedbackError("data.profile must be an object of feature name -> error share")
    shares = []
    for name, share in value.items():
        ok = isinstance(share, (int, float)) and not isinstance(share, bool)
        if not ok or not 0.0 <= share <= 1.0:
            raise FeedbackError(f"data.profile[{name!r}] must be a share in [0, 1], got {share!r}")
        shares.append((name, float(share)))
    if shares and not any(share > 0 for _, share in shares):
        raise FeedbackError("data.profile has no feature with a share above 0")
    return tuple(shares)


def feedback_envelope(
    kind: FeedbackKind, event_id: str, source: str, subject: str, data: dict[str, Any], now: float
) -> bytes:
    """A feedback event as it goes on the topic (the `feedback` command and tests build these)."""
    return cloudevent(event_id, source, feedback_type(kind), subject, now, data)


class AlertFacts(Protocol):
    """What a false/true positive takes from the alert it names: an `Alert`, or the fields
    `stream-detector feedback` reads back from an alert CloudEvent (which has no batch index)."""

    @property
    def alert_id(self) -> str: ...

    @property
    def key(self) -> str: ...

    @property
    def episode_start(self) -> float: ...

    @property
    def model_version(self) -> str: ...

    @property
    def window_end(self) -> float: ...

    @property
    def top_features(self) -> Sequence[FeatureContribution]: ...


def alert_reference(
    alert: AlertFacts,
    peak_score: float,
    episode_end: float | None,
    peak_features: Sequence[FeatureContribution] | None = None,
) -> dict[str, Any]:
    """The `data` of a false/true positive on `alert` (either of its episode's alerts), with
    the episode's peak score, its error profile (`peak_features`: the top features of its peak
    window, as the resolve alert carries them; else the alert's own) and, when it has
    resolved, its end.

    The effect starts at the episode's end when known, else at the alert's own time: a replay
    from before then raises the alert that was marked again, under the same id, rather than
    unmaking what was already published."""
    features = alert.top_features if peak_features is None else peak_features
    return {
        "profile": {feature.name: feature.error for feature in features} or None,
        "alert_id": alert.alert_id,
        "key": alert.key,
        "episode_start": alert.episode_start,
        "model_version": alert.model_version,
        "score": peak_score,
        "effective": alert.window_end if episode_end is None else episode_end,
        "episode_end": episode_end,
    }


@dataclass(frozen=True)
class _Floor:
    """A false positive's threshold floor: from `start` on, for windows scored by `version`
    whose error profile is like `profile` (any window when it is empty)."""

    start: float
    level: float
    version: str
    profile: tuple[tuple[str, float], ...]


@dataclass
class _KeyFeedback:
    """One key's feedback, each list in the order applied."""

    sensitivity: list[tuple[float, float]] = field(default_factory=list)  # (from, multiplier)
    # (from, floor, version, error profile): see `_Floor`
    floors: list[_Floor] = field(default_factory=list)
    holds: list[tuple[float, float]] = field(default_factory=list)  # [start, end] not learnt


@dataclass(frozen=True)
class Adjustments:
    """Per scored window: threshold divisor, threshold floor, and whether it may be learnt."""

    divisor: np.ndarray  # float64 [B]
    floor: np.ndarray  # float64 [B]
    learn: np.ndarray  # bool [B]


@dataclass
class _Mute:
    pattern: str
    start: float
    until: float


class FeedbackLedger:
    """Every feedback applied so far, and what it means for a window or an alert."""

    def __init__(self, config: FeedbackConfig) -> None:
        self.config = config
        self._seen: set[str] = set()
        self._keys: dict[str, _KeyFeedback] = {}
        self._mutes: list[_Mute] = []
        self.applied: list[FeedbackEvent] = []
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self.applied)

    def apply(self, event: FeedbackEvent) -> bool:
        """Take one event (in topic order); False, and nothing changes, for an id seen before."""
        if event.event_id in self._seen:
            self.duplicates += 1
            return False
        self._seen.add(event.event_id)
        self.applied.append(event)
        if event.kind == "mute":
            self._mutes.append(_Mute(event.target, event.start, event.until))
            return True
        if event.kind == "unmute":
            for mute in self._mutes:
                if mute.pattern == event.target and mute.until > event.start:
                    mute.until = max(mute.start, event.start)
            return True
        entry = self._keys.setdefault(event.target, _KeyFeedback())
        if event.kind == "sensitivity":
            entry.sensitivity.append((event.start, event.multiplier))
        elif event.alert is not None and event.kind == "false_positive":
            ref = event.alert
            level = ref.score * self.config.false_positive_margin
            entry.floors.append(_Floor(ref.effective, level, ref.model_version, ref.profile))
        elif event.alert is not None:  # true_positive
            ref = event.alert
            end = ref.episode_end
            if end is None:
                end = ref.effective + self.config.true_positive_hold_s
            entry.holds.append((ref.episode_start, end))
        return True

    def adjustments(
        self,
        keys: np.ndarray,
        end_ts: np.ndarray,
        model_version: str,
        feature_errors: np.ndarray | None = None,
        feature_names: Sequence[str] = (),
    ) -> Adjustments | None:
        """What the feedback does to each window (its key, the event time of its end and, for
        false positives with a profile, its per-feature errors [B, F] in `feature_names` order);
        None when no window's key has feedback, so a stream without any pays one set lookup per
        window."""
        if not self._keys or len(keys) == 0:
            return None
        # One pass over the windows: the rows of each key with feedback, in order.
        groups: dict[str, list[int]] = {}
        for row, key in enumerate(keys.tolist()):
            if key in self._keys:
                groups.setdefault(key, []).append(row)
        if not groups:
            return None
        n = len(keys)
        divisor = np.ones(n, dtype=np.float64)
        floor = np.zeros(n, dtype=np.float64)
        learn = np.ones(n, dtype=bool)
        index = {name: i for i, name in enumerate(feature_names)}
        for key, rows in groups.items():
            mine = np.asarray(rows, dtype=np.int64)
            at = end_ts[mine]
            entry = self._keys[key]
            for start, multiplier in entry.sensitivity:
                divisor[mine[at >= start]] = multiplier  # later events win from their start
            errors = None
            for marked in entry.floors:
                if marked.version != model_version:
                    continue
                # Strictly after: the marked alert's own window (its end is `start` for an
                # episode still open) is judged as it was.
                hit = at > marked.start
                if marked.profile and feature_errors is not None:
                    if errors is None:
                        errors = np.asarray(feature_errors[mine], dtype=np.float64)
                    hit &= self._alike(errors, index, marked.profile)
                chosen = mine[hit]
                floor[chosen] = np.maximum(floor[chosen], marked.level)
            for start, end in entry.holds:
                learn[mine[(at >= start) & (at <= end)]] = False
        return Adjustments(divisor, floor, learn)

    def _alike(
        self,
        errors: np.ndarray,
        index: dict[str, int],
        profile: tuple[tuple[str, float], ...],
    ) -> np.ndarray:
        """Whether each window's error (float64 [B, F], features in `index` order) is spread
        over the features like `profile` (cosine similarity of the share vectors at least
        feedback.false_positive_similarity); a profile naming none of the model's features
        matches every window."""
        wanted = np.zeros(len(index), dtype=np.float64)
        for name, share in profile:
            if name in index:
                wanted[index[name]] = share
        if not wanted.any():
            return np.ones(len(errors), dtype=bool)
        norms = np.linalg.norm(errors, axis=1) * np.linalg.norm(wanted)
        cosine = np.divide(errors @ wanted, norms, out=np.zeros(len(errors)), where=norms > 0)
        return cosine >= self.config.false_positive_similarity

    def is_muted(self, key: str, at: float) -> bool:
        """Whether an episode of `key` opened at event time `at` falls in a mute."""
        return any(
            mute.start <= at < mute.until and fnmatchcase(key, mute.pattern) for mute in self._mutes
        )

    def unmuted(self, alerts: list[Alert]) -> tuple[list[Alert], int]:
        """The alerts to publish, and how many were muted."""
        if not self._mutes or not alerts:
            return alerts, 0
        # Judged by the episode's start, so an episode's resolve goes where its open went.
        kept = [a for a in alerts if not self.is_muted(a.key, a.episode_start)]
        return kept, len(alerts) - len(kept)

    def labelled_spans(self) -> list[tuple[str, float, float]]:
        """(key, start, end) of the episodes marked true positive: anomalies to keep out of
        anything trained on the stream."""
        return [
            (key, start, end) for key, entry in self._keys.items() for start, end in entry.holds
        ]
