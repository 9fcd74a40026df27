"""Evaluation metrics on hand-made ranges with exact expected numbers, plus a naive reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.evaluation.metrics import (
    Counts,
    KeyScores,
    detection_delays,
    eventwise_counts,
    label_ranges,
    point_adjust,
    pointwise_counts,
    ranges_to_mask,
    score_key,
)

# 20 events; labelled ranges [3, 6] and [12, 14].
LABELS = np.zeros(20, dtype=np.int8)
LABELS[3:7] = 1
LABELS[12:15] = 1
# Alert episodes: one starts inside the first range and outlives it, one is a false alarm.
ALERTS = np.array([[5, 8], [17, 18]])
TS = np.arange(20, dtype=np.float64) * 60.0


def test_label_ranges_are_maximal_runs() -> None:
    assert label_ranges(LABELS).tolist() == [[3, 6], [12, 14]]
    assert label_ranges(np.array([1, 1, 0, 1])).tolist() == [[0, 1], [3, 3]]
    assert label_ranges(np.zeros(4)).shape == (0, 2)


def test_ranges_to_mask_clips_to_series() -> None:
    mask = ranges_to_mask(np.array([[-3, 1], [4, 4], [8, 30]]), 10)
    assert np.flatnonzero(mask).tolist() == [0, 1, 4, 8, 9]


def test_pointwise_exact() -> None:
    predicted = ranges_to_mask(ALERTS, 20)  # points 5,6,7,8,17,18
    counts = pointwise_counts(predicted, LABELS)
    # tp = 5,6; fp = 7,8,17,18; fn = 3,4,12,13,14
    assert counts == Counts(tp=2, fp=4, fn=5, tn=9)
    assert counts.false_alarm_rate == pytest.approx(4 / 13)  # 4 of the 13 normal points
    assert counts.missed_alarm_rate == pytest.approx(5 / 7)
    assert counts.precision == pytest.approx(2 / 6)
    assert counts.recall == pytest.approx(2 / 7)
    assert counts.f1 == pytest.approx(2 * (1 / 3) * (2 / 7) / (1 / 3 + 2 / 7))


def test_point_adjusted_fills_hit_ranges_only() -> None:
    predicted = ranges_to_mask(ALERTS, 20)
    adjusted = point_adjust(predicted, LABELS)
    assert np.flatnonzero(adjusted).tolist() == [3, 4, 5, 6, 7, 8, 17, 18]
    # The whole first range (4 points) counts; the missed second range stays 3 false negatives.
    assert pointwise_counts(adjusted, LABELS) == Counts(tp=4, fp=4, fn=3, tn=9)


def test_eventwise_exact() -> None:
    counts = eventwise_counts(label_ranges(LABELS), ALERTS)
    assert counts == Counts(tp=1, fp=1, fn=1)
    assert counts.precision == 0.5 and counts.recall == 0.5 and counts.f1 == 0.5


def test_eventwise_many_alerts_on_one_range_count_once_and_are_not_false() -> None:
    counts = eventwise_counts(np.array([[10, 20]]), np.array([[9, 10], [15, 15], [20, 25]]))
    assert counts == Counts(tp=1, fp=0, fn=0)


def test_eventwise_touching_but_not_overlapping_is_false() -> None:
    counts = eventwise_counts(np.array([[10, 20]]), np.array([[21, 22], [0, 9]]))
    assert counts == Counts(tp=0, fp=2, fn=1)


def test_delays_from_range_start_to_first_overlapping_alert() -> None:
    label = np.array([[3, 6], [12, 14], [16, 19]])
    alerts = np.array([[5, 8], [13, 13], [12, 16]])  # second range: earliest overlap starts at 12
    steps, seconds = detection_delays(label, alerts, TS)
    assert steps.tolist() == [2, 0, 0]  # third range: alert open before it started -> 0
    assert seconds.tolist() == [120.0, 0.0, 0.0]


def test_score_key_and_sum() -> None:
    scores = score_key(LABELS, ALERTS, TS)
    assert scores.event_wise == Counts(1, 1, 1)
    assert scores.point_wise == Counts(2, 4, 5, 9)
    assert scores.point_adjusted == Counts(4, 4, 3, 9)
    assert scores.delay_steps.tolist() == [2.0]
    assert scores.alerts == 2
    other = score_key(np.array([0, 1, 1, 0]), np.empty((0, 2)), np.arange(4.0))
    assert other.event_wise == Counts(0, 0, 1)
    total = KeyScores.zero() + scores + other
    assert total.event_wise == Counts(1, 1, 2)
    report = total.as_dict()
    assert report["event_wise"]["recall"] == pytest.approx(1 / 3)
    assert report["delay"] == {
        "detected_ranges": 1,
        "median_steps": 2.0,
        "mean_steps": 2.0,
        "median_seconds": 120.0,
        "mean_seconds": 120.0,
    }


def test_empty_counts_are_zero_not_nan() -> None:
    assert Counts().precision == 0.0 and Counts().recall == 0.0 and Counts().f1 == 0.0


# --- property tests against a literal reading of the definitions -------------------------------

series = st.lists(st.integers(0, 1), min_size=1, max_size=40)


@st.composite
def labels_and_alerts(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array(draw(series), dtype=np.int8)
    n = len(labels)
    pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=6))
    alerts = np.array([[min(a, b), max(a, b)] for a, b in pairs], dtype=np.int64).reshape(-1, 2)
    return labels, alerts


def _naive_ranges(labels: np.ndarray) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i, value in enumerate(labels):
        if value and (i == 0 or not labels[i - 1]):
            out.append((i, i))
        elif value:
            out[-1] = (out[-1][0], i)
    return out


@given(labels_and_alerts())
@settings(max_examples=200, deadline=None)
def test_matches_naive_reference(case: tuple[np.ndarray, np.ndarray]) -> None:
    labels, alerts = case
    truth = _naive_ranges(labels)
    assert [tuple(r) for r in label_ranges(labels).tolist()] == truth

    active = {i for a, b in alerts.tolist() for i in range(a, b + 1)}
    predicted = np.array([i in active for i in range(len(labels))])
    assert np.array_equal(ranges_to_mask(alerts, len(labels)), predicted)

    adjusted = predicted.copy()
    for a, b in truth:
        if predicted[a : b + 1].any():
            adjusted[a : b + 1] = True
    assert np.array_equal(point_adjust(predicted, labels), adjusted)

    def hits(r: tuple[int, int], e: list[int]) -> bool:
        return not (e[1] < r[0] or r[1] < e[0])

    tp = sum(any(hits(r, e) for e in alerts.tolist()) for r in truth)
    fp = sum(not any(hits(r, e) for r in truth) for e in alerts.tolist())
    assert eventwise_counts(label_ranges(labels), alerts) == Counts(tp, fp, len(truth) - tp)

    steps, _ = detection_delays(label_ranges(labels), alerts, np.arange(len(labels), dtype=float))
    expected = [
        max(0, min(e[0] for e in alerts.tolist() if hits(r, e)) - r[0])
        for r in truth
        if any(hits(r, e) for e in alerts.tolist())
    ]
    assert steps.tolist() == expected
