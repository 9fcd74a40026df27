"""Topics that mix record types (Suricata's eve.json: flow, dns, alert...; Telegraf: cpu, mem...)
need an input.filter: the features of one type are missing from the others, and a record lacking
a value field is refused. The type is a top-level text field with a type-like name and a few
values whose records carry different fields; the commonest type is kept."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

from stream_detector.inspect.profile import FieldProfile, Segments

TYPE_NAMES: Final = frozenset({
    "event_type", "type", "name", "measurement", "kind", "record_type", "log_type", "_path",
    "event", "metric", "metric_name",
})


@dataclass(frozen=True)
class TypeFilter:
    """Keep records whose `path` equals `value`; `counts` is every type seen, commonest first."""

    path: str
    value: str
    counts: list[tuple[str, int]]


def _fields_of(records: list[dict[str, Any]]) -> frozenset[str]:
    """Top-level keys and the keys one level in: enough to tell record types apart."""
    keys: set[str] = set()
    for record in records:
        for key, value in record.items():
            keys.add(key)
            if isinstance(value, dict):
                keys.update(f"{key}.{inner}" for inner in value)
    return frozenset(keys)


def type_filter(
    records: list[dict[str, Any]], fields: dict[Segments, FieldProfile]
) -> TypeFilter | None:
    """The record-type filter the sample needs, or None when its records are of one type."""
    for segments, field in fields.items():
        if len(segments) != 1 or field.name not in TYPE_NAMES or field.presence() < 1.0:
            continue
        counts = Counter(field.strings())
        if not 2 <= len(counts) <= 20 or sum(counts.values()) != len(records):
            continue
        by_type = {
            value: _fields_of([r for r in records if r.get(segments[0]) == value])
            for value in counts
        }
        if len(set(by_type.values())) > 1:
            value, _ = counts.most_common(1)[0]
            return TypeFilter(field.path, value, counts.most_common())
    return None
