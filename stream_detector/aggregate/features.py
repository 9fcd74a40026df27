"""From the configured bucket features to the raw fields they read and back to feature values.

Several features may read one field (sum and max of bytes), so each raw field is decoded and
accumulated once; the plan remembers which accumulator column every feature is computed from.

A conditional count (`where`) is the sum of a 0/1 column, one per distinct condition, appended
after the numeric fields' columns: its partial is then a sum like any other, merged, bucketed
and checkpointed by the same array operations, with no summary of its own to keep in step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream_detector.aggregate.partials import Partials
from stream_detector.aggregate.sketch import estimate
from stream_detector.config import AggregateConfig, FilterValue


@dataclass(frozen=True)
class FeaturePlan:
    """names: the features in model order; numeric_fields / distinct_fields: the raw fields to
    decode, each once; conditions: the distinct `where` tests, each a 0/1 column after the
    numeric fields'; sources: per feature, (aggregation, column in its accumulator)."""

    names: tuple[str, ...]
    numeric_fields: tuple[str, ...]
    distinct_fields: tuple[str, ...]
    sources: tuple[tuple[str, int], ...]
    precision: int
    conditions: tuple[Condition, ...] = ()

    @staticmethod
    def of(config: AggregateConfig) -> FeaturePlan:
        numeric: list[str] = []
        distinct: list[str] = []
        conditions: list[Condition] = []
        sources = []
        for feature in config.features:
            if feature.where is not None:
                condition = Condition(feature.where.field, feature.where.values)
                if condition not in conditions:
                    conditions.append(condition)
                # resolved to its column once the number of numeric fields is known
                sources.append(("count_where", conditions.index(condition)))
                continue
            if feature.agg == "count":
                sources.append(("count", 0))
                continue
            assert feature.field is not None  # AggregateFeature validates this
            fields = distinct if feature.agg == "distinct" else numeric
            if feature.field not in fields:
                fields.append(feature.field)
            sources.append((feature.agg, fields.index(feature.field)))
        sources = [
            ("sum", len(numeric) + column) if agg == "count_where" else (agg, column)
            for agg, column in sources
        ]
        return FeaturePlan(
            names=tuple(feature.name for feature in config.features),
            numeric_fields=tuple(numeric),
            distinct_fields=tuple(distinct),
            sources=tuple(sources),
            precision=config.distinct_precision,
            conditions=tuple(conditions),
        )

    @property
    def n_registers(self) -> int:
        return 1 << self.precision

    @property
    def condition_fields(self) -> tuple[str, ...]:
        """The raw field each condition reads, in condition order (a field may repeat)."""
        return tuple(condition.field for condition in self.conditions)

    def empty(self, n: int) -> Partials:
        n_numeric = len(self.numeric_fields) + len(self.conditions)
        return Partials.empty(n, n_numeric, len(self.distinct_fields), self.n_registers)

    def numbers(self, values: np.ndarray, raw: Sequence[Sequence[Any]]) -> np.ndarray:
        """float64 [N, Fn + C]: the numeric fields' values, then each condition's 0/1 column
        from the raw values of its field (`raw`, one column per condition)."""
        if not self.conditions:
            return values.astype(np.float64)
        flags = [c.matches(column) for c, column in zip(self.conditions, raw, strict=True)]
        return np.column_stack([values.astype(np.float64), *flags]).astype(np.float64)

    def values(self, partials: Partials) -> np.ndarray:
        """Feature values float32 [G, F]. An empty bucket is all zeros: its mean, min and max are
        undefined, and 0 reads as "no traffic" rather than repeating the last busy bucket."""
        count = partials.count
        seen = count > 0
        out = np.zeros((len(partials), len(self.names)), dtype=np.float64)
        for j, (agg, column) in enumerate(self.sources):
            if agg == "count":
                out[:, j] = count
            elif agg == "sum":
                out[:, j] = partials.sums[:, column]
            elif agg == "mean":
                np.divide(partials.sums[:, column], count, out=out[:, j], where=seen)
            elif agg == "min":
                out[seen, j] = partials.mins[seen, column]
            elif agg == "max":
                out[seen, j] = partials.maxs[seen, column]
            else:
                out[:, j] = estimate(partials.registers[:, column, :])
        return out.astype(np.float32)


def _comparable(value: Any) -> Any:
    """What a raw value compares as: text as itself, a bool as (bool, value), any number as
    (float, value), anything else (absent, array, object) as None, which no condition holds.
    So 1 matches 1.0 but neither true nor "1", as input.filter compares."""
    kind = type(value)
    if kind is str:
        return value
    if kind is bool:
        return (bool, value)
    if kind is int or kind is float:
        return (float, float(value))
    return None


@dataclass(frozen=True)
class Condition:
    """One `where` test: the raw field at `field` holds one of `values`."""

    field: str
    values: tuple[FilterValue, ...]

    def matches(self, column: Sequence[Any] | np.ndarray) -> np.ndarray:
        """float64 [N]: 1 where the event's value is one of the values, else 0 (absent too).

        One set lookup per event; text-only values (the common case: states, protocols, verbs)
        skip converting each raw value, since nothing but text can equal them.
        """
        if isinstance(column, np.ndarray):
            column = column.tolist()  # numpy scalars are not the JSON types compared with
        wanted = frozenset(_comparable(value) for value in self.values)
        if all(type(value) is str for value in self.values):
            # Only text equals text; anything else (numbers, None, unhashable arrays) is not.
            hit = (type(v) is str and v in wanted for v in column)
        else:
            hit = map(wanted.__contains__, map(_comparable, column))
        return np.fromiter(hit, dtype=np.float64, count=len(column))
