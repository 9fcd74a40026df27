"""`stream-detector retrain`: a candidate model trained on recent events, anomalies kept out.

The recent events come from a file (read as `train` reads one) or from the end of
kafka.input_topics. The anomalies in them are the episodes the service published: their alerts
come from --alerts FILE or, with --from-topic, from kafka.alert_topic read to its end, and every
episode's span (`EpisodeSpans`, whichever model version raised it) is left out, as are the
operators' true positives; the candidate is trained exactly as `train` would, with the active
model's settings. With --register it goes into the model registry with its retrain report, as a
candidate: promoting it is for `models promote` (or the service's shadow verdict).

The topics are read without joining a group or committing (`topic_reader`): the service's
positions do not move. Once the fetch responses told each input partition's extent (the cached
high watermark), the reader seeks to the stretch it keeps, so a long topic is not read from its
start. The service may not have judged the newest events yet: their anomalies have no alerts.
"""

from __future__ import annotations

import argparse
import heapq
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from stream_detector.aggregate.decoder import decoder_for
from stream_detector.config import FeedbackConfig, KafkaConfig, Settings
from stream_detector.detector.artefact import ArtefactError, load_artefact_and_settings
from stream_detector.detector.exclusions import Span, episode_spans
from stream_detector.detector.feedback import FeedbackLedger, read_feedback_file
from stream_detector.detector.registry import ModelRegistry, RegistryError
from stream_detector.detector.retrain import (
    RetrainResult,
    recent_events,
    register_candidate,
    retrain,
)
from stream_detector.detector.sources import read_batches
from stream_detector.engine.alerts import EVENT_TYPES, rfc3339
from stream_detector.engine.decode import RecordDecoder
from stream_detector.engine.model import select_device
from stream_detector.engine.types import Decoded
from stream_detector.kafka.faults import ClientFaults
from stream_detector.kafka.feedback_send import AlertRecord, alert_record
from stream_detector.kafka.records import ConsumedBatch
from stream_detector.kafka.registry_topic import open_registry
from stream_detector.kafka.topic_reader import (
    Partition,
    ReadTimeout,
    TopicReadError,
    batches_to_end,
    read_topic,
    topic_partitions,
    topic_reader,
)

log = structlog.get_logger(__name__)

DESCRIPTION: Final = (
    "Trains a candidate model on recent events (--input FILE, or the end of "
    "kafka.input_topics with --from-topic) exactly as `train` does, leaving out the windows of "
    "the episodes the service published alerts for (--alerts FILE, or with --from-topic "
    "kafka.alert_topic) and of the episodes operators marked true positive (--feedback), and "
    "writes it to --out DIR; --register adds it to the model registry (not promoted) with its "
    "retrain report."
)
# Messages decoded together: the service's consume batches are of this order too.
_DECODE_BATCH: Final = 4096
_NO_ALERTS: Final = (
    "warning: no alerts to take the episodes from (--alerts FILE, or --from-topic, which reads "
    "kafka.alert_topic): only the --feedback true positives are left out, and any other "
    "anomaly in the data is learnt as normal"
)


class RetrainInputError(ValueError):
    """Something the operator can fix in the command line, the settings or the files."""


class RetrainSourceError(Exception):
    """The input topic could not be read; the message says why."""


@dataclass(frozen=True)
class RetrainOptions:
    """The command's arguments; `input` None reads kafka.input_topics, and then, without
    `alerts`, kafka.alert_topic."""

    out: Path
    events: int
    input: Path | None = None
    model: Path | None = None
    register: bool = False
    feedback: Path | None = None
    alerts: Path | None = None
    timeout_s: float = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `retrain` command's own options (the common ones are the caller's)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", type=Path, metavar="FILE", help="JSONL/CSV (.gz ok) of recent events"
    )
    source.add_argument(
        "--from-topic",
        action="store_true",
        help="read the most recent events of kafka.input_topics, and the alerts of "
        "kafka.alert_topic unless --alerts is given (no group joined, nothing committed)",
    )
    parser.add_argument(
        "--events",
        type=_positive,
        metavar="N",
        help="train on the most recent N events (with --from-topic: shared over the "
        "partitions, a short one's rest going to the others; default "
        "lifecycle.retrain_max_events)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        metavar="DIR",
        help="the active model, whose settings the candidate is trained with and whose "
        "version is its parent (default: the registry's active version, else model.path)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="directory for the candidate"
    )
    parser.add_argument(
        "--register",
        action="store_true",
        help="add the candidate to the model registry (lifecycle.registry_dir or "
        "registry_topic), its parent the active version",
    )
    parser.add_argument(
        "--feedback",
        type=Path,
        metavar="FILE",
        help="JSONL of feedback CloudEvents: the episodes marked true positive are left out too",
    )
    parser.add_argument(
        "--alerts",
        type=Path,
        metavar="FILE",
        help="JSONL of alert CloudEvents, as on kafka.alert_topic: the episodes they tell of "
        "(of any model version) are left out (default with --from-topic: kafka.alert_topic, "
        "read to its end)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="longest wait for the broker with --from-topic, for each topic read, reading "
        "included (default 60)",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def run(settings: Settings, args: argparse.Namespace) -> int:
    """The command: 0 when the candidate was written (and registered), 2 for the operator's
    mistakes, 1 when the broker or the registry failed."""
    options = RetrainOptions(
        out=args.out,
        events=args.events or settings.lifecycle.retrain_max_events,
        input=args.input,
        model=args.model,
        register=args.register,
        feedback=args.feedback,
        alerts=args.alerts,
        timeout_s=args.timeout,
    )
    registry: ModelRegistry | None = None
    try:
        registry = open_registry(settings)
        run_retrain(options, settings, registry)
    except (RetrainInputError, ArtefactError) as exc:
        print(f"stream-detector retrain: {exc}", file=sys.stderr)
        return 2
    except (RetrainSourceError, RegistryError) as exc:
        print(f"stream-detector retrain: {exc}", file=sys.stderr)
        return 1
    finally:
        if registry is not None:  # a topic store's clients, and the artefacts it unpacked
            registry.close()
    return 0


def run_retrain(
    options: RetrainOptions, settings: Settings, registry: ModelRegistry | None
) -> RetrainResult:
    """Load the active model, read the feedback, the recent events and the alerts, retrain,
    write (and register) the candidate, and print what was done. Everything read from the
    operator (the files, the model) is checked before the broker is asked for anything; the
    alert topic is read after the input topics, so that it holds the alerts of as many of the
    events read as the service has judged."""
    if options.register and registry is None:
        raise RetrainInputError(
            "--register needs a model registry: set lifecycle.registry_dir (or "
            "lifecycle.registry_topic)"
        )
    if options.input is not None and not options.input.exists():
        raise RetrainInputError(f"--input {options.input} does not exist")
    model_dir = _active_dir(options, settings, registry)
    device = select_device(settings.model.device)
    active, settings = load_artefact_and_settings(model_dir, settings, device)
    feedback = options.feedback
    labelled = [] if feedback is None else feedback_spans(feedback, settings.feedback)
    alerts = None if options.alerts is None else alerts_in_file(options.alerts)
    log.info("retrain: reading recent events", source=_source(options), events=options.events)
    try:
        batches = _recent(options, settings)
        episodes = _episodes(options, settings.kafka, alerts)
        result = retrain(
            batches,
            settings,
            active.metadata.model_version,
            labelled,
            options.out,
            _epoch_printer(),
            episodes=episodes,
        )
    except ValueError as exc:  # a file type not read, or too little data: the message says
        raise RetrainInputError(str(exc)) from None
    print(_summary(result))
    if options.register:
        assert registry is not None  # checked first
        entry = register_candidate(registry, result, _source(options))
        print(f"registered {entry.version} (source {entry.source}, parent {entry.parent})")
    return result


def _source(options: RetrainOptions) -> str:
    """The registry's word for where the data came from."""
    return "retrain:topic" if options.input is None else "retrain:file"


def _active_dir(
    options: RetrainOptions, settings: Settings, registry: ModelRegistry | None
) -> Path:
    """--model, else the registry's active version, else model.path."""
    if options.model is not None:
        return options.model
    if registry is not None:
        active = registry.active()
        if active is not None:
            return registry.artefact_dir(active)
    if settings.model.path is not None:
        return Path(settings.model.path)
    raise RetrainInputError(
        "no active model to retrain: pass --model DIR, set model.path, or promote a version in "
        "the registry (with no model yet, use `stream-detector train`)"
    )


def _recent(options: RetrainOptions, settings: Settings) -> list[Decoded]:
    """The most recent `options.events` events, decoded as the service decodes them."""
    decoder = decoder_for(settings)
    if options.input is not None:
        return recent_events(read_batches(options.input, decoder), options.events)
    messages = read_recent(settings.kafka, options.events, options.timeout_s)
    return list(decode_messages(messages, decoder))


# -- feedback --------------------------------------------------------------------------------------


def feedback_spans(path: Path, config: FeedbackConfig) -> list[Span]:
    """The true-positive spans of a JSONL file of feedback CloudEvents, built by the ledger the
    service builds (duplicates counted once, open episodes held for true_positive_hold_s). A bad
    line is refused, not skipped: a true positive lost would be trained on as normal."""
    ledger = FeedbackLedger(config)
    try:
        events = read_feedback_file(path, config)
    except FileNotFoundError:
        raise RetrainInputError(f"--feedback {path} does not exist") from None
    except OSError as exc:
        raise RetrainInputError(f"cannot read --feedback {path}: {exc.strerror}") from None
    except ValueError as exc:  # "line N: why"
        raise RetrainInputError(f"--feedback {path} {exc}") from None
    for event in events:
        ledger.apply(event)
    spans = ledger.labelled_spans()
    log.info("retrain: feedback read", path=str(path), events=len(ledger), spans=len(spans))
    return spans


def _lines(path: Path, option: str) -> Iterator[tuple[int, bytes]]:
    """The numbered non-blank lines of the file given as `option`."""
    try:
        with path.open("rb") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    yield number, line.rstrip(b"\r\n")
    except FileNotFoundError:
        raise RetrainInputError(f"{option} {path} does not exist") from None
    except OSError as exc:
        raise RetrainInputError(f"cannot read {option} {path}: {exc.strerror}") from None


# -- the alerts ----------------------------------------------------------------------------------


def alerts_in_file(path: Path) -> list[AlertRecord]:
    """The alerts of a JSONL file of alert CloudEvents. A line that is not one is refused, not
    skipped: an alert lost would be an anomaly trained on as normal."""
    alerts = []
    for number, line in _lines(path, "--alerts"):
        alert = alert_record(line)
        if alert is None:
            raise RetrainInputError(
                f"--alerts {path} line {number} is not an alert CloudEvent (type "
                f"{' or '.join(EVENT_TYPES.values())}, with the data the service publishes)"
            )
        alerts.append(alert)
    return alerts


def alerts_on_topic(kafka: KafkaConfig, timeout_s: float) -> list[AlertRecord]:
    """Every alert on kafka.alert_topic, each partition read to its end. Another producer's
    records there are skipped: a topic cannot be cleaned of them."""
    alerts: list[AlertRecord] = []

    def take(message: Message) -> None:
        alert = alert_record(message.value())
        if alert is not None:
            alerts.append(alert)

    faults = ClientFaults(kafka.bootstrap_servers)
    try:
        read_topic(kafka, kafka.alert_topic, "retrain", take, timeout_s, faults)
    except TopicReadError as exc:
        raise _source_error("kafka.alert_topic", exc) from None
    return alerts


def _episodes(
    options: RetrainOptions, kafka: KafkaConfig, from_file: list[AlertRecord] | None
) -> list[Span]:
    """The spans of the episodes the alerts tell of: those of --alerts, else (--from-topic)
    those on kafka.alert_topic; none, with a warning, for --input without --alerts."""
    if from_file is not None:
        alerts = from_file
    elif options.input is None:
        alerts = alerts_on_topic(kafka, options.timeout_s)
    else:
        print(f"stream-detector retrain: {_NO_ALERTS}", file=sys.stderr)
        return []
    spans = episode_spans(alerts)
    log.info("retrain: episodes from the alerts", alerts=len(alerts), episodes=len(spans))
    return spans


def _source_error(setting: str, exc: TopicReadError) -> RetrainSourceError:
    hint = "; raise --timeout" if isinstance(exc, ReadTimeout) else ""
    return RetrainSourceError(f"{setting}: {exc}{hint}")


# -- the topic's recent events ---------------------------------------------------------------------


class _Tail:
    """The last messages of one partition, and how far it has been read."""

    def __init__(self, limit: int) -> None:
        self.messages: deque[Message] = deque(maxlen=limit)
        self.position = 0  # the next offset expected
        self.floor = 0  # messages before it are left from before the seek

    def take(self, message: Message) -> None:
        if message.offset() >= self.floor:
            self.messages.append(message)
            self.position = message.offset() + 1

    def keep_last(self, share: int, end: int, reading: bool) -> int | None:
        """Keep only the last `share` messages of the partition, which ends at offset `end`;
        returns where to seek when it is still `reading` and that stretch starts past what was
        read, else None."""
        self.messages = deque(self.messages, maxlen=share)
        target = end - share
        if not reading or target <= self.position:
            return None
        self.floor = target
        return target


def read_recent(kafka: KafkaConfig, limit: int, timeout_s: float) -> list[Message]:
    """The last `limit` messages of kafka.input_topics, shared over the partitions as
    `partition_shares` says, in broker-timestamp order across partitions (offset order within
    one), as the service would have consumed them."""
    faults = ClientFaults(kafka.bootstrap_servers)
    deadline = time.monotonic() + timeout_s
    try:
        with topic_reader(kafka, "retrain", faults) as reader:
            partitions = [
                tp for t in kafka.input_topics for tp in topic_partitions(reader, t, timeout_s)
            ]
            tails = {tp: _Tail(limit) for tp in partitions}
            reader.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in partitions])
            _read_tails(reader, tails, limit, deadline, faults)
    except TopicReadError as exc:
        raise _source_error("kafka.input_topics", exc) from None
    read = [tail.messages for tail in tails.values()]
    log.info("retrain: topic read", partitions=len(read), messages=sum(len(m) for m in read))
    return list(heapq.merge(*read, key=lambda message: message.timestamp()[1]))


def partition_shares(limit: int, sizes: list[int]) -> list[int]:
    """`limit` shared evenly over partitions holding `sizes` messages, except that one holding
    fewer than its share gives what it lacks to the others (an empty partition takes nothing)."""
    shares = [0] * len(sizes)
    left = limit
    waiting = sorted(range(len(sizes)), key=sizes.__getitem__)
    while waiting:
        even = left // len(waiting)
        smallest = waiting[0]
        if sizes[smallest] > even:
            for rank, index in enumerate(waiting):
                shares[index] = even + (1 if rank < left % len(waiting) else 0)
            break
        shares[smallest] = sizes[smallest]
        left -= sizes[smallest]
        waiting.pop(0)
    return shares


def _read_tails(
    reader: Consumer,
    tails: dict[Partition, _Tail],
    limit: int,
    deadline: float,
    faults: ClientFaults,
) -> None:
    """Consume until every partition reported its end. Once the fetch responses gave every
    partition's extent, each is told its share and sought to the start of it."""
    reading = set(tails)
    shared = False
    for records in batches_to_end(reader, reading, deadline, faults):
        for message in records:
            tails[(message.topic(), message.partition())].take(message)
        if not shared:
            shared = _share(reader, tails, reading, limit)


def _share(
    reader: Consumer, tails: dict[Partition, _Tail], reading: set[Partition], limit: int
) -> bool:
    """Give each partition its share and seek one still `reading` there, once a fetch response
    told every partition's first and end offsets (-1 before; a first offset not told counts as
    0). Returns whether it did."""
    extents = [reader.get_watermark_offsets(TopicPartition(*tp), cached=True) for tp in tails]
    if any(end < 0 for _, end in extents):
        return False
    sizes = [max(end - max(first, 0), 0) for first, end in extents]
    for (tp, tail), share, (_, end) in zip(
        tails.items(), partition_shares(limit, sizes), extents, strict=True
    ):
        target = tail.keep_last(share, end, tp in reading)
        if target is not None:
            reader.seek(TopicPartition(*tp, target))
    return True


def decode_messages(messages: list[Message], decoder: RecordDecoder) -> Iterator[Decoded]:
    """The messages decoded in consume-sized batches, each with its partition's stream (one
    watermark per input partition in aggregate mode), as the service decodes them."""
    for start in range(0, len(messages), _DECODE_BATCH):
        consumed = ConsumedBatch.from_messages(messages[start : start + _DECODE_BATCH])
        yield decoder.decode_messages(
            consumed.payloads,
            consumed.keys,
            consumed.broker_ts_ms,
            streams=consumed.stream_codes(),
        )


# -- output ----------------------------------------------------------------------------------------


def _epoch_printer() -> Callable[[dict[str, Any]], None]:
    """One stderr line per epoch; training logs each epoch too, so only on a terminal."""
    interactive = sys.stderr.isatty()

    def show(update: dict[str, Any]) -> None:
        if interactive:
            print(
                f"retrain epoch {update['epoch']}/{update['epochs']} "
                f"train={update['train_loss']:.4f} val={update['val_loss']:.4f}"
                f"{' *' if update['best'] else ''}",
                file=sys.stderr,
            )

    return show


def _summary(result: RetrainResult) -> str:
    """What was trained, on what, and what was left out."""
    meta = result.artefact.metadata
    report = result.report
    first, last = (rfc3339(t) for t in result.data_span)
    return (
        f"candidate {meta.model_version} written to {result.out_dir} (parent {result.parent}): "
        f"{report['events']} events over {report['keys']} keys from {first} to {last}; "
        f"left out {result.excluded_windows} windows of {result.episodes} episodes and "
        f"{report['labelled_spans']} true positives; trained on {report['windows']} windows, "
        f"global threshold {meta.global_threshold:.4g}"
    )
