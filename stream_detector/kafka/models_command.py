"""`stream-detector models`: list, inspect, register, promote and roll back model versions.

The command works on the registry the settings configure (`open_registry`: lifecycle.registry_dir
or lifecycle.registry_topic), the same one every replica of the service follows, so a promotion
or a rollback made here is what the replicas serve within lifecycle.poll_interval_s.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from stream_detector.config import Settings
from stream_detector.detector.artefact import ArtefactError, ModelMetadata, verify_artefact
from stream_detector.detector.registry import (
    HistoryRecord,
    ModelEntry,
    ModelRegistry,
    RegistryError,
    verified_artefact,
)
from stream_detector.kafka.registry_topic import open_registry

DESCRIPTION: Final = """\
Reads and changes the model registry that every replica of the service follows: the model
versions (artefacts as `stream-detector train` writes them, each with where its training data
came from and its reports, e.g. retrain and shadow) and which one is active. The registry is
lifecycle.registry_dir (a directory, local or on a volume the replicas share) or
lifecycle.registry_topic (a Kafka topic). Promotions form a stack: `promote` puts a version on
top, `rollback` takes the top one off and the version below it is active again. A running
service swaps to the active version within lifecycle.poll_interval_s, between two batches.

Exit status: 0 done; 2 refused or failed, the message says why (no registry configured, an unknown
version, nothing to roll back to, an artefact that does not verify, the registry unreachable).
"""

EXAMPLES: Final = """\
examples:
  stream-detector models list --set lifecycle.registry_dir=/srv/models
  stream-detector models register model/ --config detector.toml
  stream-detector models show lstm-ae-0123456789ab --config detector.toml
  stream-detector models promote lstm-ae-0123456789ab --config detector.toml \\
      --reason "fewer false positives on the night shift"
  stream-detector models rollback --config detector.toml --reason "alert storm after promote"
  stream-detector models list --json --bootstrap-servers kafka:9092 \\
      --set lifecycle.registry_topic=models            # a registry on a Kafka topic
"""

_NONE: Final = "-"
_PROMOTE_REASON: Final = "promoted by hand (stream-detector models promote)"
_ROLLBACK_REASON: Final = "rolled back by hand (stream-detector models rollback)"


class ModelsError(Exception):
    """Why the command did nothing: one line for the user, exit status 2."""


def add_arguments(parser: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """The `models` command's description, examples and actions; `common` holds the options
    every command reading settings takes (--config, --set, ...), given to each action."""
    parser.description = DESCRIPTION
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    actions = parser.add_subparsers(
        dest="models_action", required=True, metavar="ACTION", title="actions"
    )
    shared = _shared_options()

    def action(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return actions.add_parser(
            name, parents=[common, shared], help=help_text, description=description
        )

    listing = action(
        "list",
        "every version, the active one marked '*'",
        "A table of every version in the order registered: when, how it was made (source), the "
        "event times of its training data, the version it was retrained from (parent) and its "
        "reports; the active one is marked '*'.",
    )
    listing.add_argument("--json", action="store_true", help="print JSON, for scripts")
    show = action(
        "show",
        "one version: its entry, model, reports and history",
        "A version's entry, what its model takes and learnt (features, window, global "
        "threshold, training figures), its reports in full, and the history lines that made "
        "it active or took it off.",
    )
    show.add_argument("version", metavar="VERSION", help="e.g. lstm-ae-0123456789ab")
    register = action(
        "register",
        "add an artefact written by `stream-detector train --out DIR`",
        "Copies the artefact in DIR into the registry under its model version, once it "
        "verified (both files present, metadata valid, weights matching the version). "
        "Registering a version already there changes nothing. It is not made active: promote "
        "it for that.",
    )
    register.add_argument("directory", type=Path, metavar="DIR", help="the artefact directory")
    register.add_argument(
        "--source", default="train", help="how it was made, kept in its entry (default: train)"
    )
    promote = action(
        "promote",
        "make a registered version the active one",
        "Makes VERSION the active version, on top of the stack of promotions; the version "
        "active until now is what `rollback` returns to.",
    )
    promote.add_argument("version", metavar="VERSION", help="e.g. lstm-ae-0123456789ab")
    promote.add_argument("--reason", default=_PROMOTE_REASON, help="kept in the history")
    rollback = action(
        "rollback",
        "make the version active before the current one active again",
        "Takes the active version off the stack of promotions: the version active before it "
        "is active again, and printed. Refused when there is none.",
    )
    rollback.add_argument("--reason", default=_ROLLBACK_REASON, help="kept in the history")


def _shared_options() -> argparse.ArgumentParser:
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--bootstrap-servers", help="override kafka.bootstrap_servers (a registry on a topic)"
    )
    return shared


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run the action `args.models_action` on the configured registry; ModelsError when it
    cannot be done."""
    action = _ACTIONS[args.models_action]
    with _opened(settings) as registry:
        try:
            return action(registry, args)
        except RegistryError as exc:
            raise ModelsError(str(exc)) from None


@contextmanager
def _opened(settings: Settings) -> Iterator[ModelRegistry]:
    try:
        registry = open_registry(settings)
    except RegistryError as exc:
        raise ModelsError(str(exc)) from None
    if registry is None:
        raise ModelsError(
            "no model registry is configured: set lifecycle.registry_dir (a directory; "
            "--set lifecycle.registry_dir=DIR, or registry_dir under [lifecycle] in --config) "
            "or lifecycle.registry_topic (a Kafka topic)"
        )
    try:
        yield registry
    finally:
        registry.close()


# -- list -----------------------------------------------------------------------------------------


def _list(registry: ModelRegistry, args: argparse.Namespace) -> int:
    entries, active = registry.entries(), registry.active()
    if args.json:
        listing = {"active": active, "versions": [_entry_json(e, active) for e in entries]}
        print(orjson.dumps(listing, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not entries:
        print("the registry has no versions yet; add one: stream-detector models register DIR")
        return 0
    header = ("", "VERSION", "REGISTERED (UTC)", "SOURCE", "DATA SPAN (UTC)", "PARENT", "REPORTS")
    rows = [header] + [_row(entry, active) for entry in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    print(_active_line(registry.history()))
    return 0


def _row(entry: ModelEntry, active: str | None) -> tuple[str, ...]:
    return (
        "*" if entry.version == active else " ",
        entry.version,
        _utc(entry.registered_at),
        entry.source,
        _span(entry.data_span),
        entry.parent or _NONE,
        ", ".join(sorted(entry.reports)) or _NONE,
    )


def _entry_json(entry: ModelEntry, active: str | None) -> dict[str, Any]:
    return {
        "version": entry.version,
        "active": entry.version == active,
        "registered_at": entry.registered_at,
        "created_at": entry.created_at,
        "source": entry.source,
        "parent": entry.parent,
        "data_span": list(entry.data_span) if entry.data_span is not None else None,
        "reports": sorted(entry.reports),
    }


def _active_line(history: list[HistoryRecord]) -> str:
    if not history:
        return "no version is active yet: stream-detector models promote VERSION"
    last = history[-1]
    how = "promoted" if last.action == "promote" else "rolled back to"
    return f"active: {last.version} ({how} {_utc(last.at)} UTC: {last.reason})"


# -- show -----------------------------------------------------------------------------------------


def _show(registry: ModelRegistry, args: argparse.Namespace) -> int:
    entry = registry.entry(args.version)
    directory = registry.artefact_dir(entry.version)
    active = registry.active()
    lines = [
        ("version", entry.version + ("  (active)" if entry.version == active else "")),
        ("registered", f"{_utc(entry.registered_at)} UTC"),
        ("created", f"{_utc(entry.created_at)} UTC"),
        ("source", entry.source),
        ("parent", entry.parent or _NONE),
        ("data span", _span(entry.data_span, utc=True)),
        ("artefact", str(directory)),
        *_model_lines(directory),
    ]
    _print_pairs(lines)
    print("reports:" if entry.reports else "reports: none")
    for name in sorted(entry.reports):
        print(f"  {name}:")
        text = orjson.dumps(entry.reports[name], option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        print("\n".join("    " + line for line in text.decode().splitlines()))
    changes = _changes_of(registry.history(), entry.version)
    print("history:" if changes else "history: never active")
    for line in changes:
        print(f"  {line}")
    return 0


def _model_lines(directory: Path) -> list[tuple[str, str]]:
    """What the artefact's metadata says: its inputs, threshold and training figures."""
    try:
        metadata = verify_artefact(directory)
    except ArtefactError as exc:
        raise ModelsError(f"the registry's copy is damaged: {exc}") from None
    lines = [
        ("features", ", ".join(metadata.features)),
        ("window", _window_line(metadata)),
        ("global threshold", f"{metadata.global_threshold:.6g}"),
        (
            "architecture",
            f"hidden {metadata.hidden_size}, layers {metadata.num_layers}, "
            f"latent {metadata.latent_size}",
        ),
        ("trained with", f"stream-detector {metadata.stream_detector_version}"),
    ]
    lines += [(f"training.{name}", _figure(value)) for name, value in metadata.training.items()]
    return lines


def _window_line(metadata: ModelMetadata) -> str:
    """The window's size, and which of its steps the score judges when that is not all of them:
    two versions that differ only there score the same windows differently."""
    steps = metadata.model_settings.get("window.score_steps")
    return f"{metadata.window}" + ("" if steps is None else f", scored on its newest {steps}")


def _figure(value: Any) -> str:
    """A training figure on one line: a per-epoch list shortened to its length and last value."""
    if isinstance(value, list) and len(value) > 4:
        return f"{len(value)} values, last {_figure(value[-1])}"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _changes_of(history: list[HistoryRecord], version: str) -> list[str]:
    """The history lines that made `version` active or took it off."""
    lines, previous = [], None
    for record in history:
        if version in (record.version, previous):
            was = f" (was {previous})" if previous is not None else ""
            lines.append(
                f"{_utc(record.at)} UTC  {record.action:<8}  {record.version}{was}: {record.reason}"
            )
        previous = record.version
    return lines


# -- changes --------------------------------------------------------------------------------------


def _register(registry: ModelRegistry, args: argparse.Namespace) -> int:
    version = verified_artefact(args.directory).model_version
    known = {entry.version for entry in registry.entries()}
    entry = registry.register(args.directory, source=args.source, parent=None, data_span=None)
    if version in known:
        print(
            f"{version} is already registered (source {entry.source}, registered "
            f"{_utc(entry.registered_at)} UTC); nothing changed"
        )
    else:
        print(f"registered {version} from {args.directory} (source {entry.source})")
    if registry.active() != version:
        print(f"to serve it: stream-detector models promote {version}")
    return 0


def _promote(registry: ModelRegistry, args: argparse.Namespace) -> int:
    before = registry.active()
    record = registry.promote(args.version, args.reason)
    print(f"{record.version} is active now (was {before or 'none'}); {_followed()}")
    return 0


def _rollback(registry: ModelRegistry, args: argparse.Namespace) -> int:
    before = registry.active()
    record = registry.rollback(args.reason)
    print(f"rolled back: {record.version} is active now (was {before}); {_followed()}")
    return 0


def _followed() -> str:
    return "running replicas follow within lifecycle.poll_interval_s"


# -- formatting -----------------------------------------------------------------------------------


def _utc(stamp: str) -> str:
    """An RFC 3339 time as UTC to the second, e.g. 2024-05-01 12:00:00."""
    parsed = datetime.fromisoformat(stamp)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC)
    return parsed.strftime("%Y-%m-%d %H:%M:%S")


def _span(span: tuple[float, float] | None, *, utc: bool = False) -> str:
    if span is None:
        return _NONE
    try:
        first, last = (datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M") for t in span)
    except (OverflowError, OSError, ValueError):  # event times no calendar holds: as they are
        return f"{span[0]:g} .. {span[1]:g}"
    return f"{first} .. {last}" + (" UTC" if utc else "")


def _print_pairs(pairs: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in pairs)
    for name, value in pairs:
        print(f"{name.ljust(width)}  {value}")


_ACTIONS: Final[dict[str, Callable[[ModelRegistry, argparse.Namespace], int]]] = {
    "list": _list,
    "show": _show,
    "register": _register,
    "promote": _promote,
    "rollback": _rollback,
}
