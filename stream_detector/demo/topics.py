"""Creating the topics a local run needs, tolerating ones that already exist.

The service deliberately refuses to start on missing topics (creating them is an operator's
decision in production); the demo and `generate` play the operator against a throwaway broker.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from stream_detector.config import KafkaConfig
from stream_detector.kafka.settings import admin_config

log = structlog.get_logger(__name__)

_TIMEOUT_S = 15.0


def ensure_topics(kafka: KafkaConfig, partitions: Mapping[str, int]) -> None:
    """Create each topic with its partition count unless it exists; raises KafkaException."""
    admin = AdminClient(admin_config(kafka))
    existing = admin.list_topics(timeout=_TIMEOUT_S).topics
    wanted = [
        NewTopic(name, num_partitions=count, replication_factor=1)
        for name, count in partitions.items()
        if name not in existing
    ]
    if not wanted:
        return
    futures = admin.create_topics(wanted, operation_timeout=_TIMEOUT_S)
    for name, future in futures.items():
        try:
            future.result(timeout=_TIMEOUT_S)
        except KafkaException as exc:
            # Another client may have created it between the listing and this request.
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        log.info("topic created", topic=name, partitions=partitions[name])
