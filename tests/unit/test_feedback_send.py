"""`stream-detector feedback` without a broker: its arguments, the alert looked up in an --alerts
file, the events it refuses, and the JSON lines --out appends (which parse_feedback accepts)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream_detector.cli import build_parser, main
from stream_detector.config import FeedbackConfig
from stream_detector.detector.feedback import FeedbackEvent, parse_feedback
from stream_detector.engine.alerts import Alert, FeatureContribution, alert_id_for, episode_id_for
from stream_detector.kafka import feedback_send
from stream_detector.kafka.feedback_send import (
    AlertSearch,
    FeedbackInputError,
    alert_record,
    episode_of,
    parse_duration,
    parse_time,
)

pytestmark = pytest.mark.usefixtures("logging_left_as_found")

T0 = 1_714_600_000.0  # 2024-05-01T21:46:40Z
CONFIG = FeedbackConfig()


def opened(key: str = "device-0042", at: float = T0, score: float = 0.9) -> Alert:
    episode = episode_id_for(key, at, "lstm-ae-1")
    return Alert(
        kind="open",
        alert_id=alert_id_for(episode, "open"),
        episode_id=episode,
        key=key,
        window_start=at - 31,
        window_end=at,
        score=score,
        threshold=0.3,
        severity="high",
        top_features=(FeatureContribution("temperature", 41.7, 22.9, 0.83),),
        model_version="lstm-ae-1",
        episode_start=at,
        windows_over=2,
        event_index=5,
    )


def resolved(open_alert: Alert, after_s: float = 120.0, peak: float = 4.0) -> Alert:
    return replace(
        open_alert,
        kind="resolve",
        alert_id=alert_id_for(open_alert.episode_id, "resolve"),
        window_end=open_alert.window_end + after_s,
        score=peak,
        windows_over=14,
        reason="cooldown",
    )


def alerts_file(path: Path, *alerts: Alert, junk: bool = True) -> Path:
    """A JSONL of alert CloudEvents, with a line that is not an alert among them."""
    lines = [alert.to_cloudevent("stream-detector/test") for alert in alerts]
    if junk:
        lines.insert(1, b'{"specversion": "1.0", "type": "com.example.other", "data": {}}')
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def feedback(*argv: str, out: Path | None = None) -> int:
    """main() for one feedback command, with no broker anywhere near."""
    extra = ["--bootstrap-servers", "127.0.0.1:1"]
    return main(["feedback", *argv, *extra, *(["--out", str(out)] if out else [])])


def written(path: Path) -> list[tuple[dict[str, Any], FeedbackEvent]]:
    """Each line --out appended: the envelope, and what the service would read from it."""
    lines = path.read_bytes().splitlines()
    return [(orjson.loads(line), parse_feedback(line, CONFIG)) for line in lines]


# -- argument, duration and time parsing ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("0.5h", 1800)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2", "2w", "-1h", "0s", "h", "1 h", "2h-"])
def test_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("2024-05-01T21:46:40Z", T0),
        ("2024-05-01T23:46:40+02:00", T0),
        ("2024-05-01T21:46:40.250Z", T0 + 0.25),
        ("1714600000", T0),
        ("1714600000.5", T0 + 0.5),
    ],
)
def test_times(text: str, epoch: float) -> None:
    assert parse_time(text) == epoch


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("2024-05-01T21:46:40", "no UTC offset"),
        ("yesterday", "neither RFC 3339"),
        ("1714600000000", "milliseconds"),
        ("nan", "between 1970 and 9999"),
    ],
)
def test_what_is_not_a_time(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_time(text)


def test_each_event_parses_its_own_arguments() -> None:
    parser = build_parser()
    mute = parser.parse_args(["feedback", "mute", "dev-*", "--for", "2h", "--from", "1714600000"])
    assert (mute.event, mute.target, mute.duration, mute.at) == ("mute", "dev-*", 7200.0, T0)
    unmute = parser.parse_args(["feedback", "unmute", "dev-*", "--at", "2024-05-01T21:46:40Z"])
    assert (unmute.event, unmute.at) == ("unmute", T0)
    tune = parser.parse_args(["feedback", "sensitivity", "k1", "0.5", "--set", "a.b=1"])
    assert (tune.target, tune.multiplier, tune.at, tune.set) == ("k1", 0.5, None, ["a.b=1"])
    fp = parser.parse_args(["feedback", "fp", "abc-open", "--alerts", "a.jsonl", "--out", "f"])
    assert (fp.event, fp.target, fp.alerts) == ("fp", "abc-open", Path("a.jsonl"))
    assert (fp.out, fp.timeout) == (Path("f"), 30.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["mute", "dev-*"], "the following arguments are required: --for"),
        (["mute", "dev-*", "--for", "2w"], "argument --for: '2w' is not a duration"),
        (["unmute", "dev-*", "--at", "noon"], "argument --at: 'noon' is neither RFC 3339"),
        (["sensitivity", "k1"], "required: MULTIPLIER"),
        (["fp", "abc-open", "--from", "1714600000"], "unrecognized arguments: --from"),
        ([], "required: EVENT"),
    ],
)
def test_bad_arguments_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["feedback", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_timeout_under_a_second_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert feedback("unmute", "dev-*", "--timeout", "0.5", out=tmp_path / "f.jsonl") == 2
    assert "--timeout must be at least 1 second" in capsys.readouterr().err


# -- the alert a false/true positive names ---------------------------------------------------------


def test_an_alert_id_names_its_episode() -> None:
    alert = opened()
    assert episode_of(alert.alert_id) == episode_of(resolved(alert).alert_id) == alert.episode_id
    for wrong in ("", "abc", "abc-opened", "-open"):
        with pytest.raises(FeedbackInputError, match="'<episode_id>-open'"):
            episode_of(wrong)


def test_records_that_are_not_alerts_are_skipped() -> None:
    alert = opened()
    assert alert_record(alert.to_cloudevent("s")) is not None
    envelope = orjson.loads(alert.to_cloudevent("s"))
    envelope["data"]["score"] = "high"
    for value in (None, b"", b"not json", b"[1]", b'{"type": ["x"]}', orjson.dumps(envelope)):
        assert alert_record(value) is None


def test_the_episode_peak_and_end_come_from_both_its_alerts(tmp_path: Path) -> None:
    first, other = opened(), opened("device-0007", T0 + 5)
    last = resolved(first, after_s=120.0, peak=4.0)
    path = alerts_file(tmp_path / "alerts.jsonl", first, other, last)
    out = tmp_path / "feedback.jsonl"
    assert feedback("fp", first.alert_id, "--alerts", str(path), out=out) == 0
    [(envelope, event)] = written(out)
    assert event.kind == "false_positive" and event.target == "device-0042"
    assert event.alert is not None
    assert event.alert.alert_id == first.alert_id
    assert event.alert.score == 4.0  # the resolve's peak, not the open's 0.9
    assert event.alert.episode_end == last.window_end
    assert event.alert.effective == last.window_end  # alert_reference: the episode's end
    assert envelope["subject"] == "device-0042"
    assert envelope["source"] == "stream-detector/feedback-cli"


def test_an_episode_still_open_has_no_end(tmp_path: Path) -> None:
    alert = opened(score=2.5)
    path = alerts_file(tmp_path / "alerts.jsonl", alert, junk=False)
    out = tmp_path / "feedback.jsonl"
    assert feedback("tp", alert.alert_id, "--alerts", str(path), out=out) == 0
    [(_, event)] = written(out)
    assert event.kind == "true_positive" and event.alert is not None
    assert (event.alert.score, event.alert.episode_end) == (2.5, None)
    assert event.alert.effective == alert.window_end


def test_an_unknown_alert_is_an_error_naming_where_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = alerts_file(tmp_path / "alerts.jsonl", opened(), opened("device-0007"))
    out = tmp_path / "feedback.jsonl"
    unknown = "0" * 32 + "-open"
    assert feedback("fp", unknown, "--alerts", str(path), out=out) == 2
    err = capsys.readouterr().err
    assert f"unknown alert {unknown!r}: not among the 2 alerts read from --alerts {path}" in err
    assert not out.exists()


def test_a_resolve_not_yet_read_names_the_alerts_its_episode_has(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alert = opened()
    path = alerts_file(tmp_path / "alerts.jsonl", alert)
    out = tmp_path / "feedback.jsonl"
    assert feedback("fp", resolved(alert).alert_id, "--alerts", str(path), out=out) == 2
    assert f"its episode has {alert.alert_id}" in capsys.readouterr().err


def test_a_malformed_alert_id_or_a_missing_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing, out = tmp_path / "a.jsonl", tmp_path / "feedback.jsonl"
    assert feedback("fp", "device-0042", "--alerts", str(missing), out=out) == 2
    assert "'device-0042' is not an alert id" in capsys.readouterr().err
    assert feedback("fp", opened().alert_id, "--alerts", str(missing), out=out) == 2
    assert f"--alerts {missing} does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_a_search_keeps_only_the_episode_it_looks_for() -> None:
    alert = opened()
    search = AlertSearch.for_alert(alert.alert_id)
    for other in (opened("a"), opened("b"), alert):
        search.take(other.to_cloudevent("s"))
    assert search.alerts_read == 3
    assert [a.alert_id for a in search.found] == [alert.alert_id]


# -- what is refused before anything is sent -------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "setting"),
    [
        (["sensitivity", "k1", "10"], "feedback.min_sensitivity, feedback.max_sensitivity"),
        (["sensitivity", "k1", "0.1"], "feedback.min_sensitivity, feedback.max_sensitivity"),
        (["sensitivity", "k1", "nan"], "data.multiplier must be a finite number"),
        (["mute", "dev-*", "--for", "31d"], "feedback.max_mute_s"),
        (["mute", "", "--for", "1h"], "data.pattern must be a non-empty string"),
    ],
)
def test_out_of_bounds_is_refused_naming_the_setting(
    argv: list[str], setting: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "feedback.jsonl"
    assert feedback(*argv, out=out) == 2
    err = capsys.readouterr().err
    assert "refused, nothing sent" in err and setting in err
    assert not out.exists()


def test_the_bounds_are_the_settings(tmp_path: Path) -> None:
    out = tmp_path / "feedback.jsonl"
    longer = ["--set", "feedback.max_mute_s=4e6"]
    assert feedback("mute", "dev-*", "--for", "40d", *longer, out=out) == 0
    assert feedback("sensitivity", "k1", "6", "--set", "feedback.max_sensitivity=8", out=out) == 0
    assert len(out.read_bytes().splitlines()) == 2


def test_without_a_feedback_topic_nothing_can_be_sent(capsys: pytest.CaptureFixture[str]) -> None:
    assert feedback("mute", "dev-*", "--for", "1h") == 2
    assert "--set kafka.feedback_topic=NAME" in capsys.readouterr().err


# -- what --out appends ----------------------------------------------------------------------------


def test_out_appends_one_event_a_line_that_the_service_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "deep" / "feedback.jsonl"
    assert feedback("mute", "dev-*", "--for", "2h", "--from", "2024-05-01T21:46:40Z", out=out) == 0
    assert feedback("unmute", "dev-*", "--at", str(T0 + 600), out=out) == 0
    assert feedback("sensitivity", "device-0042", "2", "--from", str(T0), out=out) == 0
    (mute_env, mute), (unmute_env, unmute), (tune_env, tune) = written(out)
    assert (mute.kind, mute.target, mute.start, mute.until) == ("mute", "dev-*", T0, T0 + 7200)
    assert (unmute.kind, unmute.target, unmute.start) == ("unmute", "dev-*", T0 + 600)
    assert (tune.kind, tune.target, tune.multiplier, tune.start) == (
        "sensitivity", "device-0042", 2.0, T0
    )
    ids = [mute.event_id, unmute.event_id, tune.event_id]
    assert len(set(ids)) == 3 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert [e["subject"] for e in (mute_env, unmute_env, tune_env)] == ["dev-*"] * 2 + [
        "device-0042"
    ]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0] == (
        f"wrote io.streamdetector.feedback.mute {mute.event_id} (pattern 'dev-*', from "
        f"2024-05-01T21:46:40.000Z until 2024-05-01T23:46:40.000Z) to {out}"
    )


def test_times_default_to_now(tmp_path: Path) -> None:
    out = tmp_path / "feedback.jsonl"
    before = time.time()
    assert feedback("mute", "dev-*", "--for", "15m", out=out) == 0
    after = time.time()
    [(envelope, event)] = written(out)
    assert before <= event.start <= after and event.until == event.start + 900
    assert envelope["time"].endswith("Z")


# -- the broker's failures -------------------------------------------------------------------------


class _RefusingProducer:
    """A producer whose one message comes back with an error, as a broker's refusal does."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.callbacks: list[Any] = []

    def produce(self, topic: str, *, value: bytes, key: bytes, on_delivery: Any) -> None:
        self.callbacks.append(on_delivery)

    def flush(self, timeout: float) -> int:
        from confluent_kafka import KafkaError

        for callback in self.callbacks:
            callback(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), None)
        return 0


def test_a_delivery_failure_exits_1_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(feedback_send, "wait_for_topics", lambda *args: True)
    monkeypatch.setattr(feedback_send, "Producer", _RefusingProducer)
    code = feedback("mute", "dev-*", "--for", "1h", "--set", "kafka.feedback_topic=fb")
    assert code == 1
    captured = capsys.readouterr()
    assert "not delivered to topic 'fb'" in captured.err
    assert "authoriz" in captured.err.lower()
    assert captured.out == ""


def test_an_unreachable_broker_is_given_up_after_the_timeout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["mute", "dev-*", "--for", "1h", "--set", "kafka.feedback_topic=fb", "--timeout", "1"]
    assert feedback(*argv) == 1
    assert "no answer from Kafka at 127.0.0.1:1 within 1 s" in capsys.readouterr().err
