"""`stream-detector demo`: the whole product on one machine with nothing but Python.

It starts an embedded broker, creates the topics, plays the synthetic feed into them, runs the
real service (`run_service`, the code behind `stream-detector run`) in a thread against them, and
watches from outside like an operator would: the service's /metrics endpoint and its alert topic.

Shutdown is ordered, whatever ends the run (duration, Ctrl-C, SIGTERM, SIGHUP, an error): the feed
stops, the service catches up, drains and commits, the broker stops last (see demo/signals.py for
why the broker does not get the terminal's Ctrl-C itself).
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
import torch

from stream_detector.config import ConfigError, Settings, deep_merge
from stream_detector.demo.broker import EmbeddedBroker, free_port
from stream_detector.demo.feed import PacedProducer
from stream_detector.demo.iot_scenario import DEFAULT_DEVICES, DEFAULT_RATE, IotScenario
from stream_detector.demo.monitor import AlertReader, MetricsProbe, ServiceNumbers
from stream_detector.demo.network_scenario import DEFAULT_HOSTS, DEFAULT_SPEED, NetworkScenario
from stream_detector.demo.scenario import DEMO_SEED, DemoScenario
from stream_detector.demo.scoreboard import Scoreboard
from stream_detector.demo.signals import StopSignals, children_shielded
from stream_detector.demo.topics import ensure_topics
from stream_detector.demo.view import (
    RECENT_ALERTS,
    AlertLine,
    DemoInfo,
    DemoView,
    Snapshot,
    make_view,
    wants_live_view,
)
from stream_detector.detector.artefact import ArtefactError, load_artefact
from stream_detector.kafka.service import run_service
from stream_detector.logs import configure_logging

log = structlog.get_logger(__name__)

ALERT_TOPIC: Final = "demo.alerts"
GROUP_ID: Final = "stream-detector-demo"
SCENARIOS: Final = ("iot", "network")

_SERVICE_KAFKA: Final = {
    "group_id": GROUP_ID,
    "alert_topic": ALERT_TOPIC,
    "batch_timeout_s": 0.2,
    "session_timeout_ms": 6000,
    "shutdown_timeout_s": 10.0,
}
_POLL_S: Final = 0.25  # one refresh of the view: the alert poll's wait
_RATE_WINDOW_S: Final = 2.0
_CATCH_UP_S: Final = 20.0  # after the feed stops, how long the service may take to finish it
_SETTLE_S: Final = 1.0  # quiet time on the alert topic before the last alerts count as read


@dataclass(frozen=True)
class DemoOptions:
    """What the `demo` command's flags choose; duration_s = 0 runs until Ctrl-C.

    devices (hosts for the network scenario) and rate / speed left None take the scenario's
    defaults; rate paces the IoT feed, speed the network feed's event-time clock.
    """

    duration_s: float = 60.0
    scenario: str = "iot"
    devices: int | None = None
    rate: float | None = None
    speed: float | None = None
    seed: int = DEMO_SEED
    train: bool = False
    ui: bool | None = None
    log_level: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ConfigError(f"--scenario must be one of {', '.join(SCENARIOS)}")
        if self.duration_s < 0:
            raise ConfigError("--duration must be 0 (until Ctrl-C) or a positive number of seconds")
        if self.devices is not None and self.devices < 1:
            raise ConfigError("--devices must be at least 1")
        if self.rate is not None and self.rate <= 0:
            raise ConfigError("--rate must be a positive number of events per second")
        if self.speed is not None and self.speed <= 0:
            raise ConfigError("--speed must be a positive factor (event seconds per wall second)")
        if self.scenario == "network" and self.rate is not None:
            raise ConfigError(
                "--rate paces the IoT feed; the network feed is paced by --speed (event-time "
                "seconds played per wall second)"
            )
        if self.scenario == "iot" and self.speed is not None:
            raise ConfigError("--speed is for --scenario network; the IoT feed is paced by --rate")

    def make_scenario(self) -> DemoScenario:
        if self.scenario == "network":
            return NetworkScenario(
                hosts=self.devices or DEFAULT_HOSTS,
                speed=self.speed or DEFAULT_SPEED,
                duration_s=self.duration_s,
                seed=self.seed,
            )
        return IotScenario(
            devices=self.devices or DEFAULT_DEVICES,
            rate=self.rate or DEFAULT_RATE,
            seed=self.seed,
            trains=self.train,
        )


def run_demo(options: DemoOptions) -> int:
    """Run the demo; 0 when it ran (also when stopped by Ctrl-C), else the service's exit code."""
    options.validate()
    interactive = wants_live_view(options.ui)
    # The live view shows what the service's info lines would say; a pipe gets the lines too.
    configure_logging(options.log_level or ("warning" if interactive else "info"))
    view = make_view(interactive)
    try:
        with ExitStack() as stack:
            signals = stack.enter_context(StopSignals().installed())
            stack.callback(view.close)
            return _Demo(options, view, signals, stack).run()
    except KeyboardInterrupt:
        # Everything started was stopped by the ExitStack on the way here.
        print("stream-detector demo: interrupted; broker and service stopped", file=sys.stderr)
        return 0


class _RateMeter:
    """Events per second over the last couple of seconds, from a growing counter."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, now: float, count: int) -> float:
        self._samples.append((now, count))
        while len(self._samples) > 2 and now - self._samples[0][0] > _RATE_WINDOW_S:
            self._samples.popleft()
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0


class _Demo:
    """One run; every resource it starts is registered on `stack`, newest stopped first."""

    def __init__(
        self, options: DemoOptions, view: DemoView, signals: StopSignals, stack: ExitStack
    ) -> None:
        self.options = options
        self.view = view
        self.signals = signals
        self.stack = stack
        self.scenario = options.make_scenario()

    def run(self) -> int:
        scenario = self.scenario
        model_dir, model_source = self._model()
        model_version = self._check_model(model_dir)
        broker = self._broker()
        http_port = free_port()
        wiring = {
            "kafka": {
                **_SERVICE_KAFKA,
                "bootstrap_servers": broker.bootstrap_servers,
                "input_topics": [scenario.input_topic],
                "dead_letter_topic": f"{scenario.input_topic}.dlq",
            },
            "model": {"path": str(model_dir)},
            "observability": {"http_port": http_port},
            # The broker forgets everything when the demo ends, so a checkpoint kept from an
            # earlier run describes other topics. The service drops one whose offset lies past
            # the new log's end, but the demo's backlog can already reach past it, and then the
            # old state would be restored at a meaningless position: every demo starts cold.
            "state": {"store": "none"},
        }
        settings = scenario.settings(deep_merge(self.options.overrides, wiring))
        partitions = {
            scenario.input_topic: scenario.partitions,
            ALERT_TOPIC: 2,
            settings.kafka.dead_letter_topic: 1,
        }

        self.view.phase(f"creating topics {', '.join(partitions)}")
        ensure_topics(settings.kafka, partitions)
        service = _ServiceThread(settings)
        self.stack.callback(service.stop)
        feed = scenario.producer(settings.kafka)
        self.stack.callback(feed.stop)
        reader = AlertReader(settings.kafka, ALERT_TOPIC, partitions[ALERT_TOPIC])
        self.stack.callback(reader.close)
        self.view.phase(
            "starting the service and the feed (joining the consumer group takes a few seconds)"
        )
        service.start()
        feed.start()
        board = Scoreboard(scenario.slack_s(settings), scenario.kinds)
        watch = _Watch(scenario, feed, reader, MetricsProbe(http_port), board, self.view)
        self.view.start(
            DemoInfo(
                bootstrap=broker.bootstrap_servers,
                input_topic=scenario.input_topic,
                alert_topic=ALERT_TOPIC,
                metrics_url=watch.probe.url,
                model_version=model_version,
                model_source=model_source,
                feed=scenario.describe(),
                duration_s=self.options.duration_s or None,
            )
        )
        self.signals.live = True
        ended_by = self._watch_live(watch, service, feed)
        log.info("demo stopping", reason=ended_by)
        feed.stop()
        watch.catch_up(service)
        service.stop()
        watch.settle()
        # No exit code: the service thread died of an exception or did not stop in time.
        exit_code = 1 if service.exit_code is None else service.exit_code
        summary = watch.summary(broker.bootstrap_servers, model_version, exit_code)
        self.view.finish(summary)
        if exit_code != 0:
            print(
                f"stream-detector demo: the service stopped with exit code {exit_code}; "
                "its log lines above say why",
                file=sys.stderr,
            )
        return exit_code

    def _model(self) -> tuple[Path, str]:
        if not self.options.train:
            return self.scenario.bundled_model, "bundled"
        settings = self.scenario.training_settings(self.options.overrides)
        out = Path(self.stack.enter_context(tempfile.TemporaryDirectory(prefix="sd-demo-model-")))
        self.view.phase(self.scenario.training_phase)
        progress = self.view.training_progress(settings.train.epochs)
        self.scenario.train(settings, out, progress)
        return out, "trained on the warm-up stretch"

    def _broker(self) -> EmbeddedBroker:
        self.view.phase("starting the embedded Kafka broker (Tansu)")
        broker = EmbeddedBroker()
        self.stack.callback(broker.stop)
        try:
            with children_shielded():
                broker.start()
        except (RuntimeError, OSError, TimeoutError) as exc:  # no binary, or it would not serve
            raise ConfigError(f"cannot start the embedded broker: {exc}") from None
        return broker

    def _check_model(self, model_dir: Path) -> str:
        """Refuse a mismatching model before anything starts, with a hint, rather than as a
        service that dies later."""
        settings = self.scenario.settings(self.options.overrides)
        try:
            # Only the metadata is needed here; the service loads the model on its own device.
            artefact = load_artefact(model_dir, settings, torch.device("cpu"))
            return artefact.metadata.model_version
        except ArtefactError as exc:
            raise ConfigError(
                f"{exc}\n(the bundled model fits the demo's own settings; with --set changes to "
                "window.size, the model section or the features, add --train)"
            ) from None

    def _watch_live(self, watch: _Watch, service: _ServiceThread, feed: PacedProducer) -> str:
        started = time.monotonic()
        duration = self.options.duration_s
        while True:
            if self.signals.stop.is_set():
                return "stop requested"
            if duration and time.monotonic() - started >= duration:
                return "duration reached"
            if not service.running:
                return "service stopped"
            if feed.failed:
                return feed.failed
            watch.refresh(time.monotonic() - started)


class _ServiceThread:
    """`run_service` in a thread, stopped through its stop_event."""

    def __init__(self, settings: Settings) -> None:
        self._stop = threading.Event()
        self._timeout = settings.kafka.shutdown_timeout_s + 10.0
        self.exit_code: int | None = None
        self._thread = threading.Thread(
            target=self._run, args=(settings,), name="sd-demo-service", daemon=True
        )

    def _run(self, settings: Settings) -> None:
        self.exit_code = run_service(settings, stop_event=self._stop)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(self._timeout)


class _Watch:
    """Reads the alert topic and /metrics, keeps the scoreboard, and feeds the view."""

    def __init__(
        self,
        scenario: DemoScenario,
        feed: PacedProducer,
        reader: AlertReader,
        probe: MetricsProbe,
        board: Scoreboard,
        view: DemoView,
    ) -> None:
        self.scenario = scenario
        self.feed = feed
        self.reader = reader
        self.probe = probe
        self.board = board
        self.view = view
        self.numbers: ServiceNumbers | None = None
        self.score = board.score(feed.horizon(0))
        self.elapsed = 0.0
        self._recent: deque[AlertLine] = deque(maxlen=RECENT_ALERTS)
        self._meter = _RateMeter()

    def _read_alerts(self, timeout_s: float) -> int:
        # Anomalies first: every alert's anomaly was injected before its readings were produced.
        self.board.add_injected(self.feed.take_anomalies())
        alerts = self.reader.poll(timeout_s)
        for data in alerts:
            self.board.add_alert(data)
            anomaly = self.board.anomaly_for(data)
            line = AlertLine(data, anomaly.kind if anomaly else None)
            self._recent.append(line)
            self.view.alert(line)
        return len(alerts)

    def refresh(self, elapsed: float) -> None:
        self.elapsed = elapsed
        self._read_alerts(_POLL_S)
        numbers = self.probe.read()
        if numbers is not None:
            self.numbers = numbers
        consumed = self.numbers.events_in if self.numbers else 0
        rate = self._meter.update(time.monotonic(), consumed)
        self.score = self.board.score(self.feed.horizon(consumed))
        self.view.update(
            Snapshot(
                elapsed, rate, self.feed.produced, self.numbers, self.score, tuple(self._recent)
            )
        )

    def catch_up(self, service: _ServiceThread) -> None:
        """Let the service finish what the feed produced, so the summary covers all of it."""
        deadline = time.monotonic() + _CATCH_UP_S
        while service.running and time.monotonic() < deadline:
            self.refresh(self.elapsed)
            if self.numbers is not None and self.numbers.events_in >= self.feed.produced:
                return
        log.warning(
            "the service did not catch up with the feed; the summary covers what it processed",
            produced=self.feed.produced,
            processed=self.numbers.events_in if self.numbers else 0,
        )

    def settle(self) -> None:
        """Read alerts until the topic has been quiet for a moment (the last batch's output)."""
        while self._read_alerts(_SETTLE_S):
            pass
        consumed = self.numbers.events_in if self.numbers else 0
        self.score = self.board.score(self.feed.horizon(min(consumed, self.feed.produced)))

    def summary(self, bootstrap: str, model_version: str, exit_code: int) -> dict[str, Any]:
        numbers = self.numbers or ServiceNumbers()
        return {
            "elapsed_s": round(self.elapsed, 1),
            **self.scenario.summary(),
            "events_produced": self.feed.produced,
            "events_processed": numbers.events_in,
            "alerts_opened": numbers.alerts_opened,
            "alerts_resolved": numbers.alerts_resolved,
            **self.score.as_dict(),
            "bootstrap": bootstrap,
            "model_version": model_version,
            "service_exit_code": exit_code,
        }
