"""A few hundred records, read from a JSONL or CSV file (gz or not) into plain dicts.

Only the records are wanted, not decoded events: the mapping is what is being worked out, so no
Decoder can be built yet. CSV cells are read as numbers where they are numbers, as the decoder
reads a CSV value column.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from stream_detector.detector.sources import file_kind, is_csv, open_records, sniff_delimiter


class SampleError(Exception):
    """The sample cannot be read or holds no records; the message says which and why."""


@dataclass(frozen=True)
class Sample:
    """The records read, where they came from, and what the file format needs in the config."""

    records: list[dict[str, Any]]
    source: str
    kind: str  # "jsonl", "csv" or "kafka"
    unreadable: int = 0  # lines or messages that were not a JSON object
    delimiter: str | None = None  # the CSV separator, when kind == "csv"


def json_records(payloads: Iterable[bytes], limit: int) -> tuple[list[dict[str, Any]], int]:
    """Up to `limit` JSON objects from raw payloads, and how many payloads were not one."""
    records: list[dict[str, Any]] = []
    bad = 0
    for payload in payloads:
        if len(records) >= limit:
            break
        if not payload or payload.isspace():
            continue
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        if isinstance(value, dict):
            records.append(value)
        else:
            bad += 1
    return records, bad


def _cell(text: str) -> Any:
    """A CSV cell as the decoder would read it: a number when it parses as one, None if empty."""
    text = text.strip()
    if not text:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_file(path: Path, limit: int) -> Sample:
    """The first `limit` records of a file; SampleError when it cannot be read or has none."""
    try:
        if is_csv(path):
            sample = _csv_sample(path, limit)
        else:
            with open_records(path, file_kind(path)[1], text=False) as lines:
                records, bad = json_records(lines, limit)
            sample = Sample(records, str(path), "jsonl", bad)
    except (OSError, EOFError, UnicodeError, csv.Error) as exc:
        raise SampleError(f"cannot read {path}: {exc}") from None
    if not sample.records:
        raise SampleError(
            f"{path} holds no records to learn from ({sample.unreadable} unreadable lines); "
            "give a JSONL file of JSON objects or a CSV file with a header row"
        )
    return sample


def _csv_sample(path: Path, limit: int) -> Sample:
    with open_records(path, file_kind(path)[1], text=True) as text:
        first = text.readline()
        delimiter = sniff_delimiter(first)
        reader = csv.reader(itertools.chain([first] if first else [], text), delimiter=delimiter)
        header = [name.strip() for name in next(reader, [])]
        records: list[dict[str, Any]] = []
        bad = 0
        for row in reader:
            if len(records) >= limit:
                break
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                bad += 1
                continue
            records.append({name: _cell(cell) for name, cell in zip(header, row, strict=True)})
    return Sample(records, str(path), "csv", bad, delimiter)
