"""`stream-detector forward alertmanager` against a real Alertmanager and a real broker.

The alerts are real: the bundled IoT model scores a synthetic telemetry feed with injected
anomalies in-process, and the CloudEvents of the alerts it raises go into the alert topic, in
phases. Alertmanager's API shows what fires; its webhook notifications show what was resolved
(the API no longer lists those) and when.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from alertmanager_harness import AlertmanagerProcess, WebhookReceiver, alertmanager_binary
from kafka_harness import (
    REPO,
    committed_at,
    committed_offsets,
    partition_ends,
    read_topic,
    wait_until,
    write_config,
)

from stream_detector.config import Settings, load_settings
from stream_detector.demo.broker import free_port
from stream_detector.demo.offline import feed_batches
from stream_detector.demo.scenario import BUNDLED_MODEL_DIR, demo_settings, generator_config
from stream_detector.detector.artefact import load_artefact
from stream_detector.detector.facade import Detector
from stream_detector.engine.alerts import Alert
from stream_detector.forward.forwarder import EXIT_OK, run_forwarder
from stream_detector.scenarios.telemetry import TelemetryGenerator

pytestmark = pytest.mark.integration

SOURCE = "stream-detector/forward-test"
RESEND_S = 1.0
GARBAGE = b"{not a cloudevent"


@dataclass(frozen=True)
class Episodes:
    """The detector's alerts by episode: every open, and the resolve of those that ended."""

    opens: dict[str, Alert]
    resolves: dict[str, Alert]

    @property
    def still_open(self) -> list[str]:
        return [eid for eid in self.opens if eid not in self.resolves]

    @property
    def ended(self) -> list[str]:
        return [eid for eid in self.opens if eid in self.resolves]


@pytest.fixture(scope="module")
def episodes() -> Episodes:
    """30 devices over 900 s of the demo feed, scored by the bundled model: a quarter of a second
    of CPU, and episodes of every shape the forwarder must handle."""
    feed = generator_config(devices=30, seed=3)
    settings = demo_settings(feed, {"model": {"device": "cpu"}})
    detector = Detector(settings, load_artefact(BUNDLED_MODEL_DIR, settings))
    alerts = [
        alert
        for decoded in feed_batches(TelemetryGenerator(feed), 900, detector.decoder)
        for alert in detector.process(decoded).alerts
    ]
    found = Episodes(
        opens={a.episode_id: a for a in alerts if a.kind == "open"},
        resolves={a.episode_id: a for a in alerts if a.kind == "resolve"},
    )
    # What the checks below rely on: some episodes ended and some are open at the end; a key
    # with two episodes; resolves whose own severity or top feature differ from their open's.
    assert len(found.ended) >= 4 and len(found.still_open) >= 2
    assert max(Counter(a.key for a in found.opens.values()).values()) >= 2
    assert any(_labels_differ(found.opens[eid], found.resolves[eid]) for eid in found.ended)
    return found


def _labels_differ(open_alert: Alert, resolve: Alert) -> bool:
    return (open_alert.severity, open_alert.top_features[0].name) != (
        resolve.severity,
        resolve.top_features[0].name,
    )


def expected_labels(open_alert: Alert) -> dict[str, str]:
    return {
        "alertname": "StreamDetectorAnomaly",
        "key": open_alert.key,
        "severity": open_alert.severity,
        "model_version": open_alert.model_version,
        "top_feature": open_alert.top_features[0].name,
        "episode_id": open_alert.episode_id,
    }


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def alertmanager(tmp_path: Path, webhook: WebhookReceiver) -> Iterator[AlertmanagerProcess]:
    process = AlertmanagerProcess(alertmanager_binary(), free_port(), tmp_path, webhook.url)
    process.start()
    yield process
    process.stop()


@dataclass
class RunningForwarder:
    stop: threading.Event
    thread: threading.Thread
    exit_codes: list[int]

    def close(self, timeout: float = 20.0) -> int:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the forwarder did not stop within {timeout}s"
        return self.exit_codes[0]


@pytest.fixture
def start_forwarder() -> Iterator[Callable[[Settings], RunningForwarder]]:
    """start_forwarder(settings) -> the forwarder running in a thread, as the command runs it."""
    started: list[RunningForwarder] = []

    def start(settings: Settings) -> RunningForwarder:
        stop = threading.Event()
        codes: list[int] = []
        thread = threading.Thread(
            target=lambda: codes.append(run_forwarder(settings, stop_event=stop)), daemon=True
        )
        thread.start()
        running = RunningForwarder(stop, thread, codes)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop.set()
        running.thread.join(20)


def forward_settings(bootstrap: str, alert_topic: str, url: str, group_id: str) -> Settings:
    return load_settings(
        None,
        {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "alert_topic": alert_topic,
                "session_timeout_ms": 6000,
            },
            "forward": {
                "url": url,
                "group_id": group_id,
                "resend_interval_s": RESEND_S,
                "request_timeout_s": 2.0,
                "retry_initial_s": 0.1,
                "retry_max_s": 0.5,
                "rebuild_timeout_s": 30.0,
            },
        },
    )


def instant(stamp: str) -> float:
    """Epoch seconds of an RFC 3339 time as Alertmanager writes it (trailing zeros of the
    fraction dropped, up to nanoseconds)."""
    whole, _, rest = stamp.removesuffix("Z").partition(".")
    parsed = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return parsed + (float(f"0.{rest}") if rest else 0.0)


def cloudevents(alerts: list[Alert]) -> list[tuple[bytes, bytes]]:
    """Keyed by the entity key, as the detector produces them."""
    return [(alert.key.encode(), alert.to_cloudevent(SOURCE)) for alert in alerts]


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    return partition_ends(read_topic(bootstrap, topic))


def committed_to_the_end(bootstrap: str, group: str, topic: str) -> Callable[[], bool]:
    ends = end_offsets(bootstrap, topic)
    return lambda: committed_at(bootstrap, group, topic, ends)


def firing(alertmanager: AlertmanagerProcess) -> set[str]:
    try:
        return set(alertmanager.alerts())
    except OSError:
        return set()


def test_episodes_fire_resolve_and_survive_an_alertmanager_restart(
    episodes: Episodes,
    alertmanager: AlertmanagerProcess,
    webhook: WebhookReceiver,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    produce_events: Callable[..., None],
    start_forwarder: Callable[[Settings], RunningForwarder],
) -> None:
    topic = topic_factory("alerts", partitions=2)
    group = f"forward-{uuid.uuid4().hex[:8]}"
    # One episode opens, and one ends, while Alertmanager is down.
    late_open = episodes.still_open[-1]
    late_resolve = next(
        eid for eid in episodes.ended if _labels_differ(episodes.opens[eid], episodes.resolves[eid])
    )
    early = [eid for eid in episodes.opens if eid != late_open]
    forwarder = start_forwarder(forward_settings(kafka_bootstrap, topic, alertmanager.url, group))

    # Every episode's alert fires, with the labels and annotations of its open alert; a record
    # that is not an alert is skipped.
    produce_events(topic, [(b"junk", GARBAGE)])
    produce_events(topic, cloudevents([episodes.opens[eid] for eid in early]))
    wait_until(lambda: firing(alertmanager) == set(early), 60, "the opened episodes to fire")
    for eid, alert in alertmanager.alerts().items():
        opened = episodes.opens[eid]
        assert alert["labels"] == expected_labels(opened)
        assert alert["annotations"]["alert_id"] == opened.alert_id
        assert alert["annotations"]["episode_id"] == eid
        flat = ", ".join(opened.flat_features)
        what = f"flat line on {flat}" if flat else "anomaly"
        assert alert["annotations"]["summary"].startswith(f"{opened.key}: {what}")
        assert instant(alert["startsAt"]) == pytest.approx(opened.episode_start, abs=1e-3)
        assert "generatorURL" not in alert or not alert["generatorURL"]
    wait_until(lambda: set(webhook.alerts("firing")) >= set(early), 30, "firing notifications")

    # The resolves end those alerts: the same labels, although the resolves' own severity or
    # top feature differ, and endsAt the resolve's time.
    ended_now = [eid for eid in episodes.ended if eid != late_resolve]
    produce_events(topic, cloudevents([episodes.resolves[eid] for eid in ended_now]))
    still_firing = set(early) - set(ended_now)
    wait_until(lambda: firing(alertmanager) == still_firing, 30, "the resolved alerts to end")
    wait_until(
        lambda: set(webhook.alerts("resolved")) >= set(ended_now), 30, "resolved notifications"
    )
    for eid in ended_now:
        notified = webhook.alerts("resolved")[eid]
        assert notified["labels"] == expected_labels(episodes.opens[eid])
        assert instant(notified["endsAt"]) == pytest.approx(
            episodes.resolves[eid].window_end, abs=1e-3
        )
    wait_until(committed_to_the_end(kafka_bootstrap, group, topic), 30, "the commits")
    before_outage = committed_offsets(kafka_bootstrap, group, topic)

    # Alertmanager goes down. What is produced meanwhile is retried, and not committed.
    alertmanager.stop()
    produce_events(
        topic,
        cloudevents([episodes.opens[late_open], episodes.resolves[late_resolve]]),
    )
    wait_until(
        lambda: end_offsets(kafka_bootstrap, topic) != before_outage, 30, "the late alerts"
    )
    threading.Event().wait(4 * RESEND_S)  # several failed posts
    assert committed_offsets(kafka_bootstrap, group, topic) == before_outage
    assert forwarder.thread.is_alive()

    # A new Alertmanager on the same port, knowing nothing: the still-open episodes fire again
    # (re-posted), the alert opened meanwhile arrives, the one resolved meanwhile does not fire.
    alertmanager.start()
    expected = set(episodes.still_open)
    wait_until(lambda: firing(alertmanager) == expected, 30, "the open episodes after a restart")
    for eid, alert in alertmanager.alerts().items():
        assert alert["labels"] == expected_labels(episodes.opens[eid])
    wait_until(committed_to_the_end(kafka_bootstrap, group, topic), 30, "the late commits")
    # Still firing a few resend intervals later: refreshed, not left to expire.
    threading.Event().wait(5 * RESEND_S)
    assert firing(alertmanager) == expected

    assert forwarder.close() == EXIT_OK


def test_a_restarted_forwarder_rebuilds_the_open_episodes_and_posts_only_those(
    episodes: Episodes,
    alertmanager: AlertmanagerProcess,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    produce_events: Callable[..., None],
    start_forwarder: Callable[[Settings], RunningForwarder],
) -> None:
    topic = topic_factory("alerts", partitions=2)
    group = f"forward-{uuid.uuid4().hex[:8]}"
    settings = forward_settings(kafka_bootstrap, topic, alertmanager.url, group)
    everything = sorted(
        [*episodes.opens.values(), *episodes.resolves.values()], key=lambda a: a.window_end
    )
    produce_events(topic, [(b"junk", GARBAGE), *cloudevents(everything)])

    first = start_forwarder(settings)
    expected = set(episodes.still_open)
    wait_until(lambda: firing(alertmanager) == expected, 60, "the open episodes to fire")
    wait_until(committed_to_the_end(kafka_bootstrap, group, topic), 30, "the commits")
    assert first.close() == EXIT_OK
    committed = committed_offsets(kafka_bootstrap, group, topic)

    # A fresh Alertmanager (alerts and counters gone) and a fresh forwarder in the same group:
    # the records up to the committed offsets are read back without posting, then the open
    # episodes are posted.
    alertmanager.stop()
    alertmanager.start()
    second = start_forwarder(settings)
    wait_until(lambda: firing(alertmanager) == expected, 30, "the rebuilt open episodes to fire")
    for eid, alert in alertmanager.alerts().items():
        assert alert["labels"] == expected_labels(episodes.opens[eid])
    assert alertmanager.received("resolved") == 0  # nothing of the ended episodes was posted
    assert second.close() == EXIT_OK
    assert committed_offsets(kafka_bootstrap, group, topic) == committed


def test_sigterm_stops_the_command_with_what_alertmanager_accepted_committed(
    episodes: Episodes,
    alertmanager: AlertmanagerProcess,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    produce_events: Callable[..., None],
    tmp_path: Path,
) -> None:
    topic = topic_factory("alerts", partitions=2)
    group = f"forward-{uuid.uuid4().hex[:8]}"
    config = write_config(
        tmp_path / "forward.toml",
        {
            "kafka": {"bootstrap_servers": kafka_bootstrap, "alert_topic": topic},
            "forward": {"group_id": group, "resend_interval_s": RESEND_S, "retry_max_s": 0.5},
            "observability": {"log_format": "json"},
        },
    )
    log_path = tmp_path / "forward.log"
    first, late = list(episodes.opens)[:3], list(episodes.opens)[3]
    with open(log_path, "wb") as log:
        command = subprocess.Popen(
            [
                *(sys.executable, "-m", "stream_detector.cli", "forward", "alertmanager"),
                *("--config", str(config), "--url", alertmanager.url),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=REPO,
        )
    try:
        produce_events(topic, cloudevents([episodes.opens[eid] for eid in first]))
        wait_until(lambda: firing(alertmanager) == set(first), 60, "the first alerts to fire")
        wait_until(committed_to_the_end(kafka_bootstrap, group, topic), 30, "the commits")
        accepted = committed_offsets(kafka_bootstrap, group, topic)

        # Alertmanager down, an alert in hand being retried: SIGTERM ends the retries and the
        # command, exit 0, with that alert's record left uncommitted for the next start.
        alertmanager.stop()
        produce_events(topic, cloudevents([episodes.opens[late]]))
        wait_until(lambda: b"alertmanager unavailable" in log_path.read_bytes(), 30, "retries")
        command.send_signal(signal.SIGTERM)
        assert command.wait(20) == 0
    finally:
        if command.poll() is None:
            command.kill()
            command.wait(10)
    assert committed_offsets(kafka_bootstrap, group, topic) == accepted
    events = [
        orjson.loads(line) for line in log_path.read_bytes().splitlines() if line.startswith(b"{")
    ]
    assert any(e["event"] == "stop requested" and e["signal"] == "SIGTERM" for e in events)
    assert events[-1]["event"] == "forwarder stopped"
    assert events[-1]["firing_posted"] == 3 and events[-1]["retries"] >= 1
