"""The live precision/recall bookkeeping, against a naive reference and on hand-made cases."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.demo.scoreboard import Score, Scoreboard
from stream_detector.scenarios.telemetry import ANOMALY_KINDS, InjectedAnomaly

SLACK = 5.0


def alert(
    key: str, start: float, end: float, kind: str = "open", alert_id: str | None = None
) -> dict[str, Any]:
    return {
        "kind": kind,
        "alert_id": alert_id or f"{key}-{start}-{end}-{kind}",
        "key": key,
        "window_start": start,
        "window_end": end,
    }


def naive(
    anomalies: list[InjectedAnomaly], opens: list[dict[str, Any]], horizon: float, slack: float
) -> Score:
    def overlaps(a: InjectedAnomaly, o: dict[str, Any]) -> bool:
        return (
            a.key == o["key"]
            and o["window_start"] <= a.end_ts + slack
            and o["window_end"] >= a.start_ts
        )

    detected = [any(overlaps(a, o) for o in opens) for a in anomalies]
    counted = [d or a.end_ts + slack <= horizon for a, d in zip(anomalies, detected)]
    by_kind = {}
    for kind in ANOMALY_KINDS:
        n = sum(c for a, c in zip(anomalies, counted) if a.kind == kind)
        if n:
            by_kind[kind] = (sum(d for a, d in zip(anomalies, detected) if a.kind == kind), n)
    return Score(
        injected=sum(counted),
        detected=sum(detected),
        episodes=len(opens),
        true_episodes=sum(any(overlaps(a, o) for a in anomalies) for o in opens),
        pending=len(anomalies) - sum(counted),
        by_kind=by_kind,
    )


keys = st.sampled_from(["a", "b", "c"])
# A small integer time grid, so that touching intervals (the edge cases) come up often.
times = st.integers(0, 60).map(float)
anomalies = st.builds(
    lambda key, kind, start, length: InjectedAnomaly(key, kind, start, start + length),
    keys,
    st.sampled_from(ANOMALY_KINDS),
    times,
    st.integers(0, 15),
)
opens = st.builds(
    lambda key, start, length: alert(key, start, start + length), keys, times, st.integers(0, 10)
)


@settings(max_examples=200, deadline=None)
@given(
    records=st.lists(st.one_of(anomalies, opens), max_size=40),
    horizon=st.integers(0, 90).map(float),
)
def test_matches_naive_reference_in_any_arrival_order(
    records: list[InjectedAnomaly | dict[str, Any]], horizon: float
) -> None:
    board = Scoreboard(SLACK)
    injected: list[InjectedAnomaly] = []
    seen: dict[str, dict[str, Any]] = {}
    for record in records:
        if isinstance(record, InjectedAnomaly):
            board.add_injected([record])
            injected.append(record)
        else:
            board.add_alert(record)
            seen.setdefault(record["alert_id"], record)
    assert board.score(horizon) == naive(injected, list(seen.values()), horizon, SLACK)


def test_detection_window_extends_by_slack_after_the_end_only() -> None:
    board = Scoreboard(SLACK)
    board.add_injected([InjectedAnomaly("k", "spike", 100.0, 110.0)])
    board.add_alert(alert("k", 60.0, 99.0))  # ends before the anomaly starts: false positive
    board.add_alert(alert("k", 115.0, 140.0))  # starts within the slack: detection
    board.add_alert(alert("k", 115.5, 140.0))  # past end + slack: false positive
    board.add_alert(alert("other", 100.0, 110.0))  # another key: false positive
    score = board.score(1000.0)
    assert (score.injected, score.detected, score.episodes, score.false_positives) == (1, 1, 4, 3)
    assert score.precision == 0.25 and score.recall == 1.0


def test_resolves_and_redeliveries_do_not_count_as_episodes() -> None:
    board = Scoreboard(SLACK)
    board.add_injected([InjectedAnomaly("k", "drift", 100.0, 150.0)])
    opened = alert("k", 90.0, 120.0, alert_id="e1-open")
    assert board.add_alert(opened) is True
    assert board.add_alert(opened) is False  # at-least-once delivery: the same alert again
    assert board.add_alert(alert("k", 140.0, 170.0, kind="resolve", alert_id="e1-resolve")) is False
    score = board.score(1000.0)
    assert (score.episodes, score.true_episodes, score.detected) == (1, 1, 1)


def test_recall_waits_for_anomalies_the_detector_has_not_seen_in_full() -> None:
    board = Scoreboard(SLACK)
    board.add_injected(
        [
            InjectedAnomaly("a", "stuck", 100.0, 150.0),
            InjectedAnomaly("b", "spike", 200.0, 203.0),
            InjectedAnomaly("c", "level_shift", 200.0, 260.0),
        ]
    )
    board.add_alert(alert("c", 190.0, 215.0))  # detected early, while still running
    score = board.score(156.0)
    # a: ended + slack before the horizon, missed; b: not seen yet; c: detected.
    assert (score.injected, score.detected, score.pending) == (2, 1, 1)
    assert score.by_kind == {"stuck": (0, 1), "level_shift": (1, 1)}
    assert score.as_dict()["missed"] == 1


def test_empty_board_claims_nothing() -> None:
    score = Scoreboard(SLACK).score(1e12)
    assert score.precision is None and score.recall is None
    assert score.as_dict()["alert_episodes"] == 0


def test_anomaly_for_names_the_overlapping_anomaly() -> None:
    board = Scoreboard(SLACK)
    first = InjectedAnomaly("k", "spike", 100.0, 103.0)
    second = InjectedAnomaly("k", "noise_burst", 300.0, 360.0)
    board.add_injected([first, second])
    assert board.anomaly_for(alert("k", 80.0, 101.0)) == first
    assert board.anomaly_for(alert("k", 330.0, 350.0)) == second
    assert board.anomaly_for(alert("k", 200.0, 230.0)) is None
