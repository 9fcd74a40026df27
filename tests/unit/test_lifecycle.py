"""The service's model lifecycle without a broker: following the registry's active version,
retraining from the stream in the background, shadowing the candidate and promoting it.

Every test drives a real `ModelLifecycle` with a `DirectoryRegistry` in a temporary directory, a
real `ServiceMetrics` and a `Detector` on tiny artefacts, calling `before_batch` / `after_batch`
as the service loop does around each batch. Drift figures are made up: they only say whether
retraining is due. The retrain feed is deliberately drifted (the active model learnt a slow
sine, the recent data is a fast one) so that a candidate trained on it fits the data better,
and the unpatched verdict passes; the promotion logic is also tested on verdicts given by
patching `ShadowRun.report`, pass and fail each.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch

from stream_detector.aggregate.decoder import decoder_for
from stream_detector.config import Settings, load_settings
from stream_detector.detector.artefact import ModelArtefact
from stream_detector.detector.drift import DriftFigures
from stream_detector.detector.facade import DetectionResult, Detector
from stream_detector.detector.recent import RecentEpisodes, RecentEvents
from stream_detector.detector.registry_dir import DirectoryRegistry
from stream_detector.detector.shadow import ShadowRun
from stream_detector.detector.training import train
from stream_detector.engine.alerts import Alert
from stream_detector.engine.types import EventBatch
from stream_detector.kafka.lifecycle import ModelLifecycle
from stream_detector.kafka.telemetry import ServiceMetrics

T0 = 1_700_000_000.0
KEYS = ("k0", "k1", "k2")
SECTIONS: dict[str, Any] = {
    "window": {"size": 4, "stride": 1},
    "normalize": {"warmup": 5},
    "model": {"hidden_size": 4, "latent_size": 2, "device": "cpu"},
    "train": {"epochs": 1, "batch_size": 64, "max_windows": 400},
    "threshold": {"warmup": 10, "sensitivity": 3.0},
    "episodes": {"min_consecutive": 1, "cooldown": 3},
}
# What retraining needs at the least (config.py: retrain_min_events >= 100, max_events >= 1000).
RETRAIN: dict[str, Any] = {
    "retrain": True,
    "retrain_min_events": 100,
    "retrain_max_events": 1000,
    "shadow_windows": 30,
}
STEPS_PER_BATCH = 20  # x 3 keys = 60 events, and 60 windows once the keys' windows are full


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models train faster on one thread than contending for a loaded machine's cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- data, models and the service's pieces --------------------------------------------------------


def _payloads(
    steps: range, seed: int, *, fast: bool = False, shift_at: Sequence[int] = ()
) -> list[bytes]:
    """One event per key a second: a slow sine (what the models learnt), or a fast one (the
    drifted feed), with noise; `shift_at` steps get a level shift of 5."""
    rng = np.random.default_rng(seed)
    out = []
    for i in steps:
        for k, key in enumerate(KEYS):
            phase = i * 2.0 + k if fast else i / 3 + k
            value = np.sin(phase) + rng.normal(0, 0.1) + (5.0 if i in shift_at else 0.0)
            out.append(orjson.dumps({"key": key, "ts": T0 + i, "value": float(value)}))
    return out


@dataclass(frozen=True)
class Saved:
    """A trained artefact and the directory it was saved in."""

    artefact: ModelArtefact
    path: Path

    @property
    def version(self) -> str:
        return self.artefact.metadata.model_version


@dataclass(frozen=True)
class Models:
    first: Saved  # the active model of most tests
    second: Saved  # another servable version
    other_window: Saved  # trained with window.size 6: this configuration cannot serve it


def _train(out: Path, seed: int, window: int = 4) -> Saved:
    sections = {
        **SECTIONS,
        "window": {**SECTIONS["window"], "size": window},
        "train": {**SECTIONS["train"], "seed": seed},
    }
    settings = load_settings(None, sections)
    batch = decoder_for(settings).decode_messages(_payloads(range(200), seed=seed))
    return Saved(train([batch], settings, out_dir=out), out)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("models")
    made = Models(
        _train(root / "first", 0), _train(root / "second", 1), _train(root / "six", 0, window=6)
    )
    assert len({made.first.version, made.second.version, made.other_window.version}) == 3
    return made


def _settings(root: Path, model: Path | None, **lifecycle: Any) -> Settings:
    return load_settings(
        None,
        {
            **SECTIONS,
            "model": {**SECTIONS["model"], "path": None if model is None else str(model)},
            "lifecycle": {
                "registry_dir": str(root / "registry"),
                "poll_interval_s": 0.01,
                **lifecycle,
            },
        },
    )


def _figures(due: bool) -> DriftFigures:
    return DriftFigures(
        windows=1000.0,
        psi=0.9 if due else 0.01,
        median_ratio=1.0,
        over_threshold_share=0.0,
        expected_over_threshold_share=0.005,
        new_key_share=0.0,
        model_age_days=0.0,
        retrain_due=due,
        reasons=("score PSI 0.9 > drift.psi_bound (made up)",) if due else (),
    )


NOT_DUE, DUE = _figures(False), _figures(True)


@dataclass
class Rig:
    """What the service holds around a lifecycle, and where its feed is."""

    settings: Settings
    detector: Detector
    registry: DirectoryRegistry
    metrics: ServiceMetrics
    lifecycle: ModelLifecycle
    step: int = 0
    results: list[DetectionResult] = field(default_factory=list)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def feed(
        self,
        drift: DriftFigures = NOT_DUE,
        *,
        leader: bool = True,
        fast: bool = True,
        shift: bool = False,
    ) -> DetectionResult:
        """One batch of STEPS_PER_BATCH steps through the detector, then `after_batch`."""
        steps = range(self.step, self.step + STEPS_PER_BATCH)
        self.step += STEPS_PER_BATCH
        payloads = _payloads(steps, seed=self.step, fast=fast, shift_at=steps if shift else ())
        decoded = decoder_for(self.settings).decode_messages(payloads)
        result = self.detector.process(decoded)
        self.results.append(result)
        self.lifecycle.after_batch(decoded.batch, result.alerts, drift, leader)
        return result


@pytest.fixture()
def rigs() -> Iterator[list[Rig]]:
    """The rigs a test makes; closed (a running retrain joined)."""
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.lifecycle.close()


def _rig(
    rigs: list[Rig], root: Path, model: Saved, *, with_path: bool = True, **lifecycle: Any
) -> Rig:
    """A detector serving `model` (model.path its directory, unless not `with_path`), with the
    lifecycle the service would give it (not started)."""
    path = model.path if with_path else None
    settings = _settings(root, path, **lifecycle)
    detector = Detector(settings, model.artefact)
    registry = DirectoryRegistry(root / "registry")
    metrics = ServiceMetrics()
    metrics.start_model(detector.model_version)
    rig = Rig(
        settings, detector, registry, metrics, ModelLifecycle(settings, detector, registry, metrics)
    )
    rigs.append(rig)
    return rig


def _poll(lifecycle: ModelLifecycle) -> list[Alert]:
    """`before_batch` once the poll interval (0.01 s here) has passed."""
    time.sleep(lifecycle.config.poll_interval_s + 0.01)
    return lifecycle.before_batch()


def _to_shadow(rig: Rig, before: int = 3) -> str:
    """`before` drifted batches, one more with retraining due, the retrain joined, and the
    batch after it, which registers the candidate and starts its shadow; returns the
    candidate's version."""
    for _ in range(before):
        rig.feed()
    assert rig.lifecycle._training is None, "not due: no retrain"
    rig.feed(DUE)
    training = rig.lifecycle._training
    assert training is not None, "due, with enough events: a retrain runs"
    training.thread.join()
    rig.feed()
    shadow = rig.detector.shadow
    assert shadow is not None, "the finished retrain's candidate is shadowed"
    return shadow.version


def _through_shadow(rig: Rig, limit: int = 10) -> None:
    """Batches until the lifecycle concluded the shadow: stopped (a fail) or marked concluded
    (a pass shadows on until promoted)."""
    for _ in range(limit):
        shadow = rig.detector.shadow
        if shadow is None or shadow.concluded:
            return
        rig.feed()
    raise AssertionError(f"the shadow did not conclude within {limit} batches")


def _given_verdict(monkeypatch: pytest.MonkeyPatch, verdict: str) -> None:
    """Every shadow report says `verdict` (its figures are the real report's)."""
    real = ShadowRun.report

    def report(self: ShadowRun) -> dict[str, Any]:
        return {**real(self), "verdict": verdict, "why": f"made {verdict} by the test"}

    monkeypatch.setattr(ShadowRun, "report", report)


# -- start ---------------------------------------------------------------------------------------


def test_start_registers_and_promotes_the_running_model_in_an_empty_registry(
    tmp_path: Path, models: Models, rigs: list[Rig]
) -> None:
    """An empty registry gets the running model (from model.path) as its first active version,
    registered with source "run" and no parent, and another reader of the directory sees it."""
    rig = _rig(rigs, tmp_path, models.first)
    rig.lifecycle.start()
    assert rig.registry.active() == models.first.version
    entry = rig.registry.entry(models.first.version)
    assert (entry.source, entry.parent, entry.data_span) == ("run", None, None)
    assert [(h.action, h.version) for h in rig.registry.history()] == [
        ("promote", models.first.version)
    ]
    assert DirectoryRegistry(tmp_path / "registry").active() == models.first.version


def test_start_leaves_a_registry_with_an_active_version_alone(
    tmp_path: Path, models: Models, rigs: list[Rig]
) -> None:
    """With an active version already, start neither registers the running model nor promotes
    anything: the first batch's poll follows the registry instead."""
    registry = DirectoryRegistry(tmp_path / "registry")
    registry.register(models.second.path, source="train", parent=None, data_span=None)
    registry.promote(models.second.version, "chosen before the service started")
    rig = _rig(rigs, tmp_path, models.first)
    rig.lifecycle.start()
    rig.registry.refresh()
    assert [e.version for e in rig.registry.entries()] == [models.second.version]
    assert len(rig.registry.history()) == 1
    assert rig.registry.active() == models.second.version
    assert rig.detector.model_version == models.first.version, "start swaps nothing"


def test_start_without_a_model_path_registers_nothing(
    tmp_path: Path, models: Models, rigs: list[Rig]
) -> None:
    """Without model.path there is no artefact directory to register: the registry stays empty."""
    rig = _rig(rigs, tmp_path, models.first, with_path=False)
    rig.lifecycle.start()
    assert rig.registry.entries() == [] and rig.registry.active() is None


def test_two_replicas_starting_on_one_empty_registry_end_with_one_active_version(
    tmp_path: Path, models: Models, rigs: list[Rig]
) -> None:
    """Two replicas of one model start at once: the second read the registry empty just before
    the first registered and promoted. Neither raises, the model is registered once, promoted
    once, and both see it active."""
    first = _rig(rigs, tmp_path, models.first)
    second = _rig(rigs, tmp_path, models.first)
    real_refresh = second.registry.refresh
    calls = 0

    def refresh_then_the_other_starts() -> None:
        nonlocal calls
        real_refresh()
        calls += 1
        if calls == 1:
            assert second.registry.active() is None
            first.lifecycle.start()  # between the second's read and its registration

    second.registry.refresh = refresh_then_the_other_starts  # type: ignore[method-assign]
    second.lifecycle.start()
    assert calls >= 1
    for rig in (first, second):
        rig.registry.refresh()
        assert rig.registry.active() == models.first.version
        assert [e.version for e in rig.registry.entries()] == [models.first.version]
        assert [(h.action, h.version) for h in rig.registry.history()] == [
            ("promote", models.first.version)
        ]


def test_two_replicas_starting_one_after_the_other_promote_once(
    tmp_path: Path, models: Models, rigs: list[Rig]
) -> None:
    """The second replica to start finds the first's version active and leaves it so."""
    first = _rig(rigs, tmp_path, models.first)
    second = _rig(rigs, tmp_path, models.first)
    first.lifecycle.start()
    second.lifecycle.start()
    second.registry.refresh()
    assert second.registry.active() == models.first.version
    assert len(second.registry.history()) == 1


# -- before_batch: following the registry ---------------------------------------------------------


def test_before_batch_waits_for_the_poll_interval(
    tmp_path: Path, models: Models, rigs: list[Rig]
) -> None:
    """The registry is read at most every poll_interval_s: a promotion made just after a read
    is not seen until the interval has passed again; then the model is swapped, and a rollback
    made just after that read waits for the next one the same way."""
    rig = _rig(rigs, tmp_path, models.first, poll_interval_s=0.3)
    rig.lifecycle.start()
    rig.registry.register(models.second.path, source="train", parent=None, data_span=None)
    time.sleep(0.35)
    assert rig.lifecycle.before_batch() == [], "read: nothing changed"
    rig.registry.promote(models.second.version, "test")
    assert rig.lifecycle.before_batch() == []
    assert rig.detector.model_version == models.first.version, "too early: not read yet"
    time.sleep(0.35)
    rig.lifecycle.before_batch()
    assert rig.detector.model_version == models.second.version
    rig.registry.rollback("test")
    assert rig.lifecycle.before_batch() == []
    assert rig.detector.model_version == models.second.version, "read just now: not again yet"
    time.sleep(0.35)
    rig.lifecycle.before_batch()
    assert rig.detector.model_version == models.first.version
    assert rig.sample("sd_model_swaps_total") == 2


def test_a_promotion_swaps_the_model_and_resolves_the_open_episodes(
    tmp_path: Path, models: Models, rigs: list[Rig]
) -> None:
    """After `promote(v2)` the next poll swaps the detector to v2 and returns the resolves
    ("model_changed", v1's) of the episodes open under v1; sd_model_info moves from v1 to v2.
    A rollback swaps back the same way; a poll with nothing changed swaps nothing."""
    v1, v2 = models.first.version, models.second.version
    rig = _rig(rigs, tmp_path, models.first)
    rig.lifecycle.start()
    assert _poll(rig.lifecycle) == [], "the registry's active version is the one served"
    for _ in range(2):
        rig.feed(fast=False)
    rig.feed(fast=False, shift=True)  # a level shift held to the end: episodes stay open
    alerts = [a for r in rig.results for a in r.alerts]
    resolved_ids = {a.episode_id for a in alerts if a.kind == "resolve"}
    open_keys = {a.key for a in alerts if a.kind == "open" and a.episode_id not in resolved_ids}
    assert rig.detector.open_episodes > 0 and open_keys
    rig.registry.register(models.second.path, source="train", parent=v1, data_span=None)
    rig.registry.promote(v2, "test")

    resolved = _poll(rig.lifecycle)
    assert resolved and all(a.kind == "resolve" for a in resolved)
    assert {a.reason for a in resolved} == {"model_changed"}
    assert {a.model_version for a in resolved} == {v1}
    assert {a.key for a in resolved} == open_keys
    assert rig.detector.model_version == v2 and rig.detector.open_episodes == 0
    assert rig.sample("sd_model_info", model_version=v1) == 0
    assert rig.sample("sd_model_info", model_version=v2) == 1
    assert rig.sample("sd_model_swaps_total") == 1

    assert _poll(rig.lifecycle) == []
    assert rig.sample("sd_model_swaps_total") == 1, "nothing changed: no swap"

    rig.registry.rollback("test")
    _poll(rig.lifecycle)
    assert rig.detector.model_version == v1
    assert rig.sample("sd_model_info", model_version=v1) == 1
    assert rig.sample("sd_model_info", model_version=v2) == 0
    assert rig.sample("sd_model_swaps_total") == 2
    after = rig.feed(fast=False)
    assert all(a.model_version == v1 for a in after.alerts)


@pytest.mark.parametrize("damage", ["other window size", "weights gone"])
def test_a_version_that_cannot_be_served_is_refused_and_the_current_model_stays(
    tmp_path: Path, models: Models, rigs: list[Rig], damage: str
) -> None:
    """A registered, promoted version this configuration cannot load (trained with another
    window size; or its weights file lost from the registry) is not swapped to: the current
    model serves on, sd_model_load_failures_total counts it, sd_model_info is unchanged."""
    v1 = models.first.version
    rig = _rig(rigs, tmp_path, models.first)
    rig.lifecycle.start()
    bad = models.other_window if damage == "other window size" else models.second
    rig.registry.register(bad.path, source="train", parent=v1, data_span=None)
    rig.registry.promote(bad.version, "test")
    if damage == "weights gone":
        (rig.registry.artefact_dir(bad.version) / "model.safetensors").unlink()
    rig.feed(fast=False)
    assert _poll(rig.lifecycle) == []
    assert rig.detector.model_version == v1
    assert rig.sample("sd_model_load_failures_total") == 1
    assert rig.sample("sd_model_swaps_total") == 0
    assert rig.sample("sd_model_info", model_version=v1) == 1
    assert rig.sample("sd_model_info", model_version=bad.version) is None
    assert rig.registry.active() == bad.version, "the lifecycle does not change the registry"
    result = rig.feed(fast=False)
    assert len(result.scored) and all(a.model_version == v1 for a in result.alerts)


def test_an_unreadable_registry_keeps_the_current_model(
    tmp_path: Path, models: Models, rigs: list[Rig]
) -> None:
    """A damaged registry file makes the poll a no-op, not an exception."""
    rig = _rig(rigs, tmp_path, models.first)
    rig.lifecycle.start()
    with open(tmp_path / "registry" / "history.jsonl", "ab") as history:
        history.write(b"not json\n")
    assert _poll(rig.lifecycle) == []
    assert rig.detector.model_version == models.first.version
    assert rig.sample("sd_model_load_failures_total") == 0


# -- after_batch: what is kept for retraining -----------------------------------------------------


def _alert(
    kind: str, episode: str, key: str, window: tuple[float, float], episode_start: float
) -> Alert:
    return Alert(
        kind=kind,  # type: ignore[arg-type]
        alert_id=f"{episode}-{kind}",
        episode_id=episode,
        key=key,
        window_start=window[0],
        window_end=window[1],
        score=2.0,
        threshold=1.0,
        severity="medium",
        top_features=(),
        model_version="lstm-ae-000000000000",
        episode_start=episode_start,
        windows_over=1,
        event_index=0,
        reason=None if kind == "open" else "cooldown",
    )


def _events(ts: Sequence[float], key: str = "k0") -> EventBatch:
    n = len(ts)
    return EventBatch(
        np.arange(n, dtype=np.int64),
        np.array([key] * n, dtype=object),
        np.asarray(ts, dtype=np.float64),
        np.asarray(ts, dtype=np.float32).reshape(n, 1) - np.float32(T0),
    )


def test_with_retrain_off_after_batch_keeps_nothing_and_never_retrains(
    tmp_path: Path, models: Models, rigs: list[Rig]
) -> None:
    """Without lifecycle.retrain nothing is held, and due drift starts no retrain."""
    rig = _rig(rigs, tmp_path, models.first)
    rig.lifecycle.start()
    for _ in range(4):
        rig.feed(DUE)
    assert rig.lifecycle.recent is None
    assert rig.lifecycle.episodes.spans() == []
    assert rig.lifecycle._training is None and rig.detector.shadow is None
    assert rig.sample("sd_retrains_total", outcome="started") == 0


def test_as_leader_after_batch_keeps_the_events_and_the_episode_spans(
    tmp_path: Path, models: Models, rigs: list[Rig]
) -> None:
    """With lifecycle.retrain, the leader keeps each batch's events and the spans of the
    episodes in its alerts: an open paired with its resolve (from the opening window's start
    to the resolving window's end), an open one running to infinity, a resolve whose open came
    before (from its episode start). Closed spans ending before the oldest event held go."""
    rig = _rig(rigs, tmp_path, models.first, **RETRAIN)
    rig.lifecycle.start()
    lifecycle = rig.lifecycle
    lifecycle.after_batch(
        _events([T0 + i for i in range(600)]),
        [
            _alert("open", "e1", "k0", (T0 + 10, T0 + 13), T0 + 10),
            _alert("open", "e2", "k1", (T0 + 500, T0 + 503), T0 + 500),
            _alert("resolve", "e0", "k2", (T0 + 540, T0 + 543), T0 + 480),
        ],
        NOT_DUE,
        True,
    )
    lifecycle.after_batch(
        _events([T0 + 600 + i for i in range(100)]),
        [_alert("resolve", "e1", "k0", (T0 + 20, T0 + 23), T0 + 10)],
        NOT_DUE,
        True,
    )
    assert lifecycle.recent is not None and len(lifecycle.recent) == 700
    assert sorted(lifecycle.episodes.spans()) == [
        ("k0", T0 + 10, T0 + 23),
        ("k1", T0 + 500, math.inf),
        ("k2", T0 + 480, T0 + 543),
    ]
    # 500 more: the 1000 held start at T0 + 200, after e1's end but not e0's.
    lifecycle.after_batch(_events([T0 + 700 + i for i in range(500)]), [], NOT_DUE, True)
    assert len(lifecycle.recent) == 1000
    assert lifecycle.recent.oldest() == T0 + 200
    assert sorted(lifecycle.episodes.spans()) == [
        ("k1", T0 + 500, math.inf),
        ("k2", T0 + 480, T0 + 543),
    ]
    assert lifecycle._training is None, "not due: no retrain"


def test_not_as_leader_after_batch_keeps_nothing_and_never_retrains(
    tmp_path: Path, models: Models, rigs: list[Rig]
) -> None:
    """A replica that does not own the leader partition holds no events (it follows its
    episodes only, in case it becomes the leader), and due drift with plenty of events starts
    no retrain there."""
    rig = _rig(rigs, tmp_path, models.first, **RETRAIN)
    rig.lifecycle.start()
    for _ in range(3):
        rig.feed(leader=False, shift=True)
    rig.feed(DUE, leader=False)
    assert rig.lifecycle.recent is not None and len(rig.lifecycle.recent) == 0
    assert rig.lifecycle._training is None and rig.detector.shadow is None


def test_an_episode_resolved_while_not_leader_does_not_stay_open_forever(
    tmp_path: Path, models: Models, rigs: list[Rig]
) -> None:
    """Leadership lost and regained: the resolve of an episode opened while leader arrived in
    between (not observed). Once the events have moved on, that episode must not be held as
    running to infinity (which keeps all of its key's later windows out of retraining)."""
    rig = _rig(rigs, tmp_path, models.first, **RETRAIN)
    rig.lifecycle.start()
    lifecycle = rig.lifecycle
    opened = _alert("open", "e1", "k0", (T0 + 10, T0 + 13), T0 + 10)
    lifecycle.after_batch(_events([T0 + i for i in range(100)]), [opened], NOT_DUE, True)
    resolved = _alert("resolve", "e1", "k0", (T0 + 120, T0 + 123), T0 + 10)
    lifecycle.after_batch(_events([T0 + 100 + i for i in range(100)]), [resolved], NOT_DUE, False)
    later = [T0 + 200 + i for i in range(1500)]
    lifecycle.after_batch(_events(later), [], NOT_DUE, True)
    assert ("k0", T0 + 10, math.inf) not in lifecycle.episodes.spans()


# -- after_batch: retraining, shadow, verdict -----------------------------------------------------


def test_too_few_events_start_no_retrain(tmp_path: Path, models: Models, rigs: list[Rig]) -> None:
    """Due drift with fewer than retrain_min_events held starts nothing."""
    rig = _rig(rigs, tmp_path, models.first, **{**RETRAIN, "retrain_min_events": 200})
    rig.lifecycle.start()
    rig.feed()
    rig.feed(DUE)  # 120 events
    assert rig.lifecycle._training is None
    assert rig.sample("sd_retrains_total", outcome="started") == 0
    rig.feed()
    rig.feed(DUE)  # 240 events
    assert rig.lifecycle._training is not None


def test_a_due_retrain_registers_its_candidate_and_shadows_it(
    tmp_path: Path, models: Models, rigs: list[Rig]
) -> None:
    """Drift due with enough events held starts a retrain in a background thread; the batch
    after it finished registers the candidate (source "retrain:stream", parent the active
    version, a "retrain" report over the events held) and starts its shadow; the registry's
    active version does not change, and the cooldown keeps a second retrain from starting."""
    v1 = models.first.version
    rig = _rig(rigs, tmp_path, models.first, **RETRAIN)
    rig.lifecycle.start()
    held_at_start = 4 * STEPS_PER_BATCH * len(KEYS)
    candidate = _to_shadow(rig)
    assert rig.sample("sd_retrains_total", outcome="started") == 1
    assert rig.sample("sd_retrains_total", outcome="finished") == 1
    assert rig.sample("sd_retrains_total", outcome="failed") == 0
    assert candidate not in (v1, models.second.version)

    fresh = DirectoryRegistry(tmp_path / "registry")
    entry = fresh.entry(candidate)
    assert entry.source == "retrain:stream"
    assert entry.parent == v1
    assert entry.data_span == (T0, T0 + 4 * STEPS_PER_BATCH - 1)
    assert set(entry.reports) == {"retrain"}
    assert entry.reports["retrain"]["events"] == held_at_start
    assert fresh.active() == v1
    assert rig.detector.model_version == v1, "a candidate is only shadowed"
    assert _poll(rig.lifecycle) == [] and rig.detector.model_version == v1

    rig.feed(DUE)
    assert rig.lifecycle._training is None, "shadowing, and within the cooldown: no retrain"


def test_the_retrain_report_names_the_parent_and_counts_the_episodes(
    tmp_path: Path, models: Models, rigs: list[Rig]
) -> None:
    """The "retrain" report of a stream candidate says what the `retrain` command's do: the
    version it is to succeed as "parent", the episodes the service raised on its data as
    "episodes", and the spans operators marked true positive (none here) as
    "labelled_spans"."""
    rig = _rig(rigs, tmp_path, models.first, **RETRAIN)
    rig.lifecycle.start()
    for _ in range(3):
        rig.feed()
    rig.feed(DUE)
    episodes = len(rig.lifecycle.episodes.spans())
    assert episodes > 0, "the drifted feed raised episodes before the retrain"
    training = rig.lifecycle._training
    assert training is not None
    training.thread.join()
    rig.feed()
    shadow = rig.detector.shadow
    assert shadow is not None
    report = rig.registry.entry(shadow.version).reports["retrain"]
    assert (report["parent"], report["episodes"], report["labelled_spans"]) == (
        models.first.version,
        episodes,
        0,
    )


def test_a_failed_retrain_leaves_the_active_model(
    tmp_path: Path, models: Models, rigs: list[Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retrain that raises (too little data left, say) is counted as failed; nothing is
    registered or shadowed."""

    def failing(*args: Any, **kwargs: Any) -> None:
        raise ValueError("too few windows to train on (made up)")

    monkeypatch.setattr("stream_detector.kafka.lifecycle.retrain", failing)
    rig = _rig(rigs, tmp_path, models.first, **RETRAIN)
    rig.lifecycle.start()
    for _ in range(3):
        rig.feed()
    rig.feed(DUE)
    training = rig.lifecycle._training
    assert training is not None
    training.thread.join()
    rig.feed()
    assert rig.sample("sd_retrains_total", outcome="failed") == 1
    assert rig.sample("sd_retrains_total", outcome="finished") == 0
    assert rig.detector.shadow is None
    assert [e.version for e in DirectoryRegistry(tmp_path / "registry").entries()] == [
        models.first.version
    ]


def test_a_real_shadow_verdict_is_attached_and_a_pass_promoted(
    tmp_path: Path, models: Models, rigs: list[Rig]
) -> None:
    """Unpatched end to end: the active model learnt a slow sine and the recent data is a fast
    one, so the candidate trained on it sits closer to its calibration: over 100 compared
    windows, score PSI about 0.10 against the active model's 0.67, no episodes on either side
    (seeded, one thread). The shadow concludes with a "shadow" report holding the verdict,
    which passes, so the candidate becomes active and the next batch swaps to it."""
    rig = _rig(rigs, tmp_path, models.first, **{**RETRAIN, "shadow_windows": 100})
    rig.lifecycle.start()
    candidate = _to_shadow(rig, before=8)
    _through_shadow(rig)
    rig.registry.refresh()
    report = rig.registry.entry(candidate).reports["shadow"]
    assert report["candidate"]["model_version"] == candidate
    assert report["active"]["model_version"] == models.first.version
    assert report["compared_windows"] >= 100
    assert report["verdict"] == "pass", report
    assert rig.sample("sd_shadow_verdicts_total", verdict="pass") == 1
    assert rig.registry.active() == candidate
    rig.lifecycle.before_batch()
    assert rig.detector.model_version == candidate


def _first_thresholds(rig: Rig, leader: bool = True) -> np.ndarray:
    """Each key's threshold on its first window scored in the next batch."""
    scored = rig.feed(leader=leader).scored
    return np.array([scored.thresholds[scored.keys == key][0] for key in KEYS])


def test_a_passing_verdict_with_auto_promote_promotes_and_the_next_batch_swaps(
    tmp_path: Path, models: Models, rigs: list[Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verdict made "pass" by patching ShadowRun.report: the "shadow" report is attached, the
    candidate promoted (the registry's active version), and the very next before_batch swaps
    to it although the poll interval (an hour here) has not passed; the swap takes the shadow
    over, so the keys keep the thresholds the candidate learnt there (not the global one)."""
    _given_verdict(monkeypatch, "pass")
    rig = _rig(rigs, tmp_path, models.first, **RETRAIN, poll_interval_s=3600.0)
    rig.lifecycle.start()
    candidate = _to_shadow(rig)
    _through_shadow(rig)
    fresh = DirectoryRegistry(tmp_path / "registry")
    entry = fresh.entry(candidate)
    assert set(entry.reports) == {"retrain", "shadow"}
    assert entry.reports["shadow"]["verdict"] == "pass"
    assert entry.reports["shadow"]["active"]["model_version"] == models.first.version
    assert fresh.active() == candidate
    assert fresh.history()[-1].action == "promote"
    assert rig.sample("sd_shadow_verdicts_total", verdict="pass") == 1
    assert rig.detector.model_version == models.first.version, "the swap waits for a batch"
    resolved = rig.lifecycle.before_batch()
    assert all(a.reason == "model_changed" for a in resolved)
    assert rig.detector.model_version == candidate and rig.detector.shadow is None
    assert rig.sample("sd_model_info", model_version=candidate) == 1
    assert rig.sample("sd_model_info", model_version=models.first.version) == 0
    learnt = _first_thresholds(rig)
    assert not np.allclose(learnt, rig.detector.metadata.global_threshold, rtol=1e-6)


def test_a_failing_verdict_is_attached_and_the_shadow_stops_for_good(
    tmp_path: Path, models: Models, rigs: list[Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verdict made "fail": the report is attached, the shadow stopped and not taken up again
    at later polls, the active version stays, and no swap follows."""
    _given_verdict(monkeypatch, "fail")
    rig = _rig(rigs, tmp_path, models.first, **RETRAIN)
    rig.lifecycle.start()
    candidate = _to_shadow(rig)
    _through_shadow(rig)
    assert rig.detector.shadow is None
    fresh = DirectoryRegistry(tmp_path / "registry")
    assert fresh.entry(candidate).reports["shadow"]["verdict"] == "fail"
    assert fresh.active() == models.first.version and len(fresh.history()) == 1
    assert rig.sample("sd_shadow_verdicts_total", verdict="fail") == 1
    for _ in range(2):
        assert _poll(rig.lifecycle) == []
        rig.feed()
    assert rig.detector.model_version == models.first.version
    assert rig.detector.shadow is None, "a candidate that failed is not shadowed again"


def test_a_passing_verdict_without_auto_promote_leaves_the_candidate_waiting(
    tmp_path: Path, models: Models, rigs: list[Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With auto_promote = false a passing candidate keeps its reports in the registry but is
    not made active; it shadows on (concluded: judged once) until promoted by hand, and the
    swap then keeps the thresholds it learnt."""
    _given_verdict(monkeypatch, "pass")
    rig = _rig(rigs, tmp_path, models.first, **RETRAIN, auto_promote=False)
    rig.lifecycle.start()
    candidate = _to_shadow(rig)
    _through_shadow(rig)
    fresh = DirectoryRegistry(tmp_path / "registry")
    assert fresh.entry(candidate).reports["shadow"]["verdict"] == "pass"
    assert fresh.active() == models.first.version
    for _ in range(2):
        assert _poll(rig.lifecycle) == []
        rig.feed()
    assert rig.detector.model_version == models.first.version
    shadow = rig.detector.shadow
    assert shadow is not None and shadow.version == candidate and shadow.concluded
    assert rig.sample("sd_shadow_verdicts_total", verdict="pass") == 1, "judged once"
    fresh.promote(candidate, "an operator's choice")
    _poll(rig.lifecycle)
    assert rig.detector.model_version == candidate
    learnt = _first_thresholds(rig)
    assert not np.allclose(learnt, rig.detector.metadata.global_threshold, rtol=1e-6)


def test_promoting_the_shadowed_candidate_by_hand_keeps_its_learnt_thresholds(
    tmp_path: Path, models: Models, rigs: list[Rig]
) -> None:
    """An operator promotes the candidate while it is still in the shadow, before any verdict:
    the swap takes the shadow over, so its keys' thresholds are those it learnt there."""
    rig = _rig(rigs, tmp_path, models.first, **{**RETRAIN, "shadow_windows": 10_000})
    rig.lifecycle.start()
    candidate = _to_shadow(rig)
    for _ in range(2):
        rig.feed()
    rig.registry.promote(candidate, "an operator's choice")
    _poll(rig.lifecycle)
    assert rig.detector.model_version == candidate and rig.detector.shadow is None
    learnt = _first_thresholds(rig)
    assert not np.allclose(learnt, rig.detector.metadata.global_threshold, rtol=1e-6)


@pytest.mark.parametrize("verdict", ["pass", "fail"])
def test_another_replica_shadows_the_candidate_and_follows_the_verdict(
    tmp_path: Path,
    models: Models,
    rigs: list[Rig],
    monkeypatch: pytest.MonkeyPatch,
    verdict: str,
) -> None:
    """A replica that does not retrain (not the leader) starts shadowing the leader's candidate
    at its next poll, on its own keys, and never judges it. On a pass (auto-promoted) its next
    poll swaps to the candidate keeping the thresholds it learnt in the shadow; on a fail its
    next poll stops the shadow."""
    _given_verdict(monkeypatch, verdict)
    leader = _rig(rigs, tmp_path, models.first, **RETRAIN)
    follower = _rig(rigs, tmp_path, models.first, **RETRAIN)
    leader.lifecycle.start()
    follower.lifecycle.start()
    assert _poll(follower.lifecycle) == [] and follower.detector.shadow is None
    candidate = _to_shadow(leader)
    for _ in range(3):
        follower.feed(leader=False)
    _poll(follower.lifecycle)
    shadow = follower.detector.shadow
    assert shadow is not None and shadow.version == candidate
    for _ in range(3):
        follower.feed(leader=False)
    assert shadow.done and not shadow.concluded, "only the leader judges"
    _through_shadow(leader)

    _poll(follower.lifecycle)
    if verdict == "fail":
        assert follower.detector.shadow is None
        assert follower.detector.model_version == models.first.version
    else:
        assert follower.detector.model_version == candidate
        learnt = _first_thresholds(follower, leader=False)
        assert not np.allclose(learnt, follower.detector.metadata.global_threshold, rtol=1e-6)
    assert follower.sample("sd_shadow_verdicts_total", verdict=verdict) == 0


def test_a_rollback_from_an_automatic_promotion_is_not_undone(
    tmp_path: Path, models: Models, rigs: list[Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator rolls the auto-promoted candidate back: the parent serves again, and stays
    active however many batches follow (the candidate had its verdict)."""
    _given_verdict(monkeypatch, "pass")
    v1 = models.first.version
    rig = _rig(rigs, tmp_path, models.first, **RETRAIN)
    rig.lifecycle.start()
    candidate = _to_shadow(rig)
    _through_shadow(rig)
    rig.lifecycle.before_batch()
    assert rig.detector.model_version == candidate
    rig.registry.rollback("the operator prefers the old model")
    _poll(rig.lifecycle)
    assert rig.detector.model_version == v1
    for _ in range(4):
        _poll(rig.lifecycle)
        rig.feed()
    _poll(rig.lifecycle)
    rig.registry.refresh()
    assert rig.registry.history()[-1].action == "rollback"
    assert rig.registry.active() == v1 and rig.detector.model_version == v1


# -- RecentEvents and RecentEpisodes --------------------------------------------------------------


def _held_ts(recent: RecentEvents) -> list[float]:
    return [float(t) for d in recent.batches() for t in d.batch.ts]


def test_recent_events_drop_the_oldest_and_trim_a_partial_chunk() -> None:
    """At most max_events are held, the newest in arrival order: a chunk partly over the bound
    is trimmed from its old end, and a batch bigger than the bound keeps its last events."""
    recent = RecentEvents(5)
    assert len(recent) == 0 and recent.oldest() == math.inf and recent.batches() == []
    recent.add(_events([1.0, 2.0, 3.0]))
    recent.add(_events([]))
    assert len(recent) == 3 and _held_ts(recent) == [1.0, 2.0, 3.0]
    recent.add(_events([4.0, 5.0, 6.0, 7.0]))
    assert len(recent) == 5 and _held_ts(recent) == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert [len(d.batch) for d in recent.batches()] == [1, 4]
    recent.add(_events([8.0, 9.0, 10.0, 11.0, 12.0]))
    assert len(recent) == 5 and _held_ts(recent) == [8.0, 9.0, 10.0, 11.0, 12.0]
    recent.add(_events([float(t) for t in range(20, 32)]))
    assert len(recent) == 5 and _held_ts(recent) == [27.0, 28.0, 29.0, 30.0, 31.0]
    values = np.concatenate([d.batch.values for d in recent.batches()])
    np.testing.assert_array_equal(values[:, 0], np.arange(27, 32, dtype=np.float32) - T0)


def test_recent_events_hold_copies() -> None:
    """Changing the batch's arrays after `add` (the engine may reuse them) changes nothing
    held."""
    recent = RecentEvents(10)
    batch = _events([5.0, 6.0, 7.0], key="a")
    recent.add(batch)
    batch.ts[:] = 0.0
    batch.values[:] = 99.0
    batch.keys[:] = "b"
    held = recent.batches()[0].batch
    assert held.ts.tolist() == [5.0, 6.0, 7.0]
    assert held.keys.tolist() == ["a", "a", "a"]
    np.testing.assert_array_equal(held.values[:, 0], np.array([5.0, 6.0, 7.0], np.float32) - T0)
    assert recent.oldest() == 5.0


def test_recent_events_oldest_is_the_earliest_time_held() -> None:
    """oldest() is the earliest event time among those held, whatever the arrival order, and
    moves on as old events are dropped."""
    recent = RecentEvents(4)
    recent.add(_events([10.0, 3.0]))
    recent.add(_events([7.0, 8.0]))
    assert recent.oldest() == 3.0
    recent.add(_events([9.0]))  # drops the 10.0
    assert recent.oldest() == 3.0
    recent.add(_events([11.0]))  # drops the 3.0
    assert recent.oldest() == 7.0


def test_recent_episodes_pair_opens_with_resolves_and_forget_closed_ones() -> None:
    """An open and its resolve make one closed span; an open one runs to infinity and is never
    forgotten; a resolve seen alone spans from its episode start; forget_before drops the
    closed spans ending before the time given, keeping one ending exactly there."""
    episodes = RecentEpisodes()
    episodes.observe(
        [
            _alert("open", "a", "k0", (10.0, 13.0), 10.0),
            _alert("open", "b", "k1", (20.0, 23.0), 20.0),
            _alert("resolve", "a", "k0", (30.0, 33.0), 10.0),
        ]
    )
    episodes.observe([_alert("resolve", "c", "k2", (40.0, 43.0), 5.0)])
    assert sorted(episodes.spans()) == [
        ("k0", 10.0, 33.0),
        ("k1", 20.0, math.inf),
        ("k2", 5.0, 43.0),
    ]
    episodes.forget_before(33.0)
    assert sorted(episodes.spans()) == [
        ("k0", 10.0, 33.0),
        ("k1", 20.0, math.inf),
        ("k2", 5.0, 43.0),
    ]
    episodes.forget_before(40.0)
    assert sorted(episodes.spans()) == [("k1", 20.0, math.inf), ("k2", 5.0, 43.0)]
    episodes.forget_before(1e12)
    assert episodes.spans() == [("k1", 20.0, math.inf)]
    episodes.observe([_alert("resolve", "b", "k1", (50.0, 53.0), 20.0)])
    assert episodes.spans() == [("k1", 20.0, 53.0)]
