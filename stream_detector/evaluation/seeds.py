"""Figures over several training seeds: each seed's, their mean and their range.

A trained model is one draw of its training seed. On SMAP the seed alone moves event-wise F1 by
about a point at the defaults (by up to 8 before the weights were averaged), so a comparison
between two settings is worth only as much as that spread. `evaluate --seeds` trains one model
per seed on the same data and streams each through the same protocol; this module lines up the
headline figures of those reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

# (label, definition, field) of the per-group figures lined up across seeds.
GROUP_FIGURES: Final = (
    ("event F1", "event_wise", "f1"),
    ("event P", "event_wise", "precision"),
    ("event R", "event_wise", "recall"),
    ("point F1", "point_wise", "f1"),
    ("FAR", "point_wise", "far"),
)
# (label, field) of the feed-wide figures (data labelled for the whole feed, like Westermo).
FEED_FIGURES: Final = (
    ("feed P", "precision"),
    ("feed R", "recall"),
    ("in benign", "false_in_benign_spans"),
)
_COUNTS: Final = frozenset({"in benign"})


def seed_summary(reports: Mapping[int, dict[str, Any]]) -> dict[str, Any]:
    """Per group, method and figure: the value of each seed's report, their mean, min and max.

    The reports come from the same data and settings but for `train.seed`, so they have the same
    groups and methods; the first one's are followed.
    """
    if not reports:
        raise ValueError("no reports to summarise")
    seeds = list(reports)
    first = reports[seeds[0]]
    rows = []
    for group in first["groups"]:
        for method in first["methods"]:
            for label, definition, field in GROUP_FIGURES:
                values = [reports[s]["groups"][group][method][definition][field] for s in seeds]
                rows.append(_row(group, method, label, values))
    for method in first.get("feed", {}):
        for label, field in FEED_FIGURES:
            values = [reports[s]["feed"][method][field] for s in seeds]
            rows.append(_row("feed", method, label, values))
    return {
        "seeds": seeds,
        "model_versions": [reports[s]["model_version"] for s in seeds],
        "rows": rows,
    }


def _row(group: str, method: str, figure: str, values: list[float]) -> dict[str, Any]:
    return {
        "group": group,
        "method": method,
        "figure": figure,
        "values": values,
        "mean": sum(values) / len(values),
        "min": min(values),
        "max": max(values),
    }


def format_seed_table(summary: dict[str, Any]) -> str:
    """One line per group, method and figure: each seed's value, the mean and the range."""
    seeds = summary["seeds"]
    head = f"{'group':6} {'method':18} {'figure':9} " + " ".join(f"{f'seed {s}':>8}" for s in seeds)
    lines = [f"{head} {'mean':>8} {'range':>8}"]
    for row in summary["rows"]:
        show = _count if row["figure"] in _COUNTS else _share
        cells = " ".join(f"{show(v):>8}" for v in row["values"])
        spread = row["max"] - row["min"]
        lines.append(
            f"{row['group']:6} {row['method']:18} {row['figure']:9} {cells} "
            f"{show(row['mean']):>8} {show(spread):>8}"
        )
    return "\n".join(lines)


def _share(value: float) -> str:
    return f"{100 * value:.1f}%"


def _count(value: float) -> str:
    return f"{value:.1f}" if value != int(value) else f"{int(value)}"
