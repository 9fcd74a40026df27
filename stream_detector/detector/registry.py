"""The model registry: the versions a deployment has, their reports, and which one is active.

Every replica of the service follows the registry's active version (it is the source of truth),
`stream-detector models` reads and changes it, and retraining puts its candidates in it. The
artefacts are the usual safetensors + metadata directories; the registry adds an entry per
version (where its training data came from) and a history of promotions and rollbacks, from
which the active version follows: the version of the last record.

Two stores implement this protocol: a directory (`DirectoryRegistry`, local or a shared volume)
and a Kafka topic (for deployments with nothing else in common). What they share is here: the
stack of promotions that rollbacks undo, the checks before a promotion or rollback, and the
stored records' JSON with the validation of every value read back, so that the two stores
differ only in where the records live.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, Protocol, get_args

import orjson

from stream_detector.detector.artefact import (
    ArtefactError,
    ModelMetadata,
    is_model_version,
    verify_artefact,
)
from stream_detector.engine.alerts import rfc3339

HistoryAction = Literal["promote", "rollback"]
# Report names become file names in a directory store: no separators, no leading dot.
REPORT_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ENTRY_FIELDS: Final = frozenset(
    {"version", "registered_at", "created_at", "source", "parent", "data_span"}
)
_HISTORY_FIELDS: Final = frozenset({"action", "version", "at", "reason"})


class RegistryError(Exception):
    """A registry operation that cannot be done; the message says why and what to do."""


class RecordError(ValueError):
    """A stored registry record that is not what a registry writes; the message names the
    field. Each store adds where the record was (a file, a topic offset)."""


@dataclass(frozen=True)
class ModelEntry:
    """One version in the registry."""

    version: str
    registered_at: str  # RFC 3339, when it entered the registry
    created_at: str  # RFC 3339, the artefact's own (training) time
    source: str  # how it was made, e.g. "train", "retrain:topic", "retrain:file"
    parent: str | None  # the active version when it was trained, if any
    data_span: tuple[float, float] | None  # event times of its training data, first and last
    reports: dict[str, dict[str, Any]]  # by name, e.g. "shadow", "retrain"


@dataclass(frozen=True)
class HistoryRecord:
    """One change of the active version."""

    action: HistoryAction
    version: str  # the version active after it: a rollback names the one it went back to
    at: str  # RFC 3339
    reason: str


class ModelRegistry(Protocol):
    """What the service, the `models` command and retraining need of a registry store."""

    def entries(self) -> list[ModelEntry]:
        """Every version, in the order registered."""
        ...

    def entry(self, version: str) -> ModelEntry:
        """One version; RegistryError naming the versions there are when it is unknown."""
        ...

    def register(
        self,
        artefact_dir: Path,
        *,
        source: str,
        parent: str | None,
        data_span: tuple[float, float] | None,
    ) -> ModelEntry:
        """Copy the artefact in under its model version, verified as `verify_artefact` does
        (complete, unaltered, weights fitting the metadata; RegistryError otherwise), with
        `source`, `parent` and `data_span` as given; registering a version already there
        returns its entry unchanged, unless the artefact was trained under other settings or
        calibrated otherwise (RegistryError, `check_registered_again`)."""
        ...

    def artefact_dir(self, version: str) -> Path:
        """A local directory holding the version's artefact, for `load_artefact`."""
        ...

    def history(self) -> list[HistoryRecord]:
        """Every promotion and rollback, oldest first."""
        ...

    def active(self) -> str | None:
        """The version every replica should serve; None before the first promotion."""
        ...

    def promote(self, version: str, reason: str) -> HistoryRecord:
        """Make a registered version the active one; RegistryError listing the versions there
        are when it is unknown, or when it is active already."""
        ...

    def rollback(self, reason: str) -> HistoryRecord:
        """Make the version active before the current one active again (the promotions are a
        stack, see `active_stack`); RegistryError when there is none."""
        ...

    def attach_report(self, version: str, name: str, report: dict[str, Any]) -> None:
        """Store (or replace) a named report of a version, e.g. its shadow comparison: a JSON
        object, named like a file (`REPORT_NAME`)."""
        ...

    def refresh(self) -> None:
        """Read what other processes changed since (a topic store reads to its end; a directory
        store reads the files again)."""
        ...

    def close(self) -> None:
        """Release what the store holds open (a topic store's consumer and artefact cache)."""
        ...


class RegistryState:
    """The registry as its store last read it: what both stores answer reads from. A store
    keeps `_entries` (by version, in registration order) and `_history` up to date."""

    def __init__(self) -> None:
        self._entries: dict[str, ModelEntry] = {}
        self._history: list[HistoryRecord] = []

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def entry(self, version: str) -> ModelEntry:
        try:
            return self._entries[version]
        except KeyError:
            raise unknown_version(version, self._entries) from None

    def history(self) -> list[HistoryRecord]:
        return list(self._history)

    def active(self) -> str | None:
        return self._history[-1].version if self._history else None


# -- the semantics every store shares --------------------------------------------------------------


def active_stack(history: Iterable[HistoryRecord]) -> list[str]:
    """The promoted versions, the active one last: a promotion pushes its version, and a
    rollback pops down to the version it names.

    Popping down to the named version, rather than once per rollback, keeps the stack's top the
    last record's version whatever the records' order: two rollbacks decided from the same
    state by two processes name the same version, and the second then changes nothing.
    """
    stack: list[str] = []
    for record in history:
        if record.action == "promote":
            stack.append(record.version)
            continue
        while stack and stack[-1] != record.version:
            stack.pop()
        if not stack:
            stack.append(record.version)
    return stack


def promotion(
    known: Sequence[str], history: Sequence[HistoryRecord], version: str, reason: str
) -> HistoryRecord:
    """The record that makes the registered `version` active; RegistryError when it is unknown
    or already active."""
    if version not in known:
        raise unknown_version(version, known)
    stack = active_stack(history)
    if stack and stack[-1] == version:
        raise RegistryError(f"{version} is already the active version; nothing to promote")
    return HistoryRecord("promote", version, rfc3339(time.time()), reason)


def rollback(history: Sequence[HistoryRecord], reason: str) -> HistoryRecord:
    """The record that makes the version active before the current one active again;
    RegistryError when there is none."""
    stack = active_stack(history)
    if not stack:
        raise RegistryError(
            "nothing to roll back: no version was promoted yet (`stream-detector models "
            "promote VERSION` makes one active)"
        )
    below = [version for version in stack if version != stack[-1]]
    if not below:
        raise RegistryError(
            f"nothing to roll back to: {stack[-1]} is active and no other version was active "
            "before it; promote the version to serve instead"
        )
    return HistoryRecord("rollback", below[-1], rfc3339(time.time()), reason)


def checked_registration(
    source: str, parent: str | None, data_span: Any
) -> tuple[float, float] | None:
    """The arguments of a registration, checked before anything is copied: RegistryError
    naming the one that a store could not read back."""
    try:
        _text(source, "source")
        if parent is not None:
            _version(parent, "parent")
        return None if data_span is None else checked_span(data_span)
    except RecordError as exc:
        raise RegistryError(f"not registered: {exc}") from None


def verified_artefact(directory: Path) -> ModelMetadata:
    """`verify_artefact`, refusing as a RegistryError: what a store checks before it keeps an
    artefact."""
    try:
        return verify_artefact(directory)
    except ArtefactError as exc:
        raise RegistryError(f"not registered: {exc}") from None


def check_registered_again(stored: Path, metadata: ModelMetadata, directory: Path) -> None:
    """Refuse to register `directory` (its `metadata`) under a version already stored (at
    `stored`) when the two differ in what judges the scores: the settings the model was trained
    under or its calibrated threshold.

    A version names the weights alone, and the same data and seed give the same weights under
    settings that only change how scores are made or judged (window.score_steps,
    train.calibration_quantile). Registering the same artefact again is a no-op, as a retried
    registration must be; returning the stored entry for a different one would keep the other
    model's settings and threshold without a word.
    """
    kept = verified_artefact(stored)
    if (kept.config_fingerprint, kept.global_threshold) == (
        metadata.config_fingerprint,
        metadata.global_threshold,
    ):
        return
    raise RegistryError(
        f"not registered: {directory} has the weights of version {metadata.model_version}, "
        f"registered already with other settings or another threshold (config_fingerprint "
        f"{kept.config_fingerprint}, global threshold {kept.global_threshold:g}; here "
        f"{metadata.config_fingerprint}, {metadata.global_threshold:g}). A version names its "
        "weights only, so the registry cannot keep both: use the registered one, or retrain "
        "this one with another train.seed"
    )


def unknown_version(version: str, known: Iterable[str]) -> RegistryError:
    """The error for a version the registry does not have, listing those it has."""
    names = list(known)
    have = (
        f"it has {', '.join(names)}"
        if names
        else "it has none yet (`stream-detector models register DIR` adds one)"
    )
    return RegistryError(f"the registry has no model version {version!r}; {have}")


# -- records as stored: JSON objects, each value checked on the way in ---------------------------


def entry_json(entry: ModelEntry) -> dict[str, Any]:
    """An entry as stored, without its reports (a store keeps those on their own)."""
    return {
        "version": entry.version,
        "registered_at": entry.registered_at,
        "created_at": entry.created_at,
        "source": entry.source,
        "parent": entry.parent,
        "data_span": list(entry.data_span) if entry.data_span is not None else None,
    }


def parse_entry(raw: Any, reports: Mapping[str, dict[str, Any]]) -> ModelEntry:
    """An entry from what `entry_json` wrote; RecordError naming the field otherwise."""
    record = _fields(raw, _ENTRY_FIELDS)
    parent = record["parent"]
    if parent is not None and not is_model_version(parent):
        raise RecordError(f"parent is {parent!r}, neither null nor a model version")
    span = record["data_span"]
    return ModelEntry(
        version=_version(record["version"], "version"),
        registered_at=_timestamp(record["registered_at"], "registered_at"),
        created_at=_timestamp(record["created_at"], "created_at"),
        source=_text(record["source"], "source"),
        parent=parent,
        data_span=None if span is None else checked_span(span),
        reports=dict(reports),
    )


def history_json(record: HistoryRecord) -> dict[str, Any]:
    return {
        "action": record.action,
        "version": record.version,
        "at": record.at,
        "reason": record.reason,
    }


def parse_history(raw: Any) -> HistoryRecord:
    """A history record from what `history_json` wrote; RecordError naming the field."""
    record = _fields(raw, _HISTORY_FIELDS)
    action = record["action"]
    if action not in get_args(HistoryAction):
        raise RecordError(f"action is {action!r}, not one of {list(get_args(HistoryAction))}")
    if type(record["reason"]) is not str:
        raise RecordError(f"reason is {record['reason']!r}, not a string")
    return HistoryRecord(
        action=action,
        version=_version(record["version"], "version"),
        at=_timestamp(record["at"], "at"),
        reason=record["reason"],
    )


def report_json(name: str, report: Any) -> bytes:
    """A report as stored (a JSON object); RegistryError for a name a store cannot keep or a
    report that is not JSON."""
    if not REPORT_NAME.fullmatch(name):
        raise RegistryError(
            f"report name {name!r} is not of the form {REPORT_NAME.pattern!r} (it names a file)"
        )
    if not isinstance(report, dict):
        raise RegistryError(f"report {name!r} must be a JSON object, not {type(report).__name__}")
    try:
        return orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise RegistryError(f"report {name!r} cannot be stored as JSON: {exc}") from None


def parse_report(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RecordError(f"a report is a JSON object, not {type(raw).__name__}")
    return raw


def checked_span(span: Any) -> tuple[float, float]:
    """A data span: two finite event times, the first not after the last."""
    if not isinstance(span, list | tuple) or len(span) != 2:
        raise RecordError(f"data_span is {span!r}, not [first, last]")
    for value in span:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise RecordError(f"data_span is {span!r}; its times must be finite numbers")
    first, last = float(span[0]), float(span[1])
    if first > last:
        raise RecordError(f"data_span is {span!r}; the first time is after the last")
    return first, last


def _fields(raw: Any, expected: frozenset[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RecordError(f"not a JSON object but {type(raw).__name__}")
    missing, unknown = expected - raw.keys(), raw.keys() - expected
    if missing or unknown:
        raise RecordError(f"fields missing {sorted(missing)} / unknown {sorted(unknown)}")
    return raw


def _version(value: Any, field: str) -> str:
    if not is_model_version(value):
        raise RecordError(f"{field} is {value!r}, not a model version")
    return str(value)


def _timestamp(value: Any, field: str) -> str:
    text = _text(value, field)
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise RecordError(f"{field} is {value!r}, not an RFC 3339 time") from None
    return str(value)


def _text(value: Any, field: str) -> str:
    if type(value) is not str or not value:
        raise RecordError(f"{field} is {value!r}, not a non-empty string")
    return value
