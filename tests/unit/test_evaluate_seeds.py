"""`evaluate --seeds`: one model per training seed, and their figures lined up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from stream_detector.cli import main
from stream_detector.evaluation.seeds import format_seed_table, seed_summary

# A small model on a small feed, so that two trainings take seconds.
TINY = (
    "window.size=16", "window.stride=4", "model.hidden_size=8", "model.latent_size=4",
    "model.device=cpu", "train.epochs=2", "train.stride=4", "train.patience=1",
    "threshold.warmup=16", "input.label_field=label", "input.timestamp_unit=s",
)  # fmt: skip


def _labelled_feed(path: Path) -> Path:
    """Three keys of a noisy sine, 800 readings each; one jump of +3 in each key's second half."""
    rows = []
    rng = np.random.default_rng(7)
    for k, key in enumerate(("a", "b", "c")):
        values = np.sin(np.arange(800) / 6.0 + k) + rng.normal(0, 0.05, 800)
        start = 500 + 60 * k
        values[start : start + 20] += 3.0
        rows += [
            {
                "key": key,
                "ts": 1_700_000_000 + t,
                "value": float(v),
                "label": int(start <= t < start + 20),
            }
            for t, v in enumerate(values)
        ]
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    return path


@pytest.mark.usefixtures("logging_left_as_found")
def test_each_seed_trains_its_own_model_and_the_summary_lines_up_their_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed, out = _labelled_feed(tmp_path / "feed.jsonl"), tmp_path / "out"
    sets = [arg for s in TINY for arg in ("--set", s)]
    code = main(
        ["evaluate", "--dataset", str(feed), "--seeds", "3,5", "--baselines", "",
         "--no-plots", "--out", str(out), "--log-level", "warning", *sets]
    )  # fmt: skip
    assert code == 0
    reports = {s: orjson.loads((out / f"seed-{s}" / "report.json").read_bytes()) for s in (3, 5)}
    assert reports[3]["settings"]["train"]["seed"] == 3
    assert reports[5]["settings"]["train"]["seed"] == 5
    assert reports[3]["model_version"] != reports[5]["model_version"]

    summary = orjson.loads((out / "seeds.json").read_bytes())
    assert summary["seeds"] == [3, 5]
    assert summary["model_versions"] == [reports[3]["model_version"], reports[5]["model_version"]]
    f1 = next(r for r in summary["rows"] if (r["group"], r["figure"]) == ("all", "event F1"))
    expected = [reports[s]["groups"]["all"]["lstm_autoencoder"]["event_wise"]["f1"] for s in (3, 5)]
    assert f1["values"] == expected
    assert f1["mean"] == pytest.approx(sum(expected) / 2)
    assert (f1["min"], f1["max"]) == (min(expected), max(expected))
    printed = capsys.readouterr().out
    assert (out / "seeds.txt").read_text().strip() in printed
    assert "seed 3" in printed and "seed 5" in printed


def _report(seed: int, f1: float, benign: int) -> dict:
    figures = {
        "event_wise": {"f1": f1, "precision": 1.0, "recall": f1},
        "point_wise": {"f1": f1 / 2, "far": 0.01 * seed},
    }
    return {
        "model_version": f"m{seed}",
        "methods": ["lstm_autoencoder"],
        "groups": {"all": {"lstm_autoencoder": figures}},
        "feed": {
            "lstm_autoencoder": {"precision": 0.8, "recall": f1, "false_in_benign_spans": benign}
        },
    }


def test_feed_wide_figures_are_lined_up_too_and_counts_print_as_counts() -> None:
    summary = seed_summary({0: _report(0, 0.5, 2), 1: _report(1, 0.7, 1)})
    rows = {(r["group"], r["figure"]): r for r in summary["rows"]}
    assert rows[("feed", "feed R")]["values"] == [0.5, 0.7]
    assert rows[("feed", "in benign")]["mean"] == 1.5
    assert rows[("all", "FAR")]["max"] == 0.01
    lines = format_seed_table(summary).splitlines()
    assert lines[0].split() == [
        "group",
        "method",
        "figure",
        "seed",
        "0",
        "seed",
        "1",
        "mean",
        "range",
    ]
    benign = next(line for line in lines if "in benign" in line)
    assert benign.split()[-4:] == ["2", "1", "1.5", "1"]
    recall = next(line for line in lines if "feed R" in line)
    assert recall.split()[-4:] == ["50.0%", "70.0%", "60.0%", "20.0%"]


@pytest.mark.usefixtures("logging_left_as_found")
def test_seeds_refuse_what_goes_with_one_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "never-loaded.csv")
    common = ["evaluate", "--dataset", missing, "--log-level", "error"]
    assert main([*common, "--seeds", "0,1", "--model", str(tmp_path)]) == 2
    assert "--seeds trains one model per seed and cannot take --model" in capsys.readouterr().err
    for bad in ("3", "0,0", "0,x", "-1,2"):
        with pytest.raises(SystemExit) as exit_info:
            main([*common, "--seeds", bad])
        assert exit_info.value.code == 2
        assert "expected" in capsys.readouterr().err
