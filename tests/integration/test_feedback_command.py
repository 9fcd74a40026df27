"""`stream-detector feedback` against a real broker: a false positive looked up on the alert topic
(peak score and end taken from the episode's two alerts), a mute, and an unknown alert id."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
import structlog
from kafka_harness import T0, Record

from stream_detector.cli import main
from stream_detector.config import FeedbackConfig
from stream_detector.detector.feedback import parse_feedback
from stream_detector.engine.alerts import Alert, FeatureContribution, alert_id_for, episode_id_for

pytestmark = pytest.mark.integration

SOURCE = "stream-detector/test"


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """main() points structlog at this test's captured stderr, which must not outlive it."""
    yield
    structlog.reset_defaults()


def _opened(key: str, at: float, score: float) -> Alert:
    episode = episode_id_for(key, at, "lstm-ae-1")
    return Alert(
        kind="open",
        alert_id=alert_id_for(episode, "open"),
        episode_id=episode,
        key=key,
        window_start=at - 7,
        window_end=at,
        score=score,
        threshold=0.5,
        severity="medium",
        top_features=(FeatureContribution("value", 7.1, 0.2, 1.0),),
        model_version="lstm-ae-1",
        episode_start=at,
        windows_over=1,
        event_index=0,
    )


def _resolved(alert: Alert, end: float, peak: float) -> Alert:
    return replace(
        alert,
        kind="resolve",
        alert_id=alert_id_for(alert.episode_id, "resolve"),
        window_end=end,
        score=peak,
        windows_over=6,
        reason="cooldown",
    )


def test_feedback_command_sends_what_the_service_reads(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    produce_events: Callable[..., None],
    consume_all: Callable[..., list[Record]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    alert_topic = topic_factory("alerts", partitions=3)  # two keys: a partition stays empty
    feedback_topic = topic_factory("feedback", partitions=3)
    opened = _opened("k03", T0 + 200, score=1.2)
    resolved = _resolved(opened, T0 + 230, peak=3.4)
    other = _opened("k07", T0 + 205, score=9.9)  # another episode's higher score is not taken
    produce_events(
        alert_topic,
        [(a.key.encode(), a.to_cloudevent(SOURCE)) for a in (opened, other, resolved)],
    )
    common = [
        "--bootstrap-servers", kafka_bootstrap,
        "--set", f"kafka.alert_topic={alert_topic}",
        "--set", f"kafka.feedback_topic={feedback_topic}",
    ]

    assert main(["feedback", "fp", opened.alert_id, *common]) == 0
    assert main(["feedback", "mute", "k1*", "--for", "2h", "--from", str(T0), *common]) == 0
    unknown = alert_id_for("0" * 32, "resolve")
    assert main(["feedback", "tp", unknown, *common]) == 2

    captured = capsys.readouterr()
    sent = captured.out.splitlines()
    assert len(sent) == 2
    assert all(f"to topic {feedback_topic!r}" in line for line in sent)
    assert (
        f"unknown alert {unknown!r}: not among the 3 alerts read from topic {alert_topic!r}"
        in captured.err
    )

    records = consume_all(feedback_topic)
    assert len(records) == 2  # the unknown alert produced nothing
    events = {r.key: parse_feedback(r.value, FeedbackConfig()) for r in records}
    false_positive, mute = events[b"k03"], events[b"k1*"]
    assert false_positive.kind == "false_positive" and false_positive.alert is not None
    assert false_positive.alert.alert_id == opened.alert_id
    assert false_positive.alert.score == 3.4  # the episode's peak, from its resolve
    assert false_positive.alert.episode_end == resolved.window_end
    assert false_positive.alert.effective == resolved.window_end
    assert (mute.kind, mute.start, mute.until) == ("mute", T0, T0 + 7200)
    assert {false_positive.event_id, mute.event_id} == {
        line.split()[2] for line in sent
    }  # "sent <type> <id> (...)"
    assert all(r.json()["source"] == "stream-detector/feedback-cli" for r in records)
