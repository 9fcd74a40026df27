"""State that survives restarts and rebalances, through the real broker.

The settings make a cold start visible: a key's windows are only scored after `normalize.warmup`
(100) events, so an anomaly a few events after a cold (re)start cannot alert, while a restored
detector alerts on it exactly as an uninterrupted one does. Everything else is pinned as in
test_service.py (per-key statistics fixed to the training ones, the global threshold throughout),
so the uninterrupted reference, one in-process Detector over each partition's records, is exact
whatever the batching, and a restored instance must reproduce its alert ids: same key, same
window, so alerted as quickly.
"""

from __future__ import annotations

import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer
from kafka_harness import (
    T0,
    ServiceSetup,
    encode_event,
    input_committed,
    partition_ends,
    sine_feed,
    wait_until,
)
from test_service import _alerts

from stream_detector.config import KafkaConfig, load_settings
from stream_detector.detector.artefact import load_artefact
from stream_detector.detector.facade import Detector
from stream_detector.detector.snapshot import (
    EngineSnapshot,
    decode,
    encode,
    make_checkpoint,
    state_fingerprint,
)
from stream_detector.kafka.changelog import CHUNK_BYTES, KafkaChangelogStore
from stream_detector.kafka.settings import producer_config
from stream_detector.kafka.store import LocalDirStore

pytestmark = pytest.mark.integration

N_KEYS = 20
RESTART_STEP = 240  # the feed's first part ends here; the second part follows the restart
STATEFUL = {
    "window": {"stride": 1},
    "normalize": {"prior_weight": 1e9, "warmup": 100},
    "threshold": {"warmup": 1_000_000, "global_factor": 2.0},
}
# The model is trained with the normalisation the service runs with.
TRAIN_NORMALIZE = STATEFUL["normalize"]


def _sections(setup: ServiceSetup, state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    sections = {name: dict(values) for name, values in setup.sections.items()}
    for name, values in {**STATEFUL, "state": state}.items():
        sections.setdefault(name, {}).update(values)
    return sections


def _reference(sections: dict[str, dict[str, Any]], inputs: list[Any]) -> dict[tuple[str, str], Any]:
    """Alerts of one uninterrupted Detector over each partition's records, by (id, kind)."""
    settings = load_settings(None, sections)
    detector = Detector(settings, load_artefact(settings.model.path, settings))
    by_partition: dict[int, list[Any]] = defaultdict(list)
    for record in inputs:
        by_partition[record.partition].append(record)
    expected = {}
    for _, records in sorted(by_partition.items()):
        result = detector.process_messages([r.value for r in records], [r.key for r in records])
        expected.update({(a.alert_id, a.kind): a for a in result.alerts})
    return expected


def _split(feed: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    cut = T0 + RESTART_STEP
    return [e for e in feed if e["ts"] < cut], [e for e in feed if e["ts"] >= cut]


def _events(service: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in service.log_events() if e.get("event") == name]


def _checkpointed(service: Any) -> set[int]:
    """Partitions the service wrote a checkpoint of (logged as "topic:partition@offset")."""
    return {
        int(p.rsplit("@", 1)[0].rsplit(":", 1)[1])
        for e in _events(service, "checkpoint written")
        for p in e["partitions"]
    }


def test_sigkill_restart_resumes_warm_and_loses_no_alert(
    start_service, service_setup, produce_events, consume_all, kafka_bootstrap, tmp_path: Path
) -> None:
    # Anomalies spread over the first part, so alerts are in flight when the kill lands, and one
    # right after the restart, long before a cold key would have finished its warm-up.
    shifted = {f"k{i:02d}": (110 + 6 * i, 116 + 6 * i) for i in range(0, 19, 3)}
    shifted["k05"] = (RESTART_STEP + 2, RESTART_STEP + 14)
    first_part, second_part = _split(sine_feed(N_KEYS, RESTART_STEP + 40, seed=11, shifted=shifted))
    state = {"store": "local", "dir": str(tmp_path / "state"), "checkpoint_interval_s": 0.3}

    # Batches of 10 and checkpoints every 0.3 s: several checkpoints before the kill lands.
    first = start_service(kafka={"batch_size": 10}, state=state, **STATEFUL)
    # The tail of the first part is produced only right before the kill, so the kill lands
    # mid-stream however fast this machine works through the head.
    tail_from = T0 + RESTART_STEP - 40
    head = [e for e in first_part if e["ts"] < tail_from]
    produce_events(service_setup.input_topic, head)
    wait_until(
        lambda: first.metrics()["sd_alerts_total{kind=open}"] >= 1
        and len(_checkpointed(first)) == 4,
        60,
        "a first alert and a checkpoint of every partition",
    )
    produce_events(service_setup.input_topic, [e for e in first_part if e["ts"] >= tail_from])
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)

    second = start_service(state=state, **STATEFUL)
    wait_until(input_committed(kafka_bootstrap, service_setup, consume_all), 90, "the catch-up")
    restored = {e["partition"]: e["offset"] for e in _events(second, "partition state restored")}
    assert set(restored) == {0, 1, 2, 3}, "every partition resumes from its checkpoint"
    assert sum(restored.values()) < len(first_part), "the kill should land mid-stream"
    produce_events(service_setup.input_topic, second_part)
    wait_until(input_committed(kafka_bootstrap, service_setup, consume_all), 90, "the second part")

    inputs = consume_all(service_setup.input_topic)
    sections = _sections(service_setup, state)
    expected = _reference(sections, inputs)
    delivered = _alerts(consume_all(service_setup.alert_topic))
    ids = {(a["alert_id"], a["kind"]) for a in delivered}
    # Nothing lost, nothing invented: exactly the uninterrupted detector's alerts (re-deliveries
    # of the same id aside).
    assert ids == set(expected)
    after = [a for a in expected.values() if a.key == "k05" and a.kind == "open"]
    assert len(after) == 1 and after[0].window_end < T0 + RESTART_STEP + 14
    # A cold start would have missed it: the same records without the history raise nothing.
    cold = _reference(sections, [r for r in inputs if r.json()["ts"] >= T0 + RESTART_STEP])
    assert not any(a.key == "k05" for a in cold.values())


def test_stopped_instance_hands_its_partitions_state_to_the_other(
    start_service, service_setup, produce_events, consume_all, kafka_bootstrap, topic_factory
) -> None:
    changelog = topic_factory("state", partitions=2)
    state = {"store": "kafka", "changelog_topic": changelog, "checkpoint_interval_s": 0.5}
    # Every key shifts right after the hand-over: the keys the stopped instance owned too.
    shifted = {f"k{i:02d}": (RESTART_STEP + 2, RESTART_STEP + 12) for i in range(N_KEYS)}
    first_part, second_part = _split(sine_feed(N_KEYS, RESTART_STEP + 30, seed=5, shifted=shifted))

    first = start_service(state=state, **STATEFUL)
    second = start_service(state=state, **STATEFUL)
    produce_events(service_setup.input_topic, first_part)
    wait_until(input_committed(kafka_bootstrap, service_setup, consume_all), 90, "the first part")
    assert first.signal_and_wait(signal.SIGTERM, timeout=30) == 0
    handed = _checkpointed(first)
    assert handed, "the stopping instance checkpoints its partitions"
    wait_until(
        lambda: {e["partition"] for e in _events(second, "partition state restored")} >= handed,
        60,
        "the other instance to restore them",
    )
    produce_events(service_setup.input_topic, second_part)
    wait_until(input_committed(kafka_bootstrap, service_setup, consume_all), 90, "the second part")

    inputs = consume_all(service_setup.input_topic)
    expected = _reference(_sections(service_setup, state), inputs)
    opened = {a.key for a in expected.values() if a.kind == "open"}
    assert opened == set(shifted), "the reference alerts on every shifted key"
    ids = {(a["alert_id"], a["kind"]) for a in _alerts(consume_all(service_setup.alert_topic))}
    assert ids == set(expected)


def test_snapshot_of_another_model_is_refused_and_the_service_runs_on(
    start_service, service_setup, produce_events, consume_all, kafka_bootstrap, tmp_path: Path
) -> None:
    state = {"store": "local", "dir": str(tmp_path / "state"), "checkpoint_interval_s": 0.5}
    store = LocalDirStore(Path(state["dir"]), service_setup.group_id)
    empty = EngineSnapshot(np.empty(0, dtype=object), {}, 0.0, 0)
    store.save(
        {
            (service_setup.input_topic, p): encode(
                make_checkpoint(
                    empty, model_version="lstm-ae-someotherone", fingerprint="x",
                    topic=service_setup.input_topic, partition=p, offset=10**6,
                )
            )
            for p in range(4)
        }
    )
    feed = sine_feed(N_KEYS, 200, seed=9, shifted={"k07": (150, 162)})
    service = start_service(state=state, **STATEFUL)
    produce_events(service_setup.input_topic, feed)
    wait_until(input_committed(kafka_bootstrap, service_setup, consume_all), 90, "the feed")

    refused = _events(service, "checkpoint refused; partition starts cold")
    assert sorted(e["partition"] for e in refused) == [0, 1, 2, 3]
    assert all("lstm-ae-someotherone" in e["reason"] for e in refused)
    assert service.process.poll() is None
    # Cold from the committed offsets (none: the beginning), not from the refused 10**6.
    assert service.metrics()["sd_events_in_total"] == len(feed)
    expected = _reference(_sections(service_setup, state), consume_all(service_setup.input_topic))
    ids = {(a["alert_id"], a["kind"]) for a in _alerts(consume_all(service_setup.alert_topic))}
    assert ids == set(expected) and {a.key for a in expected.values()} == {"k07"}
    # Its own checkpoints then replace the refused ones.
    running = service.log_events()
    model_version = next(e["model_version"] for e in running if e.get("event") == "detector ready")

    def replaced() -> bool:
        blobs = store.load([(service_setup.input_topic, p) for p in range(4)])
        return len(blobs) == 4 and all(
            decode(b).meta.model_version == model_version for b in blobs.values()
        )

    wait_until(replaced, 30, "its own checkpoints")


def _processed(service: Any, n: int) -> Any:
    """Whether `service` consumed `n` messages (with exactly_once on Tansu the committed offsets
    cannot tell: it applies only a transactional producer's first offset commit)."""
    return lambda: service.metrics()["sd_events_in_total"] >= n


def test_changelog_chunks_produced_in_a_transaction_are_restored_after_its_commit(
    kafka_bootstrap, topic_factory
) -> None:
    changelog = topic_factory("state", partitions=2)
    kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap, group_id="txn-changelog")
    store = KafkaChangelogStore(kafka, changelog, timeout_s=20)
    rng = np.random.default_rng(3)
    blobs = {
        ("events", 0): rng.bytes(2 * CHUNK_BYTES + 77),  # three chunks
        ("events", 3): rng.bytes(100),
    }
    producer = Producer(producer_config(kafka, f"txn-changelog-{changelog}"))
    producer.init_transactions(20)
    producer.begin_transaction()
    store.produce(producer, blobs)
    producer.commit_transaction(20)

    assert store.load([("events", 0), ("events", 3), ("events", 1)]) == blobs


def test_exactly_once_checkpoints_in_the_transaction_and_hands_over_exactly(
    start_service, service_setup, produce_events, consume_all, topic_factory
) -> None:
    changelog = topic_factory("state", partitions=2)
    state = {"store": "kafka", "changelog_topic": changelog, "checkpoint_interval_s": 0.3}
    # Batches of 50: several transactions, so checkpoints are written at intervals, not only last.
    kafka = {"processing_guarantee": "exactly_once", "batch_size": 50}
    shifted = {f"k{i:02d}": (RESTART_STEP + 2, RESTART_STEP + 12) for i in range(0, N_KEYS, 2)}
    first_part, second_part = _split(sine_feed(N_KEYS, RESTART_STEP + 30, seed=7, shifted=shifted))

    first = start_service(kafka=kafka, state=state, **STATEFUL)
    produce_events(service_setup.input_topic, first_part)
    wait_until(_processed(first, len(first_part)), 90, "the first part")
    assert first.signal_and_wait(signal.SIGTERM, timeout=30) == 0
    ends = partition_ends(consume_all(service_setup.input_topic))
    assert len(_events(first, "checkpoint written")) > 1, "interval checkpoints, not only the last"

    # The changelog, read committed, holds a checkpoint of every partition at exactly the
    # offsets the stopped instance reached: all its input.
    settings = load_settings(None, _sections(service_setup, state))
    partitions = [(service_setup.input_topic, p) for p in ends]
    saved = KafkaChangelogStore(settings.kafka, changelog).load(partitions)
    assert {p: decode(blob).meta.offset for (_, p), blob in saved.items()} == ends

    second = start_service(kafka=kafka, state=state, **STATEFUL)
    wait_until(
        lambda: len(_events(second, "partition state restored")) == len(ends), 60, "the restore"
    )
    restored = {e["partition"]: e["offset"] for e in _events(second, "partition state restored")}
    assert restored == ends
    produce_events(service_setup.input_topic, second_part)
    wait_until(_processed(second, len(second_part)), 90, "the second part")
    # It resumed where the checkpoint said, not at Tansu's stale first committed offset.
    assert second.metrics()["sd_events_in_total"] == len(second_part)

    expected = _reference(_sections(service_setup, state), consume_all(service_setup.input_topic))
    assert {a.key for a in expected.values() if a.kind == "open"} == set(shifted)
    ids = {(a["alert_id"], a["kind"]) for a in _alerts(consume_all(service_setup.alert_topic))}
    # Warm: the shifted keys alert right after the hand-over, exactly as without it.
    assert ids == set(expected)


def test_checkpoint_past_the_partition_end_is_detected_and_the_partition_read_cold(
    start_service, service_setup, produce_events, consume_all, kafka_bootstrap, tmp_path: Path
) -> None:
    # A valid checkpoint of this very model, at offsets this fresh topic has never reached (as
    # after a broker lost its data): the keys it holds must go, the topic be read from offset 0.
    state = {"store": "local", "dir": str(tmp_path / "state"), "checkpoint_interval_s": 0.5}
    settings = load_settings(None, _sections(service_setup, state))
    detector = Detector(settings, load_artefact(settings.model.path, settings))
    history = [{**e, "key": f"gone-{e['key']}"} for e in sine_feed(8, 60, seed=2)]
    detector.process_messages([encode_event(e)[1] for e in history], [None] * len(history))
    store = LocalDirStore(Path(state["dir"]), service_setup.group_id)
    past_end = 10_000
    store.save(
        {
            (service_setup.input_topic, p): encode(
                make_checkpoint(
                    detector.snapshot([f"gone-k{i:02d}" for i in range(2 * p, 2 * p + 2)]),
                    model_version=detector.model_version,
                    fingerprint=state_fingerprint(settings),
                    topic=service_setup.input_topic,
                    partition=p,
                    offset=past_end,
                )
            )
            for p in range(4)
        }
    )
    feed = sine_feed(N_KEYS, 200, seed=4, shifted={"k03": (150, 162)})
    service = start_service(state=state, **STATEFUL)
    # Ready comes with the assignment, before each partition's restore is logged.
    wait_until(lambda: len(_events(service, "partition state restored")) == 4, 60, "the restore")
    produce_events(service_setup.input_topic, feed)
    wait_until(input_committed(kafka_bootstrap, service_setup, consume_all), 90, "the feed")

    warned = _events(service, "checkpoint offset is past the end of its partition; dropping its "
                     "state and reading the partition from the beginning")
    ends = partition_ends(consume_all(service_setup.input_topic))
    assert sorted(e["partition"] for e in warned) == [0, 1, 2, 3]
    assert all(e["checkpoint_offset"] == past_end and e["log_end"] <= ends[e["partition"]]
               for e in warned)
    metrics = service.metrics()
    assert metrics["sd_events_in_total"] == len(feed), "every event, from the beginning"
    assert metrics["sd_keys_tracked"] == N_KEYS, "the checkpoints' keys were dropped"
    expected = _reference(_sections(service_setup, state), consume_all(service_setup.input_topic))
    ids = {(a["alert_id"], a["kind"]) for a in _alerts(consume_all(service_setup.alert_topic))}
    assert ids == set(expected) and {a.key for a in expected.values()} == {"k03"}
