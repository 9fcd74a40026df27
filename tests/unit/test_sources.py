"""read_batches: JSONL and CSV files, plain and gzipped, with broken records in the middle."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import orjson
import pytest

from stream_detector.config import InputConfig
from stream_detector.detector.sources import read_batches
from stream_detector.engine.decode import Decoder
from stream_detector.engine.types import Decoded

T0 = 1_714_564_800.0


def decoder(**overrides: object) -> Decoder:
    return Decoder(InputConfig(**overrides), now=lambda: 2e9)


def write(path: Path, text: bytes) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as out:
            out.write(text)
    else:
        path.write_bytes(text)
    return path


def flatten(batches: list[Decoded]) -> tuple[list[str], list[float], list[float], list[str]]:
    keys = [k for d in batches for k in d.batch.keys.tolist()]
    ts = [t for d in batches for t in d.batch.ts.tolist()]
    values = [v for d in batches for v in d.batch.values[:, 0].tolist()]
    reasons = [r.reason for d in batches for r in d.rejects]
    return keys, ts, values, reasons


JSONL = b"\n".join(
    [
        orjson.dumps({"key": "a", "ts": T0, "value": 1.5}),
        b"",
        orjson.dumps({"key": "b", "ts": "2024-05-01T12:00:01Z", "value": 2}),
        b'{"key": "c", "ts": 17145648',  # cut off mid-write
        b"   ",
        orjson.dumps({"key": "d", "ts": (T0 + 3) * 1000, "value": -4}),
    ]
) + b"\r\n"


@pytest.mark.parametrize("name", ["events.jsonl", "events.ndjson", "events.JSONL.gz"])
def test_json_lines_round_trip_with_a_broken_line(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, JSONL)
    batches = list(read_batches(path, decoder()))
    assert len(batches) == 1
    decoded = batches[0]
    assert decoded.batch.index.tolist() == [0, 1, 3]  # blank lines are not records
    assert decoded.batch.keys.tolist() == ["a", "b", "d"]
    assert decoded.batch.ts.tolist() == [T0, T0 + 1, T0 + 3]
    np.testing.assert_array_equal(decoded.batch.values, np.float32([[1.5], [2], [-4]]))
    assert [(r.index, r.reason) for r in decoded.rejects] == [(2, "not_json")]


def test_batches_split_at_batch_size_with_positions_per_batch(tmp_path: Path) -> None:
    path = write(tmp_path / "events.jsonl", JSONL)
    batches = list(read_batches(path, decoder(), batch_size=3))
    assert [len(d.batch) + len(d.rejects) for d in batches] == [3, 1]
    assert batches[0].batch.index.tolist() == [0, 1]
    assert batches[0].rejects[0].index == 2
    assert batches[1].batch.index.tolist() == [0]
    assert flatten(batches)[0] == ["a", "b", "d"]


CSV = (
    "\ufeffkey,ts,value,label\n"
    "a,1714564800,1.5,0\n"
    "b,2024-05-01T12:00:01Z,abc,1\n"
    "\n"
    "   \n"
    'c,1714564802,"2",1\n'
    "d,1714564803\n"  # too few fields
    "e,1714564804,3,0,extra\n"  # too many
    "f,,4,0\n"
    "g,1714564806000,5,1\n"
).encode()


@pytest.mark.parametrize("name", ["events.csv", "events.csv.gz"])
def test_csv_round_trip_with_broken_rows(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, CSV)
    batches = list(read_batches(path, decoder(label_field="label")))
    assert len(batches) == 1
    decoded = batches[0]
    assert decoded.batch.index.tolist() == [0, 2, 6]
    assert decoded.batch.keys.tolist() == ["a", "c", "g"]
    assert decoded.batch.ts.tolist() == [T0, T0 + 2, T0 + 6]
    assert decoded.batch.values[:, 0].tolist() == [1.5, 2.0, 5.0]
    assert decoded.labels is not None and decoded.labels.tolist() == [0, 1, 1]
    assert [(r.index, r.reason) for r in decoded.rejects] == [
        (1, "non_numeric"),
        (3, "not_json"),
        (4, "not_json"),
        (5, "bad_timestamp"),
    ]
    assert "line 7" in decoded.rejects[1].detail


def test_csv_batches_keep_positions_per_batch(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", CSV)
    batches = list(read_batches(path, decoder(), batch_size=4))
    assert [len(d.batch) + len(d.rejects) for d in batches] == [4, 3]
    assert batches[0].batch.index.tolist() == [0, 2]
    first_rejects = [(r.index, r.reason) for r in batches[0].rejects]
    assert first_rejects == [(1, "non_numeric"), (3, "not_json")]
    assert batches[1].batch.index.tolist() == [2]
    second_rejects = [(r.index, r.reason) for r in batches[1].rejects]
    assert second_rejects == [(0, "not_json"), (1, "bad_timestamp")]


def test_csv_with_header_only_or_nothing(tmp_path: Path) -> None:
    assert list(read_batches(write(tmp_path / "h.csv", b"key,ts,value\n"), decoder())) == []
    assert list(read_batches(write(tmp_path / "e.csv", b""), decoder())) == []


def test_csv_invalid_utf8_is_a_reject(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv", b"key,ts,value\na,1714564800,\xff\xfe\nb,1714564800,1\n")
    (decoded,) = read_batches(path, decoder())
    assert decoded.batch.keys.tolist() == ["b"]
    assert [(r.index, r.reason) for r in decoded.rejects] == [(0, "non_numeric")]


def test_unknown_extension_names_the_accepted_ones(tmp_path: Path) -> None:
    for name in ["events.parquet", "events.gz", "events"]:
        path = write(tmp_path / name, b"{}")
        with pytest.raises(ValueError, match=r"\.jsonl.*\.ndjson.*\.csv.*\.gz"):
            read_batches(path, decoder())  # fails before iteration starts
