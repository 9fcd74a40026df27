"""The directory model registry: what it keeps, the stack of promotions, refusals, damage, several
processes on one directory, and the `models` command on top of it."""

from __future__ import annotations

import argparse
import dataclasses
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch

from stream_detector.config import Settings, WindowConfig
from stream_detector.detector.artefact import (
    METADATA_FILE,
    WEIGHTS_FILE,
    TrainingResult,
    load_artefact,
    save_artefact,
)
from stream_detector.detector.registry import (
    HistoryRecord,
    RegistryError,
    active_stack,
)
from stream_detector.detector.registry_dir import (
    ENTRY_FILE,
    HISTORY_FILE,
    MODELS_DIR,
    DirectoryRegistry,
)
from stream_detector.engine.model import LSTMAutoencoder
from stream_detector.kafka.models_command import ModelsError, add_arguments, run

SETTINGS = Settings(
    input={"value_fields": ("cpu", "latency")},
    window={"size": 8},
    model={"hidden_size": 8, "num_layers": 1, "latent_size": 4, "device": "cpu"},
)
RESULT = TrainingResult(
    norm_mean=(1.0, 2.0),
    norm_std=(0.5, 3.0),
    calibration_quantiles={"0.5": 0.1, "0.9": 0.2},
    global_threshold=0.4,
    training={"epochs_run": 3, "best_epoch": 2, "val_loss": [0.3, 0.2, 0.25]},
)
SPAN = (1_714_550_400.0, 1_714_636_800.0)  # 2024-05-01 08:00 .. 2024-05-02 08:00 UTC


def _artefact(
    directory: Path, seed: int, settings: Settings = SETTINGS, result: TrainingResult = RESULT
) -> str:
    """A tiny artefact as `train` writes it (distinct seeds, distinct versions; the same seed,
    the same weights and version whatever the settings and result)."""
    torch.manual_seed(seed)
    model = LSTMAutoencoder(2, 8, 8, 1, 4)
    return save_artefact(directory, model, settings, result).metadata.model_version


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("artefacts")
    return [(root / f"a{seed}", _artefact(root / f"a{seed}", seed)) for seed in range(3)]


@pytest.fixture
def registry(tmp_path: Path) -> DirectoryRegistry:
    return DirectoryRegistry(tmp_path / "registry")


def _register_all(registry: DirectoryRegistry, artefacts: list[tuple[Path, str]]) -> list[str]:
    for directory, _ in artefacts:
        registry.register(directory, source="train", parent=None, data_span=None)
    return [version for _, version in artefacts]


# -- what it keeps ---------------------------------------------------------------------------------


def test_register_copies_the_artefact_in_with_its_entry(
    registry: DirectoryRegistry, artefacts: list[tuple[Path, str]]
) -> None:
    (first, v1), (second, v2) = artefacts[:2]
    registry.register(first, source="train", parent=None, data_span=None)
    entry = registry.register(second, source="retrain:topic", parent=v1, data_span=SPAN)

    assert [e.version for e in registry.entries()] == [v1, v2]
    assert (entry.version, entry.source, entry.parent, entry.data_span) == (
        v2, "retrain:topic", v1, SPAN
    )
    assert entry.created_at == orjson.loads((second / METADATA_FILE).read_bytes())["created_at"]
    assert entry.reports == {}
    assert registry.entry(v2) == entry
    copied = registry.artefact_dir(v2)
    assert copied == registry.root / MODELS_DIR / v2
    assert (copied / WEIGHTS_FILE).read_bytes() == (second / WEIGHTS_FILE).read_bytes()
    assert load_artefact(copied, SETTINGS).metadata.model_version == v2
    assert registry.active() is None and registry.history() == []


def test_register_again_returns_the_entry_unchanged(
    registry: DirectoryRegistry, artefacts: list[tuple[Path, str]]
) -> None:
    directory, version = artefacts[0]
    first = registry.register(directory, source="train", parent=None, data_span=None)
    again = registry.register(directory, source="other", parent=None, data_span=SPAN)
    assert again == first
    assert [e.version for e in registry.entries()] == [version]
    assert DirectoryRegistry(registry.root).entries() == [first]


@pytest.mark.parametrize(
    ("settings", "result"),
    [
        (SETTINGS.model_copy(update={"window": WindowConfig(size=8, score_steps=2)}), RESULT),
        (SETTINGS, dataclasses.replace(RESULT, global_threshold=0.5)),
    ],
    ids=["other settings", "other threshold"],
)
def test_the_same_weights_trained_otherwise_are_refused_not_taken_for_the_registered_model(
    registry: DirectoryRegistry, tmp_path: Path, settings: Settings, result: TrainingResult
) -> None:
    first = _artefact(tmp_path / "first", 0)
    assert _artefact(tmp_path / "other", 0, settings, result) == first  # names the weights only
    entry = registry.register(tmp_path / "first", source="train", parent=None, data_span=None)
    with pytest.raises(RegistryError, match="registered already with other settings") as info:
        registry.register(tmp_path / "other", source="train", parent=None, data_span=None)
    assert "another train.seed" in str(info.value)
    assert registry.entries() == [entry]
    kept = load_artefact(registry.artefact_dir(entry.version), SETTINGS).metadata
    assert kept.global_threshold == RESULT.global_threshold


def test_a_missing_root_is_an_empty_registry_until_the_first_change(tmp_path: Path) -> None:
    registry = DirectoryRegistry(tmp_path / "not-yet")
    assert registry.entries() == [] and registry.active() is None
    assert not (tmp_path / "not-yet").exists()


def test_reports_are_stored_replaced_and_validated(
    registry: DirectoryRegistry, artefacts: list[tuple[Path, str]]
) -> None:
    version = _register_all(registry, artefacts[:1])[0]
    registry.attach_report(version, "shadow", {"verdict": "pass", "windows": 10})
    registry.attach_report(version, "retrain", {"events": 5000})
    registry.attach_report(version, "shadow", {"verdict": "fail"})
    assert registry.entry(version).reports == {
        "shadow": {"verdict": "fail"},
        "retrain": {"events": 5000},
    }
    reread = DirectoryRegistry(registry.root)
    assert reread.entry(version).reports == registry.entry(version).reports
    with pytest.raises(RegistryError, match="report name '../x'"):
        registry.attach_report(version, "../x", {})
    with pytest.raises(RegistryError, match="cannot be stored as JSON"):
        registry.attach_report(version, "bad", {"when": object()})


# -- the stack of promotions ----------------------------------------------------------------------


def test_promotions_are_a_stack_that_rollbacks_pop(
    registry: DirectoryRegistry, artefacts: list[tuple[Path, str]]
) -> None:
    a, b, c = _register_all(registry, artefacts)
    registry.promote(a, "first")
    registry.promote(b, "better")
    registry.promote(c, "better still")
    assert registry.active() == c

    assert registry.rollback("c misbehaves") == HistoryRecord(
        "rollback", b, registry.history()[-1].at, "c misbehaves"
    )
    assert registry.active() == b
    registry.rollback("b too")
    assert registry.active() == a
    with pytest.raises(RegistryError, match=f"nothing to roll back to: {a} is active"):
        registry.rollback("again")

    registry.promote(c, "retry")
    registry.rollback("no")
    assert registry.active() == a
    assert [(r.action, r.version) for r in registry.history()] == [
        ("promote", a), ("promote", b), ("promote", c), ("rollback", b), ("rollback", a),
        ("promote", c), ("rollback", a),
    ]


def test_refusals_name_what_there_is(
    registry: DirectoryRegistry, artefacts: list[tuple[Path, str]]
) -> None:
    with pytest.raises(RegistryError, match="no version was promoted yet"):
        registry.rollback("why")
    with pytest.raises(RegistryError, match="it has none yet"):
        registry.promote("lstm-ae-000000000000", "why")
    a, b = _register_all(registry, artefacts[:2])
    unknown = f"no model version 'lstm-ae-000000000000'; it has {a}, {b}"
    for call in (
        lambda: registry.promote("lstm-ae-000000000000", "why"),
        lambda: registry.entry("lstm-ae-000000000000"),
        lambda: registry.artefact_dir("lstm-ae-000000000000"),
        lambda: registry.attach_report("lstm-ae-000000000000", "shadow", {}),
    ):
        with pytest.raises(RegistryError, match=unknown):
            call()
    registry.promote(a, "first")
    with pytest.raises(RegistryError, match="already the active version"):
        registry.promote(a, "again")
    assert len(registry.history()) == 1


def test_the_stack_agrees_whatever_order_raced_records_land_in() -> None:
    def record(action: str, version: str) -> HistoryRecord:
        return HistoryRecord(action, version, "2024-05-01T00:00:00Z", "")  # type: ignore[arg-type]

    a, b, c = (f"lstm-ae-{n:012x}" for n in range(3))
    pushed = [record("promote", v) for v in (a, b, c)]
    # Two rollbacks decided from the same state name the same version: the second is a no-op.
    twice = pushed + [record("rollback", b), record("rollback", b)]
    assert active_stack(twice) == [a, b]
    # A promotion raced with a rollback: whichever lands last is active.
    assert active_stack(pushed + [record("rollback", b), record("promote", a)]) == [a, b, a]
    assert active_stack(pushed + [record("promote", a), record("rollback", b)]) == [a, b]


def test_registration_arguments_are_checked_before_anything_is_copied(
    registry: DirectoryRegistry, artefacts: list[tuple[Path, str]]
) -> None:
    directory = artefacts[0][0]
    for kwargs, problem in (
        ({"source": "", "parent": None, "data_span": None}, "source"),
        ({"source": "x", "parent": "v1", "data_span": None}, "parent"),
        ({"source": "x", "parent": None, "data_span": (2.0, 1.0)}, "after the last"),
        ({"source": "x", "parent": None, "data_span": (0.0, float("nan"))}, "finite"),
    ):
        with pytest.raises(RegistryError, match=problem):
            registry.register(directory, **kwargs)
    assert not registry.root.exists()


def test_an_artefact_that_does_not_verify_is_not_registered(
    registry: DirectoryRegistry, tmp_path: Path
) -> None:
    directory = tmp_path / "tampered"
    _artefact(directory, seed=7)
    weights = bytearray((directory / WEIGHTS_FILE).read_bytes())
    weights[-1] ^= 1
    (directory / WEIGHTS_FILE).write_bytes(bytes(weights))
    with pytest.raises(RegistryError, match="does not match model_version"):
        registry.register(directory, source="train", parent=None, data_span=None)
    with pytest.raises(RegistryError, match="has no model.safetensors"):
        registry.register(tmp_path, source="train", parent=None, data_span=None)
    assert registry.entries() == [] and not registry.root.exists()


# -- damage ----------------------------------------------------------------------------------------


@pytest.fixture
def promoted(registry: DirectoryRegistry, artefacts: list[tuple[Path, str]]) -> DirectoryRegistry:
    a, b = _register_all(registry, artefacts[:2])
    registry.promote(a, "first")
    registry.promote(b, "second")
    return registry


def _edit_entry(root: Path, name: str, changes: dict[str, Any]) -> Path:
    path = root / MODELS_DIR / name / ENTRY_FILE
    path.write_bytes(orjson.dumps({**orjson.loads(path.read_bytes()), **changes}))
    return path


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"source": 3}, "source is 3"),
        ({"data_span": [1, "x"]}, "data_span"),
        ({"registered_at": "yesterday"}, "not an RFC 3339 time"),
        ({"version": "lstm-ae-000000000000"}, "in directory"),
        ({"sequence": -1}, "sequence"),
        ({"extra": 1}, r"unknown \['extra'\]"),
    ],
)
def test_a_damaged_entry_names_its_file(
    promoted: DirectoryRegistry, change: dict[str, Any], problem: str
) -> None:
    version = promoted.entries()[0].version
    path = _edit_entry(promoted.root, version, change)
    with pytest.raises(RegistryError, match=problem) as caught:
        promoted.refresh()
    assert str(path) in str(caught.value)


def test_an_entry_that_is_no_json_names_its_file(promoted: DirectoryRegistry) -> None:
    path = promoted.root / MODELS_DIR / promoted.entries()[0].version / ENTRY_FILE
    path.write_bytes(b"\x80pickle")
    with pytest.raises(RegistryError, match=f"{path} is damaged: not valid JSON"):
        DirectoryRegistry(promoted.root)


def test_a_damaged_report_names_its_file(promoted: DirectoryRegistry) -> None:
    version = promoted.active()
    assert version is not None
    promoted.attach_report(version, "shadow", {"ok": True})
    path = promoted.artefact_dir(version) / "reports" / "shadow.json"
    path.write_bytes(b"[1, 2]")
    with pytest.raises(RegistryError, match=f"report {path} is damaged: a report is a JSON object"):
        promoted.refresh()


@pytest.mark.parametrize(
    ("tail", "problem"),
    [
        (b"{not json}\n", "line 3, is damaged"),
        (b'{"action": "promote"}\n', r"line 3, is damaged: fields missing"),
        (b'{"action":"demote","version":"lstm-ae-000000000000","at":"2024-05-01T00:00:00Z",'
         b'"reason":""}\n', "action is 'demote'"),
        (b'{"action":"promote","version":"lstm-ae-000000000000","at":"2024-05-01T00:00:00Z",'
         b'"reason":""}\n', "names lstm-ae-000000000000, which is not in models/"),
        (b'{"action":"promote"', "line 3, is damaged: it does not end with a newline"),
    ],
)
def test_a_damaged_history_line_names_the_file_and_line(
    promoted: DirectoryRegistry, tail: bytes, problem: str
) -> None:
    path = promoted.root / HISTORY_FILE
    path.write_bytes(path.read_bytes() + tail)
    with pytest.raises(RegistryError, match=problem) as caught:
        promoted.refresh()
    assert str(path) in str(caught.value)
    # A change reads the files first, so nothing is appended to a damaged history either.
    with pytest.raises(RegistryError, match=problem):
        promoted.rollback("no")


# -- several processes on one directory -----------------------------------------------------------


def test_two_registries_on_one_directory_see_each_others_changes_after_refresh(
    tmp_path: Path, artefacts: list[tuple[Path, str]]
) -> None:
    one, two = DirectoryRegistry(tmp_path), DirectoryRegistry(tmp_path)
    (d1, a), (d2, b) = artefacts[:2]
    one.register(d1, source="train", parent=None, data_span=None)
    one.promote(a, "first")
    assert two.entries() == [] and two.active() is None  # until it reads again
    two.refresh()
    assert [e.version for e in two.entries()] == [a] and two.active() == a

    # A change decides on the files as they are, not on what the object read before.
    two.register(d2, source="train", parent=a, data_span=None)
    two.promote(b, "second")
    one.refresh()
    assert one.active() == b
    with pytest.raises(RegistryError, match="already the active version"):
        DirectoryRegistry(tmp_path).promote(b, "raced")
    two.rollback("back")  # `two` read `b` promoted; `one` rolls back what is there now
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        one.rollback("again")
    one.refresh()
    assert one.history() == two.history() and one.active() == a


def test_concurrent_writers_take_turns(tmp_path: Path, artefacts: list[tuple[Path, str]]) -> None:
    """Writers in threads, each with a registry object of its own (its own lock file handle, as
    a process has): each promotion is decided under the lock, so none repeats the active
    version, and every history line is whole."""
    a, b = _register_all(DirectoryRegistry(tmp_path), artefacts[:2])
    refused: list[str] = []

    def promote_often() -> None:
        mine = DirectoryRegistry(tmp_path)
        for i in range(15):
            try:
                mine.promote((a, b)[i % 2], "race")
            except RegistryError as exc:
                refused.append(str(exc))

    threads = [threading.Thread(target=promote_often) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    history = DirectoryRegistry(tmp_path).history()
    assert len(history) + len(refused) == 6 * 15
    assert all("already the active version" in reason for reason in refused)
    assert all(x.version != y.version for x, y in zip(history, history[1:], strict=False))


# -- the models command ---------------------------------------------------------------------------


def _command(root: Path | None, *argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    parser = argparse.ArgumentParser(prog="stream-detector models")
    add_arguments(parser, argparse.ArgumentParser(add_help=False))
    settings = Settings(lifecycle={"registry_dir": root}) if root is not None else Settings()
    assert run(settings, parser.parse_args(argv)) == 0
    return capsys.readouterr().out


def test_the_models_command_end_to_end(
    tmp_path: Path, artefacts: list[tuple[Path, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    (d1, a), (d2, b) = artefacts[:2]
    assert "no versions yet" in _command(tmp_path, "list", capsys=capsys)
    assert f"registered {a} from {d1} (source train)" in _command(
        tmp_path, "register", str(d1), capsys=capsys
    )
    assert "already registered" in _command(tmp_path, "register", str(d1), capsys=capsys)
    DirectoryRegistry(tmp_path).register(d2, source="retrain:topic", parent=a, data_span=SPAN)
    assert f"{a} is active now (was none)" in _command(tmp_path, "promote", a, capsys=capsys)
    out = _command(tmp_path, "promote", b, "--reason", "fewer false positives", capsys=capsys)
    assert f"{b} is active now (was {a})" in out
    DirectoryRegistry(tmp_path).attach_report(b, "shadow", {"verdict": "pass", "ratio": 0.5})

    table = _command(tmp_path, "list", capsys=capsys).splitlines()
    assert table[0].split() == [
        "VERSION", "REGISTERED", "(UTC)", "SOURCE", "DATA", "SPAN", "(UTC)", "PARENT", "REPORTS"
    ]
    assert table[1].split()[0] == a and "*" not in table[1]
    assert table[2].startswith("*") and table[2].split()[1] == b
    assert "2024-05-01 08:00 .. 2024-05-02 08:00" in table[2]
    assert table[2].split()[-2:] == [a, "shadow"]
    assert table[3] == f"active: {b} (promoted {table[3].split('promoted ')[1]}"
    assert "fewer false positives" in table[3]

    listing = orjson.loads(_command(tmp_path, "list", "--json", capsys=capsys))
    assert listing["active"] == b
    assert [(v["version"], v["active"], v["reports"]) for v in listing["versions"]] == [
        (a, False, []), (b, True, ["shadow"])
    ]
    assert listing["versions"][1]["data_span"] == list(SPAN)

    shown = _command(tmp_path, "show", b, capsys=capsys)
    for expected in (
        f"{b}  (active)", "features             cpu, latency", "window               8",
        "global threshold     0.4", "training.best_epoch  2", '"verdict": "pass"',
        f"promote   {b} (was {a}): fewer false positives", "source               retrain:topic",
    ):
        assert expected in shown
    assert f"promote   {a}: promoted by hand" in _command(tmp_path, "show", a, capsys=capsys)

    assert f"rolled back: {a} is active now (was {b})" in _command(
        tmp_path, "rollback", "--reason", "storm", capsys=capsys
    )
    assert f"rollback  {a} (was {b}): storm" in _command(tmp_path, "show", b, capsys=capsys)


def test_models_show_says_when_a_version_scores_its_windows_newest_steps_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = SETTINGS.model_copy(update={"window": WindowConfig(size=8, score_steps=2)})
    version = _artefact(tmp_path / "a", 0, settings)
    registry = tmp_path / "registry"
    _command(registry, "register", str(tmp_path / "a"), capsys=capsys)
    shown = _command(registry, "show", version, capsys=capsys)
    assert "window               8, scored on its newest 2" in shown


def test_the_models_command_refuses_with_what_to_do(
    tmp_path: Path, artefacts: list[tuple[Path, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ModelsError, match="registry_dir .*--set lifecycle.registry_dir=DIR"):
        _command(None, "list", capsys=capsys)
    directory, version = artefacts[0]
    _command(tmp_path, "register", str(directory), capsys=capsys)
    with pytest.raises(ModelsError, match=f"version 'lstm-ae-0123456789ab'; it has {version}"):
        _command(tmp_path, "promote", "lstm-ae-0123456789ab", capsys=capsys)
    with pytest.raises(ModelsError, match="no model version 'v2'"):
        _command(tmp_path, "show", "v2", capsys=capsys)
    with pytest.raises(ModelsError, match="nothing to roll back"):
        _command(tmp_path, "rollback", capsys=capsys)
    with pytest.raises(ModelsError, match="does not exist"):
        _command(tmp_path, "register", str(tmp_path / "nowhere"), capsys=capsys)
