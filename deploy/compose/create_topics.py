"""Create the detector's topics (input, alerts, dead letters, state changelog): the compose
stack's one-shot init step.

The service refuses to start when its topics are missing (a typo in a topic name must not create
a new, silent topic), so something has to create them first. This step reads the very settings
the detector reads (the same --config file and SD_* environment), so topic names cannot drift
between the two, and it runs in the detector image, so it needs no Kafka tooling image: it works
the same against Apache Kafka and against the local Tansu broker.

    python create_topics.py --config detector.toml [--partitions 3] [--replication 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from stream_detector.config import Settings, load_settings
from stream_detector.kafka.settings import admin_config
from stream_detector.logs import configure_logging

log = structlog.get_logger("stream_detector.deploy.create_topics")


def wanted_topics(settings: Settings, partitions: int, replication: int) -> list[NewTopic]:
    """Inputs, alerts and the state changelog (when state is kept in Kafka) get `partitions`, the
    ceiling on detector replicas; the DLQ gets one.

    Dead letters are rare and read by people, so one partition keeps them in arrival order.
    """
    kafka = settings.kafka
    sized = dict.fromkeys((*kafka.input_topics, kafka.alert_topic), partitions)
    if settings.state.store == "kafka":
        sized.setdefault(settings.state.changelog_topic, partitions)
    sized.setdefault(kafka.dead_letter_topic, 1)
    return [
        NewTopic(name, num_partitions=n, replication_factor=replication)
        for name, n in sized.items()
    ]


def wait_for_broker(admin: AdminClient, timeout_s: float) -> None:
    """The broker container may be up before it answers; retry until it does or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=5.0)
            return
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no broker answered within {timeout_s}s: {exc}") from None
            log.info("waiting for the broker", error=str(exc.args[0]))
            time.sleep(1.0)


def create(admin: AdminClient, topics: list[NewTopic]) -> None:
    """Create each topic; one that already exists is fine (the step may run again)."""
    futures = admin.create_topics(topics, operation_timeout=30)
    for name, future in futures.items():
        try:
            future.result(timeout=60)
            log.info("topic created", topic=name)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            log.info("topic exists", topic=name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="the detector's TOML settings file")
    parser.add_argument("--partitions", type=int, default=3, help="partitions per input topic")
    parser.add_argument("--replication", type=int, default=1, help="replicas per partition")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="wait for the broker")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    configure_logging(settings.observability.log_level, settings.observability.log_format)
    admin = AdminClient(admin_config(settings.kafka))
    wait_for_broker(admin, args.timeout_s)
    create(admin, wanted_topics(settings, args.partitions, args.replication))
    return 0


if __name__ == "__main__":
    sys.exit(main())
