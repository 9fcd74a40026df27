"""The Westermo network traffic data set: real industrial flows, attacks labelled by time span.

Each flow record (ICSFlowGenerator's reduced flows) is one raw event, bucketed per source address
by the service's own AggregatingDecoder. Two traps of the published files are handled here (see
PROVENANCE.md): rows are in flow-end order, so they are sorted by `start`; and the flows' clock
runs exactly 3,600 s behind the injection log's, so it is shifted forward.

Labels are the log's `BAD-*-START` .. `BAD-*-END` spans, which hold for the whole network (an
attack's effects show on the attacker's, the target's or a bystander's address), and its
`GOOD-SSH` spans, benign logins that must not alert. The first `TRAIN_SHARE` of the recording is
the train part: its buckets outside any attack span are what the model is fitted on (the clean
stretch at the very start is only 47 s); the rest is scored.
"""

from __future__ import annotations

import csv
import gzip
import re
from pathlib import Path
from typing import Any, Final

import numpy as np
import structlog

from stream_detector.aggregate.decoder import AggregatingDecoder
from stream_detector.config import Settings, deep_merge
from stream_detector.engine.types import EventBatch
from stream_detector.evaluation.datasets import Channel, LabelledDataset
from stream_detector.evaluation.feed_labels import FeedLabels, FeedSpan
from stream_detector.scenarios.flows import flow_sections
from stream_detector.scenarios.presets import preset

log = structlog.get_logger(__name__)

DEFAULT_SIDE: Final = "left"
CLOCK_SHIFT_S: Final = 3600.0
TRAIN_SHARE: Final = 1.0 / 3.0
EVENTS_FILE: Final = "events.txt"
_NUMERIC: Final = ("sPackets", "rPackets", "sBytesSum", "rBytesSum")
_TEXT: Final = ("sAddress", "rAddress", "protocol")
_FEATURES: Final = (
    {"name": "flows", "agg": "count"},
    {"name": "packets_out", "agg": "sum", "field": "sPackets"},
    {"name": "packets_in", "agg": "sum", "field": "rPackets"},
    {"name": "bytes_out", "agg": "sum", "field": "sBytesSum"},
    {"name": "peers", "agg": "distinct", "field": "rAddress"},
    {"name": "protocols", "agg": "distinct", "field": "protocol"},
)
# "[1678444220.741 -- 2023-03-10 10:30:20 -- 46.66] [BAD-MITM-START] Manual MITM starts"
_LOG_LINE = re.compile(r"^\[(?P<ts>[0-9.]+) -- [^\]]*\] \[(?P<tag>(?:BAD|GOOD)-[A-Z0-9-]+)\]")


def westermo_sections() -> dict[str, dict[str, Any]]:
    """The mapping of the flow records (nested like --set): key = source address, 10 s buckets
    of flow counts, packets each way, bytes out, distinct peers and protocols; the rest as the
    network scenarios run (the `flows` preset: windows and warm-ups for a 10 s cadence, each
    window scored on its newest 2 buckets against a band of 20 std)."""
    return deep_merge(preset("flows"), flow_sections("sAddress", _FEATURES))


def recording_points(root: Path) -> tuple[str, ...]:
    """The recording points a copy of the data set holds, one `flows_<side>.csv.gz` each: left
    and right here; the published set also has bottom, kept out for held-out checks, and any
    point added this way is evaluated like the others."""
    names = (p.name.removeprefix("flows_") for p in root.glob("flows_*.csv.gz"))
    return tuple(sorted(name.removesuffix(".csv.gz") for name in names))


def read_spans(path: Path) -> list[FeedSpan]:
    """The injection log's START/END pairs as spans (kind = the tag without BAD-/GOOD- and
    -START/-END). Raises ValueError for an END without its START."""
    spans: list[FeedSpan] = []
    opened: dict[str, float] = {}
    for line in path.read_text().splitlines():
        match = _LOG_LINE.match(line)
        if match is None:
            continue
        tag, ts = match["tag"], float(match["ts"])
        name, _, edge = tag.rpartition("-")
        if edge == "START":
            opened[name] = ts
        elif edge == "END":
            if name not in opened:
                raise ValueError(f"{path}: {tag} at {ts} without a matching START")
            attack = name.startswith("BAD-")
            kind = name.split("-", 1)[1]
            spans.append(FeedSpan(kind, opened.pop(name), ts, attack))
    return spans


def read_flows(path: Path) -> dict[str, np.ndarray]:
    """The columns the mapping reads, sorted by flow start, on the log's clock (`ts`)."""
    with gzip.open(path, "rt", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not all(c in rows[0] for c in ("start", *_NUMERIC, *_TEXT)):
        raise ValueError(f"{path}: not a Westermo flow file (needs start, {', '.join(_TEXT)})")
    start = np.array([float(row["start"]) for row in rows])
    order = np.argsort(start, kind="stable")
    columns: dict[str, np.ndarray] = {"ts": start[order] + CLOCK_SHIFT_S}
    for name in _NUMERIC:  # an empty cell is a direction with no traffic
        columns[name] = np.array([float(row[name] or 0.0) for row in rows])[order]
    for name in _TEXT:
        columns[name] = np.array([row[name] for row in rows], dtype=object)[order]
    return columns


def load_westermo(root: Path, side: str, settings: Settings) -> LabelledDataset:
    """One recording point (`left`, `right`, ...: see `recording_points`) as bucket series per
    source address, with the log's spans as feed-wide labels; see the module docstring for the
    protocol."""
    if side not in (found := recording_points(root)):
        raise ValueError(
            f"no Westermo recording point {side!r} in {root} (it holds "
            f"{', '.join(found) or 'none'}): each point is a flows_<side>.csv.gz beside "
            f"{EVENTS_FILE}, the point's reduced flow file gzipped"
        )
    if settings.input.mode != "aggregate":
        raise ValueError("Westermo flows are raw events: evaluate them with input.mode aggregate")
    spans = read_spans(root / EVENTS_FILE)
    columns = read_flows(root / f"flows_{side}.csv.gz")
    decoder = AggregatingDecoder(settings)
    decoded = decoder.decode_columns(columns)
    # The buckets still open at the end of the recording are closed then, as replay does.
    closed = [decoded.batch, decoder.flush().batch]
    buckets = EventBatch(
        index=np.concatenate([b.index for b in closed]),
        keys=np.concatenate([b.keys for b in closed]),
        ts=np.concatenate([b.ts for b in closed]),
        values=np.concatenate([b.values for b in closed]),
    )
    width = decoder.aggregator.width
    first, last = float(columns["ts"][0]), float(columns["ts"][-1])
    split = first + TRAIN_SHARE * (last - first)
    attacks = np.array([(s.start_ts, s.end_ts) for s in spans if s.attack]).reshape(-1, 2)
    # A bucket [end - width, end) is labelled when it overlaps an attack span.
    labels = (
        (buckets.ts[:, None] > attacks[None, :, 0])
        & (buckets.ts[:, None] - width <= attacks[None, :, 1])
    ).any(axis=1).astype(np.int8)
    channels = []
    keys, inverse = np.unique(buckets.keys, return_inverse=True)
    for key_id, key in enumerate(keys.tolist()):
        rows = np.flatnonzero(inverse == key_id)
        rows = rows[np.argsort(buckets.ts[rows], kind="stable")]
        train, test = rows[buckets.ts[rows] < split], rows[buckets.ts[rows] >= split]
        channels.append(
            Channel(str(key), "all", buckets.ts[train], buckets.values[train], labels[train],
                    buckets.ts[test], buckets.values[test], labels[test])
        )  # fmt: skip
    n_attacks = sum(1 for s in spans if s.attack and s.end_ts >= split)
    log.info("dataset loaded", dataset=f"westermo_{side}", keys=len(channels), flows=len(columns["ts"]))
    notes = (
        f"Westermo {side}: {len(columns['ts'])} flows sorted by start, clock shifted by "
        f"+{CLOCK_SHIFT_S:g} s onto the injection log's; bucketed per source address (sAddress) "
        f"by the service's AggregatingDecoder ({width:g} s buckets) into {len(buckets.ts)} "
        f"buckets over {len(channels)} addresses; rejected flows: {len(decoded.rejects)}.",
        f"Train part: the first {TRAIN_SHARE:.0%} of the recording (until {split:.0f}); its "
        "buckets overlapping an attack span are streamed but not fitted on. Test part: the "
        f"rest, holding {n_attacks} attack spans.",
        "Headline: the feed-wide figures. An attack span (BAD-*-START .. END in events.txt) is "
        "detected by an alert episode on any address that overlaps it in time; an episode "
        "overlapping no attack span is false, and those inside GOOD-SSH spans are counted "
        "apart. The per-key tables label each address's buckets by the same spans.",
    )
    return LabelledDataset(
        f"westermo_{side}",
        decoder.feature_names,
        tuple(channels),
        notes,
        FeedLabels(tuple(spans), split, sample_span_s=width),
    )
