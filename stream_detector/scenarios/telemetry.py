"""Synthetic IoT telemetry with injected, labelled anomalies.

The demo, the `generate` command, tests and benchmarks need a feed whose ground truth is known,
that looks enough like real telemetry to be a fair test (per-device levels and scales, a daily
cycle, correlated sensors, harmless bumps), and that is cheap to make in bulk: every tick computes
all devices at once with numpy.

Signal model, per device and sensor, in "amplitude units" z (value = base + scale * z):

- temperature  z = c + w               c = sin(2 pi t / day_s + phase), w = AR(1) "weather", std 0.3
- humidity     z = -0.8 (c + w)        anti-correlated with temperature
- pressure     z = slow AR(1) random walk, std ~0.47, memory ~500 readings
- vibration    z = decaying bumps of 0.3 (about 2 sigma of its noise), ~1 per 200 readings
- plus Gaussian noise of std `noise` (x3 for vibration, which is a noisy sensor).

`scale` differs per device by over an order of magnitude (vibration bases span three decades), so
a detector that does not normalise per key fails on this feed on purpose.

Anomalies (magnitudes in amplitude units; with the default noise 0.05, one unit is 20 sigma):

- spike               3-6 readings, one sensor, +/- 5-8 units (100-160 sigma)
- level_shift         40-120 readings, one sensor, step of +/- 2-3 units (40-60 sigma)
- drift               60-180 readings, one sensor, offset growing linearly to +/- 3-4 units
- stuck               40-120 readings, one sensor repeats its last value exactly
- noise_burst         30-90 readings, every sensor's noise x10
- broken_correlation  60-180 readings, humidity follows temperature instead of opposing it

Signal and anomalies draw from two independent random streams, so a generator with
`anomaly_rate=0` and the same seed yields the exact clean twin of an anomalous feed: the
difference between the two is the injected anomalies and nothing else.

Optionally (`maintenance`), a few devices run a recurring benign job (`MaintenanceJob`): the same
short burst at a fixed period, never labelled. Real feeds have such events (a nightly backup, a
scheduled self-test) and an operator marks one as a false positive expecting its repeats to stay
quiet; the job draws no random numbers, so the feed with it differs from the feed without it in
the job's readings only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

import numpy as np
import orjson
import structlog

log = structlog.get_logger(__name__)

ANOMALY_KINDS: Final = (
    "spike",
    "level_shift",
    "drift",
    "stuck",
    "noise_burst",
    "broken_correlation",
)

SENSORS: Final = ("temperature", "humidity", "pressure", "vibration")


class _SensorProfile(NamedTuple):
    """Ranges each device's level and scale are drawn from; log-uniform where noted."""

    base_lo: float
    base_hi: float
    base_log: bool
    scale_lo: float  # scale log-uniform in [scale_lo, scale_hi]; 0 means a fraction of base
    scale_hi: float
    noise_factor: float


_PROFILES: Final = {
    "temperature": _SensorProfile(5.0, 35.0, False, 0.5, 8.0, 1.0),
    "humidity": _SensorProfile(30.0, 70.0, False, 2.0, 15.0, 1.0),
    "pressure": _SensorProfile(950.0, 1050.0, False, 0.3, 10.0, 1.0),
    # Vibration levels differ by machine over three decades; its scale is a quarter of its level
    # so readings stay positive, as an RMS velocity would.
    "vibration": _SensorProfile(0.01, 10.0, True, 0.0, 0.25, 3.0),
}


class _AnomalySpec(NamedTuple):
    """Duration range in readings and magnitude range (amplitude units, or noise factor)."""

    min_len: int
    max_len: int
    min_mag: float
    max_mag: float


_SPECS: Final = {
    "spike": _AnomalySpec(3, 6, 5.0, 8.0),
    "level_shift": _AnomalySpec(40, 120, 2.0, 3.0),
    "drift": _AnomalySpec(60, 180, 3.0, 4.0),
    "stuck": _AnomalySpec(40, 120, 0.0, 0.0),
    "noise_burst": _AnomalySpec(30, 90, 10.0, 10.0),
    "broken_correlation": _AnomalySpec(60, 180, 0.0, 0.0),
}
_KIND_ID: Final = {kind: i for i, kind in enumerate(ANOMALY_KINDS)}
# Kinds whose magnitude is an offset added to one sensor.
_ADDITIVE: Final = frozenset({"spike", "level_shift", "drift"})
_ADDITIVE_IDS: Final = np.array(sorted(_KIND_ID[kind] for kind in _ADDITIVE))

# Normal readings between two anomalies of one device: two default windows, so an episode can
# resolve and a stuck sensor always freezes on a normal value.
_GAP_READINGS: Final = 64

_WEATHER_STD: Final = 0.3
_WEATHER_PHI: Final = float(np.exp(-1.0 / 30.0))  # memory of ~30 readings
_PRESSURE_PHI: Final = 0.998
_PRESSURE_STEP: Final = 0.03
_HUMIDITY_COUPLING: Final = 0.8
_BUMP_PROBABILITY: Final = 1.0 / 200.0
_BUMP_HEIGHT: Final = 0.3
_BUMP_DECAY: Final = 0.6


@dataclass(frozen=True)
class InjectedAnomaly:
    """One labelled anomaly: an inclusive event-time range on one device."""

    key: str
    kind: str
    start_ts: float
    end_ts: float


@dataclass(frozen=True)
class MaintenanceJob:
    """A benign job on a few devices (indices), run every `every` readings from tick `first` on.

    Each run lasts `length` readings and has the same shape every time, in amplitude units:
    vibration steps up by `vibration` for the whole run (a motor or fan at full duty) while
    temperature rises and falls back in a half-sine bump of height `temperature` (the heat it
    makes). With the default noise, 2.5 units of vibration are about 17 sigma of that noisy
    sensor and 1 unit of temperature 20 sigma: as far out as a level shift, so a model that never
    saw the job flags it. `first` lets it start after the stretch a model was trained on.
    """

    devices: tuple[int, ...]
    every: int = 200
    first: int = 0
    length: int = 24
    vibration: float = 2.5
    temperature: float = 1.0

    def problems(self, devices: int, sensors: tuple[str, ...]) -> list[str]:
        """What makes this job impossible in a feed of `devices` devices with `sensors`."""
        problems = []
        if not self.devices or len(set(self.devices)) != len(self.devices):
            problems.append("maintenance.devices must list at least one device, each once")
        if any(not 0 <= d < devices for d in self.devices):
            problems.append(f"maintenance.devices must be device indices in [0, {devices})")
        if not 0 < self.length < self.every or self.first < 0:
            problems.append("maintenance needs 0 < length < every and first >= 0 (readings)")
        if not {"temperature", "vibration"} & set(sensors):
            problems.append("maintenance shows on temperature and vibration: keep either")
        return problems

    def shape(self) -> np.ndarray:
        """[length, len(SENSORS)] offsets in amplitude units, canonical sensor order."""
        offsets = np.zeros((self.length, len(SENSORS)))
        offsets[:, SENSORS.index("vibration")] = self.vibration
        phase = (np.arange(self.length) + 0.5) / self.length
        offsets[:, SENSORS.index("temperature")] = self.temperature * np.sin(np.pi * phase)
        return offsets

    def step(self, tick: int) -> int | None:
        """Position of `tick` within a run, or None between runs."""
        since = tick - self.first
        if since < 0 or since % self.every >= self.length:
            return None
        return since % self.every


@dataclass(frozen=True)
class MaintenanceRun:
    """One run of a maintenance job on one device: an inclusive event-time range, not a label."""

    key: str
    start_ts: float
    end_ts: float


@dataclass(frozen=True)
class GeneratorConfig:
    """Shape of the synthetic feed; the defaults suit the demo.

    anomaly_rate is the expected number of anomalies per device per day; 0.5 with 200 devices
    starts about one every six readings of the fleet, so even a 30-tick demo shows several while
    ~7% of readings are anomalous. warmup_s is one day, so the model trains on every phase of the
    cycle before any anomaly appears. maintenance adds a recurring benign job (None: no job).
    """

    devices: int = 200
    sensors: tuple[str, ...] = SENSORS
    period_s: float = 1.0
    day_s: float = 600.0
    noise: float = 0.05
    anomaly_rate: float = 0.5
    anomaly_kinds: tuple[str, ...] = ANOMALY_KINDS
    warmup_s: float = 600.0
    seed: int = 0
    start_ts: float = 1_700_000_000.0
    maintenance: MaintenanceJob | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.devices < 1:
            problems.append("devices must be at least 1")
        if not self.sensors or len(set(self.sensors)) != len(self.sensors):
            problems.append("sensors must list at least one sensor, each once")
        if unknown := set(self.sensors) - set(SENSORS):
            problems.append(f"unknown sensors {sorted(unknown)}; choose from {SENSORS}")
        if self.period_s <= 0 or self.day_s <= 0:
            problems.append("period_s and day_s must be positive")
        if self.noise < 0 or self.anomaly_rate < 0 or self.warmup_s < 0:
            problems.append("noise, anomaly_rate and warmup_s must not be negative")
        if not self.anomaly_kinds:
            problems.append("anomaly_kinds must list at least one kind")
        if unknown := set(self.anomaly_kinds) - set(ANOMALY_KINDS):
            problems.append(f"unknown anomaly kinds {sorted(unknown)}; choose from {ANOMALY_KINDS}")
        if "broken_correlation" in self.anomaly_kinds and not {"temperature", "humidity"} <= set(
            self.sensors
        ):
            problems.append(
                "broken_correlation needs both temperature and humidity sensors;"
                " add them or drop it from anomaly_kinds"
            )
        if self.maintenance is not None:
            problems += self.maintenance.problems(self.devices, self.sensors)
        if problems:
            raise ValueError("; ".join(problems))


def _key_width(devices: int) -> int:
    return max(4, len(str(devices - 1)))


class LabelledTicks(NamedTuple):
    """Ticks as arrays: keys and ts [ticks, devices], values [ticks, devices, sensors], labels
    (int8, 1 inside an injected anomaly of the device) [ticks, devices]."""

    keys: np.ndarray
    ts: np.ndarray
    values: np.ndarray
    labels: np.ndarray


class TelemetryGenerator:
    """Emits one reading per device per tick, injecting anomalies and remembering them as labels."""

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        signal_seed, anomaly_seed = np.random.SeedSequence(config.seed).spawn(2)
        self._rng = np.random.default_rng(signal_seed)
        self._anomaly_rng = np.random.default_rng(anomaly_seed)
        n = config.devices
        width = _key_width(n)
        self._keys = np.array([f"device-{i:0{width}d}" for i in range(n)], dtype=object)
        self._index_of = {key: i for i, key in enumerate(self._keys)}
        self._columns = np.array([SENSORS.index(name) for name in config.sensors])

        rng = self._rng
        # Readings of different devices do not share a clock edge, as in a real fleet.
        self._offsets = rng.random(n) * config.period_s
        self._phase = rng.random(n) * 2.0 * np.pi
        self._base, self._scale, noise_factor = self._draw_levels(n)
        self._sigma = config.noise * noise_factor  # [4], amplitude units
        self._weather = rng.normal(0.0, _WEATHER_STD, n)
        self._pressure = rng.normal(0.0, _PRESSURE_STEP / np.sqrt(1.0 - _PRESSURE_PHI**2), n)
        self._bump = np.zeros(n)

        self._tick = 0
        self._last = self._base[:, self._columns].astype(np.float32)
        # Active anomaly per device: kind index into ANOMALY_KINDS, -1 when none.
        self._kind = np.full(n, -1, dtype=np.int64)
        self._sensor = np.zeros(n, dtype=np.int64)  # column in the output, not canonical index
        self._magnitude = np.zeros(n)
        self._progress = np.zeros(n, dtype=np.int64)
        self._length = np.ones(n, dtype=np.int64)
        self._stuck_value = np.zeros(n, dtype=np.float32)
        self._next_allowed = np.zeros(n, dtype=np.int64)
        self._start_probability = config.anomaly_rate * config.period_s / config.day_s
        self._kind_ids = np.array([_KIND_ID[k] for k in config.anomaly_kinds])
        self._anomalies: list[InjectedAnomaly] = []
        # Label index, rebuilt lazily: anomalies sorted by (device, start).
        self._label_cache: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None
        job = config.maintenance
        self._job_rows = np.array(job.devices if job else (), dtype=np.int64)
        self._job_shape = job.shape() if job else np.zeros((0, len(SENSORS)))
        log.info(
            "telemetry generator ready",
            devices=n,
            sensors=list(config.sensors),
            anomaly_rate=config.anomaly_rate,
            seed=config.seed,
        )

    def _draw_levels(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-device base [n, 4] and scale [n, 4] in canonical sensor order, and noise factors."""
        rng = self._rng
        base = np.empty((n, len(SENSORS)))
        scale = np.empty((n, len(SENSORS)))
        for j, name in enumerate(SENSORS):
            p = _PROFILES[name]
            if p.base_log:
                base[:, j] = np.exp(rng.uniform(np.log(p.base_lo), np.log(p.base_hi), n))
            else:
                base[:, j] = rng.uniform(p.base_lo, p.base_hi, n)
            if p.scale_lo > 0:
                scale[:, j] = np.exp(rng.uniform(np.log(p.scale_lo), np.log(p.scale_hi), n))
            else:
                scale[:, j] = p.scale_hi * base[:, j]
        factors = np.array([_PROFILES[name].noise_factor for name in SENSORS])
        return base, scale, factors

    def _ts_at(self, tick: np.ndarray | int, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        # The one formula for event time, so label ranges compare exactly with emitted ts.
        return self.config.start_ts + (tick * self.config.period_s + self._offsets[rows])

    def next_tick(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One reading of every device: keys object [D], ts float64 [D], values float32 [D, S]."""
        ts = self._ts_at(self._tick)
        self._start_anomalies(ts)
        values = self._signal()
        self._last = values.copy()  # the caller owns `values`; a stuck sensor must not see edits
        self._advance_anomalies()
        self._tick += 1
        return self._keys.copy(), ts, values

    def ticks(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The next `n` ticks, lazily, so a long feed never sits in memory."""
        for _ in range(n):
            yield self.next_tick()

    def labelled_ticks(self, n: int) -> LabelledTicks:
        """The next `n` ticks at once, as arrays by tick and device, with their labels: what an
        evaluation dataset cuts into per-device channels."""
        keys, ts, values = zip(*self.ticks(n), strict=True)
        keys_tick, ts_tick = np.stack(keys), np.stack(ts)
        labels = self.label(keys_tick.reshape(-1), ts_tick.reshape(-1))
        return LabelledTicks(
            keys_tick, ts_tick, np.stack(values), labels.reshape(ts_tick.shape).astype(np.int8)
        )

    def messages(self, n_ticks: int) -> Iterator[list[bytes]]:
        """The next `n_ticks` ticks as JSON payloads, one list per tick, shaped for mapping_for."""
        names = self.config.sensors
        for keys, ts, values in self.ticks(n_ticks):
            # numpy float32 scalars serialise with their shortest repr, which round-trips exactly.
            yield [
                orjson.dumps(
                    {"device_id": key, "ts": t, "metrics": dict(zip(names, row))},
                    option=orjson.OPT_SERIALIZE_NUMPY,
                )
                for key, t, row in zip(keys, ts.tolist(), values)
            ]

    def _signal(self) -> np.ndarray:
        cfg = self.config
        rng = self._rng
        n = cfg.devices
        # Every random array is drawn every tick, whatever the anomalies, so the clean twin of a
        # feed consumes the signal stream identically.
        eps = rng.standard_normal((n, len(SENSORS)))
        weather_eps = rng.standard_normal(n)
        pressure_eps = rng.standard_normal(n)
        bump_draw = rng.random(n)

        self._weather = _WEATHER_PHI * self._weather + _WEATHER_STD * np.sqrt(
            1.0 - _WEATHER_PHI**2
        ) * weather_eps
        self._pressure = _PRESSURE_PHI * self._pressure + _PRESSURE_STEP * pressure_eps
        self._bump = _BUMP_DECAY * self._bump + _BUMP_HEIGHT * (bump_draw < _BUMP_PROBABILITY)

        kind = self._kind
        t = self._tick * cfg.period_s + self._offsets
        climate = np.sin(2.0 * np.pi * t / cfg.day_s + self._phase) + self._weather
        coupling = np.where(
            kind == _KIND_ID["broken_correlation"], _HUMIDITY_COUPLING, -_HUMIDITY_COUPLING
        )
        noise_factor = np.where(kind == _KIND_ID["noise_burst"], self._magnitude, 1.0)
        z = np.stack([climate, coupling * climate, self._pressure, self._bump], axis=1)
        z += eps * self._sigma * noise_factor[:, None]
        if cfg.maintenance is not None and (step := cfg.maintenance.step(self._tick)) is not None:
            z[self._job_rows] += self._job_shape[step]
        values = (self._base + self._scale * z)[:, self._columns]

        rows = np.flatnonzero(np.isin(kind, _ADDITIVE_IDS))
        if len(rows):
            offset = self._magnitude[rows]
            drifting = kind[rows] == _KIND_ID["drift"]
            offset = np.where(
                drifting, offset * (self._progress[rows] + 1) / self._length[rows], offset
            )
            cols = self._sensor[rows]
            values[rows, cols] += offset * self._scale[rows, self._columns[cols]]
        values = values.astype(np.float32)
        stuck = np.flatnonzero(kind == _KIND_ID["stuck"])
        values[stuck, self._sensor[stuck]] = self._stuck_value[stuck]
        return values

    def _start_anomalies(self, ts: np.ndarray) -> None:
        cfg = self.config
        rng = self._anomaly_rng
        draw = rng.random(cfg.devices)
        eligible = (
            (self._kind < 0)
            & (self._tick >= self._next_allowed)
            & (ts >= cfg.start_ts + cfg.warmup_s)
        )
        rows = np.flatnonzero(eligible & (draw < self._start_probability))
        if not len(rows):
            return
        kinds = self._kind_ids[rng.integers(0, len(self._kind_ids), len(rows))]
        specs = [_SPECS[ANOMALY_KINDS[k]] for k in kinds]
        lengths = rng.integers([s.min_len for s in specs], [s.max_len + 1 for s in specs])
        magnitudes = rng.uniform([s.min_mag for s in specs], [s.max_mag for s in specs])
        # Offsets go either way; a noise factor must stay positive.
        additive = np.array([ANOMALY_KINDS[k] in _ADDITIVE for k in kinds])
        signs = np.where(additive, rng.choice([-1.0, 1.0], len(rows)), 1.0)
        sensors = rng.integers(0, len(cfg.sensors), len(rows))

        self._kind[rows] = kinds
        self._sensor[rows] = sensors
        self._magnitude[rows] = signs * magnitudes
        self._progress[rows] = 0
        self._length[rows] = lengths
        self._stuck_value[rows] = self._last[rows, sensors]
        ends = self._ts_at(self._tick + lengths - 1, rows)
        for row, kind, start, end in zip(rows, kinds, ts[rows], ends):
            anomaly = InjectedAnomaly(
                str(self._keys[row]), ANOMALY_KINDS[kind], float(start), float(end)
            )
            self._anomalies.append(anomaly)
            log.debug("anomaly injected", **asdict(anomaly))

    def _advance_anomalies(self) -> None:
        active = self._kind >= 0
        self._progress[active] += 1
        done = active & (self._progress >= self._length)
        self._kind[done] = -1
        self._next_allowed[done] = self._tick + 1 + _GAP_READINGS

    @property
    def anomalies(self) -> list[InjectedAnomaly]:
        """Every anomaly injected so far, including one still running (its planned end)."""
        return list(self._anomalies)

    @property
    def maintenance_runs(self) -> list[MaintenanceRun]:
        """Every maintenance run started so far, in order of start (a running one: its planned
        end); empty without a job."""
        job = self.config.maintenance
        if job is None:
            return []
        runs: list[MaintenanceRun] = []
        for start in range(job.first, self._tick, job.every):
            starts = self._ts_at(start, self._job_rows)
            ends = self._ts_at(start + job.length - 1, self._job_rows)
            runs += [
                MaintenanceRun(str(self._keys[row]), float(first), float(last))
                for row, first, last in zip(self._job_rows, starts, ends, strict=True)
            ]
        return runs

    def label(
        self, keys: np.ndarray | Iterable[str], ts: np.ndarray | Iterable[float]
    ) -> np.ndarray:
        """True per event inside an injected anomaly of its key; keys never emitted are False."""
        keys = np.asarray(keys, dtype=object)
        ts = np.asarray(ts, dtype=np.float64)
        if len(keys) == 0 or not self._anomalies:
            return np.zeros(len(keys), dtype=bool)
        unique, inverse = np.unique(keys, return_inverse=True)
        device_of_unique = np.fromiter(
            (self._index_of.get(key, -1) for key in unique), dtype=np.int64, count=len(unique)
        )
        device = device_of_unique[inverse.reshape(-1)]
        a_device, a_start, a_end = self._label_index()
        # Merge anomaly starts and events in (device, time) order, starts before events at equal
        # time (ranges are inclusive); each event then sees the latest start at or before it.
        n_a = len(a_device)
        order = np.lexsort(
            (
                np.r_[np.zeros(n_a), np.ones(len(ts))],
                np.r_[a_start, ts],
                np.r_[a_device, device],
            )
        )
        marker = np.r_[np.arange(n_a), np.full(len(ts), -1)][order]
        latest = np.maximum.accumulate(marker)
        is_event = order >= n_a
        event_rows = order[is_event] - n_a
        candidate = latest[is_event]
        hit = candidate >= 0
        safe = np.where(hit, candidate, 0)
        hit &= (a_device[safe] == device[event_rows]) & (ts[event_rows] <= a_end[safe])
        labels = np.zeros(len(ts), dtype=bool)
        labels[event_rows] = hit
        return labels

    def _label_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._label_cache is None or self._label_cache[0] != len(self._anomalies):
            device = np.array([self._index_of[a.key] for a in self._anomalies], dtype=np.int64)
            start = np.array([a.start_ts for a in self._anomalies])
            end = np.array([a.end_ts for a in self._anomalies])
            order = np.lexsort((start, device))
            self._label_cache = (len(self._anomalies), device[order], start[order], end[order])
        return self._label_cache[1:]


def mapping_for(config: GeneratorConfig) -> dict[str, Any]:
    """InputConfig overrides that read this feed: ``overrides={"input": mapping_for(c)}``."""
    return {
        "key_field": "device_id",
        "timestamp_field": "ts",
        "timestamp_unit": "s",
        "value_fields": tuple(f"metrics.{name}" for name in config.sensors),
    }


def write_jsonl(path: Path | str, config: GeneratorConfig, n_ticks: int) -> list[InjectedAnomaly]:
    """Write `n_ticks` ticks as JSON lines, in emission order, and return the injected labels."""
    generator = TelemetryGenerator(config)
    with Path(path).open("wb") as out:
        for payloads in generator.messages(n_ticks):
            out.write(b"\n".join(payloads) + b"\n")
    log.info(
        "feed written",
        path=str(path),
        events=n_ticks * config.devices,
        anomalies=len(generator.anomalies),
    )
    return generator.anomalies


def write_labels(path: Path | str, anomalies: Iterable[InjectedAnomaly]) -> None:
    """Write labels as a JSON array of {key, kind, start_ts, end_ts}; ranges are inclusive."""
    Path(path).write_bytes(orjson.dumps([asdict(a) for a in anomalies], option=orjson.OPT_INDENT_2))
