"""From the configured bucket features to the raw fields they read and back to feature values.

Several features may read one field (sum and max of bytes), so each raw field is decoded and
accumulated once; the plan remembers which accumulator column every feature is computed from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream_detector.aggregate.partials import Partials
from stream_detector.aggregate.sketch import estimate
from stream_detector.config import AggregateConfig


@dataclass(frozen=True)
class FeaturePlan:
    """names: the features in model order; numeric_fields / distinct_fields: the raw fields to
    decode, each once; sources: per feature, (aggregation, column in its accumulator)."""

    names: tuple[str, ...]
    numeric_fields: tuple[str, ...]
    distinct_fields: tuple[str, ...]
    sources: tuple[tuple[str, int], ...]
    precision: int

    @staticmethod
    def of(config: AggregateConfig) -> FeaturePlan:
        numeric: list[str] = []
        distinct: list[str] = []
        sources = []
        for feature in config.features:
            if feature.agg == "count":
                sources.append(("count", 0))
                continue
            assert feature.field is not None  # AggregateFeature validates this
            fields = distinct if feature.agg == "distinct" else numeric
            if feature.field not in fields:
                fields.append(feature.field)
            sources.append((feature.agg, fields.index(feature.field)))
        return FeaturePlan(
            names=tuple(feature.name for feature in config.features),
            numeric_fields=tuple(numeric),
            distinct_fields=tuple(distinct),
            sources=tuple(sources),
            precision=config.distinct_precision,
        )

    @property
    def n_registers(self) -> int:
        return 1 << self.precision

    def empty(self, n: int) -> Partials:
        return Partials.empty(
            n, len(self.numeric_fields), len(self.distinct_fields), self.n_registers
        )

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
