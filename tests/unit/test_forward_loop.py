"""The forwarder's loop without a broker: what one batch posts and commits (and in which order),
malformed records skipped, nothing committed when Alertmanager never accepted, the rebuild on
assignment posting nothing but the open episodes afterwards; and the command line."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from stream_detector.cli import main
from stream_detector.config import load_settings
from stream_detector.engine.alerts import Alert, FeatureContribution, alert_id_for
from stream_detector.forward import forwarder as forwarder_module
from stream_detector.forward.alertmanager import PostInterrupted, PostResult
from stream_detector.forward.forwarder import Forwarder

TOPIC = "alerts"


def alert(key: str, kind: str = "open", severity: str = "high") -> Alert:
    episode = f"{key:0>32}"[-32:]
    return Alert(
        kind=kind,  # type: ignore[arg-type]
        alert_id=alert_id_for(episode, kind),  # type: ignore[arg-type]
        episode_id=episode,
        key=key,
        window_start=1_763_899_200.0,
        window_end=1_763_899_231.0 + (60 if kind == "resolve" else 0),
        score=0.9,
        threshold=0.3,
        severity=severity,  # type: ignore[arg-type]
        top_features=(FeatureContribution("temperature", 41.7, 22.9, 0.83),),
        model_version="m-1",
        episode_start=1_763_899_231.0,
        windows_over=2,
        event_index=0,
        reason="cooldown" if kind == "resolve" else None,
    )


@dataclass
class FakeMessage:
    partition_: int
    offset_: int
    value_: bytes | None

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def value(self) -> bytes | None:
        return self.value_

    def topic(self) -> str:
        return TOPIC


def record(partition: int, offset: int, item: Alert | bytes) -> FakeMessage:
    value = item.to_cloudevent("test") if isinstance(item, Alert) else item
    return FakeMessage(partition, offset, value)


@dataclass
class Journal:
    """Posts and commits, in the order they happened."""

    events: list[tuple[str, Any]] = field(default_factory=list)


class FakeClient:
    def __init__(self, journal: Journal, interrupted: bool = False) -> None:
        self.journal = journal
        self.interrupted = interrupted
        self.retries = 0
        self.endpoint = "http://127.0.0.1:9/api/v2/alerts"

    def post(self, alerts: list[dict[str, Any]]) -> PostResult:
        if self.interrupted:
            raise PostInterrupted("stopped while Alertmanager was unavailable")
        self.journal.events.append(("post", alerts))
        return PostResult(accepted=len(alerts))


class FakeConsumer:
    def __init__(self, journal: Journal, committed: dict[int, int] | None = None) -> None:
        self.journal = journal
        self._committed = committed or {}

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        assert asynchronous is False
        self.journal.events.append(("commit", {tp.partition: tp.offset for tp in offsets}))
        return offsets

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [
            TopicPartition(TOPIC, tp.partition, self._committed.get(tp.partition, -1001))
            for tp in partitions
        ]


def forwarder(journal: Journal, interrupted: bool = False) -> Forwarder:
    settings = load_settings(
        None,
        {
            "kafka": {"alert_topic": TOPIC},
            "forward": {"url": "http://127.0.0.1:9", "resend_interval_s": 30.0},
        },
    )
    made = Forwarder(settings, threading.Event())
    made.client = FakeClient(journal, interrupted)  # type: ignore[assignment]
    return made


def test_a_batch_is_posted_once_per_episode_then_committed() -> None:
    journal = Journal()
    fwd = forwarder(journal)
    batch = [
        record(0, 10, alert("a")),
        record(1, 4, b"{not json"),
        record(0, 11, alert("b")),
        record(0, 12, alert("a", "resolve", severity="critical")),
    ]
    fwd._forward(FakeConsumer(journal), batch)  # type: ignore[arg-type]

    assert [kind for kind, _ in journal.events] == ["post", "commit"]
    posted = journal.events[0][1]
    assert [a["labels"]["key"] for a in posted] == ["a", "b"]
    ended, firing = posted
    # The episode opened and resolved in one batch is posted once, resolved, under its open's
    # labels; the other fires.
    assert ended["labels"]["severity"] == "high" and ended["endsAt"] == "2025-11-23T12:01:31.000Z"
    assert firing["endsAt"] > "2026"
    # Every record's offset is committed, the malformed one too: it was dealt with (skipped).
    assert journal.events[1][1] == {0: 13, 1: 5}
    assert (fwd.totals.records, fwd.totals.malformed) == (4, 1)
    assert (fwd.totals.firing_posted, fwd.totals.resolved_posted) == (1, 1)
    assert [s.labels["key"] for s in fwd.episodes.firing()] == ["b"]


def test_a_batch_of_only_malformed_records_posts_nothing_and_is_committed() -> None:
    journal = Journal()
    fwd = forwarder(journal)
    fwd._forward(FakeConsumer(journal), [record(2, 0, b"[]"), record(2, 1, None)])  # type: ignore[arg-type]
    assert journal.events == [("commit", {2: 2})]
    assert fwd.totals.malformed == 2


def test_nothing_is_committed_when_alertmanager_never_accepted() -> None:
    journal = Journal()
    fwd = forwarder(journal, interrupted=True)
    with pytest.raises(PostInterrupted):
        fwd._forward(FakeConsumer(journal), [record(0, 3, alert("a"))])  # type: ignore[arg-type]
    assert journal.events == []


def test_assignment_rebuilds_the_open_episodes_silently_then_posts_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    history = {
        0: [alert("a"), alert("b"), alert("a", "resolve"), b"garbage"],
        1: [alert("c")],
    }
    replayed: list[tuple[int, int]] = []

    def read_back(kafka: Any, committed: list[TopicPartition], on_record: Any, **_: Any) -> int:
        for tp in committed:
            for offset, item in enumerate(history[tp.partition][: max(tp.offset, 0)]):
                on_record(record(tp.partition, offset, item))
                replayed.append((tp.partition, offset))
        return len(replayed)

    monkeypatch.setattr(forwarder_module, "read_back", read_back)
    journal = Journal()
    fwd = forwarder(journal)
    consumer = FakeConsumer(journal, committed={0: 4, 1: 1})
    fwd._on_assign(consumer, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])  # type: ignore[arg-type]
    assert len(replayed) == 5 and journal.events == []  # read back, nothing posted
    assert fwd.totals.malformed == 0  # counted when it was first forwarded, not again

    fwd._repost_if_due()
    assert [kind for kind, _ in journal.events] == ["post"]
    assert sorted(a["labels"]["key"] for a in journal.events[0][1]) == ["b", "c"]
    # Not again before the resend interval.
    fwd._repost_if_due()
    assert len(journal.events) == 1

    fwd._on_revoke(consumer, [TopicPartition(TOPIC, 1)])  # type: ignore[arg-type]
    assert [s.labels["key"] for s in fwd.episodes.firing()] == ["b"]


def test_forward_without_a_url_is_one_line_with_the_fix(
    capsys: pytest.CaptureFixture[str], logging_left_as_found: None
) -> None:
    assert main(["forward", "alertmanager"]) == 2
    err = capsys.readouterr().err
    assert "stream-detector forward: no Alertmanager to forward to: pass --url" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--url", "alertmanager:9093"], "forward.url: Value error, give Alertmanager's http://"),
        (["--set", "forward.resend_interval_s=0"], "forward.resend_interval_s: Input should be"),
        (["--set", "forward.link_template=https://x/{id}"], "link_template names {id}"),
    ],
)
def test_bad_forward_settings_exit_2_naming_the_setting(
    flags: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    logging_left_as_found: None,
) -> None:
    assert main(["forward", "alertmanager", "--url", "http://am:9093", *flags]) == 2
    assert message in capsys.readouterr().err


def test_forward_help_teaches_the_mapping(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["forward", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for words in ("{alertmanager}", "--url", "resend_interval_s", "episode_id", "committed"):
        assert words in text


def test_only_alertmanager_is_a_target(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["forward", "pagerduty", "--url", "http://x"])
    assert done.value.code == 2
    assert "invalid choice: 'pagerduty'" in capsys.readouterr().err
