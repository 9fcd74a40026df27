"""The service end to end through a real broker: sustained events/s, then event->alert latency.

`run_service` runs in a thread of this process exactly as `stream-detector run` would run it. Two
phases, one service instance:

1. Sustained rate: the topic already holds a backlog (the stream the ceilings read), and the
   service drains it as fast as it can. The rate is read from the service's own events-processed
   counter (see progress.py) from the moment every key is warm to the last full batch (the
   partial one after it waits out consume()'s timeout, which is not work).
2. Latency: a producer in a child process (see pacer.py) paces fresh events at a fraction
   (half) of that rate, stamping each event's time with the wall clock as it creates the
   message, and shifts some keys' level so they alert. An alert's `window_end` is the event
   time of the event that completed its window, so `alert received - window_end` is that
   event's produce -> alert consume latency, measured on one clock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import structlog
from confluent_kafka import Consumer

from stream_detector.benchmarking.kafka_io import beginning_of
from stream_detector.benchmarking.pacer import PacePlan, start_pacer
from stream_detector.benchmarking.progress import ProgressClock
from stream_detector.benchmarking.results import Throughput
from stream_detector.config import Settings
from stream_detector.kafka.service import run_service
from stream_detector.kafka.settings import consumer_config, producer_config

log = structlog.get_logger(__name__)

_DRAIN_TIMEOUT_S = 300.0
_SETTLE_S = 1.0  # for the alert consumer's first fetch to be under way
_TRAILING_S = 1.0  # for the last alerts to be produced, acknowledged and fetched


@dataclass(frozen=True)
class ServiceRun(Throughput):
    """`events`/`seconds`: the timed part of the backlog; the rest is the latency phase."""

    paced_rate: float  # events/s offered in the latency phase
    paced_events: int
    latencies_s: np.ndarray  # one per alert caused by the latency phase
    shifted_keys: int
    # From the last paced event acknowledged to the service having processed it: near zero when
    # the service kept up with the offered rate, growing when it fell behind (latency then grows
    # with the queue, and the row measures overload, not the pipeline).
    behind_s: float

    def as_dict(self) -> dict[str, Any]:
        lat = self.latencies_s * 1000.0
        has = lat.size > 0
        return {
            **super().as_dict(),
            "paced_events_per_s": round(self.paced_rate, 1),
            "paced_events": self.paced_events,
            "shifted_keys": self.shifted_keys,
            "behind_at_end_s": round(self.behind_s, 3),
            "alerts_timed": int(lat.size),
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if has else None,
            "latency_ms_p99": round(float(np.percentile(lat, 99)), 1) if has else None,
            "latency_ms_max": round(float(lat.max()), 1) if has else None,
        }


class _AlertClock:
    """Consumes the alert topic in a thread and records (receive wall time, window_end).

    Partitions are assigned, not subscribed: no group join, so the consumer is fetching before
    the first timed alert can exist and no alert waits for a rebalance.
    """

    def __init__(self, settings: Settings) -> None:
        kafka = settings.kafka
        conf = consumer_config(kafka.model_copy(update={"group_id": f"{kafka.group_id}-alerts"}))
        self._consumer = Consumer(conf)
        self._consumer.assign(beginning_of(self._consumer, kafka.alert_topic))
        self.received: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-alerts", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                # consume() waits out its whole timeout unless 1000 alerts arrive, and the
                # receive time is read after it returns: keep the timeout short, or the
                # clock's own wait is measured as latency.
                for message in self._consumer.consume(1000, 0.005):
                    if message.error() is None:
                        now = time.time()
                        data = orjson.loads(message.value())["data"]
                        self.received.append((now, float(data["window_end"])))
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _reached(clock: ProgressClock, events: int, service: threading.Thread) -> bool:
    return clock.reached(events, _DRAIN_TIMEOUT_S, service.is_alive)


def service_end_to_end(
    settings: Settings,
    *,
    n_keys: int,
    backlog: int,
    steady_from: int,
    backlog_ticks: int,
    latency_seconds: float,
    rate_share: float,
    seed: int,
) -> ServiceRun:
    """Run the service over a topic holding `backlog` events, then pace fresh ones through it.

    `steady_from`: offset from which every key of the backlog is warm (the timed part starts).
    The service must have its HTTP endpoint on (observability.http_port): it is the clock.
    """
    last_full = _timed_span_end(settings, backlog, steady_from)
    stop = threading.Event()
    exit_code: list[int] = []
    service = threading.Thread(
        target=lambda: exit_code.append(run_service(settings, stop_event=stop)),
        name="bench-service",
        daemon=True,
    )
    clock = ProgressClock(settings.observability.http_port).start()
    alerts: _AlertClock | None = None
    try:
        service.start()
        _await_processed(clock, backlog, service, exit_code, "work through the backlog")
        seconds, timed = clock.span(steady_from, last_full)
        alerts = _AlertClock(settings)
        plan = PacePlan.of(
            producer_config(settings.kafka),
            settings.kafka.input_topics[0],
            n_keys=n_keys,
            first_tick=backlog_ticks,
            rate=timed / seconds * rate_share,
            seconds=latency_seconds,
            seed=seed + 1,
        )
        phase_start, behind = _paced_phase(plan, clock, service, exit_code, backlog)
    finally:
        if alerts is not None:
            alerts.stop()
        stop.set()
        service.join(60)
        clock.stop()
    latencies = [now - end_ts for now, end_ts in alerts.received if end_ts >= phase_start]
    run = ServiceRun(
        int(timed),
        seconds,
        plan.rate,
        plan.events,
        np.array(latencies),
        plan.shifted_keys,
        behind,
    )
    log.info("service row", **run.as_dict())
    return run


def _timed_span_end(settings: Settings, backlog: int, steady_from: int) -> int:
    """The offset the timed part of the backlog ends at (the last full batch); raises ValueError
    when the settings cannot be run or timed."""
    if settings.model.path is None or not Path(settings.model.path).is_dir():
        raise ValueError("settings.model.path must point at a saved model artefact")
    if not settings.observability.http_port:
        raise ValueError("observability.http_port must name a port: /metrics is the clock")
    last_full = backlog - settings.kafka.batch_size
    if last_full <= steady_from:
        raise ValueError("the backlog is too short to time: lengthen it or shrink the batch")
    return last_full


def _await_processed(
    clock: ProgressClock, target: int, service: threading.Thread, exit_code: list[int], what: str
) -> None:
    """Wait until the service has processed `target` events; raises RuntimeError if it stops or
    stalls first."""
    if not _reached(clock, target, service):
        raise RuntimeError(
            f"the service did not {what} (processed {clock.processed():.0f} of {target}, "
            f"exit code {exit_code or 'none: still running'})"
        )


def _paced_phase(
    plan: PacePlan,
    clock: ProgressClock,
    service: threading.Thread,
    exit_code: list[int],
    backlog: int,
) -> tuple[float, float]:
    """Fresh events at the plan's pace once the backlog is done. Returns when the phase started
    (wall clock, for the alert latencies) and how long after the last event was produced the
    service had processed it."""
    time.sleep(_SETTLE_S)
    phase_start = time.time()
    pacer = start_pacer(plan)
    pacer.join(plan.events / plan.rate + _DRAIN_TIMEOUT_S)
    if pacer.exitcode != 0:
        raise RuntimeError(f"the paced producer failed (exit code {pacer.exitcode})")
    produced_at = time.monotonic()
    _await_processed(clock, backlog + plan.events, service, exit_code, "finish the paced phase")
    behind = time.monotonic() - produced_at
    time.sleep(_TRAILING_S)
    return phase_start, behind
