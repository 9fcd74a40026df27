"""`demo --scenario network`: the feed's timeline and compressed clock, the flags, the bundled
model. The run through a real broker is tests/integration/test_demo.py."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
import pytest

from stream_detector.cli import main
from stream_detector.config import KafkaConfig
from stream_detector.demo import runner
from stream_detector.demo.network_feed import NetworkFeedProducer
from stream_detector.demo.network_scenario import (
    BACKLOG_S,
    NETWORK_MODEL_DIR,
    NetworkScenario,
    network_feed_config,
    network_settings,
    score_flows_offline,
    slack_s,
)
from stream_detector.demo.runner import DemoOptions
from stream_detector.demo.scoreboard import Scoreboard
from stream_detector.detector.artefact import load_artefact
from stream_detector.scenarios.flows import NETWORK_ANOMALY_KINDS, generate


class _RecordingProducer:
    """Stands in for confluent_kafka.Producer: records what is produced and when."""

    def __init__(self, feed: NetworkFeedProducer) -> None:
        self.feed = feed
        self.values: list[bytes] = []
        self.keys: list[bytes] = []
        self.at: list[float] = []
        self.known: list[int] = []  # anomalies handed over when each message was produced

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        self.values.append(value)
        self.keys.append(key)
        self.at.append(time.monotonic())
        self.known.append(len(self.feed.anomalies()))

    def poll(self, timeout: float) -> int:
        time.sleep(min(timeout, 0.001))
        return 0


def test_demo_feed_plays_every_attack_within_the_demo() -> None:
    feed = network_feed_config(live_s=60 * 30)
    settings = network_settings(feed)
    flows = generate(feed)
    live_from = feed.start_ts + BACKLOG_S
    assert len(flows.anomalies) == 8
    assert {a.kind for a in flows.anomalies} == set(NETWORK_ANOMALY_KINDS)
    for attack in flows.anomalies:
        # After the backlog (the warm-up history), and judged (end + slack) before the feed ends.
        assert attack.start_ts >= live_from
        assert attack.end_ts + slack_s(settings) < feed.start_ts + feed.duration_s
    assert settings.input.mode == "aggregate" and settings.model.device == "auto"


def test_flows_are_played_in_order_on_the_compressed_clock_with_attacks_handed_over_first() -> None:
    feed = network_feed_config(hosts=4, live_s=900)
    speed = 3000.0  # 900 s of event time in 0.3 s
    producer = NetworkFeedProducer(KafkaConfig(), "flows", feed, BACKLOG_S, speed)
    recorder = _RecordingProducer(producer)
    producer._play(recorder)  # the thread's body, without Kafka

    flows = generate(feed)
    assert recorder.values == flows.payloads()
    assert recorder.keys == [ip.encode() for ip in flows.src_ip.tolist()]
    assert producer.produced == len(flows)
    assert producer.anomalies() == sorted(flows.anomalies, key=lambda a: a.start_ts)
    # Each attack is known before the first of its flows (by event time) is produced.
    for n, attack in enumerate(producer.anomalies(), start=1):
        inside = np.flatnonzero((flows.ts >= attack.start_ts) & (flows.src_ip == attack.key))
        if len(inside):
            assert recorder.known[int(inside.min())] >= n
    # The backlog goes at once, the live stretch at `speed`: no sooner than event time allows.
    clock = np.maximum.accumulate(flows.ts)
    live = int(np.searchsorted(clock, feed.start_ts + BACKLOG_S))
    at = np.array(recorder.at)
    due = (clock[live:] - clock[live]) / speed
    assert np.all(at[live:] - at[live] >= due - 0.02)
    assert at[-1] - at[live] >= (clock[-1] - clock[live]) / speed - 0.02
    # Horizon: every flow produced after the first `events` lies at or after it, except the few
    # the generator delivers late (behind the running clock by more than the collector's jitter).
    assert producer.horizon(0) == feed.start_ts
    late = flows.ts < clock - feed.jitter_s
    assert 0 < late.mean() < 0.01
    for events in (1, live, len(flows) // 2, len(flows) - 100):
        horizon = producer.horizon(events)
        assert np.all((flows.ts[events:] >= horizon - 1e-3) | late[events:])
        assert horizon <= flows.ts[:events].max()


def test_scoreboard_counts_the_network_attack_kinds() -> None:
    feed = network_feed_config(hosts=8, live_s=900)
    flows = generate(feed)
    board = Scoreboard(120.0, NETWORK_ANOMALY_KINDS)
    board.add_injected(flows.anomalies)
    first = flows.anomalies[0]
    board.add_alert(
        {"alert_id": "a-open", "kind": "open", "key": first.key,
         "window_start": first.start_ts, "window_end": first.start_ts + 20.0}
    )  # fmt: skip
    score = board.score(1e12)
    assert score.detected == 1 and score.injected == len(flows.anomalies)
    assert set(score.by_kind) == {a.kind for a in flows.anomalies}
    assert score.by_kind[first.kind][0] == 1


def _captured_options(monkeypatch: pytest.MonkeyPatch, *args: str) -> DemoOptions:
    seen: list[DemoOptions] = []
    monkeypatch.setattr(runner, "run_demo", lambda options: seen.append(options) or 0)
    assert main(["demo", *args]) == 0
    return seen[0]


def test_demo_flags_choose_the_scenario_and_its_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    network = _captured_options(monkeypatch, "--scenario", "network", "--duration", "20")
    scenario = network.make_scenario()
    assert isinstance(scenario, NetworkScenario)
    assert (scenario.hosts, scenario.speed, scenario.duration_s) == (40, 30.0, 20.0)
    assert scenario.feed.duration_s == BACKLOG_S + 900  # 600 s at x30, raised to the shortest
    faster = _captured_options(monkeypatch, "--scenario", "network", "--speed", "60",
                               "--devices", "12").make_scenario()  # fmt: skip
    assert (faster.hosts, faster.speed, faster.feed.hosts) == (12, 60.0, 12)
    iot = _captured_options(monkeypatch).make_scenario()
    assert (iot.name, iot.describe()) == ("iot", "200 devices at 2000 events/s")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenario", "network", "--rate", "100"], "paced by --speed"),
        (["--speed", "10"], "--speed is for --scenario network"),
        (["--scenario", "network", "--speed", "0"], "--speed must be a positive"),
    ],
)
def test_demo_refuses_flags_of_the_other_scenario(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", *args]) == 2
    assert message in capsys.readouterr().err


def test_bundled_network_model_is_small_and_fits_the_demo_settings() -> None:
    assert sum(f.stat().st_size for f in NETWORK_MODEL_DIR.iterdir()) < 200_000
    feed = network_feed_config()
    artefact = load_artefact(NETWORK_MODEL_DIR, network_settings(feed, {"model": {"device": "cpu"}}))
    assert artefact.metadata.training["device"] == "cpu"  # reproducible: CPU, fixed seeds
    meta = orjson.loads((NETWORK_MODEL_DIR / "metadata.json").read_bytes())
    assert meta["window"] == 12
    assert meta["features"] == list(network_settings(feed).input.value_fields)


def test_bundled_network_model_finds_the_attacks_of_another_feed() -> None:
    # Other hosts and attacks than both the training feed and the demo's default feed.
    feed = network_feed_config(hosts=20, seed=11, live_s=1800)
    settings = network_settings(feed, {"model": {"device": "cpu"}})
    score = score_flows_offline(feed, settings, load_artefact(NETWORK_MODEL_DIR, settings))
    assert score.injected == 8
    assert score.recall is not None and score.recall >= 0.6
    assert score.precision is not None and score.precision >= 0.6
