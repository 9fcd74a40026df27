"""Soak check: does the detector's memory stay flat under key churn and ever-changing batch sizes?

A throughput row runs for seconds at one batch size; a memory leak that costs a few MB per new
input shape or per departed key shows only over minutes of a live mix. This runs the in-process
`Detector` with the bundled demo model for `--minutes`, flat out (not paced), and fits the resident
set size (RSS) over time:

- keys churn: `--keys` devices are active at once, and every minute of event time `--churn` of
  them are replaced by devices with new names; the departed ones fall silent and are freed by
  `window.idle_ttl_s` (kept short), so keys tracked stay bounded while new keys keep arriving;
- batch sizes are random, 1 to `kafka.batch_size` events, as a service consuming a live topic sees
  them (a batch holds whatever arrived within `kafka.batch_timeout_s`), so the scorer sees a new
  number of windows almost every call.

`--scorer-only` isolates the model: the CPU scorer alone, called with a random number of windows
in `--windows` (a fixed number when one value is given), to tell per-shape growth inside torch
from growth in the engine's own state.

The RSS slope is a least-squares line through the samples after the first `--skip` of the run
(start-up, warm-up and the slot arrays' growth to their working size), in MB per minute of wall
time. The run is not paced, so a slope caused per batch scales with batches per second, which the
result reports too. Progress goes to stderr, the result as one JSON line to stdout. Linux only:
RSS is read from /proc/self/statm.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TypeVar

import numpy as np
import orjson
import torch

from stream_detector.config import Settings
from stream_detector.demo.scenario import BUNDLED_MODEL_DIR, demo_settings, generator_config
from stream_detector.detector.artefact import load_artefact
from stream_detector.detector.facade import load_detector
from stream_detector.engine.model import WindowScorer, select_device
from stream_detector.engine.types import Decoded, EventBatch
from stream_detector.logs import configure_logging
from stream_detector.scenarios.telemetry import TelemetryGenerator

_PAGE_BYTES: Final = os.sysconf("SC_PAGE_SIZE")
_MB: Final = 1024 * 1024
_SAMPLE_EVERY_S: Final = 0.5
_BLOCK_EVENTS: Final = 20_000  # events generated at a time, between batches

T = TypeVar("T")


def rss_mb() -> float:
    """This process's resident set size now (not its peak, which is all getrusage offers)."""
    with open("/proc/self/statm", "rb") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * _PAGE_BYTES / _MB


def slope_per_minute(times_s: Sequence[float], values: Sequence[float], skip: float) -> float:
    """Least-squares slope of `values` per minute, over the samples after the first `skip`
    fraction of the time span; the start is left out because warm-up allocates on purpose."""
    t = np.asarray(times_s, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.shape != v.shape or t.size < 2:
        raise ValueError("need at least two (time, value) samples of equal count")
    steady = t >= t[0] + skip * (t[-1] - t[0])
    if np.count_nonzero(steady) < 2 or np.ptp(t[steady]) == 0:
        raise ValueError("fewer than two distinct sample times after the skipped start")
    slope, _ = np.polyfit(t[steady] / 60.0, v[steady], 1)
    return float(slope)


def _percentiles(times_ms: np.ndarray) -> dict[str, float | None]:
    if times_ms.size == 0:
        return {"call_ms_p50": None, "call_ms_p99": None, "call_ms_max": None}
    p50, p99 = np.percentile(times_ms, [50, 99])
    return {
        "call_ms_p50": round(float(p50), 2),
        "call_ms_p99": round(float(p99), 2),
        "call_ms_max": round(float(times_ms.max()), 2),
    }


def first_call_excess_ms(
    windows: np.ndarray, call_s: np.ndarray, steady: np.ndarray
) -> tuple[int, float | None]:
    """What scoring a window count for the first time costs over scoring it again.

    Each count the model has not seen is a new input shape, and a per-shape cost (a plan, a
    cache entry) is paid at its first call. Against all calls, first calls would look slow just
    for being rare, large counts, so each is compared with the later calls at the same count:
    the result is (first calls at a count first seen in the steady part, median over those
    counts of first time - median later time, in ms; None when none has a later call).
    """
    first = np.zeros(len(windows), dtype=bool)
    first[np.unique(windows, return_index=True)[1]] = True
    excess = []
    for index in np.flatnonzero(first & steady).tolist():
        later = call_s[index + 1 :][windows[index + 1 :] == windows[index]]
        if later.size:
            excess.append(call_s[index] - float(np.median(later)))
    calls = int(np.count_nonzero(first & steady))
    return calls, round(float(np.median(excess)) * 1000.0, 2) if excess else None


@dataclass
class SoakTrace:
    """What a soak loop records: RSS samples over time and each call's duration."""

    started: float = field(default_factory=time.monotonic)
    sample_t: list[float] = field(default_factory=list)
    sample_mb: list[float] = field(default_factory=list)
    call_t: list[float] = field(default_factory=list)
    call_s: list[float] = field(default_factory=list)
    call_windows: list[int] = field(default_factory=list)

    def sample(self) -> None:
        self.sample_t.append(time.monotonic() - self.started)
        self.sample_mb.append(rss_mb())

    def summary(self, skip: float) -> dict[str, Any]:
        """RSS figures and call times; percentiles over the calls after the skipped start, as
        the slope is."""
        elapsed = self.sample_t[-1]
        steady = np.asarray(self.call_t) >= skip * elapsed
        times_ms = np.asarray(self.call_s)[steady] * 1000.0
        windows = np.asarray(self.call_windows)
        new_shape_calls, excess_ms = first_call_excess_ms(windows, np.asarray(self.call_s), steady)
        return {
            "elapsed_s": round(elapsed, 1),
            "calls": len(self.call_s),
            "calls_per_s": round(len(self.call_s) / elapsed, 1),
            "rss_start_mb": round(self.sample_mb[0], 1),
            "rss_end_mb": round(self.sample_mb[-1], 1),
            "rss_max_mb": round(max(self.sample_mb), 1),
            "rss_slope_mb_per_min": round(
                slope_per_minute(self.sample_t, self.sample_mb, skip), 2
            ),
            "slope_fit_from_s": round(skip * elapsed, 1),
            **_percentiles(times_ms),
            "windows_per_call_mean": round(float(windows.mean()), 1),
            "windows_per_call_max": int(windows.max()),
            "window_counts_seen": int(np.unique(windows).size),
            "new_count_calls": new_shape_calls,
            "new_count_excess_ms_p50": excess_ms,
        }


def run_loop(
    inputs: Iterator[T],
    call: Callable[[T], int],
    seconds: float,
    report: Callable[[SoakTrace], str],
    *,
    progress_every_s: float = 10.0,
) -> SoakTrace:
    """Time `call` on each of `inputs` back to back for `seconds` (it returns the windows it
    scored), sampling RSS every half second and writing `report(trace)` to stderr every
    `progress_every_s`. Making an input is not timed: the call times are the engine's alone."""
    trace = SoakTrace()
    trace.sample()
    next_sample = next_progress = 0.0
    while (now := time.monotonic() - trace.started) < seconds:
        item = next(inputs)
        began = time.perf_counter()
        windows = call(item)
        trace.call_s.append(time.perf_counter() - began)
        trace.call_t.append(now)
        trace.call_windows.append(windows)
        if now >= next_sample:
            trace.sample()
            next_sample = now + _SAMPLE_EVERY_S
        if now >= next_progress:
            print(f"[{now:5.0f}s] {report(trace)}", file=sys.stderr, flush=True)
            next_progress = now + progress_every_s
    trace.sample()
    return trace


def _rss_line(trace: SoakTrace) -> str:
    return f"calls={len(trace.call_s)} rss={trace.sample_mb[-1]:.1f} MB"


class ChurningFeed:
    """The demo's telemetry from `keys` devices, `churn` of them renamed per minute of event time.

    A renamed device is a new key to the detector (it warms up from scratch) and its old name falls
    silent until the idle TTL frees it. Device i sends its first reading at tick i % stagger: with
    the window stride as stagger, the devices' windows fall due spread over the ticks, as in a
    fleet that did not start in one instant, instead of all in every stride-th tick. No anomalies
    are injected: the generator keeps every label it injects, which would grow this process's
    memory by itself.
    """

    def __init__(self, keys: int, churn: float, seed: int, stagger: int = 1) -> None:
        config = replace(generator_config(keys, seed), anomaly_rate=0.0)
        self._generator = TelemetryGenerator(config)
        self._names = np.array([f"device-{i:08d}" for i in range(keys)], dtype=object)
        self._rng = np.random.default_rng(seed)
        self._renames_per_tick = keys * churn * config.period_s / 60.0
        self._owed = 0.0
        self._joins = np.arange(keys) % stagger
        self.created = keys
        self.ticks = 0
        self._period_s = config.period_s

    @property
    def event_minutes(self) -> float:
        """Event time played so far: the churn and the idle TTL count in it, not in wall time."""
        return self.ticks * self._period_s / 60.0

    def _tick(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._owed += self._renames_per_tick
        count = min(int(self._owed), len(self._names))
        renamed = self._rng.choice(len(self._names), count, replace=False)
        self._owed -= len(renamed)
        for slot in renamed.tolist():
            self._names[slot] = f"device-{self.created:08d}"
            self.created += 1
        _, ts, values = self._generator.next_tick()
        joined = self._joins <= self.ticks
        self.ticks += 1
        return self._names[joined], ts[joined], values[joined]

    def batches(self, max_events: int) -> Iterator[Decoded]:
        """Batches of 1..max_events events (uniform), cut from blocks of whole ticks."""
        ticks_per_block = max(1, _BLOCK_EVENTS // len(self._names))
        while True:
            ticks = zip(*(self._tick() for _ in range(ticks_per_block)))
            keys, ts, values = (np.concatenate(part) for part in ticks)
            start = 0
            while start < len(keys):
                stop = min(start + int(self._rng.integers(1, max_events + 1)), len(keys))
                yield Decoded(
                    EventBatch(
                        np.arange(stop - start, dtype=np.int64),
                        keys[start:stop],
                        ts[start:stop],
                        values[start:stop],
                    )
                )
                start = stop


@dataclass(frozen=True)
class SoakOptions:
    """One soak run; the defaults take a few minutes on two cores."""

    minutes: float = 3.0
    keys: int = 5000
    churn: float = 0.2
    idle_ttl_s: float = 60.0
    scorer_only: bool = False
    windows: tuple[int, int] = (1, 1500)
    device: str = "cpu"
    mkldnn: bool = True
    skip: float = 0.2
    seed: int = 0
    model_dir: Path = BUNDLED_MODEL_DIR
    progress_every_s: float = 10.0

    def settings(self) -> Settings:
        """The demo's settings with the churn's idle TTL; the bundled model fits them."""
        return demo_settings(
            generator_config(self.keys, self.seed),
            {"window": {"idle_ttl_s": self.idle_ttl_s}, "model": {"device": self.device}},
        )


def soak_detector(options: SoakOptions) -> dict[str, Any]:
    """The whole engine under key churn and random batch sizes (see the module docstring)."""
    settings = options.settings()
    detector = load_detector(settings, options.model_dir)
    feed = ChurningFeed(options.keys, options.churn, options.seed, settings.window.stride)
    tracked_max = alerts = 0

    def call(batch: Decoded) -> int:
        nonlocal tracked_max, alerts
        result = detector.process(batch)
        tracked_max = max(tracked_max, detector.n_keys)
        alerts += len(result.alerts)
        return len(result.scored)

    def report(trace: SoakTrace) -> str:
        return (
            f"{_rss_line(trace)} keys={detector.n_keys} created={feed.created} "
            f"evicted={detector.evicted_total} event_min={feed.event_minutes:.1f}"
        )

    trace = run_loop(
        feed.batches(settings.kafka.batch_size),
        call,
        options.minutes * 60.0,
        report,
        progress_every_s=options.progress_every_s,
    )
    return {
        **trace.summary(options.skip),
        "keys_active": options.keys,
        "keys_created": feed.created,
        "keys_tracked_end": detector.n_keys,
        "keys_tracked_max": tracked_max,
        "evicted": detector.evicted_total,
        "churn_per_event_min": options.churn,
        "idle_ttl_s": options.idle_ttl_s,
        "event_minutes": round(feed.event_minutes, 1),
        "max_batch_events": settings.kafka.batch_size,
        "alerts": alerts,
    }


def _random_windows(
    shape: tuple[int, int], counts: tuple[int, int], seed: int
) -> Iterator[np.ndarray]:
    """Normal float32 windows [n, W, F], n uniform in `counts` (inclusive) per item."""
    rng = np.random.default_rng(seed)
    low, high = counts
    while True:
        n = int(rng.integers(low, high + 1))
        yield rng.standard_normal((n, *shape), dtype=np.float32)


def soak_scorer(options: SoakOptions) -> dict[str, Any]:
    """The model alone: random normal windows, a random count in `options.windows` per call."""
    settings = options.settings()
    device = select_device(options.device)
    artefact = load_artefact(options.model_dir, settings, device)
    scorer = WindowScorer.serving(artefact.model.to(device), device, settings)
    shape = (settings.window.size, len(settings.input.value_fields))

    def call(windows: np.ndarray) -> int:
        scorer.score(windows)
        return len(windows)

    trace = run_loop(
        _random_windows(shape, options.windows, options.seed),
        call,
        options.minutes * 60.0,
        _rss_line,
        progress_every_s=options.progress_every_s,
    )
    return trace.summary(options.skip)


def run_soak(options: SoakOptions) -> dict[str, Any]:
    """One soak, as the JSON object `main` prints."""
    torch.backends.mkldnn.enabled = options.mkldnn
    mode = "scorer" if options.scorer_only else "detector"
    figures = soak_scorer(options) if options.scorer_only else soak_detector(options)
    windows = options.windows if options.scorer_only else None
    return {
        "soak": {
            "mode": mode,
            "minutes": options.minutes,
            "device": options.device,
            "mkldnn": options.mkldnn,
            "torch": torch.__version__,
            "windows_range": windows,
            **figures,
        }
    }


def _window_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LOW-HIGH, got {text!r}") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"need 1 <= LOW <= HIGH, got {text!r}")
    return bounds


_PROG: Final = "python -m stream_detector.benchmarking.soak"
_EXAMPLES: Final = f"""examples:
  # three minutes of the whole detector under churning keys and random batches
  {_PROG}
  # twelve: a slow leak shows more clearly
  {_PROG} --minutes 12
  # the CPU scorer alone, 1-1500 windows a call: growth per new input shape
  {_PROG} --scorer-only
  # one shape only (per-shape growth cannot show), or torch's CPU LSTM without oneDNN
  {_PROG} --scorer-only --windows 700
  {_PROG} --scorer-only --no-mkldnn
"""


def parse_options(argv: Sequence[str] | None = None) -> SoakOptions:
    defaults = SoakOptions()
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description=(
            "Memory soak: run the in-process detector (bundled demo model) flat out under key "
            "churn and random batch sizes, and report the RSS slope in MB/min fitted after the "
            "start-up, with p50/p99 batch times. A flat memory reads near 0 MB/min; "
            "benchmarks/README.md (Soak) has measured figures. Progress on stderr, one JSON line "
            "on stdout."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=defaults.minutes,
        help="wall-clock length (default %(default)s)",
    )
    parser.add_argument(
        "--keys",
        type=int,
        default=defaults.keys,
        help="devices active at any time (default %(default)s)",
    )
    parser.add_argument(
        "--churn",
        type=float,
        default=defaults.churn,
        help="fraction of the active devices replaced by new keys per minute of event time "
        "(default %(default)s); event time runs as fast as the detector goes",
    )
    parser.add_argument(
        "--idle-ttl",
        type=float,
        default=defaults.idle_ttl_s,
        help="window.idle_ttl_s, event seconds before a silent key is freed (default %(default)s)",
    )
    parser.add_argument(
        "--scorer-only",
        action="store_true",
        help="call only the model's scorer, with random window counts (see --windows)",
    )
    parser.add_argument(
        "--windows",
        type=_window_range,
        default=defaults.windows,
        metavar="N|LOW-HIGH",
        help="windows per scorer call with --scorer-only: uniform in LOW-HIGH, or always N "
        "(default 1-1500)",
    )
    parser.add_argument(
        "--device", default=defaults.device, help="cpu (default), cuda or auto, as model.device"
    )
    parser.add_argument(
        "--no-mkldnn",
        dest="mkldnn",
        action="store_false",
        help="run with torch.backends.mkldnn.enabled = False (torch's CPU LSTM without oneDNN)",
    )
    parser.add_argument(
        "--skip",
        type=float,
        default=defaults.skip,
        help="fraction of the run left out of the slope and percentiles (default %(default)s)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=defaults.model_dir,
        metavar="DIR",
        help="model artefact (default: the bundled demo model); it must fit the demo's settings",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    if not 0 <= args.skip < 1:
        parser.error("--skip must be in [0, 1)")
    if args.minutes <= 0 or args.keys < 1 or args.churn < 0 or args.idle_ttl <= 0:
        parser.error("--minutes, --keys and --idle-ttl must be positive, --churn not negative")
    return SoakOptions(
        minutes=args.minutes,
        keys=args.keys,
        churn=args.churn,
        idle_ttl_s=args.idle_ttl,
        scorer_only=args.scorer_only,
        windows=args.windows,
        device=args.device,
        mkldnn=args.mkldnn,
        skip=args.skip,
        seed=args.seed,
        model_dir=args.model,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    configure_logging("warning")
    print(orjson.dumps(run_soak(options)).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
