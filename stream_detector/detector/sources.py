"""Files carrying the same records as the topic, decoded in batches for train, replay and evaluate.

A file goes through the very Decoder the service uses, so a model trained or evaluated on a file
sees exactly what it will see live. A broken line is a reject like any malformed message, never an
exception: one bad row must not end a replay of millions.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import itertools
import operator
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
import structlog

from stream_detector.config import CSV_DELIMITERS
from stream_detector.engine.decode import RecordDecoder
from stream_detector.engine.types import Decoded, Reject

log = structlog.get_logger(__name__)

_JSON_LINES: Final = (".jsonl", ".ndjson")
_CSV: Final = (".csv",)
_ACCEPTED: Final = "one of .jsonl, .ndjson, .csv, each optionally compressed as .gz"


def read_batches(path: Path, decoder: RecordDecoder, batch_size: int = 4096) -> Iterator[Decoded]:
    """Decoded batches of up to `batch_size` records, in file order.

    Indices in each Decoded are positions within that batch (blank lines do not count), so a
    caller that needs file offsets adds up the batch lengths itself. The file type is checked here,
    before the first batch is asked for, so a wrong path fails at once and not mid-pipeline.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    path = Path(path)
    kind, compressed = file_kind(path)
    if kind in _JSON_LINES:
        return _json_lines(path, compressed, decoder, batch_size)
    if kind in _CSV:
        return _csv_rows(path, compressed, decoder, batch_size)
    raise ValueError(f"{path}: unsupported file type {kind or '(none)'!r}; use {_ACCEPTED}")


def file_kind(path: Path) -> tuple[str, bool]:
    """The record format a file's name gives (its last suffix before an optional .gz, lower
    case, e.g. ".csv"), and whether it is gzip-compressed."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    compressed = suffixes[-1:] == [".gz"]
    if compressed:
        suffixes.pop()
    return (suffixes[-1] if suffixes else ""), compressed


def is_csv(path: Path) -> bool:
    """Whether the file's name says CSV (optionally gzipped)."""
    return file_kind(path)[0] in _CSV


def open_records(path: Path, compressed: bool, text: bool) -> IO[Any]:
    """The file opened for reading records: bytes for JSON lines, text for CSV."""
    if text:
        # utf-8-sig drops a spreadsheet's byte-order mark; undecodable bytes become U+FFFD and
        # then a non-numeric reject instead of a UnicodeDecodeError that would end the read.
        options: dict[str, Any] = {"encoding": "utf-8-sig", "errors": "replace", "newline": ""}
        return gzip.open(path, "rt", **options) if compressed else open(path, **options)
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def _json_lines(
    path: Path, compressed: bool, decoder: RecordDecoder, size: int
) -> Iterator[Decoded]:
    """Each non-blank line is one message's bytes, exactly as a producer would have sent it."""
    with open_records(path, compressed, text=False) as lines:
        payloads: list[bytes] = []
        for line in lines:
            if line.isspace() or not line:
                continue
            payloads.append(line.rstrip(b"\r\n"))
            if len(payloads) == size:
                yield decoder.decode_messages(payloads)
                payloads = []
        if payloads:
            yield decoder.decode_messages(payloads)


def _csv_rows(path: Path, compressed: bool, decoder: RecordDecoder, size: int) -> Iterator[Decoded]:
    """A header row names the fields; a row whose shape does not fit it is rejected whole."""
    with open_records(path, compressed, text=True) as text:
        first = text.readline()
        delimiter = decoder.csv_delimiter
        if delimiter == "auto":
            delimiter = sniff_delimiter(first)
        reader = csv.reader(itertools.chain([first] if first else [], text), delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            log.warning("source_empty", path=str(path))
            return
        names = [name.strip() for name in header]
        batch = _RowBatch(names)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:  # e.g. a field over the csv module's size limit
                batch.refuse(f"CSV line {reader.line_num} is unreadable: {exc}")
            else:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) == len(names):
                    batch.add(row)
                else:
                    batch.refuse(
                        f"CSV line {reader.line_num} has {len(row)} fields, the header {len(names)}"
                    )
            if len(batch) == size:
                yield batch.decode(decoder)
                batch = _RowBatch(names)
        if len(batch):
            yield batch.decode(decoder)


def sniff_delimiter(header: str) -> str:
    """The delimiter of a CSV header line among ',', ';', tab and '|' (input.csv_delimiter =
    "auto"); ',' when the sniffer cannot tell, as for a single column. The header alone decides,
    so a file is split one way from its first row to its last."""
    try:
        return csv.Sniffer().sniff(header, delimiters=CSV_DELIMITERS).delimiter
    except csv.Error:
        return ","


class _RowBatch:
    """CSV rows of one batch, plus the rows refused before decode because their shape was wrong.

    The malformed rows never reach the decoder (their cells cannot be assigned to columns), so
    the decoder's indices refer to the good rows only and are mapped back to batch positions.
    """

    def __init__(self, names: list[str]) -> None:
        self._names = names
        self._rows: list[list[str]] = []
        self._positions: list[int] = []
        self._broken: list[Reject] = []

    def __len__(self) -> int:
        return len(self._rows) + len(self._broken)

    def add(self, row: list[str]) -> None:
        self._positions.append(len(self))
        self._rows.append(row)

    def refuse(self, detail: str) -> None:
        # REJECT_REASONS has no CSV-specific reason; an unparsable record is what not_json means.
        self._broken.append(Reject(len(self), "not_json", detail))

    def decode(self, decoder: RecordDecoder) -> Decoded:
        cells = list(zip(*self._rows, strict=True)) if self._rows else [()] * len(self._names)
        decoded = decoder.decode_columns(dict(zip(self._names, cells, strict=True)))
        if not self._broken:
            return decoded
        positions = np.asarray(self._positions, dtype=np.int64)
        batch = dataclasses.replace(decoded.batch, index=positions[decoded.batch.index])
        moved = [Reject(int(positions[r.index]), r.reason, r.detail) for r in decoded.rejects]
        rejects = sorted(moved + self._broken, key=operator.attrgetter("index"))
        return Decoded(
            batch=batch, rejects=rejects, labels=decoded.labels, filtered=decoded.filtered
        )
