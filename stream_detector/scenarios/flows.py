"""Synthetic network flow records with injected, labelled attacks: the aggregate-mode feed.

Each message is one flow (src_ip, dst_ip, dst_port, proto, bytes, packets, ts), so nothing is a
time series until the detector buckets it per source host. What is anomalous is how a host's
traffic changes, which is what the four injected kinds do:

- ddos_burst     the host floods one victim: ~20x its usual flow rate, tiny 1-2 packet flows
- port_scan      the host probes one target on ~10 new random ports a second
- exfiltration   a few flows to an outside address carry ~300x the host's usual bytes per flow
- host_silent    the host sends nothing at all

Normal hosts have their own rate (log-normal across hosts), a diurnal cycle with their own phase,
a handful of usual peers each on its service port, and log-normal flow sizes. Flows arrive a
little out of order (`jitter_s`) and a few very late (`late_fraction`), as collectors deliver
them, so the lateness rules are exercised too. `intensity` scales every attack's magnitude;
below 1 it makes a harder scenario.

Everything is drawn for all hosts and seconds at once with numpy; labels are inclusive event-time
ranges per host (`InjectedAnomaly`, written by `write_labels` like the IoT feed's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson
import structlog

from stream_detector.scenarios.telemetry import InjectedAnomaly, write_labels

log = structlog.get_logger(__name__)

NETWORK_ANOMALY_KINDS: Final = ("ddos_burst", "port_scan", "exfiltration", "host_silent")

# (shortest, longest) duration of each kind in seconds.
_DURATION_S: Final = {
    "ddos_burst": (60, 180),
    "port_scan": (90, 240),
    "exfiltration": (120, 300),
    "host_silent": (120, 300),
}
_SERVICE_PORTS: Final = np.array([443, 443, 443, 80, 53, 22, 5432, 6379, 8080, 123, 9092, 3306])
_UDP_PORTS: Final = (53, 123)
_SERVERS: Final = 24
_PEERS_PER_HOST: Final = 4
_DIURNAL_DEPTH: Final = 0.6
_SIZE_SIGMA: Final = 0.8  # spread of a host's log flow sizes


@dataclass(frozen=True)
class NetworkConfig:
    """Shape of the flow feed; the defaults give two hours of 40 hosts (~0.6 M flows)."""

    hosts: int = 40
    duration_s: int = 7200
    day_s: float = 1800.0
    flow_rate: float = 2.0  # flows per second of the median host at mid-cycle
    warmup_s: int = 3000  # anomaly-free lead-in: every phase of the cycle, for training
    anomalies: int = 12
    anomaly_kinds: tuple[str, ...] = NETWORK_ANOMALY_KINDS
    intensity: float = 1.0
    jitter_s: float = 2.0
    late_fraction: float = 0.001
    late_delay_s: float = 120.0
    seed: int = 0
    start_ts: float = 1_700_000_000.0

    def __post_init__(self) -> None:
        problems = []
        if self.hosts < 1 or self.duration_s < 1 or self.day_s <= 0 or self.flow_rate <= 0:
            problems.append("hosts, duration_s, day_s and flow_rate must be positive")
        if self.anomalies < 0 or self.intensity <= 0 or self.jitter_s < 0:
            problems.append("anomalies and jitter_s must not be negative, intensity positive")
        if not 0 <= self.late_fraction <= 1 or self.late_delay_s < 0:
            problems.append("late_fraction must be in [0, 1] and late_delay_s >= 0")
        if unknown := set(self.anomaly_kinds) - set(NETWORK_ANOMALY_KINDS):
            problems.append(f"unknown kinds {sorted(unknown)}; choose from {NETWORK_ANOMALY_KINDS}")
        if not self.anomaly_kinds:
            problems.append("anomaly_kinds must list at least one kind")
        longest = max(_DURATION_S[k][1] for k in self.anomaly_kinds) if self.anomaly_kinds else 0
        if self.anomalies and self.duration_s - self.warmup_s < 2 * longest:
            problems.append(f"leave at least {2 * longest} s after warmup_s for the anomalies")
        if problems:
            raise ValueError("; ".join(problems))


# The scenarios `evaluate` reports on: clear attacks, and the same kinds at a quarter strength.
SCENARIOS: Final = {
    "network": NetworkConfig(),
    "network_subtle": NetworkConfig(intensity=0.25, seed=1),
}

FEATURES: Final = (
    {"name": "flows", "agg": "count"},
    {"name": "bytes", "agg": "sum", "field": "bytes"},
    {"name": "packets", "agg": "sum", "field": "packets"},
    {"name": "dst_ports", "agg": "distinct", "field": "dst_port"},
    {"name": "dst_hosts", "agg": "distinct", "field": "dst_ip"},
)


def network_sections(config: NetworkConfig) -> dict[str, dict[str, Any]]:
    """Settings sections that read this feed (nested like --set; merge them into load_settings).

    5 s lateness covers the arrival jitter, so only the deliberately late flows are refused.
    """
    if config.jitter_s >= 5.0:
        raise ValueError("jitter_s must stay below the 5 s allowed lateness of these settings")
    return flow_sections("src_ip", FEATURES)


def flow_sections(key_field: str, features: Sequence[dict[str, str]]) -> dict[str, dict[str, Any]]:
    """The mapping of a flow feed keyed by `key_field` (event time in `ts`, epoch seconds),
    bucketed into `features`: 10 s buckets, 5 s lateness, and empty buckets for 10 minutes
    after a key's last flow, so a host gone silent stays visible to the model."""
    return {
        "input": {
            "mode": "aggregate",
            "key_field": key_field,
            "timestamp_field": "ts",
            "timestamp_unit": "s",
            "value_fields": [feature["name"] for feature in features],
        },
        "aggregate": {
            "bucket_width_s": 10.0,
            "allowed_lateness_s": 5.0,
            "idle_timeout_s": 600.0,
            "features": [dict(feature) for feature in features],
        },
    }


@dataclass(frozen=True)
class NetworkFeed:
    """Flows in arrival order (column arrays) and the anomalies injected into them."""

    src_ip: np.ndarray
    dst_ip: np.ndarray
    dst_port: np.ndarray
    proto: np.ndarray
    bytes: np.ndarray
    packets: np.ndarray
    ts: np.ndarray
    anomalies: tuple[InjectedAnomaly, ...]

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def records(self, rows: slice | np.ndarray = slice(None)) -> list[dict[str, Any]]:
        columns = {name: getattr(self, name)[rows].tolist() for name in _COLUMNS}
        return [dict(zip(_COLUMNS, values, strict=True)) for values in zip(*columns.values())]

    def payloads(self, rows: slice | np.ndarray = slice(None)) -> list[bytes]:
        """One JSON message per flow, as a collector would publish it."""
        return [orjson.dumps(record) for record in self.records(rows)]


_COLUMNS: Final = ("src_ip", "dst_ip", "dst_port", "proto", "bytes", "packets", "ts")


@dataclass(frozen=True)
class _Flows:
    """Flows before arrival order: one row per flow, any order."""

    host: np.ndarray
    ts: np.ndarray
    dst_ip: np.ndarray
    dst_port: np.ndarray
    bytes: np.ndarray
    packets: np.ndarray


def _ips(prefix: str, n: int) -> np.ndarray:
    return np.array([f"{prefix}.{i // 250}.{i % 250 + 1}" for i in range(n)], dtype=object)


class _Hosts:
    """Per-host habits, drawn once: rate, phase, flow size, peers and their weights."""

    def __init__(self, config: NetworkConfig, rng: np.random.Generator) -> None:
        n = config.hosts
        self.ips = _ips("10.0", n)
        self.rate = config.flow_rate * rng.lognormal(0.0, 0.5, n)
        self.phase = rng.uniform(0.0, 2.0 * np.pi, n)
        self.log_bytes = rng.uniform(np.log(300.0), np.log(3000.0), n)
        self.servers = _ips("10.1", _SERVERS)
        self.server_port = rng.choice(_SERVICE_PORTS, _SERVERS)
        self.peers = np.stack(
            [rng.choice(_SERVERS, _PEERS_PER_HOST, replace=False) for _ in range(n)]
        )
        self.peer_cdf = np.cumsum(rng.dirichlet(np.ones(_PEERS_PER_HOST), n), axis=1)

    def usual_flows(self, config: NetworkConfig, rng: np.random.Generator) -> _Flows:
        seconds = np.arange(config.duration_s)
        cycle = np.sin(2.0 * np.pi * seconds[:, None] / config.day_s + self.phase[None, :])
        counts = rng.poisson(self.rate[None, :] * (1.0 + _DIURNAL_DEPTH * cycle))  # [S, H]
        second, host = np.nonzero(counts)
        per_cell = counts[second, host]
        second, host = np.repeat(second, per_cell), np.repeat(host, per_cell)
        # Inverse-CDF draw; the minimum guards a cumulative sum that ends a hair below 1.
        peer = (rng.random(len(host))[:, None] > self.peer_cdf[host]).sum(axis=1)
        peer = np.minimum(peer, _PEERS_PER_HOST - 1)
        server = self.peers[host, peer]
        size = np.maximum(40, rng.lognormal(self.log_bytes[host], _SIZE_SIGMA)).astype(np.int64)
        return _Flows(
            host=host,
            ts=second + rng.random(len(host)),
            dst_ip=self.servers[server],
            dst_port=self.server_port[server],
            bytes=size,
            packets=_packets(size, rng),
        )


def _packets(size: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.maximum(1, np.ceil(size / rng.uniform(600.0, 1400.0, len(size)))).astype(np.int64)


def _schedule(config: NetworkConfig, rng: np.random.Generator) -> list[tuple[int, str, int, int]]:
    """(host, kind, first second, last second) per anomaly: kinds in turn, distinct hosts while
    there are enough, starts spread uniformly after the warm-up."""
    kinds = [config.anomaly_kinds[i % len(config.anomaly_kinds)] for i in range(config.anomalies)]
    rng.shuffle(kinds)
    chosen = rng.permutation(np.resize(rng.permutation(config.hosts), config.anomalies))
    plan = []
    for host, kind in zip(chosen.tolist(), kinds, strict=True):
        shortest, longest = _DURATION_S[kind]
        length = int(rng.integers(shortest, longest + 1))
        start = int(rng.integers(config.warmup_s, config.duration_s - 2 * longest))
        plan.append((host, kind, start, start + length - 1))
    return plan


def _attack_flows(
    kind: str,
    host: int,
    first: int,
    last: int,
    config: NetworkConfig,
    hosts: _Hosts,
    rng: np.random.Generator,
) -> _Flows:
    """The extra flows of a ddos_burst, port_scan or exfiltration (host_silent removes flows)."""
    strength = config.intensity
    rate = {
        "ddos_burst": 20.0 * hosts.rate[host] * strength,
        "port_scan": 10.0 * strength,
        "exfiltration": 0.3 * hosts.rate[host],
    }[kind]
    counts = rng.poisson(rate, last - first + 1)
    second = first + np.repeat(np.arange(len(counts)), counts)
    n = len(second)
    # Documentation address blocks: an outside drop for exfiltration, a victim for the rest.
    network = "203.0.113" if kind == "exfiltration" else "198.51.100"
    target = f"{network}.{host % 250 + 1}"
    if kind == "port_scan":
        ports = rng.integers(1, 65536, n)
        size = rng.integers(40, 61, n)
    elif kind == "ddos_burst":
        ports = np.full(n, 80)
        size = rng.integers(60, 121, n)
    else:
        ports = np.full(n, 443)
        typical = np.exp(hosts.log_bytes[host] + _SIZE_SIGMA**2 / 2)  # the host's mean flow size
        size = (typical * 300.0 * strength * rng.lognormal(0.0, 0.3, n)).astype(np.int64)
    return _Flows(
        host=np.full(n, host),
        ts=second + rng.random(n),
        dst_ip=np.full(n, target, dtype=object),
        dst_port=ports.astype(np.int64),
        bytes=size.astype(np.int64),
        packets=_packets(size, rng) if kind == "exfiltration" else rng.integers(1, 3, n),
    )


def generate(config: NetworkConfig) -> NetworkFeed:
    """The whole feed, in arrival order, with its labels."""
    rng = np.random.default_rng(config.seed)
    hosts = _Hosts(config, rng)
    parts = [hosts.usual_flows(config, rng)]
    anomalies = []
    silent = np.zeros(len(parts[0].host), dtype=bool)
    for host, kind, first, last in _schedule(config, rng):
        if kind == "host_silent":
            usual = parts[0]
            silent |= (usual.host == host) & (usual.ts >= first) & (usual.ts < last + 1)
        else:
            parts.append(_attack_flows(kind, host, first, last, config, hosts, rng))
        anomalies.append(
            InjectedAnomaly(
                str(hosts.ips[host]), kind, config.start_ts + first, config.start_ts + last + 0.999
            )
        )
    keep = [~silent] + [np.ones(len(p.host), dtype=bool) for p in parts[1:]]
    flows = {
        name: np.concatenate([getattr(p, name)[k] for p, k in zip(parts, keep, strict=True)])
        for name in _Flows.__dataclass_fields__
    }
    ts = config.start_ts + flows["ts"]
    delay = rng.uniform(0.0, config.jitter_s, len(ts))
    delay[rng.random(len(ts)) < config.late_fraction] += config.late_delay_s
    order = np.argsort(ts + delay, kind="stable")
    port = flows["dst_port"][order]
    feed = NetworkFeed(
        src_ip=hosts.ips[flows["host"][order]],
        dst_ip=flows["dst_ip"][order],
        dst_port=port,
        proto=np.where(np.isin(port, _UDP_PORTS), "udp", "tcp").astype(object),
        bytes=flows["bytes"][order],
        packets=flows["packets"][order],
        ts=np.round(ts[order], 3),
        anomalies=tuple(sorted(anomalies, key=lambda a: (a.start_ts, a.key))),
    )
    log.info("network feed generated", flows=len(feed), anomalies=len(feed.anomalies))
    return feed


def write_scenario(events_path: Path | str, config: NetworkConfig) -> Path:
    """Write the flows as JSON lines (arrival order) and the labels beside them; returns the
    labels path, `<events stem>.labels.json`."""
    events_path = Path(events_path)
    feed = generate(config)
    with events_path.open("wb") as out:
        for start in range(0, len(feed), 100_000):
            out.write(b"\n".join(feed.payloads(slice(start, start + 100_000))) + b"\n")
    labels_path = labels_path_for(events_path)
    write_labels(labels_path, feed.anomalies)
    return labels_path


def labels_path_for(events_path: Path) -> Path:
    """Where the labels of a raw-event file live: `flows.jsonl` -> `flows.labels.json`."""
    name = events_path.name
    for suffix in (".gz", ".jsonl", ".ndjson", ".csv"):
        name = name.removesuffix(suffix)
    return events_path.with_name(f"{name}.labels.json")

