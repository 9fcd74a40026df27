"""The memory soak's plumbing on tiny runs: the slope fit, the churning feed, both modes' results.

Nothing here times anything or judges a slope: a soak's figures mean something only over minutes.
"""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from stream_detector.benchmarking.soak import (
    ChurningFeed,
    SoakOptions,
    SoakTrace,
    first_call_excess_ms,
    main,
    parse_options,
    rss_mb,
    run_soak,
    slope_per_minute,
)
from stream_detector.benchmarking.workload import untrained_artefact

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="RSS is read from /proc")


def test_slope_is_fitted_per_minute_after_the_skipped_start() -> None:
    t = np.arange(0.0, 600.0, 1.0)
    # A steep start (warm-up) and then 2 MB per minute with noise.
    steady = 300.0 + 2.0 * t / 60.0 + np.random.default_rng(0).normal(0.0, 0.2, t.size)
    rss = np.where(t < 100.0, 100.0 + 2.0 * t, steady)
    assert slope_per_minute(t, rss, skip=0.2) == pytest.approx(2.0, abs=0.05)
    assert slope_per_minute(t, rss, skip=0.0) > 2.5  # the warm-up would bias it


def test_slope_needs_two_samples_after_the_skip() -> None:
    with pytest.raises(ValueError, match="two"):
        slope_per_minute([0.0], [1.0], skip=0.0)
    with pytest.raises(ValueError, match="after the skipped start"):
        slope_per_minute([0.0, 10.0], [1.0, 2.0], skip=0.5)


def test_a_first_call_at_a_window_count_is_compared_with_later_calls_at_that_count() -> None:
    # Count 5 costs 1 ms, count 900 costs 50 ms; each count's first call costs 3 ms more.
    windows = np.array([5, 5, 900, 5, 900, 900, 7])
    call_s = np.array([4, 1, 53, 1, 50, 50, 2], dtype=np.float64) / 1000.0
    steady = np.ones(windows.size, dtype=bool)
    # 7 has no later call to compare with; 5 and 900 both cost 3 ms more the first time.
    assert first_call_excess_ms(windows, call_s, steady) == (3, pytest.approx(3.0))
    # Counts first seen during the skipped start are not new shapes of the steady part.
    steady[:3] = False
    assert first_call_excess_ms(windows, call_s, steady) == (1, None)


def test_summary_reports_the_slope_and_call_times() -> None:
    trace = SoakTrace(started=0.0, sample_t=[0.0, 30.0, 60.0], sample_mb=[90.0, 101.5, 103.0])
    trace.call_windows = [5, 5, 7]
    trace.call_s = [0.010, 0.001, 0.002]
    trace.call_t = [0.0, 30.0, 59.0]
    summary = trace.summary(skip=0.4)
    assert summary["rss_slope_mb_per_min"] == pytest.approx(3.0)
    assert summary["call_ms_max"] == pytest.approx(2.0)  # the 10 ms call was in the skipped start
    # 7 windows is the one count first seen after the skip; no later call to compare it with.
    assert summary["window_counts_seen"] == 2 and summary["new_count_calls"] == 1
    assert summary["new_count_excess_ms_p50"] is None


def test_feed_churns_keys_and_cuts_random_batches() -> None:
    feed = ChurningFeed(keys=120, churn=0.5, seed=1, stagger=4)
    batches = feed.batches(max_events=50)
    seen: set[str] = set()
    sizes = []
    while feed.ticks < 600:  # ten minutes of event time
        batch = next(batches).batch
        sizes.append(len(batch))
        seen.update(batch.keys.tolist())
        assert np.array_equal(batch.index, np.arange(len(batch)))
    # Half of 120 devices renamed per minute of 60 one-second ticks: one new name per tick.
    assert feed.created == 120 + feed.ticks
    # Every name but those of the block still being cut has reached the detector.
    assert 600 < len(seen) <= feed.created
    assert min(sizes) >= 1 and max(sizes) <= 50 and len(set(sizes)) > 20


def test_feed_staggers_the_devices_first_readings() -> None:
    feed = ChurningFeed(keys=8, churn=0.0, seed=0, stagger=4)
    batches = feed.batches(max_events=1000)
    keys = [next(batches).batch.keys]
    ticks = feed.ticks  # the first block's ticks, made at the first batch
    # Device i joins at tick i % 4, so in the first block it sends ticks - i % 4 readings.
    expected = {f"device-{i:08d}": ticks - i % 4 for i in range(8)}
    while sum(map(len, keys)) < sum(expected.values()):
        keys.append(next(batches).batch.keys)
    names, counts = np.unique(np.concatenate(keys).astype(str), return_counts=True)
    assert dict(zip(names.tolist(), counts.tolist())) == expected


@linux_only
def test_rss_is_this_process_resident_size() -> None:
    before = rss_mb()
    # 64 MB of fresh pages, each touched: a malloc'd block could reuse memory already resident
    # (freed by an earlier test and kept by the allocator), which would not move the figure.
    with mmap.mmap(-1, 64 * 1024 * 1024) as block:
        np.frombuffer(block, dtype=np.uint8)[::4096] = 1
        assert rss_mb() - before > 50


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights shaped for the demo's settings: plumbing does not need a trained model."""
    directory = tmp_path_factory.mktemp("soak-model")
    untrained_artefact(directory, SoakOptions().settings())
    return directory


@linux_only
@pytest.mark.parametrize("scorer_only", [False, True])
def test_a_short_soak_reports_every_figure(scorer_only: bool, model_dir: Path) -> None:
    options = SoakOptions(
        minutes=0.05,
        keys=50,
        scorer_only=scorer_only,
        windows=(1, 20),
        model_dir=model_dir,
        progress_every_s=1.0,
    )
    soak = run_soak(options)["soak"]
    assert soak["mode"] == ("scorer" if scorer_only else "detector")
    assert soak["calls"] > 10
    assert soak["rss_start_mb"] > 0 and soak["rss_max_mb"] >= soak["rss_end_mb"]
    assert np.isfinite(soak["rss_slope_mb_per_min"])
    assert 0 < soak["call_ms_p50"] <= soak["call_ms_p99"] <= soak["call_ms_max"]
    if scorer_only:
        assert 1 <= soak["windows_per_call_max"] <= 20
    else:
        assert soak["keys_created"] >= 50 and 0 < soak["keys_tracked_max"]


def test_options_parse_window_ranges_and_refuse_nonsense(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert parse_options(["--scorer-only", "--windows", "700"]).windows == (700, 700)
    assert parse_options(["--windows", "5-9", "--no-mkldnn"]) == SoakOptions(
        windows=(5, 9), mkldnn=False
    )
    for bad in (["--windows", "9-5"], ["--windows", "x"], ["--skip", "1"], ["--minutes", "0"]):
        with pytest.raises(SystemExit):
            parse_options(bad)
    capsys.readouterr()


@linux_only
def test_main_prints_one_json_line(
    capsys: pytest.CaptureFixture[str], model_dir: Path
) -> None:
    argv = ["--scorer-only", "--minutes", "0.02", "--windows", "1-4", "--model", str(model_dir)]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert orjson.loads(out.out)["soak"]["mode"] == "scorer"
    assert "calls=" in out.err  # progress goes to stderr
