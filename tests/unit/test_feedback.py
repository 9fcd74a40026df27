"""Operator feedback: the feedback CloudEvents and their validation, the ledger they build, the
threshold's per-window divisor / floor / learn mask, and the detector end to end (a false
positive quietens later repeats, mutes keep alerts from being published, and the results with
feedback never depend on how the stream is cut into batches)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_detector.aggregate.decoder import decoder_for
from stream_detector.config import FeedbackConfig, Settings, ThresholdConfig, load_settings
from stream_detector.detector.artefact import ModelArtefact
from stream_detector.detector.facade import Detector
from stream_detector.detector.feedback import (
    MAX_FEEDBACK_BYTES,
    AlertRef,
    FeedbackError,
    FeedbackEvent,
    FeedbackKind,
    FeedbackLedger,
    alert_reference,
    feedback_envelope,
    feedback_type,
    parse_feedback,
)
from stream_detector.detector.training import train
from stream_detector.engine.alerts import Alert, alert_id_for, episode_id_for
from stream_detector.engine.threshold import AdaptiveThreshold

# Event times in 2023, above input.min_timestamp's floor.
T0 = 1_700_000_000.0
VERSION = "model-v1"
CONFIG = FeedbackConfig(max_mute_s=1000.0, true_positive_hold_s=50.0)


# --------------------------------------------------------------------------------------------
# Building feedback events
# --------------------------------------------------------------------------------------------


def _envelope(kind: str, data: Any, event_id: str = "fb-1") -> bytes:
    """A feedback CloudEvent of `kind` (any string, to build unknown types too)."""
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "tests",
            "type": "io.streamdetector.feedback." + kind,
            "subject": "s",
            "time": "2023-11-14T22:13:20.000Z",
            "datacontenttype": "application/json",
            "data": data,
        }
    )


def _alert_data(
    key: str = "web-1",
    episode_start: float = T0 + 60,
    version: str = VERSION,
    alert_kind: str = "open",
    **changes: Any,
) -> dict[str, Any]:
    """The data of a false/true positive on a real alert id of (key, episode_start, version)."""
    episode = episode_id_for(key, episode_start, version)
    data: dict[str, Any] = {
        "alert_id": alert_id_for(episode, alert_kind),  # type: ignore[arg-type]
        "key": key,
        "episode_start": episode_start,
        "model_version": version,
        "score": 8.0,
        "effective": episode_start + 10,
        "episode_end": episode_start + 10,
    }
    data.update(changes)
    return data


def _parsed(kind: FeedbackKind, data: dict[str, Any], event_id: str = "fb-1") -> FeedbackEvent:
    return parse_feedback(feedback_envelope(kind, event_id, "tests", "s", data, T0), CONFIG)


def _sensitivity(event_id: str, key: str, multiplier: float, effective: float) -> FeedbackEvent:
    data = {"key": key, "multiplier": multiplier, "effective": effective}
    return _parsed("sensitivity", data, event_id)


def _false_positive(
    event_id: str, key: str, score: float, effective: float, version: str = VERSION
) -> FeedbackEvent:
    data = _alert_data(key, T0, version, score=score, effective=effective, episode_end=None)
    return _parsed("false_positive", data, event_id)


def _mute(event_id: str, pattern: str, start: float, until: float) -> FeedbackEvent:
    return _parsed("mute", {"pattern": pattern, "from": start, "until": until}, event_id)


def _unmute(event_id: str, pattern: str, at: float) -> FeedbackEvent:
    return _parsed("unmute", {"pattern": pattern, "at": at}, event_id)


# --------------------------------------------------------------------------------------------
# parse_feedback: rejections
# --------------------------------------------------------------------------------------------


def _rejects(payload: bytes | None, match: str, config: FeedbackConfig = CONFIG) -> None:
    with pytest.raises(FeedbackError, match=match):
        parse_feedback(payload, config)


@pytest.mark.parametrize("payload", [b"", None])
def test_an_empty_record_is_rejected(payload: bytes | None) -> None:
    _rejects(payload, "empty")


def test_a_record_over_the_size_limit_is_rejected_before_parsing() -> None:
    valid = _envelope("unmute", {"pattern": "x", "at": T0})
    padded = valid[:-1] + b"," + b'"pad":"' + b"x" * MAX_FEEDBACK_BYTES + b'"}'
    _rejects(padded, rf"{len(padded)} bytes \(at most {MAX_FEEDBACK_BYTES}\)")
    # Exactly at the limit is read (and here fails later, on its content, not on its size).
    at_limit = b" " * (MAX_FEEDBACK_BYTES - len(valid)) + valid
    assert parse_feedback(at_limit, CONFIG).kind == "unmute"


@pytest.mark.parametrize("payload", [b"{", b"not json", b'{"a": NaN}', b'{"score": 1e400}'])
def test_text_that_is_not_json_is_rejected(payload: bytes) -> None:
    _rejects(payload, "not JSON")


@pytest.mark.parametrize("payload", [b"[]", b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object_is_rejected(payload: bytes) -> None:
    _rejects(payload, "JSON object")


@pytest.mark.parametrize("version", [None, "0.3", "1", 1.0, ""])
def test_a_specversion_other_than_1_0_is_rejected(version: Any) -> None:
    envelope = orjson.loads(_envelope("unmute", {"pattern": "x", "at": T0}))
    if version is None:
        del envelope["specversion"]
    else:
        envelope["specversion"] = version
    _rejects(orjson.dumps(envelope), "specversion")


@pytest.mark.parametrize("event_id", [None, "", 17, ["a"]])
def test_a_missing_or_empty_id_is_rejected(event_id: Any) -> None:
    envelope = orjson.loads(_envelope("unmute", {"pattern": "x", "at": T0}))
    if event_id is None:
        del envelope["id"]
    else:
        envelope["id"] = event_id
    _rejects(orjson.dumps(envelope), "id must be a non-empty string")


@pytest.mark.parametrize(
    "event_type",
    [
        None,
        3,
        "io.streamdetector.feedback.bogus",
        "io.streamdetector.feedback.",
        "io.streamdetector.feedback.mute.extra",
        "com.example.feedback.mute",
        "mute",
        "io.streamdetector.anomaly.opened",
    ],
)
def test_an_unknown_type_is_rejected_and_the_known_ones_named(event_type: Any) -> None:
    envelope = orjson.loads(_envelope("unmute", {"pattern": "x", "at": T0}))
    if event_type is None:
        del envelope["type"]
    else:
        envelope["type"] = event_type
    with pytest.raises(FeedbackError, match="unknown type") as raised:
        parse_feedback(orjson.dumps(envelope), CONFIG)
    assert feedback_type("false_positive") in str(raised.value)
    assert feedback_type("sensitivity") in str(raised.value)


@pytest.mark.parametrize("data", [None, [], ["pattern"], "pattern", 5])
def test_data_that_is_not_an_object_is_rejected(data: Any) -> None:
    envelope = orjson.loads(_envelope("mute", {}))
    if data is None:
        del envelope["data"]
    else:
        envelope["data"] = data
    _rejects(orjson.dumps(envelope), "data must be a JSON object")


@pytest.mark.parametrize("kind", ["false_positive", "true_positive"])
@pytest.mark.parametrize(
    "changed",
    [
        {"key": "web-2"},
        {"episode_start": T0 + 61},
        {"model_version": "model-v2"},
        {"alert_id": "0" * 32 + "-open"},
        {"alert_id": alert_id_for(episode_id_for("web-1", T0 + 60, VERSION), "open") + "x"},
    ],
    ids=["key", "episode_start", "model_version", "other-hash", "suffix"],
)
def test_an_alert_id_that_does_not_match_key_start_and_version_is_rejected(
    kind: str, changed: dict[str, Any]
) -> None:
    data = _alert_data()
    data.update(changed)  # the id stays the one of the original (key, start, version)
    _rejects(_envelope(kind, data), "unknown alert id")


@pytest.mark.parametrize("alert_kind", ["open", "resolve"])
def test_the_open_and_the_resolve_alert_id_of_an_episode_are_both_accepted(
    alert_kind: str,
) -> None:
    event = parse_feedback(_envelope("true_positive", _alert_data(alert_kind=alert_kind)), CONFIG)
    assert event.alert is not None and event.alert.alert_id.endswith("-" + alert_kind)


@pytest.mark.parametrize(
    "field", ["alert_id", "key", "model_version", "episode_start", "score", "effective"]
)
def test_a_missing_alert_field_is_rejected_and_named(field: str) -> None:
    data = _alert_data()
    del data[field]
    _rejects(_envelope("false_positive", data), rf"data\.{field} must be")


@pytest.mark.parametrize("field", ["episode_start", "score", "effective", "episode_end"])
@pytest.mark.parametrize("value", [True, False, "8.0", [1.0], {"v": 1}])
def test_a_non_numeric_or_boolean_alert_number_is_rejected(field: str, value: Any) -> None:
    data = _alert_data()
    data[field] = value  # episode_start too: the number is checked before the id can be
    _rejects(_envelope("false_positive", data), rf"data\.{field} must be a finite number")


@pytest.mark.parametrize("score", [0, 0.0, -1.0, -1e-9])
def test_a_score_that_is_not_positive_is_rejected(score: float) -> None:
    _rejects(_envelope("false_positive", _alert_data(score=score)), "data.score must be positive")


def test_a_new_key_arrival_with_no_score_can_be_confirmed_but_not_called_false() -> None:
    """Score 0 is a new key's episode that no window exceeded: a true positive holds it, a
    false positive is refused with the way out."""
    _rejects(_envelope("false_positive", _alert_data(score=0.0)), "mute the key")
    _rejects(_envelope("true_positive", _alert_data(score=-1.0)), "data.score must be positive")
    confirmed = parse_feedback(_envelope("true_positive", _alert_data(score=0.0)), CONFIG)
    assert confirmed.alert is not None and confirmed.alert.score == 0.0


def test_an_episode_end_before_its_start_is_rejected() -> None:
    data = _alert_data(episode_end=T0 + 59.5)
    _rejects(_envelope("true_positive", data), "episode_end is before")


@pytest.mark.parametrize("multiplier", [0.2499, 4.0001, 0.0, -1.0, 100.0])
def test_a_sensitivity_outside_the_configured_bounds_is_rejected(multiplier: float) -> None:
    data = {"key": "web-1", "multiplier": multiplier, "effective": T0}
    _rejects(_envelope("sensitivity", data), r"outside \[0\.25, 4\.0\]")


def test_the_sensitivity_bounds_come_from_the_config() -> None:
    narrow = FeedbackConfig(min_sensitivity=0.5, max_sensitivity=2.0)
    data = {"key": "web-1", "multiplier": 3.0, "effective": T0}
    _rejects(_envelope("sensitivity", data), r"outside \[0\.5, 2\.0\]", narrow)
    for edge in (0.5, 2.0):
        event = parse_feedback(_envelope("sensitivity", {**data, "multiplier": edge}), narrow)
        assert event.multiplier == edge


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"multiplier": 2.0, "effective": T0}, r"data\.key must be a non-empty string"),
        ({"key": "", "multiplier": 2.0, "effective": T0}, r"data\.key must be"),
        ({"key": 7, "multiplier": 2.0, "effective": T0}, r"data\.key must be"),
        ({"key": "a", "effective": T0}, r"data\.multiplier must be a finite number"),
        ({"key": "a", "multiplier": True, "effective": T0}, r"data\.multiplier must be a finite"),
        ({"key": "a", "multiplier": "2", "effective": T0}, r"data\.multiplier must be a finite"),
        ({"key": "a", "multiplier": 2.0}, r"data\.effective must be a finite number"),
        ({"key": "a", "multiplier": 2.0, "effective": False}, r"data\.effective must be"),
    ],
)
def test_a_sensitivity_with_a_missing_or_wrong_field_is_rejected(
    data: dict[str, Any], match: str
) -> None:
    _rejects(_envelope("sensitivity", data), match)


@pytest.mark.parametrize(
    ("start", "until"),
    [(T0, T0), (T0, T0 - 1), (T0, T0 + 1000.001), (T0, T0 + 5000)],
    ids=["until=from", "until<from", "just-over-max", "far-over-max"],
)
def test_a_mute_with_an_empty_or_too_long_span_is_rejected(start: float, until: float) -> None:
    data = {"pattern": "web-*", "from": start, "until": until}
    _rejects(_envelope("mute", data), r"from < until <= from \+ 1000 s \(feedback\.max_mute_s\)")


def test_a_mute_of_exactly_max_mute_s_is_accepted() -> None:
    data = {"pattern": "web-*", "from": T0, "until": T0 + 1000}
    assert parse_feedback(_envelope("mute", data), CONFIG).until == T0 + 1000


@pytest.mark.parametrize("kind", ["mute", "unmute"])
@pytest.mark.parametrize("pattern", [None, "", 5, ["web-*"]])
def test_a_mute_or_unmute_without_a_pattern_is_rejected(kind: str, pattern: Any) -> None:
    data: dict[str, Any] = {"from": T0, "until": T0 + 10, "at": T0}
    if pattern is not None:
        data["pattern"] = pattern
    _rejects(_envelope(kind, data), r"data\.pattern must be a non-empty string")


@pytest.mark.parametrize(
    ("kind", "data", "match"),
    [
        ("mute", {"pattern": "a", "until": T0}, r"data\.from must be a finite number"),
        ("mute", {"pattern": "a", "from": T0}, r"data\.until must be a finite number"),
        ("mute", {"pattern": "a", "from": True, "until": T0}, r"data\.from must be"),
        ("mute", {"pattern": "a", "from": T0, "until": "later"}, r"data\.until must be"),
        ("unmute", {"pattern": "a"}, r"data\.at must be a finite number"),
        ("unmute", {"pattern": "a", "at": True}, r"data\.at must be a finite number"),
    ],
)
def test_a_mute_or_unmute_with_a_bad_time_is_rejected(
    kind: str, data: dict[str, Any], match: str
) -> None:
    _rejects(_envelope(kind, data), match)


# --------------------------------------------------------------------------------------------
# parse_feedback: valid events
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["false_positive", "true_positive"])
def test_a_valid_alert_feedback_parses_to_its_event(kind: FeedbackKind) -> None:
    data = _alert_data(score=12.5, effective=T0 + 70, episode_end=T0 + 66)
    event = parse_feedback(_envelope(kind, data, event_id="op-7"), CONFIG)
    assert event == FeedbackEvent(
        "op-7",
        kind,
        "web-1",
        alert=AlertRef(data["alert_id"], "web-1", T0 + 60, VERSION, 12.5, T0 + 70, T0 + 66),
    )


def test_an_alert_feedback_with_null_or_absent_episode_end_has_none() -> None:
    with_null = _alert_data(episode_end=None)
    absent = _alert_data()
    del absent["episode_end"]
    for data in (with_null, absent):
        event = parse_feedback(_envelope("true_positive", data), CONFIG)
        assert event.alert is not None and event.alert.episode_end is None


def test_integer_times_parse_as_floats_and_match_the_alert_id() -> None:
    data = _alert_data(episode_start=int(T0) + 60, effective=int(T0) + 70, score=3)
    event = parse_feedback(_envelope("false_positive", data), CONFIG)
    assert event.alert is not None
    assert event.alert.episode_start == T0 + 60 and isinstance(event.alert.episode_start, float)
    assert isinstance(event.alert.score, float) and event.alert.score == 3.0


def test_a_valid_sensitivity_parses_to_its_event() -> None:
    data = {"key": "db-1", "multiplier": 2.5, "effective": T0 + 5}
    event = parse_feedback(_envelope("sensitivity", data, event_id="s-1"), CONFIG)
    assert event == FeedbackEvent("s-1", "sensitivity", "db-1", multiplier=2.5, start=T0 + 5)


def test_a_valid_mute_parses_to_its_event() -> None:
    data = {"pattern": "web-*", "from": T0, "until": T0 + 300}
    event = parse_feedback(_envelope("mute", data, event_id="m-1"), CONFIG)
    assert event == FeedbackEvent("m-1", "mute", "web-*", start=T0, until=T0 + 300)


def test_a_valid_unmute_parses_to_its_event() -> None:
    event = parse_feedback(_envelope("unmute", {"pattern": "web-*", "at": T0 + 9}, "u-1"), CONFIG)
    assert event == FeedbackEvent("u-1", "unmute", "web-*", start=T0 + 9)


def test_feedback_envelope_round_trips_through_parse_feedback() -> None:
    payload = feedback_envelope(
        "mute", "m-2", "cli", "web-*", {"pattern": "web-*", "from": T0, "until": T0 + 1}, T0
    )
    envelope = orjson.loads(payload)
    assert envelope["type"] == "io.streamdetector.feedback.mute"
    assert envelope["specversion"] == "1.0" and envelope["id"] == "m-2"
    assert parse_feedback(payload, CONFIG).kind == "mute"


# --------------------------------------------------------------------------------------------
# FeedbackLedger
# --------------------------------------------------------------------------------------------


def _adjust(
    ledger: FeedbackLedger, rows: list[tuple[str, float]], version: str = VERSION
) -> tuple[list[float], list[float], list[bool]]:
    """(divisor, floor, learn) per (key, window end) row; the defaults when None."""
    keys = np.array([k for k, _ in rows], dtype=object)
    ends = np.array([t for _, t in rows], dtype=np.float64)
    got = ledger.adjustments(keys, ends, version)
    if got is None:
        return [1.0] * len(rows), [0.0] * len(rows), [True] * len(rows)
    assert got.divisor.shape == got.floor.shape == got.learn.shape == (len(rows),)
    return got.divisor.tolist(), got.floor.tolist(), got.learn.tolist()


def _alert(key: str, at: float, kind: str = "open", opened: float | None = None) -> Alert:
    """An alert of `key` at event time `at`, of an episode opened at `opened` (default `at`)."""
    opened = at if opened is None else opened
    episode = episode_id_for(key, opened, VERSION)
    return Alert(
        kind=kind,  # type: ignore[arg-type]
        alert_id=alert_id_for(episode, kind),  # type: ignore[arg-type]
        episode_id=episode,
        key=key,
        window_start=at - 3,
        window_end=at,
        score=5.0,
        threshold=1.0,
        severity="high",
        top_features=(),
        model_version=VERSION,
        episode_start=opened,
        windows_over=1,
        event_index=0,
    )


def test_an_event_id_applied_twice_is_applied_once_and_counted() -> None:
    ledger = FeedbackLedger(CONFIG)
    first = _sensitivity("s-1", "a", 2.0, T0)
    assert ledger.apply(first) is True
    assert ledger.apply(first) is False
    # The same id with other content is the same event: nothing changes.
    assert ledger.apply(_sensitivity("s-1", "a", 0.5, T0 - 100)) is False
    assert ledger.duplicates == 2
    assert len(ledger) == 1 and ledger.applied == [first]
    assert _adjust(ledger, [("a", T0 - 50), ("a", T0)])[0] == [1.0, 2.0]


def test_a_duplicate_mute_or_false_positive_does_not_change_the_ledger() -> None:
    ledger = FeedbackLedger(CONFIG)
    assert ledger.apply(_mute("m-1", "a", T0, T0 + 10))
    assert ledger.apply(_unmute("u-1", "a", T0 + 5))
    # A re-delivered mute after its unmute is not a new mute.
    assert not ledger.apply(_mute("m-1", "a", T0, T0 + 10))
    assert not ledger.is_muted("a", T0 + 6)
    assert ledger.apply(_false_positive("f-1", "a", 4.0, T0))
    assert not ledger.apply(_false_positive("f-1", "a", 40.0, T0))
    assert _adjust(ledger, [("a", T0 + 1)])[1] == [4.0 * CONFIG.false_positive_margin]
    assert ledger.duplicates == 2 and len(ledger) == 3


def test_sensitivity_divides_from_its_effective_time_and_the_later_event_wins() -> None:
    ledger = FeedbackLedger(CONFIG)
    ledger.apply(_sensitivity("s-1", "a", 2.0, T0 + 100))
    ledger.apply(_sensitivity("s-2", "a", 0.5, T0 + 200))
    rows = [("a", T0 + t) for t in (50, 99.9, 100, 150, 199.9, 200, 250)] + [("b", T0 + 150)]
    divisor, floor, learn = _adjust(ledger, rows)
    assert divisor == [1.0, 1.0, 2.0, 2.0, 2.0, 0.5, 0.5, 1.0]
    assert floor == [0.0] * len(rows) and all(learn)


def test_a_later_sensitivity_with_an_earlier_effective_time_overrides_from_its_own_start() -> None:
    ledger = FeedbackLedger(CONFIG)
    ledger.apply(_sensitivity("s-1", "a", 0.5, T0 + 200))
    ledger.apply(_sensitivity("s-2", "a", 2.0, T0 + 100))  # later in topic order
    divisor, _, _ = _adjust(ledger, [("a", T0 + t) for t in (50, 150, 250)])
    assert divisor == [1.0, 2.0, 2.0]


def test_a_sensitivity_of_one_key_leaves_others_alone_in_a_mixed_batch() -> None:
    ledger = FeedbackLedger(CONFIG)
    ledger.apply(_sensitivity("s-1", "a", 3.0, T0))
    rows = [("b", T0 + 1), ("a", T0 + 1), ("c", T0 + 1), ("a", T0 - 1), ("b", T0 - 1)]
    assert _adjust(ledger, rows)[0] == [1.0, 3.0, 1.0, 1.0, 1.0]


def test_false_positive_floors_at_margin_times_score_from_its_effective_time() -> None:
    config = FeedbackConfig(false_positive_margin=1.5)
    ledger = FeedbackLedger(config)
    ledger.apply(_false_positive("f-1", "a", 4.0, T0 + 100))
    # The window ending exactly at the effective time is left out: see the end-to-end test of
    # a false positive on an open episode for what it should get.
    rows = [("a", T0 + 99.5), ("a", T0 + 100.5), ("a", T0 + 130), ("b", T0 + 130)]
    divisor, floor, learn = _adjust(ledger, rows)
    assert floor == [0.0, 6.0, 6.0, 0.0]
    assert divisor == [1.0] * 4 and all(learn)


def test_false_positive_floor_holds_only_for_the_model_version_that_scored_it() -> None:
    ledger = FeedbackLedger(CONFIG)
    ledger.apply(_false_positive("f-1", "a", 4.0, T0, version="model-v1"))
    assert _adjust(ledger, [("a", T0 + 1)], version="model-v1")[1] == [5.0]
    assert _adjust(ledger, [("a", T0 + 1)], version="model-v2")[1] == [0.0]


def test_several_false_positives_floor_at_the_highest_in_force() -> None:
    ledger = FeedbackLedger(CONFIG)
    ledger.apply(_false_positive("f-1", "a", 4.0, T0 + 100))
    ledger.apply(_false_positive("f-2", "a", 8.0, T0 + 200))
    ledger.apply(_false_positive("f-3", "a", 2.0, T0 + 300))  # lower, later: does not lower it
    ledger.apply(_false_positive("f-4", "a", 100.0, T0 + 150, version="model-v0"))
    rows = [("a", T0 + t) for t in (50, 150, 250, 350)]
    assert _adjust(ledger, rows)[1] == [0.0, 5.0, 10.0, 10.0]


def test_true_positive_holds_learning_from_the_episode_start_to_its_end() -> None:
    ledger = FeedbackLedger(CONFIG)
    data = _alert_data("a", T0 + 100, effective=T0 + 130, episode_end=T0 + 130)
    ledger.apply(_parsed("true_positive", data))
    rows = [("a", T0 + t) for t in (99, 100, 115, 130, 131, 175)] + [("b", T0 + 115)]
    divisor, floor, learn = _adjust(ledger, rows)
    assert learn == [True, False, False, False, True, True, True]
    assert divisor == [1.0] * len(rows) and floor == [0.0] * len(rows)


def test_true_positive_without_an_end_holds_for_true_positive_hold_s_after_the_alert() -> None:
    ledger = FeedbackLedger(CONFIG)  # true_positive_hold_s = 50
    data = _alert_data("a", T0 + 100, effective=T0 + 100, episode_end=None)
    ledger.apply(_parsed("true_positive", data))
    rows = [("a", T0 + t) for t in (99, 100, 149, 150, 150.5)]
    assert _adjust(ledger, rows)[2] == [True, False, False, False, True]
    assert ledger.labelled_spans() == [("a", T0 + 100, T0 + 150)]


def test_labelled_spans_lists_every_true_positive_and_nothing_else() -> None:
    ledger = FeedbackLedger(CONFIG)
    assert ledger.labelled_spans() == []
    ledger.apply(_parsed("true_positive", _alert_data("a", T0, episode_end=T0 + 20), "t-1"))
    ledger.apply(_parsed("false_positive", _alert_data("b", T0, episode_end=T0 + 5), "f-1"))
    ledger.apply(_sensitivity("s-1", "c", 2.0, T0))
    ledger.apply(_mute("m-1", "*", T0, T0 + 10))
    data = _alert_data("b", T0 + 50, effective=T0 + 55, episode_end=None)
    ledger.apply(_parsed("true_positive", data, "t-2"))
    assert sorted(ledger.labelled_spans()) == [("a", T0, T0 + 20), ("b", T0 + 50, T0 + 105)]


def test_adjustments_are_none_when_no_window_key_has_feedback() -> None:
    ledger = FeedbackLedger(CONFIG)
    rows = [("a", T0), ("b", T0)]
    keys = np.array([k for k, _ in rows], dtype=object)
    ends = np.array([t for _, t in rows])
    assert ledger.adjustments(keys, ends, VERSION) is None
    ledger.apply(_mute("m-1", "*", T0 - 10, T0 + 10))  # mutes do not touch thresholds
    ledger.apply(_unmute("u-1", "*", T0))
    assert ledger.adjustments(keys, ends, VERSION) is None
    ledger.apply(_sensitivity("s-1", "c", 2.0, T0))
    assert ledger.adjustments(keys, ends, VERSION) is None
    empty = np.empty(0, dtype=object)
    assert ledger.adjustments(empty, np.empty(0), VERSION) is None
    assert ledger.adjustments(np.array(["c"], dtype=object), ends[:1], VERSION) is not None


def test_mute_matches_keys_by_glob_inside_its_half_open_span() -> None:
    ledger = FeedbackLedger(CONFIG)
    ledger.apply(_mute("m-1", "web-*", T0 + 100, T0 + 200))
    assert ledger.is_muted("web-1", T0 + 100)
    assert ledger.is_muted("web-east-9", T0 + 199.9)
    assert not ledger.is_muted("web-1", T0 + 99.9)
    assert not ledger.is_muted("web-1", T0 + 200)
    assert not ledger.is_muted("db-1", T0 + 150)
    assert not ledger.is_muted("xweb-1", T0 + 150)
    assert not ledger.is_muted("WEB-1", T0 + 150)  # glob matching is case-sensitive


def test_glob_classes_and_single_characters_match_like_fnmatch() -> None:
    ledger = FeedbackLedger(CONFIG)
    ledger.apply(_mute("m-1", "k[02]", T0, T0 + 10))
    ledger.apply(_mute("m-2", "db-?", T0, T0 + 10))
    assert [k for k in ("k0", "k1", "k2", "k20") if ledger.is_muted(k, T0)] == ["k0", "k2"]
    assert [k for k in ("db-1", "db-12", "db-") if ledger.is_muted(k, T0)] == ["db-1"]


def test_unmuted_drops_and_counts_the_alerts_of_episodes_opened_in_a_mute() -> None:
    ledger = FeedbackLedger(CONFIG)
    alerts = [_alert("web-1", T0 + 50), _alert("web-1", T0 + 150), _alert("db-1", T0 + 150)]
    assert ledger.unmuted(alerts) == (alerts, 0)
    ledger.apply(_mute("m-1", "web-*", T0 + 100, T0 + 200))
    kept, muted = ledger.unmuted(alerts)
    assert kept == [alerts[0], alerts[2]] and muted == 1
    assert ledger.unmuted([]) == ([], 0)


def test_a_resolve_is_muted_exactly_when_its_episode_opened_in_a_mute() -> None:
    """An episode's resolve goes where its open went, wherever the resolve's own time falls."""
    ledger = FeedbackLedger(CONFIG)
    ledger.apply(_mute("m-1", "web-*", T0 + 100, T0 + 200))
    opened_inside = _alert("web-1", T0 + 250, "resolve", opened=T0 + 150)
    opened_before = _alert("web-2", T0 + 150, "resolve", opened=T0 + 50)
    opened_at_until = _alert("web-3", T0 + 201, "resolve", opened=T0 + 200)
    kept, muted = ledger.unmuted([opened_inside, opened_before, opened_at_until])
    assert kept == [opened_before, opened_at_until] and muted == 1


def test_unmute_ends_a_mute_of_the_same_pattern_at_its_time() -> None:
    ledger = FeedbackLedger(CONFIG)
    ledger.apply(_mute("m-1", "web-*", T0 + 100, T0 + 200))
    ledger.apply(_unmute("u-1", "web-*", T0 + 150))
    assert ledger.is_muted("web-1", T0 + 100)
    assert ledger.is_muted("web-1", T0 + 149.9)
    assert not ledger.is_muted("web-1", T0 + 150)
    assert not ledger.is_muted("web-1", T0 + 190)


def test_unmute_of_another_pattern_leaves_a_mute_alone() -> None:
    ledger = FeedbackLedger(CONFIG)
    ledger.apply(_mute("m-1", "web-*", T0 + 100, T0 + 200))
    ledger.apply(_unmute("u-1", "web-1", T0 + 150))  # matches the key, not the mute's pattern
    ledger.apply(_unmute("u-2", "*", T0 + 150))
    assert ledger.is_muted("web-1", T0 + 190)


def test_unmute_before_a_mute_starts_cancels_it() -> None:
    ledger = FeedbackLedger(CONFIG)
    ledger.apply(_mute("m-1", "web-*", T0 + 100, T0 + 200))
    ledger.apply(_unmute("u-1", "web-*", T0 + 50))
    assert not any(ledger.is_muted("web-1", T0 + t) for t in (50, 100, 150, 199))


def test_unmute_after_a_mute_ended_changes_nothing() -> None:
    ledger = FeedbackLedger(CONFIG)
    ledger.apply(_mute("m-1", "web-*", T0 + 100, T0 + 200))
    ledger.apply(_unmute("u-1", "web-*", T0 + 300))
    assert ledger.is_muted("web-1", T0 + 199) and not ledger.is_muted("web-1", T0 + 250)


def test_a_mute_applied_after_an_unmute_still_holds() -> None:
    ledger = FeedbackLedger(CONFIG)
    ledger.apply(_mute("m-1", "web-*", T0 + 100, T0 + 200))
    ledger.apply(_unmute("u-1", "web-*", T0 + 150))
    ledger.apply(_mute("m-2", "web-*", T0 + 120, T0 + 300))
    assert ledger.is_muted("web-1", T0 + 120)
    assert ledger.is_muted("web-1", T0 + 170)
    assert ledger.is_muted("web-1", T0 + 299)
    assert ledger.is_muted("web-1", T0 + 110)  # still inside the first mute, before the unmute
    assert not ledger.is_muted("web-1", T0 + 300)


# --------------------------------------------------------------------------------------------
# AdaptiveThreshold with per-window divisor, floor and learn
# --------------------------------------------------------------------------------------------

THRESHOLD = ThresholdConfig(warmup=3, alpha=0.5, sensitivity=2.0)
WARMUP_SCORES = [1.0, 2.0, 3.0, 2.0, 1.5]


def _warm_threshold() -> AdaptiveThreshold:
    """A threshold whose slots 0 and 1 have both absorbed WARMUP_SCORES (so are past warm-up)."""
    threshold = AdaptiveThreshold(THRESHOLD, global_threshold=10.0, capacity=4)
    for score in WARMUP_SCORES:
        threshold.apply(np.array([0, 1]), np.array([score, score]))
    return threshold


def _state(threshold: AdaptiveThreshold) -> dict[str, list]:
    return {k: v.tolist() for k, v in threshold.export_slots(np.arange(4)).items()}


def test_neutral_adjustments_change_nothing() -> None:
    plain, adjusted = _warm_threshold(), _warm_threshold()
    slots, scores = np.array([0, 1, 0, 1, 0]), np.array([1.0, 9.0, 2.5, 0.5, 30.0])
    want = plain.apply(slots, scores)
    got = adjusted.apply(slots, scores, np.ones(5), np.zeros(5), np.ones(5, dtype=bool))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert _state(adjusted) == _state(plain)


def test_a_divisor_lowers_the_threshold_and_more_windows_exceed() -> None:
    plain, adjusted = _warm_threshold(), _warm_threshold()
    base, _ = plain.apply(np.array([0]), np.array([0.0]))
    limit = float(base[0])
    score = limit * 0.75  # under the plain threshold, over half of it
    thresholds, exceed = _warm_threshold().apply(np.array([0]), np.array([score]))
    assert not exceed[0]
    thresholds, exceed = adjusted.apply(
        np.array([0, 1]), np.array([score, score]), divisor=np.array([2.0, 1.0])
    )
    assert thresholds[0] == pytest.approx(limit / 2, rel=1e-6)
    assert thresholds[1] == pytest.approx(limit, rel=1e-6)
    assert exceed.tolist() == [True, False]


def test_a_divisor_below_one_raises_the_threshold() -> None:
    threshold = _warm_threshold()
    reference, _ = _warm_threshold().apply(np.array([0]), np.array([0.0]))
    score = float(reference[0]) * 1.5
    thresholds, exceed = threshold.apply(
        np.array([0]), np.array([score]), divisor=np.array([0.5])
    )
    assert thresholds[0] == pytest.approx(2 * float(reference[0]), rel=1e-6)
    assert not exceed[0]


def test_a_divisor_also_scales_the_warm_up_threshold() -> None:
    threshold = AdaptiveThreshold(THRESHOLD, global_threshold=10.0, capacity=2)
    thresholds, exceed = threshold.apply(
        np.array([0, 1]), np.array([6.0, 6.0]), divisor=np.array([2.0, 1.0])
    )
    assert thresholds.tolist() == [5.0, 10.0] and exceed.tolist() == [True, False]


def test_a_floor_raises_the_threshold_and_fewer_windows_exceed() -> None:
    threshold = _warm_threshold()
    reference, _ = _warm_threshold().apply(np.array([0]), np.array([0.0]))
    limit = float(reference[0])
    score = limit * 2
    thresholds, exceed = threshold.apply(
        np.array([0, 1]), np.array([score, score]), floor=np.array([limit * 3, 0.0])
    )
    assert thresholds[0] == pytest.approx(limit * 3, rel=1e-6)
    assert thresholds[1] == pytest.approx(limit, rel=1e-6)
    assert exceed.tolist() == [False, True]


def test_a_floor_under_the_threshold_changes_nothing_and_applies_after_the_divisor() -> None:
    threshold = _warm_threshold()
    reference, _ = _warm_threshold().apply(np.array([0]), np.array([0.0]))
    limit = float(reference[0])
    thresholds, _ = threshold.apply(
        np.array([0, 1]),
        np.array([0.0, 0.0]),
        divisor=np.array([4.0, 4.0]),
        floor=np.array([limit / 2, limit / 8]),
    )
    assert thresholds[0] == pytest.approx(limit / 2, rel=1e-6)  # floor wins over limit / 4
    assert thresholds[1] == pytest.approx(limit / 4, rel=1e-6)  # limit / 4 wins over the floor


def test_a_window_not_to_be_learnt_is_judged_but_leaves_the_state_unchanged() -> None:
    threshold = _warm_threshold()
    before = _state(threshold)
    reference, _ = _warm_threshold().apply(np.array([0]), np.array([0.0]))
    limit = float(reference[0])
    scores = np.array([limit * 0.5, limit * 2.0])
    thresholds, exceed = threshold.apply(
        np.array([0, 1]), scores, learn=np.array([False, False])
    )
    assert exceed.tolist() == [False, True]
    assert thresholds[0] == pytest.approx(limit, rel=1e-6)
    assert _state(threshold) == before


def test_unlearnt_windows_in_a_batch_are_skipped_as_if_never_seen() -> None:
    """A key's later windows in the same batch are judged against the state without the
    unlearnt ones: the same as a threshold that never saw them."""
    threshold = _warm_threshold()
    slots = np.array([0, 1, 0, 0, 1, 0])
    scores = np.array([1.2, 2.2, 0.3, 2.8, 1.1, 1.7])
    learn = np.array([True, False, False, True, True, False])
    got, got_exceed = threshold.apply(slots, scores, learn=learn)
    reference = _warm_threshold()
    want, want_exceed = [], []
    for slot, score, learnt in zip(slots.tolist(), scores.tolist(), learn.tolist(), strict=True):
        judge = reference if learnt else _copy_of(reference)  # a copy forgets what it learns
        limit, over = judge.apply(np.array([slot]), np.array([score]))
        want.append(float(limit[0]))
        want_exceed.append(bool(over[0]))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got_exceed.tolist() == want_exceed
    assert _state(threshold) == _state(reference)
    assert _state(threshold) != _state(_warm_threshold())  # the learnt windows were learnt


def _copy_of(threshold: AdaptiveThreshold) -> AdaptiveThreshold:
    copy = AdaptiveThreshold(THRESHOLD, global_threshold=10.0, capacity=4)
    copy.import_slots(np.arange(4), threshold.export_slots(np.arange(4)))
    return copy


# --------------------------------------------------------------------------------------------
# The detector end to end
# --------------------------------------------------------------------------------------------

SECTIONS: dict[str, Any] = {
    "window": {"size": 4, "stride": 1, "max_keys": 16, "idle_ttl_s": 1000.0},
    "normalize": {"warmup": 5, "prior_weight": 2.0, "horizon": 8},
    "model": {"hidden_size": 4, "latent_size": 2, "device": "cpu", "batch_size": 7},
    "train": {"epochs": 1, "batch_size": 64, "seed": 0, "max_windows": 400},
    "threshold": {"warmup": 10, "alpha": 0.1, "sensitivity": 3.0},
    "episodes": {"min_consecutive": 1, "cooldown": 2},
}
# The repeated pattern: a step of +AMPLITUDE for two events at each of these times (s after T0).
REPEATS = (60, 100, 140)
AMPLITUDE = 4.0
N_STEPS = 160
KEYS = ("k0", "k1", "k2")


def _settings() -> Settings:
    return load_settings(None, SECTIONS)


@pytest.fixture(scope="module")
def artefact() -> ModelArtefact:
    settings = _settings()
    rng = np.random.default_rng(0)
    payloads = [
        orjson.dumps(
            {"key": f"k{k}", "ts": T0 + i, "value": float(np.sin(i / 3 + k) + rng.normal(0, 0.1))}
        )
        for i in range(200)
        for k in range(4)
    ]
    return train([decoder_for(settings).decode_messages(payloads)], settings, out_dir=None)


@functools.cache
def _stream(seed: int) -> tuple[bytes, ...]:
    """A noisy sine per key, time-interleaved, with the same step pattern on every key at each
    of REPEATS."""
    rng = np.random.default_rng(seed)
    payloads = []
    for i in range(N_STEPS):
        for k, key in enumerate(KEYS):
            value = np.sin(i / 3 + k) + rng.normal(0, 0.1)
            if any(r <= i < r + 2 for r in REPEATS):
                value += AMPLITUDE
            payloads.append(orjson.dumps({"key": key, "ts": T0 + i, "value": float(value)}))
    return tuple(payloads)


class Run:
    """What a caller sees of a detector over a stream cut into batches."""

    def __init__(self, detector: Detector, payloads: tuple[bytes, ...], batch: int) -> None:
        self.alerts: list[Alert] = []
        self.windows: list[tuple[str, float, bool]] = []
        self.floats: list[tuple[float, float]] = []
        self.muted = 0
        for start in range(0, len(payloads), batch):
            self.take(detector, payloads[start : start + batch])

    def take(self, detector: Detector, payloads: tuple[bytes, ...]) -> None:
        result = detector.process_messages(list(payloads))
        scored = result.scored
        self.alerts += result.alerts
        self.muted += result.muted
        self.windows += [
            (str(k), float(t), bool(x))
            for k, t, x in zip(scored.keys, scored.end_ts, scored.exceed, strict=True)
        ]
        self.floats += [
            (float(s), float(t)) for s, t in zip(scored.scores, scored.thresholds, strict=True)
        ]

    def opens(self, key: str) -> list[float]:
        """Seconds after T0 at which `key` opened an episode."""
        return [a.window_end - T0 for a in self.alerts if a.key == key and a.kind == "open"]

    def thresholds(self, key: str) -> list[tuple[float, float]]:
        """(window end, threshold) of every scored window of `key`."""
        return [
            (t, thr)
            for (k, t, _), (_, thr) in zip(self.windows, self.floats, strict=True)
            if k == key
        ]


def _seen(alerts: list[Alert], key: str | None = None) -> list[dict[str, Any]]:
    """The alerts (of `key`) as published, less their batch-relative event index."""
    return [
        {name: value for name, value in a.to_dict().items() if name != "event_index"}
        for a in alerts
        if key is None or a.key == key
    ]


def _detector(artefact: ModelArtefact, *events: FeedbackEvent) -> Detector:
    detector = Detector(_settings(), artefact)
    for event in events:
        assert detector.feedback.apply(event)
    return detector


@pytest.fixture(scope="module")
def baseline(artefact: ModelArtefact) -> Run:
    """The stream of seed 0 without feedback: every key alerts at every repeat."""
    run = Run(_detector(artefact), _stream(0), len(_stream(0)))
    for key in KEYS:
        assert run.opens(key) == list(map(float, REPEATS)), key
    return run


def _episode(run: Run | tuple[Alert, ...], key: str, n: int) -> tuple[Alert, Alert]:
    """The open and resolve alert of `key`'s n-th episode."""
    alerts = run.alerts if isinstance(run, Run) else list(run)
    opens = [a for a in alerts if a.key == key and a.kind == "open"]
    opened = opens[n]
    resolved = next(
        a for a in alerts if a.kind == "resolve" and a.episode_id == opened.episode_id
    )
    return opened, resolved


def _marked(
    kind: FeedbackKind, opened: Alert, resolved: Alert, known_end: bool, event_id: str
) -> FeedbackEvent:
    """A false/true positive on `opened`'s episode, as `stream-detector feedback` sends it."""
    data = alert_reference(opened, resolved.score, resolved.window_end if known_end else None)
    return parse_feedback(feedback_envelope(kind, event_id, "tests", opened.key, data, T0), CONFIG)


def test_a_false_positive_stops_later_repeats_alerting_on_that_key_only(
    artefact: ModelArtefact, baseline: Run
) -> None:
    opened, resolved = _episode(baseline, "k0", 0)
    feedback = _marked("false_positive", opened, resolved, known_end=True, event_id="fp-1")
    run = Run(_detector(artefact, feedback), _stream(0), len(_stream(0)))
    assert run.opens("k0") == [float(REPEATS[0])]
    # The marked episode itself is raised again, under the same ids.
    assert [a.alert_id for a in run.alerts if a.key == "k0"] == [
        opened.alert_id,
        resolved.alert_id,
    ]
    for key in ("k1", "k2"):
        assert _seen(run.alerts, key) == _seen(baseline.alerts, key)
        assert run.thresholds(key) == baseline.thresholds(key)
    # k0's thresholds are its own until the episode's end, and at least the floor after it.
    floor = CONFIG.false_positive_margin * resolved.score
    for (at, got), (_, want) in zip(run.thresholds("k0"), baseline.thresholds("k0"), strict=True):
        if at < resolved.window_end:
            assert got == want
        elif at > resolved.window_end:
            assert got >= np.float32(floor)


def test_a_false_positive_applied_mid_stream_decides_as_one_applied_before_it(
    artefact: ModelArtefact, baseline: Run
) -> None:
    """Applied live once the episode has resolved, the feedback changes what follows exactly as
    the same feedback replayed from the stream's start."""
    opened, resolved = _episode(baseline, "k0", 0)
    feedback = _marked("false_positive", opened, resolved, known_end=True, event_id="fp-1")
    payloads = _stream(0)
    cut = len(KEYS) * 80  # every event before T0 + 80, after the resolve at T0 + 66
    replaying = _detector(artefact, feedback)
    replayed = Run(replaying, payloads[:cut], cut)
    replayed.take(replaying, payloads[cut:])
    detector = _detector(artefact)
    live = Run(detector, payloads[:cut], cut)
    detector.feedback.apply(feedback)
    live.take(detector, payloads[cut:])
    assert live.opens("k0") == [float(REPEATS[0])]
    assert _seen(live.alerts) == _seen(replayed.alerts)
    assert live.windows == replayed.windows
    # The thresholds reported for windows read before the feedback arrived (from its effective
    # time to the cut) were not floored live; every later one is the replay's.
    after = [i for i, (_, at, _) in enumerate(live.windows) if at >= T0 + 80]
    assert after and [live.floats[i] for i in after] == [replayed.floats[i] for i in after]


def test_a_false_positive_from_another_model_version_changes_nothing(
    artefact: ModelArtefact, baseline: Run
) -> None:
    opened, resolved = _episode(baseline, "k0", 0)
    data = alert_reference(opened, resolved.score, resolved.window_end)
    data["model_version"] = "another-model"
    data["alert_id"] = alert_id_for(episode_id_for("k0", opened.episode_start, "another-model"),
                                    "open")
    feedback = _parsed("false_positive", data, "fp-other")
    run = Run(_detector(artefact, feedback), _stream(0), len(_stream(0)))
    assert run.alerts == baseline.alerts and run.floats == baseline.floats


def test_a_false_positive_on_an_open_episode_still_raises_the_marked_alert_on_replay(
    artefact: ModelArtefact, baseline: Run
) -> None:
    opened, resolved = _episode(baseline, "k0", 0)
    feedback = _marked("false_positive", opened, resolved, known_end=False, event_id="fp-1")
    run = Run(_detector(artefact, feedback), _stream(0), len(_stream(0)))
    assert opened.alert_id in [a.alert_id for a in run.alerts]


def test_a_true_positive_keeps_the_episode_out_of_the_key_baseline(
    artefact: ModelArtefact, baseline: Run
) -> None:
    """Held windows are judged as before but not learnt: thresholds are the same up to the
    hold's first unlearnt normal window, and the other keys are untouched."""
    opened, resolved = _episode(baseline, "k1", 0)
    feedback = _marked("true_positive", opened, resolved, known_end=True, event_id="tp-1")
    detector = _detector(artefact, feedback)
    run = Run(detector, _stream(0), len(_stream(0)))
    assert detector.feedback.labelled_spans() == [
        ("k1", opened.episode_start, resolved.window_end)
    ]
    got, want = run.thresholds("k1"), baseline.thresholds("k1")
    assert [t for t, _ in got] == [t for t, _ in want]
    before = [(t, thr) for t, thr in got if t <= opened.episode_start]
    assert before == [(t, thr) for t, thr in want if t <= opened.episode_start]
    assert got != want  # the resolve's calm windows went unlearnt: later thresholds differ
    for key in ("k0", "k2"):
        assert run.thresholds(key) == baseline.thresholds(key)


def test_a_mute_silences_a_key_inside_its_span_only_and_counts_the_muted(
    artefact: ModelArtefact, baseline: Run
) -> None:
    mute = _mute("m-1", "k0", T0 + 90, T0 + 120)  # k0's second episode, open and resolve
    whole = len(_stream(0))
    run = Run(_detector(artefact, mute), _stream(0), whole)
    expected = [
        a for a in baseline.alerts if not (a.key == "k0" and a.episode_start == T0 + REPEATS[1])
    ]
    assert len(baseline.alerts) - len(expected) == 2
    assert _seen(run.alerts) == _seen(expected)
    assert run.muted == 2
    # Scoring and learning go on under a mute.
    assert run.windows == baseline.windows and run.floats == baseline.floats
    # Cut into batches, the muted alerts are counted in the results of the batches they fell in.
    batched = Run(_detector(artefact, mute), _stream(0), 40)
    assert batched.muted == 2
    assert [a.alert_id for a in batched.alerts] == [a.alert_id for a in expected]


def test_a_mute_over_only_a_resolve_time_keeps_the_episode_published(
    artefact: ModelArtefact, baseline: Run
) -> None:
    """Mutes are judged by the episode's start: a span holding only the resolve of an episode
    opened before it mutes nothing, so no resolve goes missing after a published open."""
    _, resolved = _episode(baseline, "k0", 1)
    assert resolved.window_end > resolved.episode_start + 1
    mute = _mute("m-1", "k*", resolved.episode_start + 1, resolved.window_end + 1)
    run = Run(_detector(artefact, mute), _stream(0), len(_stream(0)))
    assert run.muted == 0 and _seen(run.alerts) == _seen(baseline.alerts)


def test_a_glob_mute_with_an_unmute_silences_the_episodes_opened_before_the_unmute(
    artefact: ModelArtefact, baseline: Run
) -> None:
    events = (_mute("m-1", "k[01]", T0 + 50, T0 + 150), _unmute("u-1", "k[01]", T0 + 103))
    run = Run(_detector(artefact, *events), _stream(0), len(_stream(0)))

    def silenced(alert: Alert) -> bool:
        return alert.key in ("k0", "k1") and T0 + 50 <= alert.episode_start < T0 + 103

    expected = [a for a in baseline.alerts if not silenced(a)]
    assert _seen(run.alerts) == _seen(expected)
    # k0 and k1: the episodes opened at 60 and 100, open and resolve; k2 and the repeat at 140
    # (after the unmute, inside the mute's original span) are published.
    assert run.muted == len(baseline.alerts) - len(expected) == 8
    assert run.opens("k0") == run.opens("k1") == [float(REPEATS[2])]
    assert run.opens("k2") == [float(r) for r in REPEATS]


class FeedbackRuns:
    """Runs of the seeded streams with one of each kind of feedback, by batch size (cached: the
    one-event-at-a-time reference is shared by every batch size checked against it)."""

    def __init__(self, artefact: ModelArtefact) -> None:
        self.artefact = artefact
        self._runs: dict[tuple[int, int], Run] = {}

    def feedback(self, seed: int) -> tuple[FeedbackEvent, ...]:
        """One of each kind of feedback, built from the stream's feedback-free alerts."""
        alerts = tuple(self.run(seed, 0).alerts)
        fp_open, fp_resolve = _episode(alerts, "k0", 0)
        tp_open, tp_resolve = _episode(alerts, "k1", 0)
        return (
            _marked("false_positive", fp_open, fp_resolve, known_end=True, event_id="fp"),
            _marked("true_positive", tp_open, tp_resolve, known_end=False, event_id="tp"),
            _sensitivity("s-1", "k2", 2.0, T0 + 80),
            _sensitivity("s-2", "k1", 0.5, T0 + 120),
            _mute("m-1", "k2", T0 + 95, T0 + 130),
            _mute("m-2", "k*", T0 + 138, T0 + 150),
            _unmute("u-1", "k*", T0 + 142),
        )

    def run(self, seed: int, batch: int) -> Run:
        """The seeded stream in batches of `batch` with the feedback; batch 0: the whole stream
        in one batch, without feedback (what the feedback is built from)."""
        if (seed, batch) not in self._runs:
            payloads = _stream(seed)
            if batch == 0:
                run = Run(_detector(self.artefact), payloads, len(payloads))
            else:
                run = Run(_detector(self.artefact, *self.feedback(seed)), payloads, batch)
            self._runs[seed, batch] = run
        return self._runs[seed, batch]


@pytest.fixture(scope="module")
def runs(artefact: ModelArtefact) -> FeedbackRuns:
    return FeedbackRuns(artefact)


def _assert_same(got: Run, want: Run) -> None:
    """Same scored windows, decisions, thresholds, mutes and alerts."""
    np.testing.assert_allclose(got.floats, want.floats, rtol=1e-5, atol=1e-6)
    # Float rounding could decide a score equal to its threshold either way; the seeded streams
    # have none close enough for that, so every comparison below is a real one.
    assert not any(abs(s - t) <= 1e-4 * max(abs(t), 1e-6) for s, t in want.floats)
    assert got.windows == want.windows
    assert got.muted == want.muted
    assert [a.alert_id for a in got.alerts] == [a.alert_id for a in want.alerts]
    for a, b in zip(got.alerts, want.alerts, strict=True):
        assert (a.kind, a.key, a.window_end, a.windows_over) == (
            b.kind,
            b.key,
            b.window_end,
            b.windows_over,
        )
        assert a.score == pytest.approx(b.score, rel=1e-5)
        assert a.threshold == pytest.approx(b.threshold, rel=1e-5)


def test_feedback_changes_the_results_it_is_checked_on(runs: FeedbackRuns, baseline: Run) -> None:
    """The batch-invariance check below is not vacuous: the feedback alters alerts,
    thresholds and mutes compared with the same stream without it."""
    with_feedback = runs.run(0, len(_stream(0)))
    assert with_feedback.muted > 0
    assert [a.alert_id for a in with_feedback.alerts] != [a.alert_id for a in baseline.alerts]
    for key in KEYS:
        assert with_feedback.thresholds(key) != baseline.thresholds(key), key


@pytest.mark.parametrize("batch", [7, N_STEPS * len(KEYS)])
def test_with_feedback_the_results_are_those_of_one_event_at_a_time(
    runs: FeedbackRuns, batch: int
) -> None:
    _assert_same(runs.run(0, batch), runs.run(0, 1))


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(0, 2), batch=st.integers(2, 200))
def test_with_feedback_any_batch_size_gives_the_one_event_at_a_time_results(
    runs: FeedbackRuns, seed: int, batch: int
) -> None:
    _assert_same(runs.run(seed, batch), runs.run(seed, 1))


# --------------------------------------------------------------------------------------------
# False positives hold for the same pattern only
# --------------------------------------------------------------------------------------------


def _profiled(profile: dict[str, float] | None, similarity: float = 0.9) -> FeedbackLedger:
    data = _alert_data("k1", T0, score=2.0, effective=T0 + 10, episode_end=T0 + 10)
    data["profile"] = profile
    ledger = FeedbackLedger(FeedbackConfig(false_positive_similarity=similarity))
    assert ledger.apply(_parsed("false_positive", data, "fp-profile"))
    return ledger


# Three windows of k1 after the false positive: the marked pattern (error on "bytes"), another
# kind of anomaly (error on "ports"), and a mix.
PROFILE_ERRORS = np.array([[0.9, 0.1], [0.05, 0.95], [0.5, 0.5]])
PROFILE_KEYS = np.array(["k1", "k1", "k1"], dtype=object)
PROFILE_ENDS = np.array([T0 + 20, T0 + 30, T0 + 40])


def test_a_false_positive_floor_holds_for_windows_with_the_marked_error_profile_only() -> None:
    ledger = _profiled({"bytes": 0.9, "ports": 0.1})
    adjust = ledger.adjustments(
        PROFILE_KEYS, PROFILE_ENDS, VERSION, PROFILE_ERRORS, ("bytes", "ports")
    )
    assert adjust is not None
    assert adjust.floor.tolist() == [2.5, 0.0, 0.0]


def test_a_false_positive_without_a_profile_holds_for_every_window_of_the_key() -> None:
    ledger = _profiled(None)
    adjust = ledger.adjustments(
        PROFILE_KEYS, PROFILE_ENDS, VERSION, PROFILE_ERRORS, ("bytes", "ports")
    )
    assert adjust is not None and adjust.floor.tolist() == [2.5, 2.5, 2.5]


def test_a_profile_naming_no_feature_of_the_model_holds_for_every_window() -> None:
    ledger = _profiled({"other": 1.0})
    adjust = ledger.adjustments(
        PROFILE_KEYS, PROFILE_ENDS, VERSION, PROFILE_ERRORS, ("bytes", "ports")
    )
    assert adjust is not None and adjust.floor.tolist() == [2.5, 2.5, 2.5]


@pytest.mark.parametrize(
    ("profile", "match"),
    [
        ({"bytes": 1.5}, "share in"),
        ({"bytes": True}, "share in"),
        ({"bytes": 0.0}, "above 0"),
        (["bytes"], "object"),
    ],
)
def test_a_bad_profile_is_refused(profile: Any, match: str) -> None:
    data = _alert_data(profile=profile)
    _rejects(_envelope("false_positive", data), match)


def test_a_window_only_a_floor_holds_back_is_not_learnt() -> None:
    """Over the key's own band but under a false positive's floor: not an alert, and not the
    key's normal either (learning it would widen the band for every other anomaly)."""
    threshold = _warm_threshold()
    reference, _ = _warm_threshold().apply(np.array([0]), np.array([0.0]))
    limit = float(reference[0])
    before = _state(threshold)
    _, exceed = threshold.apply(
        np.array([0]), np.array([limit * 2.0]), floor=np.array([limit * 3.0])
    )
    assert exceed.tolist() == [False]
    assert _state(threshold) == before
    # A window under the band itself is learnt as always, floor or not.
    threshold.apply(np.array([0]), np.array([limit * 0.5]), floor=np.array([limit * 3.0]))
    assert _state(threshold) != before
