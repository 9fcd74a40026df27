"""Episode tracking: one open and one resolve alert per incident, as a naive per-window loop."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.config import EpisodeConfig
from stream_detector.engine.episodes import EpisodeTracker
from stream_detector.engine.types import ScoredWindows
from stream_detector.scenarios.presets import preset

NAMES = ("cpu", "mem", "disk", "net")
F = len(NAMES)


def make_scored(
    slots: list[int],
    exceed: list[bool],
    scores: list[float] | None = None,
    first_row: int = 0,
    errors: np.ndarray | None = None,
) -> ScoredWindows:
    """Windows whose event_index is their global position, and end_ts = 1000 + that position."""
    n = len(slots)
    rows = np.arange(first_row, first_row + n, dtype=np.int64)
    if scores is None:
        scores = [5.0 if e else 0.5 for e in exceed]
    if errors is None:
        errors = np.tile(np.arange(1, F + 1, dtype=np.float32), (n, 1))
    return ScoredWindows(
        slots=np.array(slots, dtype=np.int64),
        keys=np.array([f"key-{s}" for s in slots], dtype=object),
        event_index=rows,
        start_ts=1000.0 + rows - 10.0,
        end_ts=1000.0 + rows.astype(np.float64),
        scores=np.array(scores, dtype=np.float32),
        thresholds=np.ones(n, dtype=np.float32),
        exceed=np.array(exceed, dtype=bool),
        feature_errors=np.asarray(errors, dtype=np.float32).reshape(n, F),
        actual=np.tile(np.arange(F, dtype=np.float32) * 10, (n, 1)),
        expected=np.tile(np.arange(F, dtype=np.float32), (n, 1)),
        flat=np.zeros((n, F), dtype=bool),
    )


def tracker(min_consecutive: int = 2, cooldown: int = 3, top: int = 2, capacity: int = 8):
    cfg = EpisodeConfig(min_consecutive=min_consecutive, cooldown=cooldown, top_features=top)
    return EpisodeTracker(cfg, NAMES, "model-v1", capacity=capacity)


def summary(alerts) -> list[tuple[Any, ...]]:
    return [(a.kind, a.key, a.event_index, a.windows_over) for a in alerts]


def test_opens_after_exactly_min_consecutive_with_one_alert() -> None:
    t = tracker(min_consecutive=3)
    alerts = t.update(make_scored([0] * 6, [True] * 6))
    assert summary(alerts) == [("open", "key-0", 2, 3)]
    assert alerts[0].episode_start == 1002.0 and alerts[0].window_end == 1002.0
    assert t.open_episodes == 1


def test_interrupted_runs_do_not_open() -> None:
    t = tracker(min_consecutive=3)
    pattern = [True, True, False, True, True, False, True, False]
    assert t.update(make_scored([0] * len(pattern), pattern)) == []
    # A run pending at the end of one call is broken by a normal window in the next.
    assert t.update(make_scored([0, 0], [True, True], first_row=8)) == []
    assert t.update(make_scored([0], [False], first_row=10)) == []
    assert t.update(make_scored([0], [True], first_row=11)) == []
    assert t.open_episodes == 0


def test_resolves_after_cooldown_with_peak_score() -> None:
    t = tracker(min_consecutive=2, cooldown=3)
    pattern = [True, True, True, False, False, True, False, False, False, False, False]
    scores = [2.0, 3.0, 9.0, 0.1, 0.1, 4.0, 0.1, 0.1, 0.1, 0.1, 0.1]
    alerts = t.update(make_scored([0] * len(pattern), pattern, scores))
    # The exceedance at row 5 restarts the cool-down, so the resolve lands on row 8.
    assert summary(alerts) == [("open", "key-0", 1, 2), ("resolve", "key-0", 8, 4)]
    opened, resolved = alerts
    assert opened.score == 3.0 and resolved.score == 9.0
    assert resolved.episode_id == opened.episode_id
    assert resolved.episode_start == opened.episode_start == 1001.0
    assert resolved.window_end == 1008.0
    assert t.open_episodes == 0


def test_alerts_come_in_arrival_order_across_keys() -> None:
    t = tracker(min_consecutive=1, cooldown=1)
    alerts = t.update(make_scored([1, 0, 0, 1, 2], [True, True, False, False, False]))
    assert [(a.kind, a.key, a.event_index) for a in alerts] == [
        ("open", "key-1", 0),
        ("open", "key-0", 1),
        ("resolve", "key-0", 2),
        ("resolve", "key-1", 3),
    ]


def test_episode_spanning_several_calls() -> None:
    t = tracker(min_consecutive=2, cooldown=2)
    assert t.update(make_scored([3, 4], [True, False], [7.0, 0.1])) == []
    opened = t.update(make_scored([4, 3], [False, True], [0.1, 2.0], first_row=2))
    assert summary(opened) == [("open", "key-3", 3, 2)]
    assert t.update(make_scored([3], [False], first_row=4)) == []
    resolved = t.update(make_scored([3, 3], [False, False], first_row=5))
    assert summary(resolved) == [("resolve", "key-3", 5, 2)]
    # The peak came from the run's first window, two calls before the resolve.
    assert resolved[0].score == 7.0
    assert resolved[0].episode_id == opened[0].episode_id


def test_each_episode_has_its_own_peak() -> None:
    t = tracker(min_consecutive=1, cooldown=1)
    pattern = [True, False, True, False, True, False]
    alerts = t.update(make_scored([0] * 6, pattern, [6.0, 0.1, 2.0, 0.1, 1.5, 0.1]))
    assert [(a.kind, a.score) for a in alerts] == [
        ("open", 6.0), ("resolve", 6.0),
        ("open", 2.0), ("resolve", 2.0),
        ("open", 1.5), ("resolve", 1.5),
    ]


def test_ids_deterministic_and_distinct_per_episode() -> None:
    pattern = [True, True, False, False, True, True, False, False]
    stream = make_scored([0] * 8, pattern)
    first = tracker(cooldown=2).update(stream)
    second = tracker(cooldown=2).update(stream)
    assert [a.alert_id for a in first] == [a.alert_id for a in second]
    assert [a.kind for a in first] == ["open", "resolve", "open", "resolve"]
    assert first[0].episode_id == first[1].episode_id != first[2].episode_id == first[3].episode_id
    assert len({a.alert_id for a in first}) == 4
    other_model = EpisodeTracker(EpisodeConfig(cooldown=2), NAMES, "model-v2").update(stream)
    assert other_model[0].episode_id != first[0].episode_id


def test_top_features_of_opening_and_peak_windows() -> None:
    t = tracker(min_consecutive=2, cooldown=1, top=2)
    errors = np.array(
        [[1.0, 1.0, 1.0, 1.0], [0.0, 6.0, 2.0, 2.0], [8.0, 0.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0]]
    )
    pattern = [True, True, True, False]
    alerts = t.update(make_scored([0] * 4, pattern, [1.5, 2.0, 3.0, 0.1], errors=errors))
    opened, resolved = alerts
    assert [(f.name, f.error) for f in opened.top_features] == [("mem", 0.6), ("disk", 0.2)]
    assert opened.top_features[0].actual == 10.0 and opened.top_features[0].expected == 1.0
    # Resolve explains the peak window (row 2), not the resolving one.
    assert [(f.name, f.error) for f in resolved.top_features] == [("cpu", 0.8), ("net", 0.2)]


def test_reset_drops_open_episode_silently() -> None:
    t = tracker(min_consecutive=2, cooldown=1)
    assert len(t.update(make_scored([5, 5], [True, True]))) == 1
    t.reset(np.array([5]))
    assert t.open_episodes == 0
    # The slot's next (new) key starts from nothing: no resolve, and one exceedance does not open.
    assert t.update(make_scored([5, 5, 5], [False, True, False], first_row=2)) == []


def test_capacity_growth_keeps_open_episode() -> None:
    t = tracker(min_consecutive=1, cooldown=1, capacity=2)
    t.update(make_scored([1], [True]))
    t.ensure_capacity(40)
    assert t.capacity == 40 and t.open_episodes == 1
    alerts = t.update(make_scored([1, 39, 39], [False, True, False], first_row=1))
    assert summary(alerts) == [
        ("resolve", "key-1", 1, 1),
        ("open", "key-39", 2, 1),
        ("resolve", "key-39", 3, 1),
    ]


class NaiveEpisodes:
    """Reference: the episode rules applied one window at a time over the whole stream."""

    def __init__(self, min_consecutive: int, cooldown: int, top: int) -> None:
        self.min_consecutive, self.cooldown, self.top = min_consecutive, cooldown, top
        self.state: dict[int, dict[str, Any]] = {}

    def top_names(self, errors: np.ndarray) -> list[str]:
        order = sorted(range(F), key=lambda i: (-float(errors[i]), i))
        return [NAMES[i] for i in order[: self.top]]

    def feed(self, s: ScoredWindows) -> list[tuple[Any, ...]]:
        out = []
        for r in range(len(s)):
            fresh = {"pending": [], "episode": None, "calm": 0}
            st_ = self.state.setdefault(int(s.slots[r]), fresh)
            window = (float(s.scores[r]), s.feature_errors[r].copy(), float(s.end_ts[r]))
            if s.exceed[r]:
                if st_["episode"] is not None:
                    st_["episode"].append(window)
                    st_["calm"] = 0
                    continue
                st_["pending"].append(window)
                if len(st_["pending"]) == self.min_consecutive:
                    st_["episode"], st_["pending"], st_["calm"] = st_["pending"], [], 0
                    out.append(("open", s.keys[r], int(s.event_index[r]), self.min_consecutive,
                                window[0], window[2], self.top_names(window[1])))
            elif st_["episode"] is None:
                st_["pending"] = []
            else:
                st_["calm"] += 1
                if st_["calm"] == self.cooldown:
                    episode = st_["episode"]
                    peak = max(episode, key=lambda w: w[0])  # first of equal peaks
                    opened_at = episode[self.min_consecutive - 1][2]
                    out.append(("resolve", s.keys[r], int(s.event_index[r]), len(episode),
                                peak[0], opened_at, self.top_names(peak[1])))
                    st_["episode"] = None
        return out


@settings(max_examples=200, deadline=None)
@given(
    min_consecutive=st.integers(1, 3),
    cooldown=st.integers(1, 3),
    windows=st.lists(
        st.tuples(st.integers(0, 2), st.booleans(), st.integers(0, 3), st.integers(0, 4)),
        min_size=8,
        max_size=60,
    ),
    cuts=st.lists(st.integers(0, 60), max_size=6),
)
def test_vectorised_equals_naive_reference(min_consecutive, cooldown, windows, cuts) -> None:
    slots = [w[0] for w in windows]
    exceed = [w[1] for w in windows]
    scores = [float(w[2]) for w in windows]  # small integers: equal peaks happen
    errors = np.zeros((len(windows), F), dtype=np.float32)
    # One dominant feature per window, so the top-feature order tells windows apart.
    dominant = np.array([w[3] for w in windows])
    errors[np.arange(len(windows)), dominant % F] = 1.0 + dominant
    stream = make_scored(slots, exceed, scores, errors=errors)
    fast = tracker(min_consecutive, cooldown, top=2, capacity=4)
    naive = NaiveEpisodes(min_consecutive, cooldown, top=2)
    bounds = sorted({0, len(windows), *[c for c in cuts if c < len(windows)]})
    got, want = [], []
    for lo, hi in zip(bounds, bounds[1:]):
        fields = ScoredWindows.__dataclass_fields__
        part = ScoredWindows(**{name: getattr(stream, name)[lo:hi] for name in fields})
        got += [(a.kind, a.key, a.event_index, a.windows_over, a.score, a.episode_start,
                 [f.name for f in a.top_features]) for a in fast.update(part)]
        want += naive.feed(part)
    assert got == want
    assert fast.open_episodes == sum(s["episode"] is not None for s in naive.state.values())


def test_evicting_a_key_with_an_open_episode_resolves_it() -> None:
    t = tracker(min_consecutive=2)
    opened = t.update(make_scored([0, 1, 0, 1], [True, False, True, False]))
    assert summary(opened) == [("open", "key-0", 2, 2)]
    assert t.update(make_scored([0], [True], scores=[9.0], first_row=4)) == []
    evicted = np.array([1, 0])
    resolved = t.resolve_evicted(evicted, np.array(["key-1", "key-0"], dtype=object))
    t.reset(evicted)  # as the window stage does next, with every per-slot stage
    # Only the key with an open episode gets an alert: its episode's usual resolve id, the
    # reason, the key's last window and the episode's peak.
    assert [a.alert_id for a in resolved] == [opened[0].episode_id + "-resolve"]
    alert = resolved[0]
    assert (alert.kind, alert.reason, alert.key) == ("resolve", "evicted", "key-0")
    assert (alert.window_start, alert.window_end) == (994.0, 1004.0)
    assert alert.score == 9.0 and alert.windows_over == 3
    assert t.open_episodes == 0
    # The slot starts afresh: a new key there opens its own episode.
    assert t.update(make_scored([0], [True], first_row=5)) == []


def test_dropping_keys_for_another_owner_sends_no_resolve() -> None:
    t = tracker(min_consecutive=1)
    assert len(t.update(make_scored([0], [True]))) == 1
    t.reset(np.array([0]))
    assert t.open_episodes == 0


def _open_new(t: EpisodeTracker, slot: int, at: float, row: int) -> list:
    return t.open_new_keys(
        np.array([slot]), np.array([f"key-{slot}"], dtype=object), np.array([at]),
        np.array([row]), threshold=0.7,
    )


def test_a_new_key_opens_at_its_first_event_and_calm_windows_resolve_it() -> None:
    t = tracker(min_consecutive=2, cooldown=3)
    opened = _open_new(t, 0, 990.0, 0)
    assert summary(opened) == [("open", "key-0", 0, 0)]
    alert = opened[0]
    assert alert.reason == "new_key"
    assert (alert.window_start, alert.window_end, alert.episode_start) == (990.0, 990.0, 990.0)
    assert (alert.score, alert.threshold, alert.top_features) == (0.0, 0.7, ())
    assert t.open_episodes == 1
    resolved = t.update(make_scored([0, 0, 0], [False] * 3, first_row=1))
    assert summary(resolved) == [("resolve", "key-0", 3, 0)]
    # No window exceeded: nothing to explain, and the anomaly ended where it began.
    assert resolved[0].episode_id == alert.episode_id
    assert (resolved[0].reason, resolved[0].score, resolved[0].top_features) == (
        "cooldown", 0.0, ()
    )
    assert resolved[0].anomaly_end == 990.0


def test_exceeding_windows_of_a_new_key_join_its_episode() -> None:
    t = tracker(min_consecutive=2, cooldown=2)
    opened = _open_new(t, 0, 990.0, 0)
    pattern = [True, True, False, False]
    alerts = t.update(make_scored([0] * 4, pattern, scores=[4.0, 6.0, 0.1, 0.1], first_row=1))
    # No second open: the windows belong to the episode the key's arrival opened.
    assert summary(alerts) == [("resolve", "key-0", 4, 2)]
    resolve = alerts[0]
    assert resolve.episode_id == opened[0].episode_id
    assert resolve.score == 6.0 and resolve.anomaly_end == 1002.0
    assert [f.name for f in resolve.top_features] == ["net", "disk"]


def test_the_flows_preset_pages_each_of_two_attacks_a_minute_apart() -> None:
    # 10 s buckets, windows of 8 moving one bucket: an attack of 7 buckets holds 14 windows over the
    # threshold, and the gap between them leaves 3 calm windows.
    pattern = [True] * 14 + [False] * 3 + [True] * 14 + [False] * 20
    stream = make_scored([0] * len(pattern), pattern)
    flows = EpisodeTracker(EpisodeConfig(**preset("flows")["episodes"]), NAMES, "model-v1")
    default = EpisodeTracker(EpisodeConfig(), NAMES, "model-v1")
    assert [a.kind for a in flows.update(stream)] == ["open", "resolve", "open", "resolve"]
    assert [a.kind for a in default.update(stream)] == ["open", "resolve"]
