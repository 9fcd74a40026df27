"""SIGKILL at random points, at the default batching, loses and invents no alert.

The engine is batch-invariant: each key's scores, flags, episodes and alert ids are a function of
that key's own event sequence, whatever the batching and wherever a restart resumed. So the alert
ids the service must deliver are known exactly: those of one uninterrupted in-process Detector fed
each partition's records as they lie in the input topic, in one call.

The service runs at its default `kafka.batch_size` and `kafka.batch_timeout_s` and with its default
state store (`local`, in a temporary directory), with the engine's default normalisation and
adaptive threshold (nothing pinned, unlike test_state.py), so the live run cuts the stream into
batches of a few dozen events while the producer paces it, and into batches of thousands while a
restarted instance catches up: quite unlike the reference's one batch per partition. A paced
producer writes the feed at a steady rate over many seconds; the service is SIGKILLed at random
times drawn from a seeded RNG (`SD_KILL_SEED` pins the seed; it is printed, and named in every
assertion message) and restarted at once after each kill, resuming from its checkpoints.
"""

from __future__ import annotations

import math
import os
import secrets
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka_harness import (
    T0,
    PacedProducer,
    Record,
    ServiceProcess,
    ServiceSetup,
    committed_at,
    partition_ends,
    sine_feed,
    wait_until,
)
from test_service import _alerts

from stream_detector.config import KafkaConfig, StateConfig, load_settings
from stream_detector.detector.artefact import load_artefact
from stream_detector.detector.facade import Detector

pytestmark = pytest.mark.integration

N_KEYS = 20
RATE = 1000.0  # events/s offered by the paced producer: 50 steps of every key a second
PRODUCE_S = 24.0  # seconds the producer paces the feed over
N_STEPS = int(RATE * PRODUCE_S / N_KEYS)
N_KILLS = 3
# Kills land in [KILL_FROM, KILL_TO] x PRODUCE_S, one in each of N_KILLS equal slots, so each
# restarted instance has time to get ready (and to checkpoint) before the next kill.
KILL_FROM, KILL_TO = 0.12, 0.85
CHECKPOINT_S = 1.0  # several checkpoints between kills, so kills land between two of them
SHIFT = 6.0  # level shift of an anomaly, in the feed's units (noise is 0.1, the sine's amplitude 1)
# Fields an alert must carry exactly as the reference has them; scores within float tolerance.
EXACT = ("kind", "episode_id", "key", "window_start", "window_end", "episode_start",
         "windows_over", "reason", "model_version")


def _feed(seed: int) -> list[dict[str, Any]]:
    """sine_feed with several level shifts per key at random steps, so episodes open and resolve
    all through the feed (and some are open at any kill)."""
    rng = np.random.default_rng(seed)
    feed = sine_feed(N_KEYS, N_STEPS, seed=seed)
    shifts: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for k in range(N_KEYS):
        step = int(rng.integers(20, 120))
        while step < N_STEPS - 40:
            length = int(rng.integers(8, 20))
            shifts[f"k{k:02d}"].append((T0 + step, T0 + step + length))
            step += length + int(rng.integers(60, 200))
    for event in feed:
        if any(a <= event["ts"] < b for a, b in shifts[event["key"]]):
            event["value"] = round(event["value"] + SHIFT, 5)
    return feed


def _events(service: ServiceProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in service.log_events() if e.get("event") == name]


def _checkpoints(service: ServiceProcess) -> dict[int, int]:
    """The newest offset the service logged a checkpoint of, per partition."""
    newest: dict[int, int] = {}
    for event in _events(service, "checkpoint written"):
        for written in event["partitions"]:
            where, offset = written.rsplit("@", 1)
            partition = int(where.rsplit(":", 1)[1])
            newest[partition] = max(newest.get(partition, -1), int(offset))
    return newest


def _reference(sections: dict[str, dict[str, Any]], inputs: list[Record]) -> dict[str, Any]:
    """Alerts by id of an uninterrupted Detector per partition, each fed its records at once."""
    settings = load_settings(None, sections)
    artefact = load_artefact(settings.model.path, settings)
    by_partition: dict[int, list[Record]] = defaultdict(list)
    for record in inputs:
        by_partition[record.partition].append(record)
    expected: dict[str, Any] = {}
    for _, records in sorted(by_partition.items()):
        detector = Detector(settings, artefact)
        result = detector.process_messages([r.value for r in records], [r.key for r in records])
        assert not result.decoded.rejects, "the feed is all valid"
        for alert in result.alerts:
            assert alert.alert_id not in expected, f"alert id {alert.alert_id} twice"
            expected[alert.alert_id] = alert
    return expected


def test_sigkill_at_random_points_at_default_batching_delivers_exactly_the_reference_alerts(
    start_service,
    service_setup: ServiceSetup,
    consume_all,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("SD_KILL_SEED") or secrets.randbelow(2**31))
    rng = np.random.default_rng(seed)
    slots = np.linspace(KILL_FROM, KILL_TO, N_KILLS + 1) * PRODUCE_S
    kill_at = [float(rng.uniform(a, b)) for a, b in zip(slots[:-1], slots[1:], strict=True)]
    run = f"SD_KILL_SEED={seed}, kills planned at {[round(t, 2) for t in kill_at]} s"
    print(run)

    # The service's own batching: the fixture leaves batch_size and batch_timeout_s at their
    # defaults.
    state = {"dir": str(tmp_path / "state"), "checkpoint_interval_s": CHECKPOINT_S}
    service_setup.sections["state"] = state
    settings = load_settings(None, service_setup.sections)
    assert settings.kafka.batch_size == KafkaConfig().batch_size
    assert settings.kafka.batch_timeout_s == KafkaConfig().batch_timeout_s
    assert settings.state.store == StateConfig().store

    feed = _feed(seed)
    services = [start_service()]
    producer = PacedProducer(kafka_bootstrap, service_setup.input_topic, feed, RATE)
    producer.start()
    wait_until(lambda: producer.sent > 0 or producer.error is not None, 30, "the first events")

    kills: list[dict[str, Any]] = []
    for planned in kill_at:
        victim = services[-1]
        wait_until(
            lambda planned=planned: time.monotonic() - producer.began >= planned
            or producer.error is not None,
            PRODUCE_S + 30,
            f"kill time {planned:.2f} s ({run})",
        )
        assert producer.error is None, producer.error
        checkpointed = _checkpoints(victim)
        metrics = victim.metrics()
        consumed, batches = metrics["sd_events_in_total"], metrics["sd_batch_seconds_count"]
        at = time.monotonic() - producer.began
        victim.process.send_signal(signal.SIGKILL)
        assert victim.process.wait(10) == -signal.SIGKILL
        kills.append({"at_s": round(at, 2), "produced": producer.sent, "consumed": int(consumed),
                      "batches": int(batches), "checkpointed": checkpointed})
        print(f"kill {len(kills)}: {kills[-1]}")
        services.append(start_service())

    producer.join(PRODUCE_S + 60)
    assert not producer.is_alive() and producer.error is None, producer.error
    assert not producer.failures, producer.failures
    took = producer.ended - producer.began
    assert took >= 0.9 * PRODUCE_S, f"the feed was paced over {took:.1f} s"
    assert all(k["produced"] < len(feed) for k in kills), f"every kill lands mid-feed: {kills}"
    # The live stream was cut into many small batches (the reference takes each partition whole).
    first = kills[0]
    assert first["consumed"] <= first["batches"] * KafkaConfig().batch_size / 5, kills

    inputs = consume_all(service_setup.input_topic)
    assert len(inputs) == len(feed)
    ends = partition_ends(inputs)

    def all_committed() -> bool:
        return committed_at(
            kafka_bootstrap, service_setup.group_id, service_setup.input_topic, ends
        )

    # Offsets are committed only after a checkpoint, which waits for every alert so far to be
    # acknowledged: once the whole input is committed, every alert is in the topic.
    wait_until(all_committed, 60, f"the whole input committed ({run})")
    assert services[-1].process.poll() is None, services[-1].log()

    # Every restart resumed from the checkpoints its predecessors wrote, not cold: at least at
    # the offset the killed instance had logged (a kill between writing and logging one leaves a
    # newer one).
    saved: dict[int, int] = {}
    for n, (kill, service) in enumerate(zip(kills, services[1:], strict=True), start=1):
        for partition, offset in kill["checkpointed"].items():
            saved[partition] = max(saved.get(partition, -1), offset)
        restored = {
            e["partition"]: e["offset"] for e in _events(service, "partition state restored")
        }
        kill["restored"] = restored
        assert set(restored) >= set(saved), f"restart {n}: {restored} restored, {saved} saved"
        assert all(restored[p] >= offset for p, offset in saved.items()), (n, restored, saved, run)
        saved.update(restored)
    assert any(
        0 < offset < ends[p] for kill in kills for p, offset in kill["restored"].items()
    ), f"some restart resumed from a checkpoint in mid-stream: {kills}"

    expected = _reference(service_setup.sections, inputs)
    delivered = _alerts(consume_all(service_setup.alert_topic))
    counts = Counter(a["alert_id"] for a in delivered)
    print(f"reference alerts: {len(expected)}; delivered: {len(delivered)}, "
          f"{sum(c - 1 for c in counts.values())} of them re-deliveries; kills: {kills}")
    assert len(expected) >= 40 and {a.kind for a in expected.values()} == {"open", "resolve"}

    missing = sorted(set(expected) - set(counts))
    extra = sorted(set(counts) - set(expected))
    invented = [(a["alert_id"], a["key"], a["window_end"]) for a in delivered
                if a["alert_id"] in extra]
    assert not missing and not extra, (
        f"{len(missing)} reference alert ids never delivered, {len(extra)} ids delivered that the "
        f"reference does not have ({run}; kills {kills}):\n"
        f"missing: {[(i, expected[i].key, expected[i].window_end) for i in missing]}\n"
        f"extra: {invented}"
    )
    # A re-delivered alert is the same alert: every copy carries the reference's fields.
    for alert in delivered:
        reference = expected[alert["alert_id"]]
        assert {f: alert[f] for f in EXACT} == {f: getattr(reference, f) for f in EXACT}, run
        assert math.isclose(alert["score"], reference.score, rel_tol=1e-4, abs_tol=1e-6), run
        assert math.isclose(alert["threshold"], reference.threshold, rel_tol=1e-4, abs_tol=1e-6)
