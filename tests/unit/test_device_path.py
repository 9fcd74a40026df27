"""The device-resident engine (window values on the model's device) against the numpy engine.

`model.device_resident = "on"` with the CPU runs the very torch code that serves a GPU (upload,
scatter, gather, normalisation and scoring of tensors), so these tests cover that path here; the
CUDA comparison itself runs only where a GPU exists.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from stream_detector.benchmarking.workload import untrained_artefact
from stream_detector.config import Settings
from stream_detector.detector.artefact import ModelArtefact, load_artefact
from stream_detector.detector.facade import Detector
from stream_detector.detector.snapshot import EngineSnapshot
from stream_detector.engine.ring import DeviceRing, HostRing
from stream_detector.engine.types import Decoded, EventBatch

FEATURES = ["a", "b"]
WINDOW = 6
N_KEYS = 14
SHIFTED = {"k3", "k7"}


def _settings(stride: int, device_resident: str) -> Settings:
    """Small shapes that make every store rule fire: growth from 2 slots, LRU eviction past 10
    keys, idle eviction after 40 s of event time, and micro-batches of 16 windows."""
    return Settings(
        input={"key_field": "key", "timestamp_field": "ts", "value_fields": FEATURES},
        window={
            "size": WINDOW,
            "stride": stride,
            "initial_capacity": 2,
            "max_keys": 10,
            "idle_ttl_s": 40.0,
        },
        normalize={"warmup": 8},
        model={
            "device": "cpu",
            "device_resident": device_resident,
            "batch_size": 16,
            "hidden_size": 8,
            "latent_size": 4,
        },
        threshold={"warmup": 4},
        episodes={"min_consecutive": 2, "cooldown": 2},
    )


@pytest.fixture(scope="module")
def artefact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("artefact")
    untrained_artefact(directory, _settings(1, "off"))
    return directory


def _stream(seed: int, n_batches: int = 40) -> list[Decoded]:
    """Random batches of several events per key; a varying subset of keys each time (so some
    fall idle or are pushed out, and come back), and a level shift midway on SHIFTED keys, which
    are in every batch (never evicted, so their statistics predate the shift), to open episodes."""
    rng = np.random.default_rng(seed)
    batches = []
    t = 0.0
    for b in range(n_batches):
        shifted = [int(key[1:]) for key in sorted(SHIFTED)]
        others = np.setdiff1d(np.arange(N_KEYS), shifted)
        visitors = rng.choice(others, size=rng.integers(2, 7), replace=False)
        active = np.concatenate([shifted, visitors])
        keys = rng.choice(active, size=rng.integers(10, 40))
        n = len(keys)
        ts = t + np.sort(rng.uniform(0, 5, size=n))
        t = float(ts[-1]) + rng.choice([1.0, 50.0], p=[0.9, 0.1])  # sometimes a long silence
        names = np.array([f"k{k}" for k in keys], dtype=object)
        values = rng.normal(size=(n, len(FEATURES))) + keys[:, None]
        if 20 <= b < 28:
            values[np.isin(names, list(SHIFTED))] += 8.0
        batch = EventBatch(
            index=np.arange(n, dtype=np.int64),
            keys=names,
            ts=ts,
            values=values.astype(np.float32),
        )
        batches.append(Decoded(batch))
    return batches


def _detector(
    artefact_dir: Path, stride: int, device_resident: str, device: str = "cpu"
) -> Detector:
    settings = _settings(stride, device_resident)
    chosen = torch.device(device)
    artefact: ModelArtefact = load_artefact(artefact_dir, settings, chosen)
    return Detector(settings, artefact, chosen)


def _run(detector: Detector, batches: list[Decoded]) -> tuple[list, list]:
    """Per batch: the scored windows' fields, and the alerts as dicts."""
    scored, alerts = [], []
    for decoded in batches:
        result = detector.process(decoded)
        scored.append(result.scored)
        alerts.extend(asdict(alert) for alert in result.alerts)
    return scored, alerts


def _assert_same_scored(got: list, want: list, fields: tuple[str, ...] = ("slots",)) -> None:
    """Same windows, decisions and (within float tolerance) numbers; ``fields``: exact extras."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for name in ("keys", "event_index", "start_ts", "end_ts", "exceed", "actual", *fields):
            np.testing.assert_array_equal(getattr(g, name), getattr(w, name), err_msg=name)
        for name in ("scores", "thresholds", "feature_errors", "expected"):
            np.testing.assert_allclose(
                getattr(g, name), getattr(w, name), rtol=1e-5, atol=1e-6, err_msg=name
            )


def _assert_same_alerts(got: list[dict], want: list[dict]) -> None:
    assert [(a["alert_id"], a["key"]) for a in got] == [(a["alert_id"], a["key"]) for a in want]
    for g, w in zip(got, want, strict=True):
        assert g["score"] == pytest.approx(w["score"], rel=1e-5)
        assert g["threshold"] == pytest.approx(w["threshold"], rel=1e-5)


def _assert_same_snapshot(got: EngineSnapshot, want: EngineSnapshot) -> None:
    assert got.keys.tolist() == want.keys.tolist()
    assert (got.watermark, got.seq) == (want.watermark, want.seq)
    assert set(got.arrays) == set(want.arrays)
    for name, array in want.arrays.items():
        np.testing.assert_allclose(got.arrays[name], array, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("stride", [1, 3])
def test_device_resident_engine_matches_the_numpy_engine(artefact_dir: Path, stride: int) -> None:
    batches = _stream(seed=stride)
    host = _detector(artefact_dir, stride, "off")
    resident = _detector(artefact_dir, stride, "on")

    # Otherwise both would run numpy and the comparison would prove nothing.
    assert isinstance(host._windows.ring, HostRing)
    assert isinstance(resident._windows.ring, DeviceRing)
    host_scored, host_alerts = _run(host, batches)
    resident_scored, resident_alerts = _run(resident, batches)

    # The stream really exercised the store: growth, both evictions, windows and episodes.
    assert host._windows.capacity == 10
    # Growth reached every per-slot stage from the one place, the ring on the device included.
    for detector in (host, resident):
        assert {stage.capacity for stage in detector._stage.slot_stages.values()} == {10}
    assert host._windows.evicted_lru_total > 0 and host._windows.evicted_idle_total > 0
    assert sum(len(s) for s in host_scored) > 100
    assert {a["key"] for a in host_alerts} & SHIFTED
    _assert_same_scored(resident_scored, host_scored)
    _assert_same_alerts(resident_alerts, host_alerts)
    keys = [f"k{k}" for k in range(N_KEYS)]
    _assert_same_snapshot(resident.snapshot(keys), host.snapshot(keys))


@pytest.mark.parametrize(("first", "second"), [("off", "on"), ("on", "off")])
def test_snapshot_from_one_mode_restores_in_the_other(
    artefact_dir: Path, first: str, second: str
) -> None:
    batches = _stream(seed=7)
    keys = [f"k{k}" for k in range(N_KEYS)]
    original = _detector(artefact_dir, 2, first)
    _run(original, batches[:20])
    restored = _detector(artefact_dir, 2, second)
    assert restored.restore(original.snapshot(keys)) == original.n_keys > 0

    _assert_same_snapshot(restored.snapshot(keys), original.snapshot(keys))
    original_scored, original_alerts = _run(original, batches[20:])
    restored_scored, restored_alerts = _run(restored, batches[20:])
    assert sum(len(s) for s in original_scored) > 0
    # A restore hands out slots afresh, so only the keys must match.
    _assert_same_scored(restored_scored, original_scored, fields=())
    _assert_same_alerts(restored_alerts, original_alerts)


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device here: the GPU path can only be compared with the CPU on a GPU machine",
)
@pytest.mark.parametrize("stride", [1, 3])
def test_cuda_engine_matches_the_cpu_engine(artefact_dir: Path, stride: int) -> None:
    """On a GPU: device-resident CUDA engine (pinned uploads, padded micro-batches, CUDA graph)
    against the numpy CPU engine on the same stream."""
    batches = _stream(seed=stride)
    cpu_scored, cpu_alerts = _run(_detector(artefact_dir, stride, "off"), batches)
    gpu = _detector(artefact_dir, stride, "auto", device="cuda")
    assert isinstance(gpu._windows.ring, DeviceRing)
    gpu_scored, gpu_alerts = _run(gpu, batches)
    assert len(gpu_scored) == len(cpu_scored)
    for g, c in zip(gpu_scored, cpu_scored, strict=True):
        np.testing.assert_array_equal(g.event_index, c.event_index)
        np.testing.assert_allclose(g.scores, c.scores, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(g.feature_errors, c.feature_errors, rtol=1e-4, atol=1e-5)
    assert [a["alert_id"] for a in gpu_alerts] == [a["alert_id"] for a in cpu_alerts]
