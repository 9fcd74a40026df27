"""Which field names the entity (device, host, series) whose behaviour is modelled.

A key must repeat: a field unique to each record (a connection id) gives every record its own
key and no history, and a constant one lumps everything into one. So a candidate is text (or an
integer id) present in 90% of the records with at least 2 values and at least 2 records a value
on average; among those the name decides (source-like words up, peer and category words down),
then the number of values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from stream_detector.config import MESSAGE_KEY, SINGLE_SERIES, SINGLE_SERIES_KEY
from stream_detector.inspect.hints import (
    CATEGORY_WORDS,
    PEER_WORDS,
    PORT_WORDS,
    SOURCE_WORDS,
    words,
)
from stream_detector.inspect.profile import FieldProfile

# An integer is a key only when named as one: most repeating integers are counts or codes.
ID_WORDS: Final = frozenset({"id", "uid", "serial", "idx", "index", "no", "num", "number"})
TAG_GROUPS: Final = frozenset({"tags", "labels", "dimensions", "attributes", "resource"})
SERIES_NAMES: Final = frozenset({"name", "measurement", "metric"})


@dataclass(frozen=True)
class KeyChoice:
    """key_field or key_fields, why, and the other candidates (path, number of values)."""

    paths: tuple[str, ...]
    why: str
    composite: bool
    others: tuple[tuple[str, int], ...]
    per_record: list[str | None]  # each record's key, for the per-key figures
    no_field: str = MESSAGE_KEY  # the key_field token when no field is the key


def _is_candidate(field: FieldProfile) -> bool:
    n = len(field.values)
    if field.presence() < 0.9:
        return False
    texts = len(field.strings()) == len(field.present)
    named = words(field.name)
    ids = (
        field.is_numeric(1.0) and field.is_integral()
        and bool(named & (ID_WORDS | SOURCE_WORDS)) and not named & PORT_WORDS
    )
    distinct = field.distinct()
    return (texts or ids) and 2 <= distinct and n / distinct >= 2


def _score(field: FieldProfile) -> tuple[int, int]:
    name = words(field.name)
    hint = 2 * bool(name & SOURCE_WORDS) - 2 * bool(name & PEER_WORDS)
    hint -= bool(name & CATEGORY_WORDS)
    hint += len(field.strings()) == len(field.present)  # text names things; numbers count them
    return hint, field.distinct()


def _keys_of(fields: list[FieldProfile]) -> list[str | None]:
    rows = zip(*(f.values for f in fields), strict=True)
    return [None if None in row else "|".join(map(str, row)) for row in rows]


def _composite(fields: list[FieldProfile]) -> list[FieldProfile] | None:
    """Tags that together name a series (Telegraf's tags.host + tags.cpu, with the measurement's
    `name`): the text members of an object called tags/labels/dimensions that vary."""
    groups: dict[tuple[str, ...], list[FieldProfile]] = {}
    for field in fields:
        parent = field.segments[:-1]
        if parent and parent[-1].lower() in TAG_GROUPS and _is_candidate(field):
            groups.setdefault(parent, []).append(field)
    if not groups:
        return None
    members = max(groups.values(), key=len)
    members.sort(key=FieldProfile.distinct)
    series = [
        f for f in fields
        if len(f.segments) == 1 and f.name in SERIES_NAMES and f.presence() >= 0.9
        and len(f.strings()) == len(f.present)
    ]
    return members + series[:1]


def choose_key(
    fields: list[FieldProfile], time_path: str | None, message_keys: bool = True
) -> KeyChoice:
    """The best key, a composite of tags where they name series better; failing those, the
    message key when the records come with one (a topic's), else one series (a file's)."""
    n = len(fields[0].values) if fields else 0
    candidates = sorted(
        (f for f in fields if f.path != time_path and _is_candidate(f)), key=_score, reverse=True
    )
    others = tuple((f.path, f.distinct()) for f in candidates)
    composite = _composite(fields)
    if composite and len(composite) > 1:
        keys = _keys_of(composite)
        series = len({k for k in keys if k is not None})
        best_single = candidates[0].distinct() if candidates else 0
        if series > best_single and n / max(series, 1) >= 2:
            paths = tuple(f.path for f in composite)
            why = (
                f"{' + '.join(paths)} together: {series} series of {n / series:.1f} records on "
                f"average, more than any one field names alone ({best_single}); tags describe "
                "a series only together"
            )
            return KeyChoice(paths, why, True, others, keys)
    if not candidates:
        why = (
            "no field repeats like a key (text or integer id present in 90% of records, 2+ "
            "values, 2+ records each): "
        )
        if message_keys:
            return KeyChoice((), why + "the Kafka message key is used", False, (), [None] * n)
        return KeyChoice(
            (), why + "the records are one series", False, (), [SINGLE_SERIES_KEY] * n,
            no_field=SINGLE_SERIES,
        )  # fmt: skip
    best = candidates[0]
    d = best.distinct()
    why = f"{best.path}: {d} values over {n} records, {n / d:.1f} records each"
    keys = [None if v is None else str(v) for v in best.values]
    return KeyChoice((best.path,), why, False, others[1:], keys)
