"""The benchmark suite: every row runs and is reported (smoke size), and its parts are sound.

No timing is asserted anywhere: the numbers depend on the machine. What is asserted is that each
row measured what it claims (valid events, warm keys, alerts actually timed) and that the report
carries every row, every target and the machine facts.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from stream_detector.benchmarking.results import (
    CEILING,
    MEMORY,
    RAW_CEILING,
    RIVER,
    SERVICE,
    SMALL_BATCHES,
    Row,
    aggregate_id,
    engine_id,
    judge,
    render,
    shadow_ids,
    state_id,
)
from stream_detector.benchmarking.suite import SERVICE_STRIDE, SMOKE
from stream_detector.benchmarking.workload import (
    FEATURES,
    WINDOW,
    bench_settings,
    tick_stream,
    untrained_artefact,
)
from stream_detector.cli import main
from stream_detector.engine.decode import Decoder
from stream_detector.engine.model import LSTMAutoencoder, WindowScorer

STATE_ROWS = {state_id(k): k for k in SMOKE.state_keys}
SINGLE, SHADOWED = shadow_ids(SMOKE.stream_keys, SERVICE_STRIDE)
EXPECTED_ROWS = {
    RAW_CEILING,
    CEILING,
    SERVICE,
    SMALL_BATCHES,
    RIVER,
    MEMORY,
    SINGLE,
    SHADOWED,
    aggregate_id(SMOKE.stream_keys),
    *STATE_ROWS,
} | {engine_id(k, s) for k in SMOKE.engine_keys for s in SMOKE.strides}


def test_smoke_run_reports_every_row_and_target(tmp_path: Path, capsys) -> None:
    pytest.importorskip("river", reason="the River row needs the baselines extra")
    out = tmp_path / "report.json"

    assert main(["bench", "--smoke", "--device", "cpu", "--out", str(out)]) == 0

    report = orjson.loads(out.read_bytes())
    rows = {row["id"]: row for row in report["rows"]}
    assert set(rows) == EXPECTED_ROWS
    for row_id in EXPECTED_ROWS - {MEMORY, *STATE_ROWS}:
        rate = rows[row_id]["events_per_s"]
        assert np.isfinite(rate) and rate > 0, row_id
    for row_id, batch in ((SERVICE, SMOKE.kafka_batch_size), (SMALL_BATCHES, SMOKE.small_batch)):
        service = rows[row_id]
        assert service["kafka_batch_size"] == batch
        assert service["alerts_timed"] > 0  # the latency phase really produced alerts to time
        assert 0 < service["latency_ms_p50"] <= service["latency_ms_p99"]
        assert 0 < service["paced_events_per_s"] < service["events_per_s"]
        assert service["behind_at_end_s"] >= 0
    single, shadowed = rows[SINGLE], rows[SHADOWED]
    # The pair ran the same messages, and the candidate judged every window the active one did.
    assert single["events"] == shadowed["events"] > 0
    assert single["windows"] == shadowed["windows"] == shadowed["shadow_windows"] > 0
    assert shadowed["single_events_per_s"] == single["events_per_s"]
    ratio = shadowed["events_per_s"] / single["events_per_s"]
    assert shadowed["ratio_to_single"] == pytest.approx(ratio, abs=1e-3)
    memory = rows[MEMORY]
    assert memory["keys"] == SMOKE.memory_keys
    # Every per-key array is there: at least the ring buffer of values and times.
    assert memory["array_bytes_per_key"] >= WINDOW * len(FEATURES) * 4 + WINDOW * 8
    for row_id, keys in STATE_ROWS.items():
        checkpoint = rows[row_id]
        assert checkpoint["keys"] == keys
        # A checkpoint carries every key's ring buffer (values and times), so at least that.
        assert checkpoint["bytes"] >= keys * (WINDOW * len(FEATURES) * 4 + WINDOW * 8)
        assert checkpoint["bytes_per_key"] == checkpoint["bytes"] / keys
        for timing in ("snapshot_s", "encode_s", "decode_s", "restore_s"):
            assert checkpoint[timing] > 0, timing
    assert [t["name"] for t in report["targets"]] == [
        "end-to-end S=16 / consume+decode ceiling",
        f"engine K={SMOKE.stream_keys} S=16 / River HalfSpaceTrees",
        "state bytes per key / window raw bytes (W x F x 4)",
        "event -> alert latency p99 at half the sustained rate",
    ]
    assert all(isinstance(t["met"], bool) for t in report["targets"])
    machine = report["machine"]
    for fact in ("cpu_model", "cpus_usable", "device", "torch", "numpy", "librdkafka", "tansu"):
        assert machine[fact], fact
    assert report["mode"] == "smoke" and "--smoke" in report["command"]
    printed = capsys.readouterr().out
    for row in report["rows"]:
        assert row["label"] in printed


def test_stream_is_valid_input_and_staggers_keys() -> None:
    """The rows must time accepted events, and with stagger S a key's windows fall due in
    different ticks, not all in one."""
    n_keys, stagger = 40, 16
    stream = tick_stream(n_keys, 0, 20, seed=3, stagger=stagger)
    settings = bench_settings(stagger)
    decoded = Decoder(settings.input).decode_messages(stream.payloads())

    assert decoded.rejects == []
    assert decoded.batch.keys.tolist() == stream.names[stream.key_ids].tolist()
    np.testing.assert_array_equal(decoded.batch.values, stream.values)
    np.testing.assert_array_equal(decoded.batch.ts, stream.ts)
    assert np.all(np.diff(stream.ts) > 0)
    counts = np.bincount(stream.key_ids, minlength=n_keys)
    np.testing.assert_array_equal(counts, 20 - np.arange(n_keys) % stagger)
    later = tick_stream(n_keys, stagger, 3, seed=3, stagger=stagger)
    assert len(later) == 3 * n_keys  # past the joining ticks every key is in every tick


def test_untrained_model_threshold_separates_shifted_windows(tmp_path: Path) -> None:
    """The latency row times alerts from level shifts: with random weights the calibrated
    threshold must still let normal windows pass and catch shifted ones."""
    settings = bench_settings(16)
    artefact = untrained_artefact(tmp_path / "model", settings, seed=1)
    scorer = WindowScorer(artefact.model, torch.device("cpu"), 256)
    rng = np.random.default_rng(5)
    normal = rng.normal(size=(500, WINDOW, len(FEATURES))).astype(np.float32)
    shifted = normal + 5.0
    threshold = artefact.metadata.global_threshold
    assert np.mean(scorer.score(normal).scores > threshold) < 0.01
    assert np.all(scorer.score(shifted).scores > threshold)


def _rows(service: float, ceiling: float, engine: float, river: float, arrays: float, p99):
    latency = {"latency_ms_p50": 1.0, "alerts_timed": 3, "paced_events_per_s": 5.0}
    small = {**latency, "latency_ms_p99": 1.0, "kafka_batch_size": 1}
    return [
        Row(CEILING, "c", ceiling, ""),
        Row(SERVICE, "s", service, "", {**latency, "latency_ms_p99": p99, "kafka_batch_size": 9}),
        Row(SMALL_BATCHES, "b", service, "", small),
        Row(engine_id(10, 16), "e16", engine, ""),
        Row(engine_id(10, 1), "e1", engine / 10, ""),
        Row(RIVER, "r", river, ""),
        Row(
            MEMORY,
            "m",
            None,
            "",
            {
                "array_bytes_per_key": arrays,
                "window_raw_bytes": 512,
                "key_object_bytes_per_key": 130.0,
            },
        ),
    ]


def test_targets_are_judged_as_ratios_within_the_run() -> None:
    met = judge(_rows(60.0, 100.0, 1000.0, 50.0, 1000.0, 200.0), stream_keys=10)
    assert [t.met for t in met] == [True, True, True, True]
    assert [t.value for t in met] == [0.6, 20.0, round(1000 / 512, 3), 200.0]

    missed = judge(_rows(40.0, 100.0, 400.0, 50.0, 1100.0, None), stream_keys=10)
    assert [t.met for t in missed] == [False, False, False, False]
    assert "80% of the goal" in missed[0].note
    table = render(_rows(60.0, 100.0, 1000.0, 50.0, 1000.0, 200.0), met, "header")
    assert "MISSED" not in table and table.count("met ") == 4


def test_cpu_threads_apply_only_while_scoring() -> None:
    torch.manual_seed(0)
    model = LSTMAutoencoder(2, 8, 8, 1, 4)
    windows = np.random.default_rng(0).normal(size=(64, 8, 2)).astype(np.float32)
    before = torch.get_num_threads()

    single = WindowScorer(model, torch.device("cpu"), 16, cpu_threads=1).score(windows)
    default = WindowScorer(model, torch.device("cpu"), 16).score(windows)

    assert torch.get_num_threads() == before
    np.testing.assert_array_equal(single.scores, default.scores)
    np.testing.assert_array_equal(single.feature_errors, default.feature_errors)


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device here: the GPU scoring path can only be compared on a GPU machine",
)
def test_cuda_scores_match_cpu() -> None:
    torch.manual_seed(0)
    model = LSTMAutoencoder(len(FEATURES), WINDOW, 32, 1, 8)
    windows = np.random.default_rng(1).normal(size=(3000, WINDOW, len(FEATURES)))
    windows = windows.astype(np.float32)
    on_cpu = WindowScorer(model, torch.device("cpu"), 1024).score(windows)
    on_gpu = WindowScorer(copy.deepcopy(model), torch.device("cuda"), 1024).score(windows)
    for name in ("scores", "feature_errors", "last_reconstruction"):
        np.testing.assert_allclose(
            getattr(on_gpu, name), getattr(on_cpu, name), rtol=1e-4, atol=1e-5, err_msg=name
        )
