"""Scoring every method's episodes against the labels, per key, per group and overall; the table.

Group and overall figures are micro-averages: confusion counts summed over keys, then P/R/F1, the
way the published SMAP/MSL figures are computed (one pool of labelled ranges and alert ranges).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from stream_detector.evaluation.datasets import LabelledDataset
from stream_detector.evaluation.feedwide import score_feed
from stream_detector.evaluation.heldout import after_cut
from stream_detector.evaluation.metrics import KeyScores, score_key
from stream_detector.evaluation.trace import MethodTrace

OVERALL = "all"

# Event-wise figures published with the dataset (PROVENANCE.md: Hundman et al., KDD 2018).
REFERENCE: dict[str, dict[str, dict[str, float]]] = {
    "smap_msl": {
        "SMAP": {"precision": 0.855, "recall": 0.855},
        "MSL": {"precision": 0.926, "recall": 0.694},
        OVERALL: {"precision": 0.875, "recall": 0.800},
    }
}


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def score_methods(
    dataset: LabelledDataset, traces: Sequence[MethodTrace]
) -> tuple[dict[str, dict[str, KeyScores]], dict[str, dict[str, KeyScores]]]:
    """(per key -> method -> scores, per group -> method -> summed scores); 'all' is overall.

    The first trace is the model under test; the others are what it is compared with.
    """
    empty = np.empty((0, 2), dtype=np.int64)
    per_key: dict[str, dict[str, KeyScores]] = {}
    groups: dict[str, dict[str, KeyScores]] = {}
    for key_id, channel in enumerate(dataset.channels):
        scores = {
            trace.name: score_key(
                channel.test_labels, trace.episodes.get(key_id, empty), channel.test_ts
            )
            for trace in traces
        }
        per_key[channel.key] = scores
        for group in dict.fromkeys((channel.group, OVERALL)):  # a file's one group is 'all'
            summed = groups.setdefault(group, {})
            for name, value in scores.items():
                summed[name] = summed.get(name, KeyScores.zero()) + value
    return per_key, groups


def build_report(
    dataset: LabelledDataset,
    traces: Sequence[MethodTrace],
    header: dict[str, Any],
) -> dict[str, Any]:
    per_key, groups = score_methods(dataset, traces)
    return {
        **_feed_section(dataset, traces),
        **header,
        "dataset": dataset.name,
        "notes": list(dataset.notes) + list(header.get("notes", [])),
        "methods": [trace.name for trace in traces],
        "method_seconds": {trace.name: round(trace.seconds, 2) for trace in traces},
        "groups": group_figures(dataset, traces, groups, REFERENCE.get(dataset.name, {})),
        "keys": {
            channel.key: {
                "group": channel.group,
                "test_events": len(channel.test_ts),
                **{name: scores.as_dict() for name, scores in per_key[channel.key].items()},
            }
            for channel in dataset.channels
        },
    }


def held_out_report(
    dataset: LabelledDataset, traces: Sequence[MethodTrace], share: float, cut_ts: float
) -> dict[str, Any]:
    """The figures of the test part from `cut_ts` on (heldout.py), per group and feed-wide; the
    published references are left out, being figures of the whole test part."""
    tail, moved = after_cut(dataset, traces, cut_ts)
    _, groups = score_methods(tail, moved)
    return {
        "share": share,
        "from_ts": cut_ts,
        "events": sum(len(channel.test_ts) for channel in tail.channels),
        "groups": group_figures(tail, moved, groups, {}),
        **_feed_section(tail, moved),
    }


def _feed_section(dataset: LabelledDataset, traces: Sequence[MethodTrace]) -> dict[str, Any]:
    """Each method's feed-wide figures where the dataset labels the whole feed, else nothing."""
    labels = dataset.feed
    if labels is None:
        return {}
    return {"feed": {trace.name: score_feed(dataset, trace, labels) for trace in traces}}


def group_figures(
    dataset: LabelledDataset,
    traces: Sequence[MethodTrace],
    groups: dict[str, dict[str, KeyScores]],
    reference: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """Per group (overall last): each method's figures, the labelled ranges and keys, the
    model's event-wise F1 lead over each other method, and the published reference if any."""
    group_section: dict[str, Any] = {}
    for group, methods in groups.items():
        entry: dict[str, Any] = {name: scores.as_dict() for name, scores in methods.items()}
        model = methods[traces[0].name].event_wise
        entry["labelled_ranges"] = model.tp + model.fn
        entry["keys"] = sum(1 for c in dataset.channels if group in (OVERALL, c.group))
        entry["model_event_f1_lead"] = {
            t.name: model.f1 - methods[t.name].event_wise.f1 for t in traces[1:]
        }
        if group in reference:
            ref = reference[group]
            entry["reference_event_wise"] = {
                **ref,
                "f1": _f1(ref["precision"], ref["recall"]),
                "source": "Hundman et al., KDD 2018 (telemanom), as in PROVENANCE.md",
            }
        group_section[group] = entry
    return {g: group_section[g] for g in sorted(group_section, key=lambda g: (g == OVERALL, g))}


def _pct(value: float | None) -> str:
    return "   -  " if value is None else f"{100 * value:5.1f}%"


def format_table(report: dict[str, Any]) -> str:
    """Per group and method: event-wise P/R/F1 first (the headline), then the other two F1s.

    With feedback applied, a first line says so (and whether it was given on this same feed),
    so that no figure copied from the table loses that; a held-out part follows the whole."""
    lines = [] if "feedback" not in report else [_feedback_line(report)]
    lines += _group_lines(report["groups"], report["methods"])
    if "feed" in report:
        lines += _feed_lines(report["feed"])
    if held := report.get("held_out"):
        lines += ["", _held_out_line(held)]
        lines += _group_lines({OVERALL: held["groups"][OVERALL]}, report["methods"])
        if "feed" in held:
            lines += _feed_lines(held["feed"])
    if written := report.get("false_positives_written"):
        lines += ["", _written_line(written)]
    return "\n".join(lines)


def _group_lines(groups: dict[str, Any], methods: Sequence[str]) -> list[str]:
    lines = [
        f"{'group':6} {'method':18} {'event P':>7} {'event R':>7} {'event F1':>8} "
        f"{'PA F1':>6} {'point F1':>8} {'FAR':>6} {'delay med':>9} {'episodes':>8}",
    ]
    for group, entry in groups.items():
        for method in methods:
            m = entry[method]
            ev = m["event_wise"]
            delay = m["delay"]["median_steps"]
            lines.append(
                f"{group:6} {method:18} {_pct(ev['precision']):>7} {_pct(ev['recall']):>7} "
                f"{_pct(ev['f1']):>8} {_pct(m['point_adjusted']['f1']):>6} "
                f"{_pct(m['point_wise']['f1']):>8} {_pct(m['point_wise']['far']):>6} "
                f"{'-' if delay is None else f'{delay:.0f}':>9} {m['alert_episodes']:>8}"
            )
        if ref := entry.get("reference_event_wise"):
            lines.append(
                f"{group:6} {'published ref.':18} {_pct(ref['precision']):>7} "
                f"{_pct(ref['recall']):>7} {_pct(ref['f1']):>8}"
            )
        ranges, keys = entry["labelled_ranges"], entry["keys"]
        lines.append(f"{'':6} ({ranges} labelled ranges over {keys} keys)")
    return lines


def _feedback_line(report: dict[str, Any]) -> str:
    feedback = report["feedback"]
    kinds = ", ".join(f"{kind} {n}" for kind, n in feedback["by_kind"].items()) or "none"
    baselines = " (baselines without)" if len(report["methods"]) > 1 else ""
    return (
        f"{feedback['label']}: {report['methods'][0]} ran with {feedback['events']} feedback "
        f"events ({kinds}), {feedback['duplicates']} duplicates, {feedback['alerts_muted']} "
        f"alerts muted{baselines}"
    )


def _held_out_line(held: dict[str, Any]) -> str:
    return (
        f"{held['label']}: the test part from event time {held['from_ts']:.10g} on (its last "
        f"{1 - held['share']:.0%}, {held['events']} events); report.json has every group"
    )


def _written_line(written: dict[str, Any]) -> str:
    skipped = [
        f"{written['still_open']} still open at the end" if written["still_open"] else "",
        f"{written['after_cut']} ending after the cut" if written["after_cut"] else "",
        f"{written['no_score']} new-key arrivals with no score" if written["no_score"] else "",
    ]
    left = " and ".join(s for s in skipped if s)
    return (
        f"simulated operator: {written['written']} false_positive events written to "
        f"{written['file']}" + (f" (false episodes not marked: {left})" if left else "")
    )


def _feed_lines(feed: dict[str, dict[str, Any]]) -> list[str]:
    """Feed-wide figures: span recall, episode precision, false alerts in benign spans, and
    recall per labelled kind."""
    lines = [
        "",
        f"{'feed-wide (attack spans of the whole feed)':44} {'P':>6} {'R':>6} {'F1':>6} "
        f"{'episodes':>8} {'in benign':>9}",
    ]
    for method, figures in feed.items():
        lines.append(
            f"{method:44} {_pct(figures['precision']):>6} {_pct(figures['recall']):>6} "
            f"{_pct(figures['f1']):>6} {figures['episodes']:>8} "
            f"{figures['false_in_benign_spans']:>9}"
        )
        kinds = ", ".join(
            f"{kind} {v['detected']}/{v['spans']}" for kind, v in figures["by_kind"].items()
        )
        lines.append(f"{'':6} detected per kind: {kinds or 'no attack spans'}")
    first = next(iter(feed.values()), None)
    if first is not None:
        lines.append(
            f"{'':6} ({first['attack_spans']} attack spans, {first['benign_spans']} benign spans "
            "in the test part)"
        )
    return lines
