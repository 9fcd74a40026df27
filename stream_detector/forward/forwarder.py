"""`stream-detector forward alertmanager`: consume the alert topic, post to Alertmanager, commit.

The loop: consume a batch of alert records -> take each into the table of open episodes (a
record that is not one of our alerts is logged, counted and skipped) -> post what each episode
the batch touched now is, once -> when Alertmanager has accepted (or refused for good) all of it,
commit the batch's offsets, synchronously -> every `forward.resend_interval_s`, post every firing
alert again. Offsets are never committed ahead of Alertmanager: after a crash, or a stop while
Alertmanager is unreachable, the records since the last commit are forwarded again. That is
at-least-once, and harmless, because Alertmanager de-duplicates alerts on their labels.

Alertmanager keeps alerts in memory only and resolves one that is not posted again before its
endsAt; re-posting every firing alert on a timer is what makes its restart lose nothing. The
forwarder's own memory (the open episodes) is rebuilt on every assignment from the partitions up
to the committed offsets (`rebuild`), then its open episodes are posted at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Final

import structlog
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from stream_detector.config import ConfigError, Settings
from stream_detector.engine.alerts import Alert
from stream_detector.forward.alertmanager import AlertmanagerClient, Backoff, PostInterrupted
from stream_detector.forward.episodes import OpenEpisodes
from stream_detector.forward.mapping import FIRING_VALIDITY_RESENDS, AlertMapping, AlertState
from stream_detector.forward.rebuild import read_back
from stream_detector.forward.records import MalformedAlert, decode_alert
from stream_detector.kafka.clients import create_client
from stream_detector.kafka.faults import ClientFaults, FatalServiceError
from stream_detector.kafka.preflight import wait_for_topics
from stream_detector.kafka.settings import consumer_config, redact
from stream_detector.stop_signals import stop_on_signals

log = structlog.get_logger(__name__)

EXIT_OK: Final = 0
EXIT_FATAL: Final = 1  # a broker-side problem to fix: authentication, a missing alert topic

_BATCH: Final = 500
# How long one consume() waits for records: also how soon a stop or a due re-post is noticed.
_POLL_S: Final = 0.5


@dataclass
class ForwardTotals:
    """What the forwarder did, logged when it stops."""

    records: int = 0
    malformed: int = 0
    firing_posted: int = 0
    resolved_posted: int = 0
    refused: int = 0
    reposts: int = 0


def run_forwarder(settings: Settings, *, stop_event: threading.Event | None = None) -> int:
    """Forward until stopped (SIGTERM/SIGINT or `stop_event`); returns the exit code.

    Raises ConfigError when forward.url is not set."""
    stop = stop_event if stop_event is not None else threading.Event()
    forwarder = Forwarder(settings, stop)
    with stop_on_signals(stop):
        return forwarder.run()


class Forwarder:
    """One member of the forwarder's consumer group, posting to one Alertmanager."""

    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        forward = settings.forward
        if forward.url is None:
            raise ConfigError(
                "no Alertmanager to forward to: pass --url http://alertmanager:9093, or set "
                "forward.url (SD_FORWARD__URL)"
            )
        self.forward = forward
        # The detector's connection settings, in the forwarder's own group.
        self.kafka = settings.kafka.model_copy(update={"group_id": forward.group_id})
        self.stop = stop
        self.faults = ClientFaults(self.kafka.bootstrap_servers)
        self.client = AlertmanagerClient(
            forward.url,
            timeout_s=forward.request_timeout_s,
            backoff=Backoff(forward.retry_initial_s, forward.retry_max_s),
            stop=stop,
        )
        self.episodes = OpenEpisodes(AlertMapping(forward.alertname, forward.link_template))
        self.totals = ForwardTotals()
        self._valid_for_s = FIRING_VALIDITY_RESENDS * forward.resend_interval_s
        self._next_repost = time.monotonic() + forward.resend_interval_s

    def run(self) -> int:
        topic = self.kafka.alert_topic
        log.info(
            "forwarder starting",
            endpoint=self.client.endpoint,
            alert_topic=topic,
            group_id=self.kafka.group_id,
            resend_interval_s=self.forward.resend_interval_s,
        )
        code = EXIT_OK
        consumer: Consumer | None = None
        try:
            if wait_for_topics(self.kafka, {topic: "kafka.alert_topic"}, self.stop, self.faults):
                log.info("starting kafka consumer", consumer=redact(consumer_config(self.kafka)))
                consumer = create_client(
                    Consumer,
                    {**consumer_config(self.kafka), "error_cb": self.faults.on_client_error},
                )
                consumer.subscribe(
                    [topic],
                    on_assign=self._on_assign,
                    on_revoke=self._on_revoke,
                    on_lost=self._on_revoke,
                )
                self._loop(consumer)
        except PostInterrupted as exc:
            log.info(
                "stopped while alertmanager was unavailable; records it had not accepted were "
                "not committed and are forwarded again on the next start",
                error=str(exc),
            )
        except FatalServiceError as exc:
            log.error("forwarder failed", error=str(exc))
            code = EXIT_FATAL
        finally:
            open_episodes = len(self.episodes)  # before closing revokes the partitions
            if consumer is not None:
                consumer.close()  # leaves the group; everything accepted is committed already
        log.info(
            "forwarder stopped",
            open_episodes=open_episodes,
            retries=self.client.retries,
            **asdict(self.totals),
        )
        return code

    def _loop(self, consumer: Consumer) -> None:
        while not self.stop.is_set():
            self.faults.raise_if_fatal()
            messages = consumer.consume(_BATCH, _POLL_S)
            self._forward(consumer, messages)
            self._repost_if_due()

    # -- one batch -------------------------------------------------------------------------------

    def _forward(self, consumer: Consumer, messages: Sequence[Message]) -> None:
        """Post what the batch changed, then commit it: never the other way round."""
        changed: dict[str, AlertState] = {}  # the latest state of each episode touched
        next_offsets: dict[int, int] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                self.faults.on_consume_error(error, message)
                continue
            self.totals.records += 1
            next_offsets[message.partition()] = message.offset() + 1
            alert = self._decode(message, replaying=False)
            if alert is not None:
                changed[alert.episode_id] = self.episodes.apply(message.partition(), alert)
        if changed:
            self._post(list(changed.values()))
        if next_offsets:
            self._commit(consumer, next_offsets)

    def _decode(self, message: Message, *, replaying: bool) -> Alert | None:
        try:
            return decode_alert(message.value())
        except MalformedAlert as exc:
            if not replaying:  # logged and counted when it was first read
                self.totals.malformed += 1
                log.warning(
                    "not a stream-detector alert; skipped",
                    topic=message.topic(),
                    partition=message.partition(),
                    offset=message.offset(),
                    reason=str(exc),
                )
            return None

    def _post(self, states: list[AlertState]) -> None:
        firing = sum(state.firing for state in states)
        result = self.client.post([s.payload(time.time(), self._valid_for_s) for s in states])
        self.totals.firing_posted += firing
        self.totals.resolved_posted += len(states) - firing
        self.totals.refused += result.refused
        log.info(
            "alerts forwarded",
            firing=firing,
            resolved=len(states) - firing,
            refused=result.refused,
        )

    def _commit(self, consumer: Consumer, next_offsets: dict[int, int]) -> None:
        """Commit synchronously: the next batch is not posted before this one is committed. A
        failed commit (the group moved on) only means these records are forwarded again."""
        offsets = [
            TopicPartition(self.kafka.alert_topic, partition, offset)
            for partition, offset in sorted(next_offsets.items())
        ]
        try:
            committed = consumer.commit(offsets=offsets, asynchronous=False) or []
        except KafkaException as exc:
            log.warning(
                "offset commit failed; the records since the last commit are forwarded again",
                error=exc.args[0].str(),
            )
            return
        for tp in committed:
            if tp.error is not None:
                log.warning(
                    "offset commit failed for a partition; its records since the last commit "
                    "are forwarded again",
                    partition=tp.partition,
                    error=tp.error.str(),
                )

    def _repost_if_due(self) -> None:
        """Every firing alert again, before Alertmanager lets it expire (and into a restarted
        Alertmanager, which has forgotten it)."""
        now = time.monotonic()
        if now < self._next_repost:
            return
        self._next_repost = now + self.forward.resend_interval_s
        firing = self.episodes.firing()
        if not firing:
            return
        result = self.client.post([s.payload(time.time(), self._valid_for_s) for s in firing])
        self.totals.reposts += 1
        self.totals.refused += result.refused
        log.debug("firing alerts posted again", alerts=len(firing), refused=result.refused)

    # -- partitions coming and going ---------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Rebuild the open episodes of the new partitions, then post them at once."""
        if not partitions:  # a cooperative rebalance that brought this member nothing new
            return
        try:
            committed = consumer.committed(partitions, timeout=self.forward.rebuild_timeout_s)
        except KafkaException as exc:
            log.warning(
                "cannot read the group's committed offsets; the open episodes of these "
                "partitions are not refreshed and expire in Alertmanager",
                partitions=[tp.partition for tp in partitions],
                error=exc.args[0].str(),
            )
            return
        read = read_back(
            self.kafka,
            committed,
            self._replay,
            timeout_s=self.forward.rebuild_timeout_s,
            stop=self.stop,
            faults=self.faults,
        )
        self._next_repost = 0.0  # post the open episodes now
        log.info(
            "partitions assigned",
            partitions=[tp.partition for tp in partitions],
            committed={tp.partition: tp.offset for tp in committed},
            read_back=read,
            open_episodes=len(self.episodes),
        )

    def _replay(self, message: Message) -> None:
        alert = self._decode(message, replaying=True)
        if alert is not None:
            self.episodes.apply(message.partition(), alert)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Their next owner keeps their episodes firing; nothing is left to commit, each batch
        was committed before the next consume()."""
        dropped = self.episodes.forget_partitions(tp.partition for tp in partitions)
        log.info(
            "partitions revoked",
            partitions=[tp.partition for tp in partitions],
            open_episodes_dropped=dropped,
        )
