"""Labelled datasets as per-key (train, test) series, and the interleaved stream built from them.

Both sources end up in one shape, so the runner has a single protocol: per key, a presumed-normal
train series and a labelled test series that follows it in time. The model is fitted on the train
parts; then every key's train and test series are streamed, interleaved by time across keys like
a real multi-key topic, and only the test parts are scored. Streaming the train part first stands
in for the history a deployed detector would already have seen on each key (window, normalisation
and threshold state), which the test files alone cannot provide.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from stream_detector.config import Settings
from stream_detector.detector.sources import read_batches
from stream_detector.engine.decode import Decoder
from stream_detector.engine.types import Decoded, EventBatch, RejectTally
from stream_detector.evaluation.feed_labels import FeedLabels

log = structlog.get_logger(__name__)

SMAP_MSL_LABELS = "labeled_anomalies.csv"


@dataclass(frozen=True)
class Channel:
    """One key: its train series, then its labelled test series (event times keep increasing)."""

    key: str
    group: str  # the spacecraft for SMAP/MSL; reported per group and overall
    train_ts: np.ndarray  # float64 [n_train]
    train_values: np.ndarray  # float32 [n_train, F]
    train_labels: np.ndarray  # int8 [n_train]; known anomalies are left out of model fitting
    test_ts: np.ndarray  # float64 [n_test]
    test_values: np.ndarray  # float32 [n_test, F]
    test_labels: np.ndarray  # int8 [n_test]


@dataclass(frozen=True)
class LabelledDataset:
    name: str
    feature_names: tuple[str, ...]
    channels: tuple[Channel, ...]
    notes: tuple[str, ...]  # how the data was read, for the report
    feed: FeedLabels | None = None  # labels of the whole feed (attack spans), beside per-key ones


def _read_channel_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, value, label) columns of one SMAP/MSL file; label is all 0 in train files."""
    with gzip.open(path, "rt") as handle:
        header = handle.readline().strip().split(",")
        columns = [header.index("t"), header.index("value")]
        has_label = "label" in header
        if has_label:
            columns.append(header.index("label"))
        table = np.loadtxt(handle, delimiter=",", usecols=columns, ndmin=2)
    labels = table[:, 2].astype(np.int8) if has_label else np.zeros(len(table), dtype=np.int8)
    return table[:, 0], table[:, 1:2].astype(np.float32), labels


def load_smap_msl(
    root: Path,
    spacecraft: Sequence[str] | None = None,
    channels: Sequence[str] | None = None,
) -> LabelledDataset:
    """The 81 channels of SMAP/MSL (see PROVENANCE.md), feature `value`, time = step index.

    Truth is each test file's `label` column, whose maximal runs equal the ranges of
    labeled_anomalies.csv except for P-2, which that file lists twice with two different ranges;
    there is one P-2 test file and its labels follow the second row, so the dataset holds 104
    labelled ranges, not 105, and P-2 is loaded once.
    """
    rows = list(csv.DictReader((root / SMAP_MSL_LABELS).open(newline="")))
    wanted_craft = {s.upper() for s in spacecraft} if spacecraft else None
    wanted = set(channels) if channels else None
    loaded: list[Channel] = []
    seen: set[str] = set()
    for row in rows:
        key, craft = row["chan_id"], row["spacecraft"]
        if key in seen or (wanted_craft and craft.upper() not in wanted_craft):
            continue
        if wanted is not None and key not in wanted:
            continue
        seen.add(key)
        train_t, train_values, _ = _read_channel_csv(root / "train" / f"{key}.csv.gz")
        test_t, test_values, test_labels = _read_channel_csv(root / "test" / f"{key}.csv.gz")
        # The test series continues the train series in time.
        offset = (train_t[-1] + 1.0) if len(train_t) else 0.0
        loaded.append(
            Channel(
                key=key,
                group=craft,
                train_ts=train_t,
                train_values=train_values,
                train_labels=np.zeros(len(train_t), dtype=np.int8),
                test_ts=test_t + offset,
                test_values=test_values,
                test_labels=test_labels,
            )
        )
    if wanted is not None and (missing := wanted - seen):
        raise ValueError(f"unknown channels {sorted(missing)}; see {root / SMAP_MSL_LABELS}")
    if not loaded:
        raise ValueError(f"no channels selected from {root}")
    log.info("dataset loaded", dataset="smap_msl", channels=len(loaded))
    notes = (
        "SMAP/MSL: one key per channel (chan_id), feature = the `value` column (cmd_* one-hot "
        "command columns not used: one model serves both spacecraft), time = step index t "
        "(1 step = 1 time unit; delays in seconds equal delays in steps).",
        "Truth: each test file's `label` column; P-2 is listed twice in labeled_anomalies.csv "
        "with different ranges but has one test file (labels = the second row), so there are "
        "104 labelled ranges instead of the 105 the published figures count.",
    )
    return LabelledDataset("smap_msl", ("value",), tuple(loaded), notes)


def load_labelled_file(
    path: Path, settings: Settings, train_fraction: float = 0.5, batch_size: int = 65_536
) -> LabelledDataset:
    """Any CSV/JSONL the decoder can map, with a 0/1 `settings.input.label_field` column.

    Each key's first `train_fraction` of events (in event-time order) are its train part, the rest
    its test part; labelled events inside the train part are streamed but not fitted on.
    """
    if settings.input.label_field is None:
        raise ValueError("evaluating a file needs input.label_field: the 0/1 label column")
    if not 0.0 <= train_fraction < 1.0:
        raise ValueError("train_fraction must be in [0, 1)")
    parts = list(read_batches(path, Decoder(settings.input), batch_size=batch_size))
    batches = [d.batch for d in parts if len(d.batch)]
    if not batches:
        raise ValueError(
            f"{path}: no valid events ({RejectTally.of(parts)}); check input.* against its "
            "records, or draft a config from them with `stream-detector init --sample FILE`"
        )
    keys = np.concatenate([b.keys for b in batches])
    ts = np.concatenate([b.ts for b in batches])
    values = np.concatenate([b.values for b in batches])
    if any(d.labels is None for d in parts if len(d.batch)):
        raise ValueError(f"{path}: no {settings.input.label_field!r} label column in its records")
    labels = np.concatenate([d.labels for d in parts if len(d.batch)]).astype(np.int8)
    rejected = sum(len(d.rejects) for d in parts)
    unique, inverse = np.unique(keys, return_inverse=True)
    order = np.lexsort((ts, inverse))  # by key, then time; stable for equal times
    bounds = np.cumsum(np.bincount(inverse, minlength=len(unique)))
    loaded = []
    for key, rows in zip(unique.tolist(), np.split(order, bounds[:-1]), strict=True):
        cut = int(len(rows) * train_fraction)
        train, test = rows[:cut], rows[cut:]
        loaded.append(
            Channel(
                str(key),
                "all",
                ts[train],
                values[train],
                labels[train],
                ts[test],
                values[test],
                labels[test],
            )
        )
    log.info("dataset loaded", dataset=str(path), keys=len(loaded), rejected=rejected)
    notes = (
        f"{path.name}: keys from input.key_field, features {list(settings.input.value_fields)}, "
        f"labels from input.label_field ({settings.input.label_field}); labelled ranges = maximal "
        "runs of label 1 per key.",
        f"Per key the first {train_fraction:.0%} of events (event-time order) are the train "
        "part (labelled events in it are streamed for warm-up but not fitted on); "
        f"{rejected} records were rejected by the decoder.",
    )
    return LabelledDataset(path.stem, tuple(settings.input.value_fields), tuple(loaded), notes)


@dataclass(frozen=True)
class Stream:
    """All keys' train+test events, interleaved by event time (ties in key order).

    Per row: `key_id` indexes dataset.channels; `local` is the position in the key's test series
    (negative in the train part); `is_test` marks the rows that are scored.
    """

    keys: np.ndarray
    key_id: np.ndarray
    ts: np.ndarray
    values: np.ndarray
    labels: np.ndarray
    local: np.ndarray
    is_test: np.ndarray
    trainable: np.ndarray  # train part and not a known anomaly

    def __len__(self) -> int:
        return len(self.ts)

    def batches(self, size: int) -> Iterator[tuple[int, Decoded]]:
        """(first stream row, Decoded) for consecutive slices of the whole stream."""
        for start in range(0, len(self), size):
            yield start, self._decoded(np.arange(start, min(start + size, len(self))))

    def training_batches(self, size: int) -> Iterator[Decoded]:
        """The trainable rows only, in stream order: what the model and baselines are fitted on."""
        rows = np.flatnonzero(self.trainable)
        for start in range(0, len(rows), size):
            yield self._decoded(rows[start : start + size])

    def _decoded(self, rows: np.ndarray) -> Decoded:
        batch = EventBatch(
            index=np.arange(len(rows), dtype=np.int64),
            keys=self.keys[rows],
            ts=self.ts[rows],
            values=self.values[rows],
        )
        return Decoded(batch, labels=self.labels[rows])


def build_stream(dataset: LabelledDataset) -> Stream:
    parts: dict[str, list[np.ndarray]] = {name: [] for name in Stream.__dataclass_fields__}
    for key_id, channel in enumerate(dataset.channels):
        n_train, n_test = len(channel.train_ts), len(channel.test_ts)
        n = n_train + n_test
        parts["keys"].append(np.full(n, channel.key, dtype=object))
        parts["key_id"].append(np.full(n, key_id, dtype=np.int64))
        parts["ts"].append(np.concatenate([channel.train_ts, channel.test_ts]))
        parts["values"].append(np.concatenate([channel.train_values, channel.test_values]))
        labels = np.concatenate([channel.train_labels, channel.test_labels])
        is_test = np.arange(n) >= n_train
        parts["labels"].append(labels)
        parts["local"].append(np.arange(-n_train, n_test, dtype=np.int64))
        parts["is_test"].append(is_test)
        parts["trainable"].append(~is_test & (labels == 0))
    arrays = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    order = np.lexsort((arrays["key_id"], arrays["ts"]))
    return Stream(**{name: array[order] for name, array in arrays.items()})
