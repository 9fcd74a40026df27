"""Which field is the event time, and its unit, judged by the range of its values.

Epoch seconds, milliseconds, microseconds and nanoseconds of the years 2000 to a year from now
occupy ranges three orders of magnitude apart that do not overlap, so the range of a field's
values tells its unit; text is a time when it parses as RFC 3339. Without any such field in a
file (a topic has the broker's time instead), a time-named field of whole numbers that never fall
(a step index, as benchmark series number their rows) is read as seconds from the epoch, with
input.min_timestamp lowered to let them in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Final

from stream_detector.inspect.hints import TIME_NAMES, words
from stream_detector.inspect.profile import FieldProfile

EPOCH_FLOOR_S: Final = 946_684_800.0  # 2000-01-01, input.min_timestamp's default
_SCALES: Final = (("s", 1.0), ("ms", 1e3), ("us", 1e6), ("ns", 1e9))
_YEAR_S: Final = 365 * 86_400.0
_STEP_NAMES: Final = TIME_NAMES | {"t", "step", "tick", "index", "idx"}


@dataclass(frozen=True)
class TimeChoice:
    """The time field (None: the broker's), its unit, why, and each record's time in seconds."""

    path: str | None
    unit: str
    why: str
    seconds: list[float | None]
    others: tuple[str, ...] = ()
    min_timestamp: float | None = None  # the input.min_timestamp a step index needs


def epoch_unit(numbers: list[float], now: float | None = None) -> str | None:
    """The unit in which every number is an epoch time between 2000 and a year from now."""
    if not numbers:
        return None
    ceiling = (time.time() if now is None else now) + _YEAR_S
    low, high = min(numbers), max(numbers)
    for unit, scale in _SCALES:
        if EPOCH_FLOOR_S * scale <= low and high <= ceiling * scale:
            return unit
    return None


def rfc3339_seconds(text: object) -> float | None:
    """Epoch seconds of an RFC 3339 time (date and time, zone-less read as UTC), else None."""
    if type(text) is not str or len(text) < 16 or text[4:5] != "-":
        return None
    try:
        moment = datetime.fromisoformat(text.upper())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _reading(field: FieldProfile) -> tuple[str, list[float | None]] | None:
    """(unit, seconds per record) when at least 90% of the records carry a plausible time."""
    need = 0.9 * len(field.values)
    if words(field.name) & {"id", "uid", "seq", "sequence"}:  # big ids can look like times
        return None
    unit = epoch_unit(field.numbers())
    if unit is not None and len(field.numbers()) >= need:
        scale = dict(_SCALES)[unit]
        return unit, [
            v / scale if type(v) in (int, float) else None for v in field.values
        ]
    parsed = [rfc3339_seconds(v) for v in field.values]
    good = [s for s in parsed if s is not None]
    if len(good) >= need and good and min(good) >= EPOCH_FLOOR_S:
        return "rfc3339", parsed
    return None


def _steps(field: FieldProfile) -> list[float | None] | None:
    """Each record's step when the field is a step index: named like a time, whole numbers from
    0 up in at least 90% of the records, rising in record order (never falling, and not one
    value throughout)."""
    numbers = field.numbers()
    if not numbers or field.name not in _STEP_NAMES or len(numbers) < 0.9 * len(field.values):
        return None
    whole = all(v >= 0 and v.is_integer() for v in numbers)
    rising = numbers[-1] > numbers[0] and all(a <= b for a, b in pairwise(numbers))
    if not whole or not rising:
        return None
    return [float(v) if type(v) in (int, float) else None for v in field.values]


def _rank(field: FieldProfile) -> tuple[int, int]:
    name = field.name
    named = 3 if name in TIME_NAMES or "received" in name else 1 if "time" in name else 0
    return named, -len(field.segments)


def choose_time(fields: list[FieldProfile], broker_times: bool = True) -> TimeChoice:
    """The best-named time field among those whose values are times; without one, the broker's
    (records from a topic), or else a step index (a file's)."""
    readings = {f.path: (f, r) for f in fields if (r := _reading(f)) is not None}
    look_for_steps = not readings and not broker_times
    steps = {f.path: (f, r) for f in fields if look_for_steps and (r := _steps(f)) is not None}
    if steps:
        field, seconds = max(steps.values(), key=lambda item: _rank(item[0]))
        known = [s for s in seconds if s is not None]
        why = (
            f"{field.path}: a step index ({known[0]:g} .. {known[-1]:g}), no epoch time in any "
            "field: read as seconds from the epoch, so min_timestamp = 0 lets them in"
        )
        return TimeChoice(field.path, "s", why, seconds, min_timestamp=0.0)
    if not readings:
        return TimeChoice(
            None, "auto",
            "no field held an epoch time (s/ms/us/ns, 2000 to next year) or RFC 3339 text in "
            "90% of the records, so the broker's timestamp is used (a file has none: add one)",
            [],
        )
    best = max(readings.values(), key=lambda item: _rank(item[0]))[0]
    unit, seconds = readings[best.path][1]
    known = [s for s in seconds if s is not None]
    span = f"{_iso(min(known))} .. {_iso(max(known))}"
    why = (
        f"{best.path}: {len(known)} of {len(seconds)} records, "
        + (f"RFC 3339 text, {span}" if unit == "rfc3339" else f"epoch {unit}, {span}")
    )
    others = tuple(path for path in readings if path != best.path)
    return TimeChoice(best.path, unit, why, seconds, others)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
