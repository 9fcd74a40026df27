"""`stream-detector replay` from the command line: where its output goes, and when it says no."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import torch

from stream_detector.cli import main
from stream_detector.config import load_settings
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
