"""The model registry on one Kafka topic, and `open_registry`, which opens the configured store.

For deployments whose replicas share nothing but the cluster: lifecycle.registry_topic holds
JSON records, all on partition 0 so that one offset order holds for every reader:

    {"kind": "model", "entry": {...}, "files": {"model.safetensors": base64, ...}}
    {"kind": "history", "record": {"action": ..., "version": ..., "at": ..., "reason": ...}}
    {"kind": "report", "version": ..., "name": ..., "report": {...}}

The registry is the topic read from its beginning to its end, the records applied in order: the
first model record of a version registers it, its artefact unpacked into the cache directory and
verified there; a history record changes the active version; a report record stores or replaces
a report. The end is where the consumer says it reached it (`enable.partition.eof`, from the
fetch response), never a list-offsets answer, which some brokers get wrong. A record that cannot
be applied (damaged, foreign, an artefact that does not verify, a version not registered before
it) is skipped with a warning: a topic cannot be repaired in place, and every reader skips the
same records, so all still agree.

A change is decided on the topic as read to its end just before, produced, and once the broker
has acknowledged it, read back through the same path: the writer then holds exactly what every
other reader will. Two writers that race both land on the topic in one order, and `active_stack`
makes every reader draw the same active version from it.
"""

from __future__ import annotations

import base64
import binascii
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson
import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from stream_detector.config import KafkaConfig, Settings
from stream_detector.detector.artefact import (
    METADATA_FILE,
    WEIGHTS_FILE,
    ArtefactError,
    verify_artefact,
)
from stream_detector.detector.registry import (
    REPORT_NAME,
    HistoryRecord,
    ModelEntry,
    ModelRegistry,
    RecordError,
    RegistryError,
    RegistryState,
    check_registered_again,
    checked_registration,
    entry_json,
    history_json,
    parse_entry,
    parse_history,
    parse_report,
    promotion,
    report_json,
    rollback,
    verified_artefact,
)
from stream_detector.detector.registry_dir import DirectoryRegistry
from stream_detector.engine.alerts import rfc3339
from stream_detector.kafka.clients import create_client
from stream_detector.kafka.faults import ClientFaults, FatalServiceError
from stream_detector.kafka.settings import producer_config, reader_config
from stream_detector.kafka.topic_reader import ReadTimeout, batches_to_end
from stream_detector.limits import record_size

log = structlog.get_logger(__name__)

_Client = TypeVar("_Client")

PARTITION: Final = 0
_ARTEFACT_FILES: Final = (WEIGHTS_FILE, METADATA_FILE)
_READ_BATCH: Final = 100
_READ_WAIT_S: Final = 0.2
_FETCH_WAIT_MS: Final = 50
# librdkafka's flush waits a little past message.timeout.ms for the delivery report.
_DELIVERY_GRACE_S: Final = 5.0


def open_registry(settings: Settings, cache_dir: Path | None = None) -> ModelRegistry | None:
    """The registry the settings configure (lifecycle.registry_dir or .registry_topic, read to
    its present state), or None when there is none. `cache_dir` is where a topic store unpacks
    its artefacts (default: a temporary directory of its own)."""
    lifecycle = settings.lifecycle
    if lifecycle.registry_dir is not None:
        return DirectoryRegistry(lifecycle.registry_dir)
    if lifecycle.registry_topic is not None:
        return TopicRegistry(settings.kafka, lifecycle.registry_topic, cache_dir)
    return None


class TopicRegistry(RegistryState):
    """`ModelRegistry` on `topic`; not thread-safe. Reads answer from the topic as read up to
    the last refresh (or change); `close` lets the clients go.

    `cache_dir` holds one directory per version, its artefact as `artefact_dir` hands it out:
    give each registry object a directory of its own. Without one a temporary directory is
    made, and removed by `close`.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        topic: str,
        cache_dir: Path | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.timeout_s = timeout_s
        self._own_cache = cache_dir is None
        if cache_dir is None:
            cache_dir = Path(tempfile.mkdtemp(prefix="sd-registry-"))
        self.cache_dir = Path(cache_dir)
        super().__init__()
        self._next_offset: int | None = None  # after the last record applied
        self._faults = ClientFaults(kafka.bootstrap_servers)
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            self._consumer = self._client(Consumer, self._reader_config())
            self._check_topic(self._consumer)
            self.refresh()
        except BaseException:
            self.close()
            raise

    def artefact_dir(self, version: str) -> Path:
        self.entry(version)
        return self.cache_dir / version

    def refresh(self) -> None:
        self._read_to_end(through=-1)

    def register(
        self,
        artefact_dir: Path,
        *,
        source: str,
        parent: str | None,
        data_span: tuple[float, float] | None,
    ) -> ModelEntry:
        span = checked_registration(source, parent, data_span)
        directory = Path(artefact_dir)
        metadata = verified_artefact(directory)
        files = {name: (directory / name).read_bytes() for name in _ARTEFACT_FILES}
        self.refresh()
        existing = self._entries.get(metadata.model_version)
        if existing is not None:
            check_registered_again(self.artefact_dir(existing.version), metadata, directory)
            return existing
        entry = ModelEntry(
            version=metadata.model_version,
            registered_at=rfc3339(time.time()),
            created_at=metadata.created_at,
            source=source,
            parent=parent,
            data_span=span,
            reports={},
        )
        encoded = {name: base64.b64encode(data).decode("ascii") for name, data in files.items()}
        self._write(entry.version, {"kind": "model", "entry": entry_json(entry), "files": encoded})
        if entry.version not in self._entries:  # its record was skipped on reading it back
            raise RegistryError(
                f"{entry.version} was written to registry topic {self.topic!r} but did not verify "
                f"when read back (logged); was {directory} changed meanwhile?"
            )
        return self._entries[entry.version]

    def promote(self, version: str, reason: str) -> HistoryRecord:
        self.refresh()
        return self._change(promotion(list(self._entries), self._history, version, reason))

    def rollback(self, reason: str) -> HistoryRecord:
        self.refresh()
        return self._change(rollback(self._history, reason))

    def attach_report(self, version: str, name: str, report: dict[str, Any]) -> None:
        report_json(name, report)  # refuses what could not be stored, before anything is sent
        self.refresh()
        self.entry(version)
        self._write(
            version, {"kind": "report", "version": version, "name": name, "report": report}
        )

    def close(self) -> None:
        """Let the clients go, and remove the cache directory if this object made it."""
        if self._consumer is not None:
            try:
                self._consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("registry consumer close failed", error=str(exc))
            self._consumer = None
        self._producer = None  # every write waited for its delivery: nothing is left queued
        if self._own_cache:
            shutil.rmtree(self.cache_dir, ignore_errors=True)

    # -- writing ----------------------------------------------------------------------------------

    def _change(self, record: HistoryRecord) -> HistoryRecord:
        self._write(record.version, {"kind": "history", "record": history_json(record)})
        return record

    def _write(self, key: str, record: dict[str, Any]) -> None:
        """Produce `record`, wait for the broker's acknowledgement, and read the topic up to it."""
        payload, key_bytes = orjson.dumps(record), key.encode()
        size = record_size(payload, key_bytes, [])
        if size > self.kafka.max_message_bytes:
            raise RegistryError(
                f"the {record['kind']} record for {key} is {size} bytes, more than "
                f"kafka.max_message_bytes = {self.kafka.max_message_bytes} lets through; raise "
                "it (with kafka.fetch_max_bytes and the topic's max.message.bytes), or use "
                "lifecycle.registry_dir"
            )
        producer = self._require_producer()
        reports: list[tuple[KafkaError | None, Message]] = []
        try:
            producer.produce(
                self.topic,
                value=payload,
                key=key_bytes,
                partition=PARTITION,
                on_delivery=lambda error, message: reports.append((error, message)),
            )
        except KafkaException as exc:
            raise RegistryError(self._not_written(key, exc.args[0].str())) from None
        producer.flush(self.timeout_s + _DELIVERY_GRACE_S)
        self._raise_if_fatal()
        if not reports:
            raise RegistryError(
                f"the record for {key} was not acknowledged within {self.timeout_s:g} s; it may "
                f"or may not be on registry topic {self.topic!r} (`stream-detector models list` "
                "shows)"
            )
        error, message = reports[0]
        if error is not None:
            raise RegistryError(self._not_written(key, error.str()))
        self._read_to_end(through=message.offset())

    def _not_written(self, key: str, reason: str) -> str:
        return f"the record for {key} was not written to registry topic {self.topic!r}: {reason}"

    def _require_producer(self) -> Producer:
        if self._producer is None:
            conf = producer_config(self.kafka)
            # Undelivered after the timeout is a delivery report with the reason, unless
            # kafka.extra says otherwise (librdkafka's own default is five minutes).
            conf.setdefault("message.timeout.ms", int(self.timeout_s * 1000))
            self._producer = self._client(Producer, conf)
        return self._producer

    # -- reading ----------------------------------------------------------------------------------

    def _reader_config(self) -> dict[str, Any]:
        """`reader_config`, with a short fetch wait: a read to the end waits for one empty
        fetch, and the broker holds that this long."""
        conf = reader_config(self.kafka, "registry")
        conf.setdefault("fetch.wait.max.ms", _FETCH_WAIT_MS)
        return conf

    def _client(
        self, factory: Callable[[dict[str, Any]], _Client], conf: dict[str, Any]
    ) -> _Client:
        try:
            return create_client(factory, {**conf, "error_cb": self._faults.on_client_error})
        except FatalServiceError as exc:
            raise RegistryError(str(exc)) from None

    def _check_topic(self, consumer: Consumer) -> None:
        try:
            topics = consumer.list_topics(self.topic, timeout=self.timeout_s).topics
        except KafkaException as exc:
            raise RegistryError(
                f"cannot reach the broker for registry topic {self.topic!r}: "
                f"{exc.args[0].str()}; check kafka.bootstrap_servers"
            ) from None
        described = topics.get(self.topic)
        if described is None or described.error is not None or not described.partitions:
            raise RegistryError(
                f"registry topic {self.topic!r} (lifecycle.registry_topic) does not exist; create "
                "it with one partition and unlimited retention, e.g. kafka-topics.sh --create "
                f"--topic {self.topic} --partitions 1 --config retention.ms=-1"
            )

    def _read_to_end(self, through: int) -> None:
        """Apply what is new, up to the partition's end and at least the record at offset
        `through` (-1: up to the end only).

        Each pass assigns the partition again, which restarts librdkafka's end-of-partition
        report (otherwise given once per arrival at the end): a refresh with nothing new is
        still told it is at the end, and a pass that ended short of `through` reads on.
        """
        consumer = self._consumer
        if consumer is None:
            raise RegistryError("the registry was closed")
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                self._read_once(consumer, deadline)
                if (self._next_offset or 0) > through:
                    return
        except ReadTimeout:
            raise RegistryError(
                f"registry topic {self.topic!r} was not read to its end within "
                f"{self.timeout_s:g} s; check kafka.bootstrap_servers and the broker"
            ) from None
        except FatalServiceError as exc:
            raise RegistryError(f"registry topic {self.topic!r}: {exc}") from None

    def _read_once(self, consumer: Consumer, deadline: float) -> None:
        """Apply what follows the last record applied, up to the end the partition reports (a
        fetch answered just before a write may report an end short of it)."""
        start = OFFSET_BEGINNING if self._next_offset is None else self._next_offset
        consumer.assign([TopicPartition(self.topic, PARTITION, start)])
        pending = {(self.topic, PARTITION)}
        for records in batches_to_end(
            consumer, pending, deadline, self._faults, batch=_READ_BATCH, wait_s=_READ_WAIT_S
        ):
            for message in records:
                self._apply(message)

    def _raise_if_fatal(self) -> None:
        if self._faults.fatal is not None:
            raise RegistryError(f"registry topic {self.topic!r}: {self._faults.fatal}")

    def _apply(self, message: Message) -> None:
        """Apply one record, or skip it with a warning; either way it is behind the reader then
        (a RegistryError, from the cache, leaves it to the next refresh)."""
        try:
            record = orjson.loads(message.value() or b"")
            kind = record.get("kind") if isinstance(record, dict) else None
            if kind == "model":
                self._apply_model(record)
            elif kind == "history":
                self._apply_history(record)
            elif kind == "report":
                self._apply_report(record)
            else:
                raise RecordError(f"kind is {kind!r}, not 'model', 'history' or 'report'")
        except (RecordError, orjson.JSONDecodeError) as exc:
            log.warning(
                "registry record skipped",
                topic=self.topic,
                offset=message.offset(),
                reason=str(exc),
            )
        self._next_offset = message.offset() + 1

    def _apply_model(self, record: dict[str, Any]) -> None:
        _fields(record, {"kind", "entry", "files"})
        entry = parse_entry(record["entry"], {})
        if entry.version in self._entries:
            return  # written again by a writer that raced this one: the first stands
        files = record["files"]
        if not isinstance(files, dict) or set(files) != set(_ARTEFACT_FILES):
            raise RecordError(f"files must be exactly {list(_ARTEFACT_FILES)}")
        try:
            unpacked = {name: base64.b64decode(text, validate=True) for name, text in files.items()}
        except (binascii.Error, TypeError, ValueError):
            raise RecordError("files are not base64") from None
        self._unpack(entry.version, unpacked)
        self._entries[entry.version] = entry

    def _unpack(self, version: str, files: dict[str, bytes]) -> None:
        """Write the artefact into the cache, replacing what is there only once it verified."""
        staging = self.cache_dir / f".staging-{uuid.uuid4().hex}"
        try:
            staging.mkdir()
            for name, data in files.items():
                (staging / name).write_bytes(data)
            unpacked = verify_artefact(staging).model_version
            if unpacked != version:
                raise RecordError(f"its artefact is {unpacked}, not {version}")
            target = self.cache_dir / version
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        except ArtefactError as exc:
            raise RecordError(f"its artefact does not verify: {exc}") from None
        except OSError as exc:
            raise RegistryError(
                f"cannot unpack {version} into the registry cache {self.cache_dir}: {exc.strerror}"
            ) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _apply_history(self, record: dict[str, Any]) -> None:
        _fields(record, {"kind", "record"})
        change = parse_history(record["record"])
        self._registered(change.version)
        self._history.append(change)

    def _apply_report(self, record: dict[str, Any]) -> None:
        _fields(record, {"kind", "version", "name", "report"})
        version, name = record["version"], record["name"]
        entry = self._registered(version)
        if type(name) is not str or not REPORT_NAME.fullmatch(name):
            raise RecordError(f"name is {name!r}, not of the form {REPORT_NAME.pattern!r}")
        reports = {**entry.reports, name: parse_report(record["report"])}
        self._entries[version] = replace(entry, reports=reports)

    def _registered(self, version: Any) -> ModelEntry:
        entry = self._entries.get(version) if type(version) is str else None
        if entry is None:
            raise RecordError(f"it names {version!r}, which no model record before it registered")
        return entry


def _fields(record: dict[str, Any], expected: set[str]) -> None:
    if set(record) != expected:
        raise RecordError(
            f"a {record['kind']} record has the fields {sorted(expected)}, not {sorted(record)}"
        )
