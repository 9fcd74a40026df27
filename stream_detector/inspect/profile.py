"""What each field of a sample holds: how often it is present, its types, values and range.

Records are flattened into field paths in the syntax the settings read: dotted for nesting
(`tags.host`), a JSON Pointer when a key itself holds a dot or a slash (`/id.orig_h`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Segments = tuple[str, ...]


def field_path(segments: Segments) -> str:
    """The settings' path for a key sequence: dotted when that is unambiguous, else a pointer."""
    if all(s and "." not in s and "/" not in s and "~" not in s for s in segments):
        return ".".join(segments)
    return "/" + "/".join(s.replace("~", "~0").replace("/", "~1") for s in segments)


def _leaves(record: dict[str, Any], prefix: Segments = ()) -> Iterator[tuple[Segments, Any]]:
    for key, value in record.items():
        segments = (*prefix, str(key))
        if isinstance(value, dict):
            yield from _leaves(value, segments)
        elif value is not None and not isinstance(value, list):  # a list is no single value
            yield segments, value


@dataclass
class FieldProfile:
    """One field across the sample: values in record order (None where it was absent)."""

    segments: Segments
    values: list[Any] = field(default_factory=list)

    @property
    def path(self) -> str:
        return field_path(self.segments)

    @property
    def name(self) -> str:
        """The innermost key, lower case: what name-based hints look at."""
        return self.segments[-1].lower()

    @property
    def present(self) -> list[Any]:
        return [v for v in self.values if v is not None]

    def presence(self) -> float:
        return len(self.present) / max(len(self.values), 1)

    def distinct(self) -> int:
        return len({_hashable(v) for v in self.present})

    def numbers(self) -> list[float]:
        """The finite numeric values (bools are not numbers here, whatever Python says)."""
        return [
            float(v) for v in self.present
            if type(v) in (int, float) and math.isfinite(v)
        ]

    def strings(self) -> list[str]:
        return [v for v in self.present if type(v) is str]

    def is_numeric(self, share: float = 0.9) -> bool:
        """Numbers in at least `share` of the records."""
        return len(self.numbers()) >= share * len(self.values) > 0

    def is_integral(self) -> bool:
        return all(v == int(v) for v in self.numbers())

    def top_share(self) -> float:
        """The share of the commonest value among the present ones (1.0 for a constant)."""
        present = self.present
        if not present:
            return 1.0
        return Counter(_hashable(v) for v in present).most_common(1)[0][1] / len(present)


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) else repr(value)


def profile_records(records: list[dict[str, Any]]) -> dict[Segments, FieldProfile]:
    """Every leaf field of the records, in the order first seen, each with one slot a record."""
    fields: dict[Segments, FieldProfile] = {}
    for index, record in enumerate(records):
        for segments, value in _leaves(record):
            profile = fields.get(segments)
            if profile is None:
                profile = fields[segments] = FieldProfile(segments, [None] * index)
            if len(profile.values) == index:  # a duplicate key in one record keeps its first
                profile.values.append(value)
        for profile in fields.values():
            if len(profile.values) == index:
                profile.values.append(None)
    return fields
