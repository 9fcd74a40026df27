"""`evaluate` on labelled raw-event files (input.mode = "aggregate") and the network scenarios.

A raw-event file is bucketed by the very AggregatingDecoder the service runs, so the model and the
baselines are judged on the bucket features the service would compute. Labels are per key and
event-time range (`<events>.labels.json`, as `write_labels` writes them); a bucket is labelled when
its time span overlaps a range of its key. Each key is reported in the group named after the kinds
of anomaly it carries ("normal" for none), so the table shows the figures per attack kind.

    stream-detector evaluate --dataset network --out reports/network
    stream-detector evaluate --events flows.jsonl --labels flows.labels.json --config flows.toml
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson
import structlog

from stream_detector.aggregate.decoder import AggregatingDecoder
from stream_detector.config import Settings, deep_merge
from stream_detector.detector.sources import read_batches
from stream_detector.evaluation.datasets import Channel, LabelledDataset
from stream_detector.scenarios.flows import (
    SCENARIOS,
    labels_path_for,
    network_sections,
    write_scenario,
)
from stream_detector.scenarios.presets import preset

log = structlog.get_logger(__name__)

NORMAL_GROUP: Final = "normal"
# The scenarios' first 3000 of 7200 s are attack-free; 40% of each host's buckets (2880 s) keeps
# the train parts inside that stretch.
SCENARIO_TRAIN_FRACTION: Final = 0.4

def load_raw_event_file(
    path: Path,
    settings: Settings,
    train_fraction: float = 0.5,
    labels_path: Path | None = None,
    batch_size: int = 65_536,
) -> LabelledDataset:
    """Bucket a raw-event JSONL/CSV file and label its buckets from per-key time ranges.

    Each key's first `train_fraction` of buckets is its train part (labelled buckets in it are
    streamed but not fitted on), the rest its test part, as for a labelled file of events.
    """
    if settings.input.mode != "aggregate":
        raise ValueError("raw-event files are evaluated with input.mode = 'aggregate'")
    if not 0.0 <= train_fraction < 1.0:
        raise ValueError("train_fraction must be in [0, 1)")
    labels_path = labels_path or labels_path_for(Path(path))
    ranges = read_labels(labels_path)
    decoder = AggregatingDecoder(settings)
    # The buckets still open when the file ends are closed then, as replay closes them.
    parts = [*read_batches(Path(path), decoder, batch_size=batch_size), decoder.flush()]
    batches = [d.batch for d in parts if len(d.batch)]
    if not batches:
        raise ValueError(f"{path}: no bucket closed; check input.* and aggregate.* against it")
    keys = np.concatenate([b.keys for b in batches])
    end_ts = np.concatenate([b.ts for b in batches])
    values = np.concatenate([b.values for b in batches])
    labels, kinds = _bucket_labels(keys, end_ts, decoder.aggregator.width, ranges)

    unique, inverse = np.unique(keys, return_inverse=True)
    order = np.lexsort((end_ts, inverse))
    bounds = np.cumsum(np.bincount(inverse, minlength=len(unique)))
    channels = []
    for key, rows in zip(unique.tolist(), np.split(order, bounds[:-1]), strict=True):
        cut = int(len(rows) * train_fraction)
        train, test = rows[:cut], rows[cut:]
        group = "+".join(sorted(kinds.get(key, ()))) or NORMAL_GROUP
        channels.append(
            Channel(key, group, end_ts[train], values[train], labels[train],
                    end_ts[test], values[test], labels[test])
        )  # fmt: skip
    rejected = dict(Counter(reject.reason for part in parts for reject in part.rejects))
    log.info("raw-event dataset loaded", path=str(path), keys=len(channels), buckets=len(keys))
    aggregate = settings.aggregate
    notes = (
        f"{Path(path).name}: raw events bucketed per {settings.input.key_field} by the service's "
        f"AggregatingDecoder ({aggregate.bucket_width_s:g} s buckets, "
        f"{aggregate.allowed_lateness_s:g} s allowed lateness, empty buckets for "
        f"{aggregate.idle_timeout_s:g} s of silence); features {list(decoder.feature_names)}; "
        f"rejected raw events by reason: {rejected or 'none'}.",
        f"Labels: {len(ranges)} per-key event-time ranges from {labels_path.name}; a bucket is "
        "labelled when its span overlaps a range of its key. Groups: the anomaly kinds a key "
        f"carries ('{NORMAL_GROUP}' for none).",
        f"Per key the first {train_fraction:.0%} of buckets are the train part (labelled buckets "
        "in it are streamed for warm-up but not fitted on).",
    )
    return LabelledDataset(
        Path(path).name.split(".")[0], decoder.feature_names, tuple(channels), notes
    )


def read_labels(path: Path) -> list[dict[str, Any]]:
    """The labelled ranges of a raw-event file, checked: a JSON array of objects with `key`,
    `start_ts` and `end_ts` (event-time seconds, inclusive) and optionally `kind`."""
    if not path.exists():
        raise ValueError(
            f"no labels file {path}; pass --labels FILE: a JSON array of "
            '{"key", "kind", "start_ts", "end_ts"} ranges (event-time seconds, inclusive)'
        )
    try:
        ranges = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"labels file {path} is not JSON: {exc}") from None
    if not isinstance(ranges, list):
        raise ValueError(f"labels file {path} must hold a JSON array of ranges")
    for n, entry in enumerate(ranges):
        ok = isinstance(entry, dict) and isinstance(entry.get("key"), str | int)
        ok = ok and all(isinstance(entry.get(f), int | float) for f in ("start_ts", "end_ts"))
        if not ok or entry["start_ts"] > entry["end_ts"]:
            raise ValueError(
                f"labels file {path}, range {n}: need key, start_ts <= end_ts (numbers), "
                f"got {entry!r}"
            )
    return ranges


def _bucket_labels(
    keys: np.ndarray, end_ts: np.ndarray, width: float, ranges: Sequence[dict[str, Any]]
) -> tuple[np.ndarray, dict[str, set[str]]]:
    """1 for buckets [end - width, end) overlapping a labelled range of their key; kinds per key."""
    labels = np.zeros(len(keys), dtype=np.int8)
    kinds: dict[str, set[str]] = {}
    for entry in ranges:  # one pass per labelled range: there are few
        key = str(entry["key"])
        kinds.setdefault(key, set()).add(str(entry.get("kind", "anomaly")))
        hit = (keys == key) & (end_ts > entry["start_ts"]) & (end_ts - width <= entry["end_ts"])
        labels[hit] = 1
    return labels, kinds


def scenario_sections(name: str) -> dict[str, dict[str, Any]]:
    """Settings that scenario `name` brings: its feed mapping plus the "flows" preset (nested like
    --set, so the user's --set goes on top)."""
    return deep_merge(network_sections(SCENARIOS[name]), preset("flows"))


def load_scenario(
    name: str, data_dir: Path, settings: Settings, train_fraction: float = SCENARIO_TRAIN_FRACTION
) -> LabelledDataset:
    """Generate scenario `name` into data_dir (deterministic: same code, same flows and labels)
    and load it as a raw-event file.

    Generated afresh each time rather than reused, so a report never rests on a file left by an
    older generator.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    events = data_dir / f"{name}.jsonl"
    write_scenario(events, SCENARIOS[name])
    return load_raw_event_file(events, settings, train_fraction)
