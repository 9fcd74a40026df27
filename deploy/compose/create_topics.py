"""Create the detector's topics (input, alerts, dead letters, state changelog): the compose
stack's one-shot init step.

The service refuses to start when its topics are missing (a typo in a topic name must not create
a new, silent topic), so something has to create them first. This step reads the very settings
the detector reads (the same --config file and SD_* environment), so topic names cannot drift
between the two, and it runs in the detector image, so it needs no Kafka tooling image: it works
the same against Apache Kafka and against the local Tansu broker.

    python create_topics.py --config detector.toml [--partitions 3] [--timeout-s 120]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stream_detector.config import Settings, load_settings
from stream_detector.demo.topics import ensure_topics
from stream_detector.demo.broker import wait_for_metadata
from stream_detector.logs import configure_logging


def topic_partitions(settings: Settings, partitions: int) -> dict[str, int]:
    """Inputs, alerts and the state changelog (when state is kept in Kafka) get `partitions`,
    the ceiling on detector replicas; the dead-letter topic gets one.

    Dead letters are rare and read by people, so one partition keeps them in arrival order.
    """
    kafka = settings.kafka
    sized = dict.fromkeys((*kafka.input_topics, kafka.alert_topic), partitions)
    if settings.state.store == "kafka":
        sized.setdefault(settings.state.changelog_topic, partitions)
    sized.setdefault(kafka.dead_letter_topic, 1)
    return sized


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="the detector's TOML settings file")
    parser.add_argument("--partitions", type=int, default=3, help="partitions per input topic")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="wait for the broker")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    configure_logging(settings.observability.log_level, settings.observability.log_format)
    # The broker container may be up before it answers.
    wait_for_metadata(settings.kafka.bootstrap_servers, args.timeout_s)
    ensure_topics(settings.kafka, topic_partitions(settings, args.partitions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
