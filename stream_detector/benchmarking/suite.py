"""`stream-detector bench`: every row in one process and one run, a table, and a JSON report.

Rows (see benchmarks/README.md for how to read them):

1. ceilings: consume the stream from the local broker touching each message, then again parsing
   each with orjson; nothing faster can be built on this client and broker;
2. engine in-process: events/s at K keys and stride S, decode included, no Kafka; the same at
   the stream's K and S=16 with and without a candidate model in the shadow of the active one,
   timed in alternate batches, and their ratio; and the aggregate-mode engine (raw flow events
   -> 10 s buckets -> windows) at the stream's K;
3. the service end to end through the broker: sustained events/s at S=16, then event -> alert
   latency at half that rate; once with the default kafka.batch_size and once with smaller
   batches, because at half rate an event mostly waits for its batch to fill;
4. River's HalfSpaceTrees, one per key, on the same generator;
5. detector state per tracked key at 100k keys;
6. checkpoints of that state: size, snapshot + encode time, decode + restore time, at 10k and
   100k keys.

The model has random weights (scoring costs the same trained or not), saved and loaded through
the real artefact code; the shadow's candidate is another such model, of another seed. The
broker is the embedded Tansu child process, so the suite needs no Docker and no network.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from stream_detector.benchmarking import (
    aggregate,
    endtoend,
    inprocess,
    kafka_io,
    memory,
    peer,
    state,
)
from stream_detector.benchmarking.machine import load_average, machine_facts
from stream_detector.benchmarking.results import (
    CEILING,
    MEMORY,
    RAW_CEILING,
    RIVER,
    SERVICE,
    SMALL_BATCHES,
    Row,
    engine_id,
    judge,
    keys_label,
    render,
    shadow_ids,
)
from stream_detector.benchmarking.workload import (
    FEATURES,
    WINDOW,
    bench_settings,
    tick_stream,
    untrained_artefact,
)
from stream_detector.config import KafkaConfig
from stream_detector.demo.broker import EmbeddedBroker, free_port
from stream_detector.engine.model import select_device

log = structlog.get_logger(__name__)

SERVICE_STRIDE = 16
LATENCY_RATE_SHARE = 0.5
# Tansu answers a waiting fetch when fetch.wait.max.ms runs out, not when data arrives as Kafka
# does: with librdkafka's 500 ms default one produce -> consume hop measured p50 145 ms, p99
# 266 ms on the embedded broker (p50 31 ms at 10 ms). Every client of the suite, the service's
# included (through kafka.extra, as a user would set it), waits at most 10 ms, so the latency row
# measures the detector and not that quirk. A backlog is fetched at full speed either way.
TANSU_CLIENT_SETTINGS = {"fetch.wait.max.ms": "10"}


@dataclass(frozen=True)
class SuiteSize:
    """How big each row runs: FULL is the documented run, SMOKE proves every row in seconds."""

    name: str
    engine_keys: tuple[int, ...]
    strides: tuple[int, ...]
    engine_events: int  # per engine row, at most
    engine_seconds: float  # timed seconds per engine row, at most
    stream_keys: int  # keys of the broker stream (ceilings, service); one of engine_keys
    stream_ticks: int  # its length in ticks (one event per key per tick)
    latency_seconds: float
    river_keys: int
    river_events: int
    memory_keys: int
    state_keys: tuple[int, ...]  # a state checkpoint row for each
    kafka_batch_size: int  # the service's consume() size; smaller in SMOKE, whose backlog is tiny
    small_batch: int  # a second service row with this batch size, to show what latency costs


FULL = SuiteSize(
    name="full",
    engine_keys=(1_000, 10_000, 100_000),
    strides=(1, 16),
    engine_events=1_500_000,
    engine_seconds=8.0,
    stream_keys=10_000,
    stream_ticks=200,
    latency_seconds=20.0,
    river_keys=200,
    river_events=40_000,
    memory_keys=100_000,
    state_keys=(10_000, 100_000),
    kafka_batch_size=KafkaConfig().batch_size,
    small_batch=1_000,
)
SMOKE = SuiteSize(
    name="smoke",
    engine_keys=(20, 50, 100),
    strides=(1, 16),
    engine_events=3_000,
    engine_seconds=0.5,
    stream_keys=100,
    stream_ticks=500,
    latency_seconds=2.0,
    river_keys=2,
    river_events=500,
    memory_keys=2_000,
    state_keys=(200, 500),
    kafka_batch_size=500,
    small_batch=250,
)


def _broker_rows(
    size: SuiteSize, artefact_dir: Path, state_dir: Path, device: str, seed: int
) -> list[Row]:
    """Ceilings and the service, on one stream in one embedded broker."""
    run_id = uuid.uuid4().hex[:8]
    # The backlog ends a minute before now: the latency phase stamps events with the wall clock,
    # and a jump past window.idle_ttl_s would evict every warm key.
    t0 = time.time() - size.stream_ticks - 60.0
    stream = tick_stream(
        size.stream_keys, 0, size.stream_ticks, seed=seed, stagger=SERVICE_STRIDE, t0=t0
    )
    payloads, keys = stream.payloads(), stream.kafka_keys()
    with EmbeddedBroker() as broker:
        base = KafkaConfig(
            bootstrap_servers=broker.bootstrap_servers,
            batch_size=size.kafka_batch_size,
            extra=TANSU_CLIENT_SETTINGS,
        )
        topic = f"bench-events-{run_id}"
        kafka_io.create_topics(base, [topic])
        produce_s = kafka_io.produce_all(base, topic, payloads, keys)
        raw = kafka_io.consume_ceiling(base, topic, len(stream), decode=False)
        decoded = kafka_io.consume_ceiling(base, topic, len(stream), decode=True)
        produced = (
            f"{len(stream):,} messages, K={keys_label(size.stream_keys)}, "
            f"produced at {len(stream) / produce_s:,.0f}/s"
        )
        rows = [
            Row(
                RAW_CEILING,
                "ceiling: consume, touch each message",
                raw.events_per_s,
                produced,
                raw.as_dict(),
            ),
            Row(
                CEILING,
                "ceiling: consume + orjson decode",
                decoded.events_per_s,
                "",
                decoded.as_dict(),
            ),
        ]
        warm = inprocess.warm_ticks(bench_settings(SERVICE_STRIDE), SERVICE_STRIDE)
        steady_from = int((stream.ts < t0 + warm).sum())  # tick = whole seconds since t0
        for row_id, batch in ((SERVICE, size.kafka_batch_size), (SMALL_BATCHES, size.small_batch)):
            # Topics of its own, holding just the backlog: the previous row's paced events
            # would otherwise queue ahead of this row's.
            name = f"{row_id}-{run_id}"
            kafka = base.model_copy(
                update={
                    "input_topics": (f"{name}.events",),
                    "alert_topic": f"{name}.alerts",
                    "dead_letter_topic": f"{name}.dlq",
                    "group_id": name,
                    "batch_size": batch,
                }
            )
            kafka_io.create_topics(
                kafka, [*kafka.input_topics, kafka.alert_topic, kafka.dead_letter_topic]
            )
            kafka_io.produce_all(kafka, kafka.input_topics[0], payloads, keys)
            settings = bench_settings(
                SERVICE_STRIDE,
                model_path=artefact_dir,
                device=device,
                kafka=kafka.model_dump(),
                http_port=free_port(),
                state_dir=state_dir / row_id,
            )
            service = endtoend.service_end_to_end(
                settings,
                n_keys=size.stream_keys,
                backlog=len(stream),
                steady_from=steady_from,
                backlog_ticks=size.stream_ticks,
                latency_seconds=size.latency_seconds,
                rate_share=LATENCY_RATE_SHARE,
                seed=seed,
            )
            rows.append(_service_row(row_id, service, size.stream_keys, batch))
    return rows


def _service_row(row_id: str, run: endtoend.ServiceRun, keys: int, batch: int) -> Row:
    data = run.as_dict()
    latency = (
        "no alert timed"
        if data["latency_ms_p50"] is None
        else f"alert latency p50 {data['latency_ms_p50']} ms, p99 {data['latency_ms_p99']} ms "
        f"({data['alerts_timed']} alerts) at {data['paced_events_per_s']:,.0f} events/s; "
        f"{data['behind_at_end_s']:.2f} s behind at the end"
    )
    label = f"service end-to-end K={keys_label(keys)} S={SERVICE_STRIDE}, batch {batch}"
    data = {"keys": keys, "stride": SERVICE_STRIDE, "kafka_batch_size": batch, **data}
    return Row(row_id, label, run.events_per_s, latency, data)


def _engine_rows(size: SuiteSize, artefact_dir: Path, device: str, seed: int) -> list[Row]:
    rows = []
    for keys in size.engine_keys:
        for stride in size.strides:
            run = inprocess.engine_throughput(
                artefact_dir,
                keys,
                stride,
                events=size.engine_events,
                max_seconds=size.engine_seconds,
                device=device,
                seed=seed,
            )
            data = run.as_dict()
            rows.append(
                Row(
                    engine_id(keys, stride),
                    f"engine K={keys_label(keys)} S={stride}",
                    run.events_per_s,
                    _engine_detail(data),
                    data,
                )
            )
    return rows


def _shadow_rows(
    size: SuiteSize, artefact_dir: Path, candidate_dir: Path, device: str, seed: int
) -> list[Row]:
    """The engine at the stream's K and the service's stride, alone and with a shadow, each
    timed about as long as an engine row: on a loaded machine their ratio moves by a tenth
    from one run of a few seconds to the next."""
    run = inprocess.shadow_pair(
        artefact_dir,
        candidate_dir,
        size.stream_keys,
        SERVICE_STRIDE,
        events=size.engine_events,
        max_seconds=2 * size.engine_seconds,
        device=device,
        seed=seed,
    )
    single_id, shadowed_id = shadow_ids(size.stream_keys, SERVICE_STRIDE)
    label = f"engine K={keys_label(size.stream_keys)} S={SERVICE_STRIDE}"
    single, shadowed = run.single.as_dict(), run.as_dict()
    # The candidate's time is the rest: the detector's model time is the active model's.
    detail = (
        f"{shadowed['ratio_to_single']:.2f}x the row above; candidate judged "
        f"{shadowed['shadow_windows']:,} windows; time in decode {shadowed['decode_share']:.0%}, "
        f"active model {shadowed['model_share']:.0%}"
    )
    return [
        Row(
            single_id,
            f"{label}, one model",
            run.single.events_per_s,
            f"{_engine_detail(single)}; timed in turn with the row below",
            single,
        ),
        Row(shadowed_id, f"{label} + shadow model", run.events_per_s, detail, shadowed),
    ]


def _engine_detail(data: dict[str, Any]) -> str:
    return (
        f"{data['windows_per_s']:,.0f} windows/s; time in decode "
        f"{data['decode_share']:.0%}, model {data['model_share']:.0%}"
    )


def _river_row(size: SuiteSize, seed: int) -> Row:
    if not peer.river_available():
        raise RuntimeError(
            "the River row needs the `river` package: pip install 'stream-detector[baselines]'"
        )
    run = peer.river_throughput(size.river_keys, events=size.river_events, seed=seed)
    detail = (
        f"MinMaxScaler | HalfSpaceTrees per key, score + learn per event; {run.keys} keys, "
        f"{run.model_bytes / 1e6:.2f} MB per key"
    )
    return Row(RIVER, "River HalfSpaceTrees, one per key", run.events_per_s, detail, run.as_dict())


def _memory_row(size: SuiteSize, artefact_dir: Path, device: str, seed: int) -> Row:
    run = memory.state_bytes_per_key(artefact_dir, size.memory_keys, device=device, seed=seed)
    data = run.as_dict()
    detail = (
        f"{data['bytes_per_key']:,.0f} B/key = arrays {data['array_bytes_per_key']:,.0f} B "
        f"({data['arrays_to_window_raw']:.2f}x the {data['window_raw_bytes']} B window) + key "
        f"objects {data['key_object_bytes_per_key']:,.0f} B"
    )
    return Row(MEMORY, f"memory at K={keys_label(size.memory_keys)}", None, detail, data)


def run_suite(
    size: SuiteSize, *, device: str = "auto", seed: int = 0, command: str | None = None
) -> dict[str, Any]:
    """Run every row; returns the report (rows, targets, machine facts) as JSON-able data."""
    chosen = select_device(device)
    machine = machine_facts(chosen)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sd-bench-") as work:
        artefact_dir = Path(work) / "model"
        candidate_dir = Path(work) / "candidate"
        settings = bench_settings(SERVICE_STRIDE, device=device)
        artefact = untrained_artefact(artefact_dir, settings, seed=seed)
        untrained_artefact(candidate_dir, settings, seed=seed + 1)
        rows = _broker_rows(size, artefact_dir, Path(work) / "state", device, seed)
        rows += _engine_rows(size, artefact_dir, device, seed)
        rows += _shadow_rows(size, artefact_dir, candidate_dir, device, seed)
        rows.append(
            aggregate.aggregate_row(
                size.stream_keys,
                events=size.engine_events,
                max_seconds=size.engine_seconds,
                device=device,
                seed=seed,
            )
        )
        rows.append(_river_row(size, seed))
        rows.append(_memory_row(size, artefact_dir, device, seed))
        rows += [
            state.state_row(artefact_dir, keys, device=device, seed=seed)
            for keys in size.state_keys
        ]
    machine["load_average_end"] = load_average()
    targets = judge(rows, stream_keys=size.stream_keys)
    seconds = round(time.perf_counter() - started, 1)
    log.info(
        "bench finished",
        mode=size.name,
        seconds=seconds,
        missed=[t.name for t in targets if not t.met],
    )
    return {
        "suite": "stream-detector bench",
        "mode": size.name,
        "command": command,
        "seconds": seconds,
        "settings": {
            "window": WINDOW,
            "features": len(FEATURES),
            "kafka_batch_size": KafkaConfig().batch_size,
            "model": artefact.metadata.model_version,
            "model_trained": False,
        },
        "machine": machine,
        "rows": [row.as_dict() for row in rows],
        "targets": [target.as_dict() for target in targets],
        "table": render(rows, targets, _header(size, machine)),
    }


def _header(size: SuiteSize, machine: dict[str, Any]) -> str:
    return (
        f"stream-detector bench ({size.name}) on {machine['cpu_model']}, "
        f"{machine['cpus_usable']} cores, device {machine['device']}, torch {machine['torch']}; "
        f"load average at start {machine['load_average_start']}"
    )


def write_report(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")


def main_bench(*, smoke: bool, out: Path, device: str, seed: int) -> int:
    """What `stream-detector bench` does: run, print the table, write the JSON report."""
    command = f"stream-detector bench{' --smoke' if smoke else ''} --device {device} --out {out}"
    if seed:
        command += f" --seed {seed}"
    report = run_suite(SMOKE if smoke else FULL, device=device, seed=seed, command=command)
    write_report(report, out)
    print(report["table"])
    print(f"\nreport written to {out}")
    return 0
