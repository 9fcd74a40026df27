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
from typing import IO

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
_ANOMALY_FREE = "anomaly-free"
# The repository's files are plain `.csv`; the copy in shared/data gzipped them.
_SUFFIXES = (".csv.gz", ".csv")


def _numbered(stem: str) -> tuple[int, str]:
    """Sort key putting `2` before `10`."""
    return (int(stem), "") if stem.isdigit() else (1 << 62, stem)


def _stem(path: Path) -> str:
    """The experiment's name: its file name without `.csv.gz` or `.csv`."""
    return next(path.name.removesuffix(s) for s in _SUFFIXES if path.name.endswith(s))


def _experiment_files(root: Path) -> list[Path]:
    """The experiment files under `root` (`.csv.gz` or `.csv`, in sub-folders or not) in folder
    and then numeric order, without the anomaly-free run. Raises ValueError for two files that
    would be one key (gzipped and not, or in two folders of one name): one key read twice would
    interleave with itself."""
    files = {p for suffix in _SUFFIXES for p in root.glob(f"**/*{suffix}")}
    found = sorted(
        (p for p in files if _ANOMALY_FREE not in p.relative_to(root).parts[:-1]),
        key=lambda p: (p.parent.name, _numbered(_stem(p)), p.name, str(p)),
    )
    seen: dict[str, Path] = {}
    for path in found:
        if (earlier := seen.setdefault(_key(root, path), path)) is not path:
            raise ValueError(
                f"{root}: experiment {_key(root, path)!r} is there twice, {earlier} and {path}; "
                "keep one of them"
            )
    return found


def _key(root: Path, path: Path) -> str:
    """`valve1/3` for `valve1/3.csv.gz`: the experiment's folder (the root's name for files
    directly in it) and name."""
    group = path.parent.name if path.parent != root else root.name
    return f"{group}/{_stem(path)}"


def _open(path: Path) -> IO[str]:
    """The file as text, gunzipped when its name ends in .gz."""
    return gzip.open(path, "rt") if path.name.endswith(".gz") else path.open()


def is_skab(path: Path) -> bool:
    """A directory of SKAB experiment files (in sub-folders or not): its first experiment file
    has SKAB's `;`-separated header."""
    if not path.is_dir():
        return False
    first = next(iter(_experiment_files(path)), None)
    if first is None:
        return False
    with _open(first) as handle:
        return not _missing_columns(handle.readline().strip().split(";"))


def _missing_columns(header: list[str]) -> list[str]:
    """The columns SKAB's files have that `header` lacks (the labels are optional)."""
    return [c for c in ("datetime", *SKAB_FEATURES) if c not in header]


def read_experiment(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epoch seconds [n], sensor values float32 [n, 8], anomaly labels int8 [n]) of one file.

    Raises ValueError naming the file and the column when the header is not SKAB's.
    """
    with _open(path) as handle:
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
    `valve1`): its first `train_rows` rows are its train part, the rest its test part.

    An experiment too short to leave a test part is left out, with a warning and a note in the
    report, so that one short file does not cost the evaluation of the others. Raises ValueError
    when no experiment is left."""
    if train_rows < 1:
        raise ValueError("train_rows must be at least 1")
    files = _experiment_files(root)
    if not files:
        raise ValueError(f"{root}: no SKAB experiment files (*.csv.gz or *.csv)")
    channels: list[Channel] = []
    too_short: list[str] = []
    for path in files:
        ts, values, labels = read_experiment(path)
        key = _key(root, path)
        group = key.rpartition("/")[0]
        if len(ts) <= train_rows:
            log.warning("skab experiment left out", key=key, rows=len(ts), train_rows=train_rows)
            too_short.append(f"{key} ({len(ts)} rows)")
            continue
        channels.append(
            Channel(
                key=key,
                group=group,
                train_ts=ts[:train_rows],
                train_values=values[:train_rows],
                train_labels=labels[:train_rows],
                test_ts=ts[train_rows:],
                test_values=values[train_rows:],
                test_labels=labels[train_rows:],
            )
        )
    if not channels:
        raise ValueError(
            f"{root}: no SKAB experiment has a test part after its first {train_rows} rows"
        )
    notes = (
        f"SKAB: one key per experiment file ({len(channels)}), features = the 8 sensors, time = "
        f"the datetime column (1 Hz). Per the SKAB protocol the first {train_rows} rows of each "
        "experiment are its train part and point-wise F1 over the rest is the headline, with FAR "
        "(false alarms / normal rows) and MAR (missed / anomalous rows). One model for all "
        "experiments, where the published models are fitted one per experiment.",
    ) + (
        (f"Left out, no test part after {train_rows} rows: {', '.join(too_short)}.",)
        if too_short
        else ()
    )
    log.info("dataset loaded", dataset="skab", experiments=len(channels))
    return LabelledDataset("skab", SKAB_FEATURES, tuple(channels), notes)
