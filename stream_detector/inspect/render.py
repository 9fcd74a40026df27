"""A Plan as an annotated TOML settings file: every setting preceded by the reason for it."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable

from stream_detector.config import BROKER_TIMESTAMP
from stream_detector.inspect.plan import Plan

_WIDTH = 99


def _s(text: str) -> str:
    """A TOML basic string: JSON's escapes are all valid TOML ones."""
    return json.dumps(text, ensure_ascii=False)


def _array(items: Iterable[str], indent: int = 0) -> str:
    """One line when it fits, else one item a line (TOML allows a trailing comma)."""
    quoted = [_s(item) for item in items]
    line = "[" + ", ".join(quoted) + "]"
    if indent + len(line) <= _WIDTH:
        return line
    return "[\n" + "".join(f"    {q},\n" for q in quoted) + "]"


def _comment(*texts: str) -> list[str]:
    lines: list[str] = []
    for text in texts:
        lines += textwrap.wrap(
            text, _WIDTH, initial_indent="# ", subsequent_indent="#   ", break_on_hyphens=False
        ) or ["#"]
    return lines


def _header(plan: Plan) -> list[str]:
    sample = plan.sample
    read = f"{len(sample.records)} records of {sample.source} ({sample.kind.upper()})"
    lines = _comment(
        f"Drafted by `stream-detector init` from {read}: {plan.fields} fields.",
    )
    if sample.unreadable:
        lines += _comment(f"{sample.unreadable} lines or messages were not JSON objects and "
                          "were skipped.")
    lines += _comment(
        "Every choice says why; check what a sample cannot know (is this the right key? are "
        "these all the readings?), then:",
    )
    lines += ["#   stream-detector train --config THIS.toml --input normal.jsonl --out model/",
              "#   stream-detector run --config THIS.toml --model model/"]
    if plan.preset is not None:
        name, described = plan.preset
        lines += ["#"] + _comment(
            f"This sample looks like {described}: the shipped preset `{name}` maps it, with "
            "bucket and lateness choices documented for that tool. Prefer",
        ) + [f"#   stream-detector run --preset {name} --config site.toml",
             "# with site.toml naming only [kafka] and model.path; below is this sample's own "
             "reading."]
    return lines + [""]


def _key(plan: Plan) -> list[str]:
    key = plan.key
    lines = _comment(f"key: {key.why}")
    if key.others:
        lines += _comment("other key candidates: " + ", ".join(
            f"{path} ({n} values)" for path, n in key.others[:6]))
    if key.composite:
        lines += _comment(
            "key_fields joins the values with '|' (h1|cpu0...); a single key_field would "
            "merge the series that share it.")
        return lines + [f"key_fields = {_array(key.paths, 13)}"]
    return lines + [f"key_field = {_s(key.paths[0] if key.paths else key.no_field)}"]


def _time(plan: Plan) -> list[str]:
    time = plan.time
    lines = _comment(f"event time: {time.why}")
    if time.others:
        lines += _comment("other time fields: " + ", ".join(time.others))
    lines += [
        f"timestamp_field = {_s(time.path or BROKER_TIMESTAMP)}",
        f"timestamp_unit = {_s(time.unit)}",
    ]
    if time.min_timestamp is not None:
        lines.append(f"min_timestamp = {time.min_timestamp!r}")
    return lines


def _verdicts(plan: Plan) -> list[str]:
    taken = [f"{v.path} ({v.why})" for v in plan.values if v.taken]
    left = [f"{v.path}: {v.why}" for v in plan.values if not v.taken]
    lines = _comment("readings (numbers in 90% of records that vary): " + ("; ".join(taken)
                                                                           or "none"))
    if left:
        lines += _comment("left out: " + "; ".join(left))
    return lines


def _input(plan: Plan) -> list[str]:
    aggregate = plan.shape.aggregate
    lines = ["[input]"] + _comment(
        "mode: " + "; ".join(plan.shape.why)
        + ("" if aggregate else ", so each record is one reading of value_fields"))
    lines.append(f"mode = {_s('aggregate' if aggregate else 'events')}")
    lines += _key(plan) + _time(plan)
    if plan.sample.delimiter is not None:
        lines += _comment("the CSV header's separator") + [
            f"csv_delimiter = {_s(plan.sample.delimiter)}"]
    lines += _verdicts(plan)
    if plan.label is not None:
        lines += _comment(
            f"{plan.label}: 0 or 1 in every record, an anomaly label: `evaluate` scores against "
            "it, the service ignores it") + [f"label_field = {_s(plan.label)}"]
    if aggregate:
        lines += _comment("aggregate mode: the model's features are the bucket features below")
        names = [feature.name for feature in plan.shape.features]
        return [*lines, f"value_fields = {_array(names, 15)}", *_filter(plan), ""]
    return [*lines, f"value_fields = {_array(plan.value_paths, 15)}", *_filter(plan), ""]


def _filter(plan: Plan) -> list[str]:
    if plan.kind is None:
        return []
    seen = ", ".join(f"{value} {n}" for value, n in plan.kind.counts)
    return ["", "[input.filter]"] + _comment(
        f"records of several types ({plan.kind.path}: {seen}) carry different fields; the "
        f"commonest is kept and the rest skipped (counted, not dead-lettered). Everything "
        f"above was worked out on the {plan.kind.value!r} records only."
    ) + [f"{_s(plan.kind.path)} = {_s(plan.kind.value)}"]


def _aggregate(plan: Plan) -> list[str]:
    if not plan.shape.aggregate:
        return []
    lines = ["[aggregate]"] + _comment(
        "60 s buckets per key, as the flow presets use: long enough to smooth bursts.")
    lines += ["bucket_width_s = 60.0"] + _comment(
        f"the sample's worst disorder: a record {plan.shape.lateness_s:.1f} s older than one "
        "before it; half again, in whole 10 s (at least 10). Later records are dropped and "
        "counted.")
    lines += [f"allowed_lateness_s = {plan.lateness_s:.1f}", 'late_policy = "drop"', ""]
    for feature in plan.shape.features:
        lines += _comment(feature.why) + ["[[aggregate.features]]", f"name = {_s(feature.name)}",
                                          f"agg = {_s(feature.agg)}"]
        if feature.field is not None:
            lines.append(f"field = {_s(feature.field)}")
        lines.append("")
    lines += ["[window]"] + _comment(
        "15 buckets of 60 s: a window is a quarter of an hour, scored on every bucket.")
    return [*lines, "size = 15", "stride = 1", ""]


def _kafka(plan: Plan, topic: str | None, bootstrap: str | None) -> list[str]:
    if topic is None:
        return _comment(
            "[kafka] bootstrap_servers and input_topics name the live feed; add them here.")
    return ["[kafka]"] + _comment("where the sample came from") + [
        f"bootstrap_servers = {_s(bootstrap or '')}", f"input_topics = {_array([topic])}"]


def render(plan: Plan, topic: str | None = None, bootstrap: str | None = None) -> str:
    """The draft settings file's text."""
    lines = _header(plan) + _input(plan) + _aggregate(plan) + _kafka(plan, topic, bootstrap)
    return "\n".join(lines).rstrip("\n") + "\n"
