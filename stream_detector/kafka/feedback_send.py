"""`stream-detector feedback`: one operator-feedback event, built, checked and sent.

The command builds the CloudEvent, runs it through `parse_feedback` (the service's own check, so
an event refused there is refused here, before anything is sent), and produces it to
kafka.feedback_topic keyed by its target, so that the feedback on one key (or pattern) stays in
order on one partition. `--out FILE` appends it to a JSONL file instead, for `evaluate
--feedback FILE`.

A false/true positive must carry what the service checks and uses: the alert's key, episode
start and model version, the episode's peak score and, once it has resolved, its end. The
operator only has the alert id, so the episode's alerts are looked up on kafka.alert_topic, read
from the start to the end of every partition (`read_topic`: no consumer group is joined, nothing
is committed), or in a JSONL file of alert CloudEvents.
"""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from stream_detector.config import FeedbackConfig, KafkaConfig, Settings
from stream_detector.detector.feedback import (
    FeedbackError,
    FeedbackEvent,
    FeedbackKind,
    alert_reference,
    feedback_envelope,
    feedback_type,
    parse_feedback,
)
from stream_detector.engine.alerts import EVENT_TYPES, LATEST_EPOCH_S, FeatureContribution, rfc3339
from stream_detector.kafka.clients import create_client
from stream_detector.kafka.faults import ClientFaults, FatalServiceError
from stream_detector.kafka.preflight import wait_for_topics
from stream_detector.kafka.settings import producer_config
from stream_detector.kafka.topic_reader import ReadTimeout, TopicReadError, read_topic

SOURCE: Final = "stream-detector/feedback-cli"
_ALERT_TYPES: Final = frozenset(EVENT_TYPES.values())
_UNITS_S: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION: Final = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
# The report of a message that timed out comes just after message.timeout.ms; flush waits for it.
_DELIVERY_GRACE_S: Final = 5.0


class FeedbackInputError(ValueError):
    """Something the operator can fix in the command line or the settings; nothing was sent."""


class FeedbackSendError(Exception):
    """The broker could not be read or did not take the event; the message says why."""


# -- parsing the command's values ------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """Seconds in a duration such as 90s, 15m, 2h, 1d or 1h30m; ValueError otherwise."""
    if not _DURATION.fullmatch(text):
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 2h, 1d or 1h30m")
    seconds = sum(float(n) * _UNITS_S[unit] for n, unit in _DURATION_PART.findall(text))
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be longer than zero")
    return seconds


def parse_time(text: str) -> float:
    """Epoch seconds from RFC 3339 (2024-05-01T12:00:00Z) or from a number of epoch seconds.

    A time without a UTC offset is refused: read in the local zone of whoever types it, it
    would mute a different hour on another machine."""
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not 0 <= seconds <= LATEST_EPOCH_S:
            raise ValueError(
                f"{text!r} is not epoch seconds between 1970 and 9999 (milliseconds? divide by "
                "1000)"
            )
        return seconds
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither RFC 3339 (2024-05-01T12:00:00Z) nor epoch seconds"
        ) from None
    if stamp.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset; end it with Z or +HH:MM")
    return stamp.timestamp()


# -- the alert a false/true positive names ---------------------------------------------------------


@dataclass(frozen=True)
class AlertRecord:
    """The fields of an alert CloudEvent that a false/true positive needs (`AlertFacts`), and
    that an episode's span is drawn from (`EpisodeAlert`)."""

    kind: str
    alert_id: str
    episode_id: str
    key: str
    score: float
    window_start: float
    window_end: float
    episode_start: float
    model_version: str
    # The window's features with the largest error (resolve: the peak window's): the error
    # profile a false positive holds its floor to.
    top_features: tuple[FeatureContribution, ...] = ()


def alert_record(value: bytes | None) -> AlertRecord | None:
    """The alert in one record, or None for anything else: the alert topic may carry another
    producer's records, which must not stop the look-up."""
    try:
        envelope = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("type"), str):
        return None
    data = envelope.get("data")
    if envelope["type"] not in _ALERT_TYPES or not isinstance(data, dict):
        return None
    texts = ("kind", "alert_id", "episode_id", "key", "model_version")
    numbers = ("score", "window_start", "window_end", "episode_start")
    if not all(isinstance(data.get(name), str) and data[name] for name in texts):
        return None
    if not all(_is_finite(data.get(name)) for name in numbers):
        return None
    return AlertRecord(
        **{name: data[name] for name in texts},
        **{name: float(data[name]) for name in numbers},
        top_features=_contributions(data.get("top_features")),
    )


def _contributions(value: object) -> tuple[FeatureContribution, ...]:
    """An alert's top_features, leaving out entries that are not {name, error, ...} (they only
    narrow the profile a false positive carries)."""
    if not isinstance(value, list):
        return ()
    return tuple(
        FeatureContribution(
            item["name"],
            float(item.get("actual", 0.0)) if _is_finite(item.get("actual")) else 0.0,
            float(item.get("expected", 0.0)) if _is_finite(item.get("expected")) else 0.0,
            float(item["error"]),
        )
        for item in value
        if isinstance(item, dict)
        and isinstance(item.get("name"), str)
        and _is_finite(item.get("error"))
        and 0.0 <= item["error"] <= 1.0
    )


def _is_finite(value: object) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    )


def episode_of(alert_id: str) -> str:
    """The episode an alert id belongs to; FeedbackInputError when it is not an alert id."""
    episode, _, kind = alert_id.rpartition("-")
    if not episode or kind not in EVENT_TYPES:
        raise FeedbackInputError(
            f"{alert_id!r} is not an alert id: an alert's id (data.alert_id, and the CloudEvent's "
            "id) is '<episode_id>-open' or '<episode_id>-resolve'"
        )
    return episode


@dataclass
class AlertSearch:
    """The alerts of one episode among the records read, and how many alerts were read."""

    alert_id: str
    episode_id: str
    found: list[AlertRecord] = field(default_factory=list)
    alerts_read: int = 0

    @classmethod
    def for_alert(cls, alert_id: str) -> AlertSearch:
        return cls(alert_id, episode_of(alert_id))

    def take(self, value: bytes | None) -> None:
        alert = alert_record(value)
        if alert is None:
            return
        self.alerts_read += 1
        if alert.episode_id == self.episode_id:
            self.found.append(alert)

    def reference(self, where: str) -> dict[str, Any]:
        """The false/true positive's data: the named alert with its episode's peak score and
        end (the resolve's window end, if the episode has resolved)."""
        named = next((a for a in self.found if a.alert_id == self.alert_id), None)
        if named is None:
            others = sorted({a.alert_id for a in self.found})
            hint = f"; its episode has {', '.join(others)}" if others else ""
            raise FeedbackInputError(
                f"unknown alert {self.alert_id!r}: not among the {self.alerts_read} alerts read "
                f"from {where}{hint}"
            )
        resolves = [a for a in self.found if a.kind == "resolve"]
        peak = max(self.found, key=lambda a: a.score)
        # The resolve carries the episode's peak window (its top features): the profile.
        explained = max(resolves, key=lambda a: a.window_end) if resolves else peak
        end = max(a.window_end for a in resolves) if resolves else None
        return alert_reference(named, peak.score, end, explained.top_features)


def search_file(path: Path, search: AlertSearch) -> None:
    """Every line of a JSONL file of alert CloudEvents into `search`."""
    try:
        with path.open("rb") as lines:
            for line in lines:
                if line.strip():
                    search.take(line)
    except FileNotFoundError:
        raise FeedbackInputError(f"--alerts {path} does not exist") from None
    except OSError as exc:
        raise FeedbackInputError(f"cannot read --alerts {path}: {exc.strerror}") from None


def search_topic(
    kafka: KafkaConfig, search: AlertSearch, timeout_s: float, faults: ClientFaults
) -> None:
    """Every record of kafka.alert_topic, start to end of each partition, into `search`."""
    try:
        read_topic(
            kafka,
            kafka.alert_topic,
            "feedback-cli",
            lambda message: search.take(message.value()),
            timeout_s,
            faults,
        )
    except ReadTimeout as exc:
        read = f"{search.alerts_read} alerts read"
        raise FeedbackSendError(f"kafka.alert_topic: {exc} ({read}); raise --timeout") from None
    except TopicReadError as exc:
        raise FeedbackSendError(f"kafka.alert_topic: {exc}") from None


# -- the event -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedbackOptions:
    """The command's arguments. `target` is the alert id (false/true positive), the key pattern
    (mute, unmute) or the key (sensitivity); `at` is the event time the effect starts (mute:
    from, unmute: at, sensitivity: effective), None for now."""

    kind: FeedbackKind
    target: str
    multiplier: float = 1.0
    duration_s: float = 0.0
    at: float | None = None
    alerts: Path | None = None
    out: Path | None = None
    timeout_s: float = 30.0


@dataclass(frozen=True)
class OutgoingFeedback:
    """An event as it goes on the wire, and what `parse_feedback` read back from it."""

    payload: bytes
    event: FeedbackEvent


def build_event(
    kind: FeedbackKind, data: dict[str, Any], config: FeedbackConfig, now: float
) -> OutgoingFeedback:
    """A fresh event (new uuid4 id) around `data`, refused unless the service would apply it."""
    subject = data["pattern"] if "pattern" in data else data["key"]
    payload = feedback_envelope(kind, uuid.uuid4().hex, SOURCE, subject, data, now)
    try:
        return OutgoingFeedback(payload, parse_feedback(payload, config))
    except FeedbackError as exc:
        raise FeedbackInputError(f"refused, nothing sent: {exc}") from None


def plain_data(options: FeedbackOptions, now: float) -> dict[str, Any]:
    """The data of a mute, unmute or sensitivity event; they start at `at`, else now."""
    at = now if options.at is None else options.at
    if options.kind == "mute":
        return {"pattern": options.target, "from": at, "until": at + options.duration_s}
    if options.kind == "unmute":
        return {"pattern": options.target, "at": at}
    return {"key": options.target, "multiplier": options.multiplier, "effective": at}


def describe(event: FeedbackEvent) -> str:
    """One line of what an event says: type, id, target and effect."""
    if event.alert is not None:
        ref = event.alert
        end = "still open" if ref.episode_end is None else f"ended {rfc3339(ref.episode_end)}"
        detail = f"key {event.target!r}, alert {ref.alert_id}, peak score {ref.score:.6g}, "
        detail += f"episode {end}"
    elif event.kind == "mute":
        detail = f"pattern {event.target!r}, from {rfc3339(event.start)} until "
        detail += rfc3339(event.until)
    elif event.kind == "unmute":
        detail = f"pattern {event.target!r}, at {rfc3339(event.start)}"
    else:
        detail = f"key {event.target!r}, multiplier {event.multiplier:g} from "
        detail += rfc3339(event.start)
    return f"{feedback_type(event.kind)} {event.event_id} ({detail})"


# -- the command -----------------------------------------------------------------------------------


def run_feedback(options: FeedbackOptions, settings: Settings) -> int:
    """Build, check and send one event (or append it to --out), then print what it was.

    Everything that needs no broker is checked first, so a mistyped id or a multiplier out of
    bounds is refused at once. Raises FeedbackInputError (the operator's to fix) or
    FeedbackSendError (the broker's)."""
    kafka = settings.kafka
    topic = _feedback_topic(options, kafka)
    faults = ClientFaults(kafka.bootstrap_servers)
    now = time.time()
    try:
        if options.kind in ("false_positive", "true_positive"):
            data = _looked_up(AlertSearch.for_alert(options.target), options, kafka, topic, faults)
        else:
            data = plain_data(options, now)
        outgoing = build_event(options.kind, data, settings.feedback, now)
        if topic is None:
            assert options.out is not None  # the only way _feedback_topic gives no topic
            append_event(options.out, outgoing.payload)
            print(f"wrote {describe(outgoing.event)} to {options.out}")
            return 0
        _reach_topics(kafka, {topic: "kafka.feedback_topic"}, options.timeout_s, faults)
        partition, offset = send_event(kafka, topic, outgoing, options.timeout_s, faults)
    except FatalServiceError as exc:
        raise FeedbackSendError(str(exc)) from None
    print(
        f"sent {describe(outgoing.event)} to topic {topic!r} "
        f"(partition {partition}, offset {offset})"
    )
    return 0


def _feedback_topic(options: FeedbackOptions, kafka: KafkaConfig) -> str | None:
    """Where the event goes: None with --out; FeedbackInputError when it has nowhere to go."""
    if options.out is not None:
        return None
    if kafka.feedback_topic is None:
        raise FeedbackInputError(
            "kafka.feedback_topic is not set, so there is no topic to send feedback to: pass "
            "--set kafka.feedback_topic=NAME (or set it under [kafka] in the TOML file, or "
            "SD_KAFKA__FEEDBACK_TOPIC), or --out FILE to append the event to a file"
        )
    return kafka.feedback_topic


def _looked_up(
    search: AlertSearch,
    options: FeedbackOptions,
    kafka: KafkaConfig,
    topic: str | None,
    faults: ClientFaults,
) -> dict[str, Any]:
    """The false/true positive's data, from --alerts or else the alert topic (checked, with the
    feedback topic, before the scan, so that a missing one does not waste it)."""
    if options.alerts is not None:
        search_file(options.alerts, search)
        return search.reference(f"--alerts {options.alerts}")
    wanted = {kafka.alert_topic: "kafka.alert_topic"}
    if topic is not None:
        wanted[topic] = "kafka.feedback_topic"
    _reach_topics(kafka, wanted, options.timeout_s, faults)
    search_topic(kafka, search, options.timeout_s, faults)
    return search.reference(
        f"topic {kafka.alert_topic!r} (kafka.alert_topic) on {kafka.bootstrap_servers}"
    )


def _reach_topics(
    kafka: KafkaConfig, wanted: Mapping[str, str], timeout_s: float, faults: ClientFaults
) -> None:
    """The service's broker check (a broker that is down is waited for; one that refuses the
    handshake, or lacks a topic, is an error naming the setting), given up after `timeout_s`:
    a command waits for a broker that is starting, not for ever."""
    gave_up = threading.Event()
    timer = threading.Timer(timeout_s, gave_up.set)
    timer.daemon = True
    timer.start()
    try:
        reached = wait_for_topics(kafka, wanted, gave_up, faults)
    finally:
        timer.cancel()
    if not reached:
        raise FeedbackSendError(
            f"no answer from Kafka at {kafka.bootstrap_servers} within {timeout_s:g} s "
            "(--timeout); check kafka.bootstrap_servers (--bootstrap-servers)"
        )


def append_event(path: Path, payload: bytes) -> None:
    """One JSON line at the end of `path`: a file of feedback for `evaluate --feedback`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as out:
            out.write(payload + b"\n")
    except OSError as exc:
        raise FeedbackInputError(f"cannot append to --out {path}: {exc.strerror}") from None


def send_event(
    kafka: KafkaConfig,
    topic: str,
    outgoing: OutgoingFeedback,
    timeout_s: float,
    faults: ClientFaults,
) -> tuple[int, int]:
    """Produce the event keyed by its target and wait for the broker's acknowledgement; the
    (partition, offset) it was written at, or FeedbackSendError with the reason."""
    conf = producer_config(kafka)
    # Undelivered after the timeout is a delivery report with the reason, unless kafka.extra
    # says otherwise (librdkafka's own default is five minutes).
    conf.setdefault("message.timeout.ms", int(timeout_s * 1000))
    producer = create_client(Producer, {**conf, "error_cb": faults.on_client_error})
    reports: list[tuple[KafkaError | None, Message]] = []
    event = outgoing.event
    try:
        producer.produce(
            topic,
            value=outgoing.payload,
            key=event.target.encode(),
            on_delivery=lambda error, message: reports.append((error, message)),
        )
    except KafkaException as exc:
        reason = exc.args[0].str()
        raise FeedbackSendError(f"feedback {event.event_id} not sent: {reason}") from None
    producer.flush(timeout_s + _DELIVERY_GRACE_S)
    faults.raise_if_fatal()
    if not reports:
        raise FeedbackSendError(
            f"feedback {event.event_id} was not acknowledged within {timeout_s:g} s; it may or "
            f"may not be on topic {topic!r}"
        )
    error, message = reports[0]
    if error is not None:
        raise FeedbackSendError(
            f"feedback {event.event_id} not delivered to topic {topic!r}: {error.str()}"
        )
    return message.partition(), message.offset()
