"""Which numeric fields are readings worth modelling, and why the others are left out.

A feature must be a measurement that varies: a number in 90% of the records (a record lacking a
value field is refused), not the time or the key, not (near-)constant (95% one value: it only adds
noise), not named like a label (a port, an id, a code: numbers that name things, whose size
means nothing), and not a counter (integers rising with every record, like a sequence number).
"""

from __future__ import annotations

from dataclasses import dataclass

from stream_detector.inspect.hints import IDENTIFIER_WORDS, LABEL_NAMES, words
from stream_detector.inspect.profile import FieldProfile
from stream_detector.inspect.timing import epoch_unit


@dataclass(frozen=True)
class Verdict:
    """A numeric field's fate: taken as a feature or not, and the reason in a few words."""

    path: str
    taken: bool
    why: str


def _is_counter(field: FieldProfile) -> bool:
    numbers = field.numbers()
    return (
        len(numbers) >= 10 and field.is_integral()
        and len(set(numbers)) >= 0.9 * len(numbers)
        and all(a <= b for a, b in zip(numbers, numbers[1:], strict=False))
    )


def judge(field: FieldProfile) -> Verdict:
    """Whether one numeric field is a reading, with the figures that decided it."""
    numbers = field.numbers()
    low, high = min(numbers), max(numbers)
    shown = f"{low:.6g} .. {high:.6g}, {field.distinct()} values"
    if field.distinct() == 1:
        return Verdict(field.path, False, f"constant {low:.6g}")
    if field.top_share() >= 0.95:
        return Verdict(field.path, False, f"near-constant ({field.top_share():.0%} one value)")
    if field.is_integral() and words(field.name) & IDENTIFIER_WORDS:
        return Verdict(field.path, False, f"named like an identifier or port ({shown})")
    if epoch_unit(numbers) is not None:
        return Verdict(field.path, False, f"a time, not a reading ({shown})")
    if _is_counter(field):
        return Verdict(field.path, False, f"a counter: rises with every record ({shown})")
    return Verdict(field.path, True, shown)


def choose_label(fields: list[FieldProfile]) -> str | None:
    """A top-level field named like an anomaly label (label, is_anomaly, ...) that is 0 or 1
    in 90% of the records: input.label_field, which `evaluate` reads and the service ignores."""
    for field in fields:
        flags = [v for v in field.present if v in (0, 1)]  # True and False are 1 and 0 too
        if (
            len(field.segments) == 1 and field.name in LABEL_NAMES
            and len(flags) == len(field.present) >= 0.9 * len(field.values)
        ):
            return field.path
    return None


def numeric_fields(fields: list[FieldProfile], exclude: set[str]) -> list[FieldProfile]:
    """The fields holding numbers in 90% of the records, other than the time and key."""
    return [f for f in fields if f.path not in exclude and f.is_numeric(0.9)]


def choose_values(fields: list[FieldProfile], exclude: set[str]) -> list[Verdict]:
    """A verdict on every numeric field, in record order."""
    return [judge(f) for f in numeric_fields(fields, exclude)]
