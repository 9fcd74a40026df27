"""The model registry in a directory: local, or a volume the replicas share.

Layout under the root:

    models/<version>/model.safetensors, metadata.json   the artefact, copied in
    models/<version>/entry.json                          its entry (reports aside)
    models/<version>/reports/<name>.json                 its reports
    history.jsonl                                        promotions and rollbacks, appended
    .lock                                                what the processes lock

A version's directory appears whole: it is assembled and verified under a staging name beside
the others and renamed into place, so no reader meets half an artefact. Entries and reports are
replaced atomically, and a history line is appended with one write and synced. A change holds an
exclusive flock on .lock from reading the files to writing, and is decided on the files as they
are then, not on what this object read before, so replicas sharing the volume change it one at a
time; a refresh holds a shared lock, so it reads no change half made. Everything read back is
JSON and validated: a damaged file is a RegistryError naming it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import orjson

from stream_detector.detector.artefact import (
    METADATA_FILE,
    WEIGHTS_FILE,
    ModelMetadata,
    write_atomic,
)
from stream_detector.detector.registry import (
    REPORT_NAME,
    HistoryRecord,
    ModelEntry,
    RecordError,
    RegistryError,
    RegistryState,
    check_registered_again,
    checked_registration,
    entry_json,
    history_json,
    parse_entry,
    parse_history,
    parse_report,
    promotion,
    report_json,
    rollback,
    verified_artefact,
)
from stream_detector.engine.alerts import rfc3339

MODELS_DIR: Final = "models"
HISTORY_FILE: Final = "history.jsonl"
ENTRY_FILE: Final = "entry.json"
REPORTS_DIR: Final = "reports"
LOCK_FILE: Final = ".lock"
# Under models/, a version being assembled; any left there when a writer holds the lock is
# from one that crashed, since writers take turns.
_STAGING: Final = ".staging-"
# The order of registration, kept in entry.json: the replicas' clocks need not agree.
_SEQUENCE: Final = "sequence"
_INDENTED: Final = orjson.OPT_INDENT_2


class DirectoryRegistry(RegistryState):
    """`ModelRegistry` in the directory `root` (created by the first change).

    Reads answer from what the last refresh (or change) read; a change reads the files again
    first, under the lock.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        super().__init__()
        self._next_sequence = 0
        self.refresh()

    def artefact_dir(self, version: str) -> Path:
        self.entry(version)
        return self.root / MODELS_DIR / version

    def refresh(self) -> None:
        with self._locked(exclusive=False):
            self._read()

    def close(self) -> None:
        """Nothing is held open between calls."""

    def register(
        self,
        artefact_dir: Path,
        *,
        source: str,
        parent: str | None,
        data_span: tuple[float, float] | None,
    ) -> ModelEntry:
        span = checked_registration(source, parent, data_span)
        source_metadata = verified_artefact(Path(artefact_dir))
        with self._locked(exclusive=True):
            self._read()
            existing = self._entries.get(source_metadata.model_version)
            if existing is not None:
                stored = self.artefact_dir(existing.version)
                check_registered_again(stored, source_metadata, Path(artefact_dir))
                return existing
            models = self.root / MODELS_DIR
            staging = models / f"{_STAGING}{uuid.uuid4().hex}"
            try:
                _clear_staging(models)
                metadata = _stage(Path(artefact_dir), staging)
                entry = ModelEntry(
                    version=metadata.model_version,
                    registered_at=rfc3339(time.time()),
                    created_at=metadata.created_at,
                    source=source,
                    parent=parent,
                    data_span=span,
                    reports={},
                )
                stored = {**entry_json(entry), _SEQUENCE: self._next_sequence}
                _write_synced(staging / ENTRY_FILE, orjson.dumps(stored, option=_INDENTED) + b"\n")
                os.rename(staging, models / entry.version)
                _sync_dir(models)
            except OSError as exc:
                raise _unwritable(self.root, exc) from None
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self._read()
        return entry

    def promote(self, version: str, reason: str) -> HistoryRecord:
        return self._change(lambda: promotion(list(self._entries), self._history, version, reason))

    def rollback(self, reason: str) -> HistoryRecord:
        return self._change(lambda: rollback(self._history, reason))

    def attach_report(self, version: str, name: str, report: dict[str, Any]) -> None:
        data = report_json(name, report)
        with self._locked(exclusive=True):
            self._read()
            folder = self.artefact_dir(version) / REPORTS_DIR
            try:
                folder.mkdir(exist_ok=True)
                write_atomic(folder / f"{name}.json", data + b"\n")
            except OSError as exc:
                raise _unwritable(self.root, exc) from None
            self._read()

    def _change(self, decide: Callable[[], HistoryRecord]) -> HistoryRecord:
        """Append the history record `decide` makes from the files as they are now."""
        with self._locked(exclusive=True):
            self._read()
            record = decide()
            self._append(record)
            self._history.append(record)
        return record

    def _append(self, record: HistoryRecord) -> None:
        """One line at the end of the history, synced; on a failed write the file is cut back
        to where it was, so no half line is left for every reader to refuse."""
        path = self.root / HISTORY_FILE
        remaining = memoryview(orjson.dumps(history_json(record)) + b"\n")
        try:
            created = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _unwritable(self.root, exc) from None
        size = os.fstat(fd).st_size
        try:
            while remaining:
                remaining = remaining[os.write(fd, remaining) :]
            os.fsync(fd)
            if created:
                _sync_dir(self.root)
        except OSError as exc:
            os.ftruncate(fd, size)
            raise _unwritable(self.root, exc) from None
        finally:
            os.close(fd)

    def _read(self) -> None:
        entries, sequence = self._read_entries()
        self._history = self._read_history(entries)
        self._entries, self._next_sequence = entries, sequence

    def _read_entries(self) -> tuple[dict[str, ModelEntry], int]:
        """The entries in the order registered, and the sequence number the next one gets."""
        models = self.root / MODELS_DIR
        if not models.is_dir():
            return {}, 0
        directories = [path for path in models.iterdir() if not path.name.startswith(".")]
        found = sorted(map(_read_entry, directories), key=lambda pair: (pair[0], pair[1].version))
        next_sequence = found[-1][0] + 1 if found else 0
        return {entry.version: entry for _, entry in found}, next_sequence

    def _read_history(self, entries: dict[str, ModelEntry]) -> list[HistoryRecord]:
        path = self.root / HISTORY_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise RegistryError(f"cannot read {path}: {exc.strerror}") from None
        lines = data.split(b"\n")
        history = []
        # The text after the last newline is empty, unless a write was cut short.
        for number, line in enumerate(lines, start=1):
            if number == len(lines) and not line:
                break
            try:
                history.append(_history_line(line, number == len(lines), entries))
            except (RecordError, orjson.JSONDecodeError) as exc:
                raise RegistryError(
                    f"model registry file {path}, line {number}, is damaged: {exc}; restore the "
                    "file, or delete that line (the active version is the last line's)"
                ) from None
        return history

    @contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        """Hold .lock exclusively (to change the files) or shared (to read them)."""
        fd = self._open_lock() if exclusive else _open_to_read(self.root / LOCK_FILE)
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            if fd is not None:
                os.close(fd)  # which releases the lock

    def _open_lock(self) -> int:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            return os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _unwritable(self.root, exc) from None


def _stage(source: Path, staging: Path) -> ModelMetadata:
    """Copy the artefact's files into `staging` and verify the copy: what is renamed into
    place is what was checked, even if the source changed meanwhile."""
    staging.mkdir(parents=True)
    for name in (WEIGHTS_FILE, METADATA_FILE):
        _write_synced(staging / name, (source / name).read_bytes())
    return verified_artefact(staging)


def _clear_staging(models: Path) -> None:
    if models.is_dir():
        for leftover in models.glob(f"{_STAGING}*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _read_entry(directory: Path) -> tuple[int, ModelEntry]:
    """A version's registration number and entry, its reports read beside it."""
    path = directory / ENTRY_FILE
    try:
        raw = _read_json(path)
        if not isinstance(raw, dict):
            raise RecordError(f"not a JSON object but {type(raw).__name__}")
        sequence = raw.pop(_SEQUENCE, None)
        if type(sequence) is not int or sequence < 0:
            raise RecordError(f"{_SEQUENCE} is {sequence!r}, not an integer >= 0")
        entry = parse_entry(raw, _read_reports(directory / REPORTS_DIR))
        if entry.version != directory.name:
            raise RecordError(f"version is {entry.version!r} in directory {directory.name!r}")
    except RecordError as exc:
        raise RegistryError(
            f"model registry file {path} is damaged: {exc}; restore it, or remove "
            f"{directory} to drop that version (and the history lines naming it)"
        ) from None
    return sequence, entry


def _read_reports(folder: Path) -> dict[str, dict[str, Any]]:
    if not folder.is_dir():
        return {}
    reports = {}
    for path in sorted(folder.glob("*.json")):
        try:
            if not REPORT_NAME.fullmatch(path.stem):
                raise RecordError(f"{path.stem!r} is not of the form {REPORT_NAME.pattern!r}")
            reports[path.stem] = parse_report(_read_json(path))
        except RecordError as exc:
            raise RegistryError(
                f"model registry report {path} is damaged: {exc}; restore it, or remove it"
            ) from None
    return reports


def _history_line(line: bytes, last: bool, entries: dict[str, ModelEntry]) -> HistoryRecord:
    if last:
        raise RecordError("it does not end with a newline: a write was cut short")
    record = parse_history(orjson.loads(line))
    if record.version not in entries:
        raise RecordError(f"it names {record.version}, which is not in {MODELS_DIR}/")
    return record


def _read_json(path: Path) -> Any:
    """The JSON in `path`; RecordError when it is no JSON, RegistryError when unreadable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecordError("the file is missing") from None
    except OSError as exc:
        raise RegistryError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"not valid JSON ({exc})") from None


def _open_to_read(path: Path) -> int | None:
    """The lock file opened to take a shared lock; None before any change created it (there is
    nothing to read then)."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryError(f"cannot open the model registry's {path}: {exc.strerror}") from None


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _sync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable: it is an entry of the directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unwritable(root: Path, exc: OSError) -> RegistryError:
    where = f" ({exc.filename})" if exc.filename else ""
    return RegistryError(f"cannot change the model registry {root}: {exc.strerror}{where}")
