"""Whether records are raw events (one a flow, request, connection) rather than readings, and
the bucket features that summarise them.

A reading per record suits events mode. Flow records are different: a key (a source host) has
many of them per second, each to another peer or port, and their sizes (bytes, packets) mean
something only summed over time. So aggregate mode is proposed when the sample has byte- or
packet-like counts and peer-like fields (IP addresses other than the key, destination ports)
that vary within a key; the features are then the count of events, the sums of the sizes and
the distinct peers and ports per bucket.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from statistics import median

from stream_detector.inspect.hints import PEER_WORDS, PORT_WORDS, SOURCE_WORDS, is_volume, words
from stream_detector.inspect.profile import FieldProfile


@dataclass(frozen=True)
class Feature:
    """One [[aggregate.features]] entry and the reason for it."""

    name: str
    agg: str
    field: str | None
    why: str


@dataclass(frozen=True)
class FlowShape:
    """Aggregate mode's case: its features, the figures behind it, and the lateness seen."""

    aggregate: bool
    why: list[str]
    features: list[Feature]
    lateness_s: float


def _is_address(value: object) -> bool:
    try:
        ipaddress.ip_address(value)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def _addresses(fields: list[FieldProfile], key: set[str]) -> list[FieldProfile]:
    return [
        f for f in fields
        if f.path not in key and f.distinct() >= 2 and f.presence() >= 0.9
        and sum(map(_is_address, f.strings())) >= 0.9 * len(f.present)
    ]


def _ports(fields: list[FieldProfile], key: set[str]) -> list[FieldProfile]:
    """Destination-side ports: the source port of a connection is ephemeral, counting it says
    little; without a side in the name every port is taken."""
    ports = [
        f for f in fields
        if f.path not in key and words(f.name) & PORT_WORDS and f.is_numeric(0.5)
        and f.is_integral() and f.distinct() >= 2
    ]
    peer_side = [f for f in ports if words(f.name) & PEER_WORDS]
    return peer_side or [f for f in ports if not words(f.name) & SOURCE_WORDS] or ports


def _volumes(fields: list[FieldProfile]) -> list[FieldProfile]:
    """Byte and packet counts in every record: a sum refuses a record lacking its field."""
    return [
        f for f in fields
        if is_volume(f.name) and f.is_numeric(1.0) and f.is_integral() and f.distinct() >= 2
    ]


def _feature_name(field: FieldProfile, taken: set[str]) -> str:
    for candidate in (field.segments[-1], "_".join(field.segments)):
        name = re.sub(r"[^A-Za-z0-9_]+", "_", candidate).strip("_").lower()
        if name and name not in taken:
            return name
    return f"f{len(taken)}"


def _peers_per_key(field: FieldProfile, keys: list[str | None]) -> float:
    seen: dict[str, set[object]] = {}
    for key, value in zip(keys, field.values, strict=True):
        if key is not None and value is not None:
            seen.setdefault(key, set()).add(value)
    return median(len(v) for v in seen.values()) if seen else 0.0


def _lateness(seconds: list[float | None]) -> float:
    """The longest an event arrived after a later one in the sample: what buckets must wait."""
    newest, late = -math.inf, 0.0
    for s in seconds:
        if s is not None:
            late = max(late, newest - s)
            newest = max(newest, s)
    return late


def flow_shape(
    fields: list[FieldProfile], key_paths: tuple[str, ...], keys: list[str | None],
    seconds: list[float | None],
) -> FlowShape:
    """Aggregate mode with its features when the records look like flows, else events mode."""
    key = set(key_paths)
    volumes, peers, ports = _volumes(fields), _addresses(fields, key), _ports(fields, key)
    varying = [f for f in peers + ports if _peers_per_key(f, keys) > 1]
    late = _lateness(seconds)
    if not volumes or not varying:
        missing = "byte/packet counts" if not volumes else "peers or ports varying within a key"
        return FlowShape(False, [f"one reading per record: no {missing}"], [], late)
    n, k = len(keys), max(len({x for x in keys if x is not None}), 1)
    known = [s for s in seconds if s is not None]
    span = max(known) - min(known) if known else 0.0
    why = [f"records look like flows: {n / k:.1f} records per key"]
    if span > 0:
        why[0] += f", {n / k / span:.2g} per key per second over {span:.0f} s"
    why += [f"{f.path}: median {_peers_per_key(f, keys):g} values per key" for f in varying]
    why.append(f"sizes to sum: {', '.join(f.path for f in volumes)}")
    features = [Feature("events", "count", None, "records per bucket")]
    taken = {"events"}
    for field in volumes:
        name = _feature_name(field, taken)
        taken.add(name)
        features.append(Feature(name, "sum", field.path, f"sum of {field.path}"))
    for field, plural in [(f, "peers") for f in peers] + [(f, "ports") for f in ports]:
        alone = len(peers if plural == "peers" else ports) == 1 and plural not in taken
        name = plural if alone else _feature_name(field, taken)
        taken.add(name)
        features.append(Feature(name, "distinct", field.path, f"distinct {field.path}"))
    return FlowShape(True, why, features, late)
