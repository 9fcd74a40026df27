"""`stream-detector replay` from the command line: where its output goes, and when it says no."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import torch

from stream_detector.cli import main
from stream_detector.config import Settings, load_settings
from stream_detector.detector.artefact import TrainingResult, save_artefact
from stream_detector.engine.model import LSTMAutoencoder

CONFIG = """
[input]
value_fields = ["value"]
[window]
size = 4
stride = 1
[normalize]
warmup = 0
[model]
hidden_size = 4
latent_size = 2
device = "cpu"
"""
T0 = 1_714_564_800.0

pytestmark = pytest.mark.usefixtures("logging_left_as_found")


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(config, model directory, input JSONL): an untrained model is enough to replay with."""
    config = tmp_path / "detector.toml"
    config.write_text(CONFIG)
    settings = load_settings(config)
    torch.manual_seed(0)
    model = LSTMAutoencoder(1, 4, 4, 1, 2)
    result = TrainingResult((0.0,), (1.0,), {"0.995": 1.0}, 1.0, {})
    save_artefact(tmp_path / "model", model, settings, result)
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(
        b"".join(orjson.dumps({"key": "a", "ts": T0 + t, "value": t}) + b"\n" for t in range(6))
    )
    return config, tmp_path / "model", feed


def _replay(files: tuple[Path, Path, Path], out: Path) -> int:
    config, model, feed = files
    return main(
        ["replay", "--config", str(config), "--input", str(feed), "--model", str(model),
         "--out", str(out), "--log-level", "error"]
    )


def test_replay_creates_the_folder_of_its_output(
    files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "reports" / "day1" / "scores.jsonl"
    assert _replay(files, out) == 0
    lines = out.read_bytes().splitlines()
    assert len(lines) == 6 and orjson.loads(lines[-1])["score"] is not None


def test_replay_to_a_folder_fails_at_once_with_a_message(
    files: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _replay(files, tmp_path) == 2
    assert "is a directory" in capsys.readouterr().err


def test_replay_under_a_file_fails_with_a_message_not_a_traceback(
    files: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the folder would go")
    assert _replay(files, blocker / "scores.jsonl") == 2
    assert "cannot create the folder of --out" in capsys.readouterr().err


def test_replay_with_no_config_reads_data_as_the_model_was_trained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The artefact's input mapping (key `device`, values `a`, `b`, time `t` in ms) decodes."""
    trained_with = Settings(
        input={"key_field": "device", "value_fields": ("a", "b"), "timestamp_field": "t",
               "timestamp_unit": "ms"}
    )
    torch.manual_seed(0)
    model = LSTMAutoencoder(2, trained_with.window.size, trained_with.model.hidden_size,
                            trained_with.model.num_layers, trained_with.model.latent_size)
    result = TrainingResult((0.0, 0.0), (1.0, 1.0), {"0.995": 1.0}, 1.0, {})
    save_artefact(tmp_path / "model", model, trained_with, result)
    feed = tmp_path / "feed.jsonl"
    rows = [{"device": f"d{i % 2}", "t": (T0 + i) * 1000, "a": i, "b": -i} for i in range(8)]
    feed.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    out = tmp_path / "scores.jsonl"
    args = ["replay", "--input", str(feed), "--model", str(tmp_path / "model"), "--out", str(out),
            "--log-level", "error"]
    assert main(args) == 0
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [(line["key"], line["ts"]) for line in lines] == [
        (f"d{i % 2}", T0 + i) for i in range(8)
    ]
    assert main([*args, "--set", "input.key_field=host"]) == 2
    error = capsys.readouterr().err
    assert "input.key_field is 'device' in the artefact but 'host'" in error
    assert "remove input.key_field from the configuration" in error


def test_replay_that_refuses_every_record_says_so(
    files: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that does not fit the mapping at all ends with a warning, not a quiet summary."""
    config, model, _ = files
    feed = tmp_path / "other.jsonl"
    feed.write_bytes(b"".join(orjson.dumps({"host": "a", "ts": T0 + t}) + b"\n" for t in range(3)))
    args = ["replay", "--config", str(config), "--input", str(feed), "--model", str(model),
            "--out", str(tmp_path / "out.jsonl")]  # fmt: skip
    assert main([*args, "--log-level", "warning"]) == 0
    assert "replay refused every record" in capsys.readouterr().err
    assert main([*args, "--input", str(files[2]), "--log-level", "warning"]) == 0
    assert "replay refused every record" not in capsys.readouterr().err
