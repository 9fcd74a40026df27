"""The model lifecycle through the real broker: a shift, a retrain, a shadow, a promotion; and a
promotion rolled back by hand.

The shift: half-way through, every key's level rises by 3 and its noise quadruples. The model
trained before it alerts at the step (the windows that span it), and its scores drift up for
good. With `lifecycle.retrain` on (everything else at the defaults), the replica that owns input
partition 0 must retrain on what it saw, leaving the episodes it raised out, shadow the
candidate, and promote it; then both replicas serve the candidate, which is quiet on the new
normal and still alerts on anomalies injected after it. No input may be skipped or processed
twice across the swap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka_harness import (
    T0,
    ServiceProcess,
    ServiceSetup,
    committed_offsets,
    encode_event,
    settings_decoder,
    wait_until,
)
from test_service import _alerts

from stream_detector.cli import main
from stream_detector.config import load_settings
from stream_detector.detector.registry_dir import DirectoryRegistry
from stream_detector.detector.training import train

pytestmark = pytest.mark.integration

N_KEYS = 20
SHIFT = 300  # the step the new normal starts at
LEVEL, NOISE_BEFORE, NOISE_AFTER = 3.0, 0.1, 0.4
INJECTED = 6.0
# Steps fed per injected anomaly in the rollback test: past its end by more than a cool-down.
ANOMALY_FEED = 120


def _events(
    first: int, stop: int, anomalies: dict[str, tuple[int, int]] | None = None
) -> list[dict[str, Any]]:
    """Keys k00..k19 of noisy sines, one event per key per step, the shift from SHIFT on."""
    phase = np.random.default_rng(0).uniform(0, 2 * np.pi, N_KEYS)
    rng = np.random.default_rng(first)
    out = []
    for step in range(first, stop):
        after = step >= SHIFT
        noise = rng.normal(0, NOISE_AFTER if after else NOISE_BEFORE, N_KEYS)
        values = np.sin(2 * np.pi * step / 20 + phase) + noise + (LEVEL if after else 0.0)
        for k in range(N_KEYS):
            key = f"k{k:02d}"
            start, end = (anomalies or {}).get(key, (0, 0))
            value = values[k] + (INJECTED if start <= step < end else 0.0)
            out.append({"key": key, "ts": T0 + step, "value": round(float(value), 5)})
    return out


class PacedFeed:
    """Produces the feed on from a step, `rate` steps a second, until stopped: a live source."""

    def __init__(self, produce: Callable[..., None], topic: str, step: int, rate: float) -> None:
        self.produce, self.topic, self.step, self.rate = produce, topic, step, rate
        self.events = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PacedFeed:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        chunk = max(int(self.rate // 10), 1)
        while not self._stop.is_set():
            started = time.monotonic()
            events = _events(self.step, self.step + chunk)
            self.produce(self.topic, events)
            self.events += len(events)
            self.step += chunk
            self._stop.wait(max(chunk / self.rate - (time.monotonic() - started), 0.0))


def _metric(service: ServiceProcess, name: str) -> float:
    return service.metrics().get(name, 0.0)


def _serving(service: ServiceProcess, version: str) -> bool:
    return _metric(service, f"sd_model_info{{model_version={version}}}") == 1.0


def _opened(alerts: list[dict[str, Any]], since: float, until: float = float("inf")) -> list[Any]:
    return [a for a in alerts if a["kind"] == "open" and since <= a["window_end"] - T0 < until]


def test_a_shift_is_retrained_shadowed_and_promoted_on_every_replica(
    service_setup: ServiceSetup,
    start_service: Callable[..., ServiceProcess],
    produce_events: Callable[..., None],
    consume_all: Callable[..., list[Any]],
    kafka_bootstrap: str,
    model_dir: Path,
    tmp_path: Path,
) -> None:
    registry_dir = tmp_path / "registry"
    lifecycle = {"registry_dir": str(registry_dir), "retrain": True}
    replicas = [start_service(lifecycle=lifecycle), start_service(lifecycle=lifecycle)]
    registry = DirectoryRegistry(registry_dir)
    first_version = registry.active()
    assert first_version is not None, "the running model becomes the registry's first version"

    produced = len(before := _events(0, 700))
    produce_events(service_setup.input_topic, before)
    with PacedFeed(produce_events, service_setup.input_topic, 700, rate=50) as feed:
        wait_until(
            lambda: sum(_metric(r, 'sd_retrains_total{outcome=started}') for r in replicas) >= 1,
            120,
            "a retrain started by drift",
        )
        retrain_started = time.monotonic()
        wait_until(
            lambda: registry.refresh() is None and registry.active() != first_version,
            300,
            "the candidate retrained, shadowed and promoted",
        )
        promoted = time.monotonic()
        candidate = registry.active()
        assert candidate is not None
        wait_until(
            lambda: all(_serving(r, candidate) for r in replicas), 60, "every replica swapped"
        )
        swapped_at = feed.step  # every event from here on is scored by the candidate
        time.sleep(2.0)
    produced += feed.events
    last = feed.step
    injected = {"k03": (last + 100, last + 110), "k07": (last + 150, last + 160)}
    after = _events(last, last + 300, injected)
    produce_events(service_setup.input_topic, after)
    produced += len(after)
    wait_until(
        lambda: sum(_metric(r, "sd_events_in_total") for r in replicas) >= produced
        and all(_metric(r, "sd_produce_in_flight") == 0 for r in replicas),
        120,
        "every event processed",
    )

    alerts = _alerts(consume_all(service_setup.alert_topic))
    onset = {a["key"] for a in _opened(alerts, SHIFT, SHIFT + 60)}
    assert len(onset) >= 3, f"the shift must alert under the first model: {sorted(onset)}"
    entry = registry.entry(candidate)
    assert entry.source == "retrain:stream" and entry.parent == first_version
    assert entry.reports["shadow"]["verdict"] == "pass"
    assert entry.reports["retrain"]["events"] > 0
    quiet = _opened(alerts, swapped_at + 10)
    assert {a["key"] for a in quiet} == set(injected), (
        f"after the promotion only the injected anomalies may alert: {quiet}"
    )
    assert {a["model_version"] for a in quiet} == {candidate}
    # Counts balance: every input offset processed once, and all of them committed.
    assert sum(_metric(r, "sd_events_in_total") for r in replicas) == produced
    topic = service_setup.input_topic
    wait_until(
        lambda: sum(committed_offsets(kafka_bootstrap, service_setup.group_id, topic).values())
        == produced,
        90,
        "every input offset committed",
    )
    print(
        f"\nlifecycle figures: keys alerted at the shift {len(onset)}/{N_KEYS}; episodes opened "
        f"before it {len(_opened(alerts, 0, SHIFT))}, in its first 60 s "
        f"{len(_opened(alerts, SHIFT, SHIFT + 60))}, after the swap {len(quiet)} (injected "
        f"{len(injected)}); retrain start -> promotion {promoted - retrain_started:.1f} s; "
        f"events {produced}, swap at step {swapped_at}; shadow {entry.reports['shadow']}"
    )


@pytest.fixture(scope="module")
def second_model(
    trained_sections: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Another model of the same architecture (another seed): a version to promote."""
    sections = {**trained_sections, "train": {**trained_sections["train"], "seed": 7}}
    settings = load_settings(None, sections)
    events = _events(0, 300)
    decoded = settings_decoder(settings).decode_messages([encode_event(e)[1] for e in events])
    out = tmp_path_factory.mktemp("second-model")
    train([decoded], settings, out)
    return out


def test_a_promotion_rolled_back_serves_the_old_version_again(
    service_setup: ServiceSetup,
    start_service: Callable[..., ServiceProcess],
    produce_events: Callable[..., None],
    consume_all: Callable[..., list[Any]],
    model_dir: Path,
    second_model: Path,
    tmp_path: Path,
) -> None:
    registry_dir = tmp_path / "registry"
    registry = DirectoryRegistry(registry_dir)
    first = registry.register(model_dir, source="train", parent=None, data_span=None).version
    registry.promote(first, "first")
    second = registry.register(second_model, source="train", parent=first, data_span=None).version
    service = start_service(lifecycle={"registry_dir": str(registry_dir)})
    assert _serving(service, first)
    models = ["models", "--set", f"lifecycle.registry_dir={registry_dir}"]

    def serve_until(version: str, feed_from: int) -> int:
        """Feed normal events until the service swapped to `version`; the next free step."""
        with PacedFeed(produce_events, service_setup.input_topic, feed_from, rate=20) as feed:
            wait_until(lambda: _serving(service, version), 60, f"serving {version}")
        return feed.step

    def anomaly_alerts(key: str, step: int) -> list[dict[str, Any]]:
        """The alerts of an anomaly injected on `key` after `step` (the events from there).
        The feed runs on well past the anomaly, so that an episode the key had open already
        (a warm-up alert of a model just swapped in) resolves after it: that resolve, not a new
        open, is then the anomaly's alert."""
        events = _events(step, step + ANOMALY_FEED, {key: (step + 20, step + 30)})
        produce_events(service_setup.input_topic, events)

        def raised() -> list[dict[str, Any]]:
            alerts = _alerts(consume_all(service_setup.alert_topic))
            return [a for a in alerts if a["key"] == key and a["window_end"] >= T0 + step + 20]

        wait_until(lambda: bool(raised()), 60, f"{key}'s anomaly alerted")
        return raised()

    step = serve_until(first, 0)
    assert main([models[0], "promote", second, *models[1:]]) == 0
    step = serve_until(second, step)
    assert {a["model_version"] for a in anomaly_alerts("k05", step + 1)} == {second}
    assert main([models[0], "rollback", *models[1:]]) == 0
    registry.refresh()
    assert registry.active() == first
    step = serve_until(first, step + ANOMALY_FEED + 1)
    assert {a["model_version"] for a in anomaly_alerts("k09", step + 1)} == {first}
