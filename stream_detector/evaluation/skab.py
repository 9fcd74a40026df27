"""SKAB (Skoltech Anomaly Benchmark) experiments as keys of one stream, under SKAB's own protocol.

Each experiment file is one run of the pump testbed (1 Hz, 8 sensors, `;`-separated) holding one
collective anomaly. The published protocol fits a model per experiment on its first 400 rows and
scores every later row point-wise; here one model serves every experiment (one key each), fitted
on all their first 400 rows together, which is the product's setting and the harder one. The
anomaly-free run (normal operation of the same rig) is not part of the protocol's training data,
so it is left out.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import structlog

from stream_detector.evaluation.datasets import Channel, LabelledDataset

log = structlog.get_logger(__name__)

SKAB_TRAIN_ROWS = 400
SKAB_FEATURES = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
_ANOMALY_FREE = Path("anomaly-free") / "anomaly-free.csv.gz"


def _numbered(stem: str) -> tuple[int, str]:
    """Sort key putting `2` before `10`."""
    return (int(stem), "") if stem.isdigit() else (1 << 62, stem)


def is_skab(path: Path) -> bool:
    """A directory of SKAB experiment files (in sub-folders or not): its first `*.csv.gz` has
    SKAB's `;`-separated header."""
    if not path.is_dir():
        return False
    first = next(iter(sorted(path.glob("**/*.csv.gz"))), None)
    if first is None:
        return False
    with gzip.open(first, "rt") as handle:
        return not _missing_columns(handle.readline().strip().split(";"))


def _missing_columns(header: list[str]) -> list[str]:
    """The columns SKAB's files have that `header` lacks (the labels are optional)."""
    return [c for c in ("datetime", *SKAB_FEATURES) if c not in header]


def read_experiment(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epoch seconds [n], sensor values float32 [n, 8], anomaly labels int8 [n]) of one file.

    Raises ValueError naming the file and the column when the header is not SKAB's.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        header = handle.readline().strip().split(";")
        rows = [line.rstrip("\n").split(";") for line in handle if line.strip()]
    if missing := _missing_columns(header):
        raise ValueError(f"{path}: not a SKAB file, no column {missing[0]!r} in its header")
    table = np.array(rows, dtype=object).reshape(len(rows), len(header))
    ts = table[:, header.index("datetime")].astype("datetime64[ms]").astype(np.int64) / 1000.0
    values = table[:, [header.index(c) for c in SKAB_FEATURES]].astype(np.float32)
    labels = (
        table[:, header.index("anomaly")].astype(np.float64).astype(np.int8)
        if "anomaly" in header
        else np.zeros(len(rows), dtype=np.int8)
    )
    return ts, values, labels


def load_skab(root: Path, train_rows: int = SKAB_TRAIN_ROWS) -> LabelledDataset:
    """Every experiment under `root` (e.g. `valve1/3.csv.gz` becomes key `valve1/3`, group
    `valve1`): its first `train_rows` rows are its train part, the rest its test part."""
    if train_rows < 1:
        raise ValueError("train_rows must be at least 1")
    files = sorted(
        (p for p in root.glob("**/*.csv.gz") if p.relative_to(root) != _ANOMALY_FREE),
        key=lambda p: (p.parent.name, _numbered(p.name.removesuffix(".csv.gz"))),
    )
    if not files:
        raise ValueError(f"{root}: no SKAB experiment files (*.csv.gz)")
    channels: list[Channel] = []
    for path in files:
        ts, values, labels = read_experiment(path)
        if len(ts) <= train_rows:
            raise ValueError(f"{path}: {len(ts)} rows leave no test part after {train_rows}")
        group = path.parent.name if path.parent != root else root.name
        channels.append(
            Channel(
                key=f"{group}/{path.name.removesuffix('.csv.gz')}",
                group=group,
                train_ts=ts[:train_rows],
                train_values=values[:train_rows],
                train_labels=labels[:train_rows],
                test_ts=ts[train_rows:],
                test_values=values[train_rows:],
                test_labels=labels[train_rows:],
            )
        )
    notes = (
        f"SKAB: one key per experiment file ({len(channels)}), features = the 8 sensors, time = "
        f"the datetime column (1 Hz). Per the SKAB protocol the first {train_rows} rows of each "
        "experiment are its train part and point-wise F1 over the rest is the headline, with FAR "
        "(false alarms / normal rows) and MAR (missed / anomalous rows). One model for all "
        "experiments, where the published models are fitted one per experiment.",
    )
    log.info("dataset loaded", dataset="skab", experiments=len(files))
    return LabelledDataset("skab", SKAB_FEATURES, tuple(channels), notes)
