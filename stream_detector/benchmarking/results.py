"""The suite's results as rows, the performance targets (benchmarks/README.md) judged on them,
and the printed table.

Targets are ratios between rows of one run, never absolute numbers: on a shared machine the
absolute figures move with the neighbours' load, while rows measured minutes apart in one process
move together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CEILING = "ceiling.consume_decode"
RAW_CEILING = "ceiling.consume"
SERVICE = "service.end_to_end"
SMALL_BATCHES = "service.small_batches"
RIVER = "peer.river_hst"
MEMORY = "memory.per_key"


@dataclass(frozen=True)
class Throughput:
    """`events` handled in `seconds` of timed work; the rate rows share this shape."""

    events: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "seconds": round(self.seconds, 4),
            "events_per_s": round(self.events_per_s, 1),
        }


def engine_id(keys: int, stride: int) -> str:
    return f"engine.k{keys}.s{stride}"


def shadow_ids(keys: int, stride: int) -> tuple[str, str]:
    """The shadow pair's rows: the detector alone, then with a candidate in its shadow."""
    pair = f"shadow.k{keys}.s{stride}"
    return f"{pair}.single", f"{pair}.shadowed"


def state_id(keys: int) -> str:
    return f"state.k{keys}"


def aggregate_id(keys: int) -> str:
    return f"aggregate.k{keys}"


def keys_label(n: int) -> str:
    """A key count as the table writes it: 10k, 100k, 250."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


@dataclass(frozen=True)
class Row:
    """One line of the table; `data` is its full JSON record."""

    id: str
    label: str
    events_per_s: float | None
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "detail": self.detail, **self.data}


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None
    goal: str
    met: bool
    note: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "goal": self.goal,
            "met": self.met,
            "note": self.note,
        }


def _rate(rows: dict[str, Row], row_id: str) -> float:
    rate = rows[row_id].events_per_s
    if rate is None:
        raise KeyError(f"row {row_id} has no rate")
    return rate


def judge(rows: list[Row], *, stream_keys: int) -> list[Target]:
    """The four performance targets (benchmarks/README.md), each with how far it is from its
    goal."""
    by_id = {row.id: row for row in rows}
    targets: list[Target] = []

    share = _rate(by_id, SERVICE) / _rate(by_id, CEILING)
    targets.append(
        Target(
            "end-to-end S=16 / consume+decode ceiling",
            round(share, 3),
            ">= 0.50",
            share >= 0.5,
            f"{share / 0.5:.0%} of the goal",
        )
    )

    engine = _rate(by_id, engine_id(stream_keys, 16))
    river = _rate(by_id, RIVER)
    targets.append(
        Target(
            f"engine K={stream_keys} S=16 / River HalfSpaceTrees",
            round(engine / river, 2),
            ">= 10x",
            engine / river >= 10,
            f"end-to-end / River {_rate(by_id, SERVICE) / river:.1f}x; engine S=1 (a score per "
            f"event, like River) / River {_rate(by_id, engine_id(stream_keys, 1)) / river:.2f}x",
        )
    )

    memory = by_id[MEMORY].data
    arrays, raw = memory["array_bytes_per_key"], memory["window_raw_bytes"]
    targets.append(
        Target(
            "state bytes per key / window raw bytes (W x F x 4)",
            round(arrays / raw, 3),
            "<= 2x + a small constant",
            arrays <= 2 * raw,
            f"arrays {arrays:.0f} B (limit {2 * raw} B) + key text, dict entry and slot "
            f"number {memory['key_object_bytes_per_key']:.0f} B (the constant)",
        )
    )

    service, small = by_id[SERVICE].data, by_id[SMALL_BATCHES].data
    p99 = service["latency_ms_p99"]
    targets.append(
        Target(
            "event -> alert latency p99 at half the sustained rate",
            p99,
            "< 250 ms",
            p99 is not None and p99 < 250,
            f"default kafka.batch_size {service['kafka_batch_size']}: p50 "
            f"{service['latency_ms_p50']} ms at {service['paced_events_per_s']:,.0f} events/s; "
            f"batch {small['kafka_batch_size']}: p99 {small['latency_ms_p99']} ms, p50 "
            f"{small['latency_ms_p50']} ms at {small['paced_events_per_s']:,.0f} events/s",
        )
    )
    return targets


def render(rows: list[Row], targets: list[Target], header: str) -> str:
    """A fixed-width table: rate, rate as a share of the consume+decode ceiling, details."""
    ceiling = next((r.events_per_s for r in rows if r.id == CEILING), None)
    width = max(len(row.label) for row in rows)
    lines = [header, "", f"{'row':<{width}}  {'events/s':>11}  {'vs ceiling':>10}  detail"]
    for row in rows:
        rate = "" if row.events_per_s is None else f"{row.events_per_s:,.0f}"
        share = ""
        if row.events_per_s is not None and ceiling:
            share = f"{row.events_per_s / ceiling:.2f}"
        lines.append(f"{row.label:<{width}}  {rate:>11}  {share:>10}  {row.detail}")
    lines += ["", "targets (ratios within this run):"]
    name_width = max(len(t.name) for t in targets)
    for t in targets:
        verdict = "met   " if t.met else "MISSED"
        lines.append(f"  {verdict} {t.name:<{name_width}}  {t.value}  (goal {t.goal}; {t.note})")
    return "\n".join(lines)
