"""`evaluate` with operator feedback: the feedback file, the simulated operator who marks false
alerts, a replay of its marks on the same data, and the held-out part after a cut."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import orjson
import pytest

from stream_detector.cli import main
from stream_detector.config import FeedbackConfig, Settings
from stream_detector.detector.artefact import load_artefact
from stream_detector.detector.feedback import (
    FeedbackEvent,
    feedback_envelope,
    parse_feedback,
    read_feedback_file,
)
from stream_detector.engine.alerts import Alert, AlertKind, alert_id_for, episode_id_for
from stream_detector.evaluation.datasets import Channel, LabelledDataset
from stream_detector.evaluation.heldout import after_cut
from stream_detector.evaluation.operator_feedback import (
    SIMULATED_ID_PREFIX,
    simulated_false_positives,
)
from stream_detector.evaluation.report import format_table
from stream_detector.evaluation.runner import MODEL_METHOD, run_evaluation
from stream_detector.evaluation.trace import MethodTrace

TINY = Settings(
    window={"size": 16, "stride": 4},
    model={"hidden_size": 8, "latent_size": 4, "device": "cpu", "batch_size": 512},
    train={"epochs": 2, "max_windows": 2000, "stride": 4, "patience": 1},
    threshold={"warmup": 16},
)
N_TRAIN, N_TEST = 400, 600


def _channel(key: str, bumps: list[int], labelled: tuple[int, int] | None, seed: int) -> Channel:
    """A sine with the same unlabelled bump repeated at `bumps` (false alerts of one pattern) and,
    optionally, a far larger labelled anomaly (test-local positions)."""
    n = N_TRAIN + N_TEST
    values = np.sin(np.arange(n) / 6.0 + seed) + np.random.default_rng(seed).normal(0, 0.05, n)
    for start in bumps:
        values[N_TRAIN + start : N_TRAIN + start + 6] += 2.0
    labels = np.zeros(N_TEST, dtype=np.int8)
    if labelled is not None:
        start, end = labelled
        values[N_TRAIN + start : N_TRAIN + end + 1] += 5.0
        labels[start : end + 1] = 1
    ts = np.arange(n, dtype=np.float64)
    column = values[:, None].astype(np.float32)
    return Channel(
        key, "all", ts[:N_TRAIN], column[:N_TRAIN], np.zeros(N_TRAIN, np.int8),
        ts[N_TRAIN:], column[N_TRAIN:], labels,
    )  # fmt: skip


DATASET = LabelledDataset(
    "toy",
    ("value",),
    (_channel("k1", [100, 250, 400], (520, 540), 1), _channel("k2", [150, 300], None, 2)),
    (),
)


@dataclass(frozen=True)
class Before:
    """The run without feedback: its report, its model and the false positives it wrote."""

    report: dict
    model: Path
    marks: Path


@pytest.fixture(scope="module")
def before(tmp_path_factory: pytest.TempPathFactory) -> Before:
    out = tmp_path_factory.mktemp("before")
    marks = out / "fp.jsonl"
    report = run_evaluation(
        TINY, DATASET, out, baselines=[], batch_size=256, plots=False,
        write_false_positives=marks,
    )  # fmt: skip
    return Before(report, out / "model", marks)


def _replay(before: Before, out: Path, feedback: list[FeedbackEvent]) -> dict:
    """The same model on the same data with `feedback`, writing its own false positives."""
    return run_evaluation(
        TINY, DATASET, out, artefact=load_artefact(before.model, TINY), baselines=[],
        batch_size=256, plots=False, feedback=feedback, write_false_positives=out / "fp.jsonl",
    )  # fmt: skip


def _model(report: dict) -> dict:
    return report["groups"]["all"][MODEL_METHOD]["event_wise"]


def _marked(path: Path) -> list[dict]:
    return [orjson.loads(line)["data"] for line in path.read_bytes().splitlines()]


# The feedback file ----------------------------------------------------------------------------


def _fp_line(event_id: str = "fp-1") -> bytes:
    episode = episode_id_for("k1", 100.0, "m1")
    data = {
        "alert_id": alert_id_for(episode, "open"), "key": "k1", "episode_start": 100.0,
        "model_version": "m1", "score": 2.0, "effective": 120.0, "episode_end": 120.0,
    }  # fmt: skip
    return feedback_envelope("false_positive", event_id, "test", "k1", data, 120.0)


def test_feedback_file_is_read_in_order_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "feedback.jsonl"
    path.write_bytes(_fp_line("a") + b"\n\n" + _fp_line("b") + b"\n")
    events = read_feedback_file(path, FeedbackConfig())
    assert [(e.event_id, e.kind, e.target) for e in events] == [
        ("a", "false_positive", "k1"),
        ("b", "false_positive", "k1"),
    ]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [(b"{not json", "not JSON"), (b'{"specversion": "1.0", "id": "x", "type": "other"}', "type")],
)
def test_a_bad_feedback_line_is_named_by_its_number(
    tmp_path: Path, bad: bytes, reason: str
) -> None:
    path = tmp_path / "feedback.jsonl"
    path.write_bytes(_fp_line() + b"\n\n" + bad + b"\n")
    with pytest.raises(ValueError, match=f"line 3: .*{reason}"):
        read_feedback_file(path, FeedbackConfig())


@pytest.mark.usefixtures("logging_left_as_found")
def test_evaluate_refuses_a_bad_feedback_file_before_loading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "feedback.jsonl"
    path.write_bytes(_fp_line() + b"\n" + b"[]\n")
    missing = str(tmp_path / "never-loaded.csv")
    common = ["evaluate", "--dataset", missing, "--log-level", "error"]
    assert main([*common, "--feedback", str(path)]) == 2
    error = capsys.readouterr().err
    assert f"--feedback {path}, line 2: a feedback event is a JSON object" in error
    assert main([*common, "--feedback", str(tmp_path / "nope.jsonl")]) == 2
    assert "cannot read --feedback" in capsys.readouterr().err
    assert main([*common, "--split-at", "1"]) == 2
    assert "--split-at is a share of the test part" in capsys.readouterr().err


# The simulated operator and its replay ---------------------------------------------------------


def test_the_operator_marks_every_false_episode_from_its_end(before: Before) -> None:
    written = before.report["false_positives_written"]
    assert written["written"] == _model(before.report)["fp"] > 0
    assert written["still_open"] == 0 and written["after_cut"] == 0
    lines = before.marks.read_bytes().splitlines()
    events = [parse_feedback(line, TINY.feedback) for line in lines]
    assert {e.kind for e in events} == {"false_positive"}
    for event in events:
        assert event.alert is not None and event.alert.alert_id.endswith("-open")
        assert event.event_id == SIMULATED_ID_PREFIX + event.alert.alert_id
        # The effect starts where the episode ended, after its peak (the floor's base).
        assert event.alert.effective == event.alert.episode_end > event.alert.episode_start
        assert event.alert.model_version == before.report["model_version"]
    assert "simulated operator: " in format_table(before.report)


def test_replaying_the_marks_holds_back_later_repeats_only(before: Before, tmp_path: Path) -> None:
    feedback = read_feedback_file(before.marks, TINY.feedback)
    after = _replay(before, tmp_path, feedback)
    # Fewer false episodes (the bumps repeat on k1), the same true detections.
    assert _model(after)["fp"] < _model(before.report)["fp"]
    assert _model(after)["tp"] == _model(before.report)["tp"] == 1
    # The honest measure: each key's first marked alert fires again (its mark starts at its
    # end); what goes is only what came after a mark, and nothing false is new.
    marked, still_false = _marked(before.marks), _marked(tmp_path / "fp.jsonl")
    first: dict[str, str] = {}
    for mark in sorted(marked, key=lambda m: m["episode_start"]):
        first.setdefault(mark["key"], mark["alert_id"])
    assert set(first.values()) <= {m["alert_id"] for m in still_false}
    assert {m["alert_id"] for m in still_false} <= {m["alert_id"] for m in marked}


def test_the_report_says_what_feedback_it_ran_with(before: Before, tmp_path: Path) -> None:
    feedback = read_feedback_file(before.marks, TINY.feedback)
    k2 = next(m for m in _marked(before.marks) if m["key"] == "k2")
    mute = feedback_envelope(
        "mute", "mute-k2", "test", "k2",
        {"pattern": "k2", "from": k2["episode_start"] - 1, "until": k2["episode_end"] + 1}, 0.0,
    )  # fmt: skip
    given = [*feedback, *feedback, parse_feedback(mute, TINY.feedback)]
    after = _replay(before, tmp_path, given)
    summary = after["feedback"]
    assert summary["events"] == len(feedback) + 1
    assert summary["by_kind"] == {"false_positive": len(feedback), "mute": 1}
    assert summary["duplicates"] == len(feedback)
    assert summary["alerts_muted"] == 2  # the episode's open and resolve
    assert summary["alerts_of_this_feed"] == len(feedback)
    assert summary["label"].startswith("with feedback, in-sample")
    table = (tmp_path / "table.txt").read_text()
    assert table.startswith("with feedback, in-sample (the feedback was given on this same feed)")
    assert orjson.loads((tmp_path / "report.json").read_bytes())["feedback"] == summary
    assert "feedback" not in before.report


# The cut: what feedback given before it cannot have seen ---------------------------------------


def _alert(kind: AlertKind, key: str, opened: float, at: float, score: float = 2.0) -> Alert:
    episode = episode_id_for(key, opened, "m1")
    return Alert(
        kind, alert_id_for(episode, kind), episode, key, at - 15.0, at, score, 1.0, "medium", (),
        "m1", opened, 1, 0,
    )  # fmt: skip


def _toy_trace() -> tuple[LabelledDataset, MethodTrace]:
    """One key, test times 0..99, labelled 40..49; episodes at 10-20 (false), 42-45 (true),
    60-70 (false) and 90-99 (false, never resolved)."""
    labels = np.zeros(100, np.int8)
    labels[40:50] = 1
    ts = np.arange(100.0)
    channel = Channel(
        "k", "all", np.empty(0), np.empty((0, 1), np.float32), np.empty(0, np.int8), ts,
        np.zeros((100, 1), np.float32), labels,
    )  # fmt: skip
    spans = [(10, 20), (42, 45), (60, 70), (90, 99)]
    pairs = [
        (_alert("open", "k", s, s), None if s == 90 else _alert("resolve", "k", s, e, 3.0))
        for s, e in spans
    ]
    trace = MethodTrace("m", {}, {0: np.array(spans)}, 0.0, {0: pairs})
    return LabelledDataset("toy", ("value",), (channel,), ()), trace


def test_before_a_cut_only_the_episodes_over_before_it_are_marked() -> None:
    dataset, trace = _toy_trace()
    events, counts = simulated_false_positives(dataset, trace, before_ts=50.0)
    assert counts == {"written": 1, "still_open": 1, "after_cut": 1, "no_score": 0}
    (event,) = [parse_feedback(e, FeedbackConfig()) for e in events]
    assert event.alert is not None
    assert (event.alert.episode_start, event.alert.episode_end, event.alert.score) == (10, 20, 3)
    assert len(simulated_false_positives(dataset, trace)[0]) == 2


def test_a_new_key_arrival_with_no_score_is_not_marked() -> None:
    """No window of the key exceeded: a false positive would have nothing to raise, and the
    file it is written to must still read back."""
    dataset, trace = _toy_trace()
    opened, resolved = trace.alerts[0][0]
    trace.alerts[0][0] = (opened, replace(resolved, score=0.0))
    events, counts = simulated_false_positives(dataset, trace)
    assert counts == {"written": 1, "still_open": 1, "after_cut": 0, "no_score": 1}
    assert [parse_feedback(e, FeedbackConfig()).alert.episode_start for e in events] == [60]


def test_after_the_cut_only_episodes_opened_there_count() -> None:
    dataset, trace = _toy_trace()
    tail, (moved,) = after_cut(dataset, [trace], 44.0)
    assert tail.channels[0].test_ts[0] == 44.0 and tail.channels[0].test_labels[:6].all()
    # 42-45 opened before the cut: it belongs to the first part, not clipped into the second.
    assert moved.episodes[0].tolist() == [[16, 26], [46, 55]]
    assert [opened.episode_start for opened, _ in moved.alerts[0]] == [60.0, 90.0]
