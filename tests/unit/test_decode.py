"""Decoder: good records of every form, one reject per reason, and hostile input fuzzed against a
plain per-record reference implementation of the same rules."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_detector.config import InputConfig
from stream_detector.engine import decode as decode_module
from stream_detector.engine.decode import Decoder
from stream_detector.engine.types import REJECT_REASONS, Decoded, RejectTally

# numpy overflow in a cast is a warning; decode must handle it, not leak it
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

NOW = 2_000_000_000.0  # 2033-05-18, fixed so "too far in the future" does not drift
T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z


def decoder(**overrides: Any) -> Decoder:
    return Decoder(InputConfig(**overrides), now=lambda: NOW)


def message(**fields: Any) -> bytes:
    return orjson.dumps({"key": "k", "ts": T0, "value": 1.0} | fields)


def only_reject(decoded: Decoded) -> tuple[str, str]:
    assert len(decoded.batch) == 0
    assert len(decoded.rejects) == 1
    return decoded.rejects[0].reason, decoded.rejects[0].detail


# -- good records -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "ts", "seconds"),
    [
        ("auto", 1_714_564_800, T0),
        ("auto", 1_714_564_800.25, T0 + 0.25),
        ("auto", 1_714_564_800_250, T0 + 0.25),
        ("auto", 1_714_564_800_250_000, T0 + 0.25),
        ("auto", 1_714_564_800_250_000_000, T0 + 0.25),
        ("auto", 99_999_999_999, None),  # just below 1e11: seconds, far in the future
        ("auto", 200_000_000_000, 2e8),  # each order of magnitude boundary: 2e8 s is 1976
        ("auto", 200_000_000_000_000, 2e8),
        ("auto", 200_000_000_000_000_000, 2e8),
        ("auto", "2024-05-01T12:00:00Z", T0),
        ("auto", "2024-05-01T14:00:00+02:00", T0),
        ("auto", "2024-05-01T11:30:00-00:30", T0),
        ("auto", "2024-05-01T12:00:00.25Z", T0 + 0.25),
        ("auto", "2024-05-01t12:00:00.25z", T0 + 0.25),
        ("auto", "2024-05-01T12:00:00.123456789Z", T0 + 0.123456),
        ("rfc3339", "2024-05-01T12:00:00.5Z", T0 + 0.5),
        ("s", 1_714_564_800.5, T0 + 0.5),
        ("s", 1_000, 1_000.0),  # small epoch second: auto would agree, explicit unit must too
        ("ms", 1_714_564_800_500, T0 + 0.5),
        ("ms", 1_000, 1.0),  # explicit ms even where auto would have guessed seconds
        ("us", 1_714_564_800_500_000, T0 + 0.5),
        ("ns", 1_714_564_800_500_000_000, T0 + 0.5),
    ],
)
def test_timestamp_forms_decode_to_epoch_seconds(
    unit: str, ts: Any, seconds: float | None
) -> None:
    # The floor has its own test; here 1976 and 1970 are fine, to reach every unit's boundary.
    decoded = decoder(timestamp_unit=unit, min_timestamp=0.0).decode_messages([message(ts=ts)])
    if seconds is None:
        assert only_reject(decoded)[0] == "absurd_timestamp"
        return
    assert decoded.rejects == []
    assert decoded.batch.ts.dtype == np.float64
    assert decoded.batch.ts[0] == pytest.approx(seconds, abs=1e-6)


def test_good_batch_keeps_order_positions_and_dtypes() -> None:
    dec = decoder(value_fields=("value", "metrics.cpu"))
    payloads = [
        orjson.dumps({"key": "b", "ts": T0 + 2, "value": 2.5, "metrics": {"cpu": 0.5}}),
        b"not json",
        orjson.dumps({"key": 7, "ts": T0 + 1, "value": -1, "metrics": {"cpu": 3}}),
        orjson.dumps({"key": "a", "ts": T0, "value": 1e30, "metrics": {"cpu": 0}, "extra": [1]}),
    ]
    batch = dec.decode_messages(payloads).batch
    assert dec.feature_names == ("value", "metrics.cpu")
    assert batch.index.dtype == np.int64 and batch.index.tolist() == [0, 2, 3]
    assert batch.keys.dtype == object and batch.keys.tolist() == ["b", "7", "a"]
    assert batch.ts.tolist() == [T0 + 2, T0 + 1, T0]
    assert batch.values.dtype == np.float32
    np.testing.assert_array_equal(
        batch.values, np.array([[2.5, 0.5], [-1, 3], [1e30, 0]], dtype=np.float32)
    )


def test_kafka_key_and_broker_timestamp_modes() -> None:
    dec = decoder(key_field=None, timestamp_field=None)
    payloads = [orjson.dumps({"value": float(i)}) for i in range(4)]
    keys = [b"alpha", None, "caf\u00e9".encode(), b"\xff\xfe"]
    broker = np.array([T0 * 1000, T0 * 1000 + 1, T0 * 1000 + 500, T0 * 1000], dtype=np.int64)
    decoded = dec.decode_messages(payloads, keys=keys, broker_ts_ms=broker)
    assert decoded.batch.index.tolist() == [0, 2]
    assert decoded.batch.keys.tolist() == ["alpha", "caf\u00e9"]
    assert decoded.batch.ts.tolist() == [T0, T0 + 0.5]
    assert [(r.index, r.reason) for r in decoded.rejects] == [(1, "missing_key"), (3, "bad_key")]
    assert "Kafka message key" in decoded.rejects[1].detail


def test_kafka_modes_require_their_sidecars() -> None:
    with pytest.raises(ValueError, match="key_field"):
        decoder(key_field=None).decode_messages([message()])
    with pytest.raises(ValueError, match="timestamp_field"):
        decoder(timestamp_field=None).decode_messages([message()], broker_ts_ms=[1, 2])


def test_missing_broker_timestamp_is_bad_not_1969() -> None:
    dec = decoder(timestamp_field=None)
    reason, detail = only_reject(dec.decode_messages([message()], broker_ts_ms=[-1]))
    assert reason == "bad_timestamp" and "broker timestamp" in detail


def test_labels_follow_accepted_events() -> None:
    dec = decoder(label_field="label")
    payloads = [
        message(label=1),
        message(label=0),
        message(value="x", label=1),
        message(label=True),
        message(),
        message(label="true"),
    ]
    decoded = dec.decode_messages(payloads)
    assert decoded.batch.index.tolist() == [0, 1, 3, 4, 5]
    assert decoded.labels is not None and decoded.labels.dtype == np.int8
    assert decoded.labels.tolist() == [1, 0, 1, 0, 1]
    assert decoder().decode_messages(payloads).labels is None


# -- one test per reject reason -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason", "fragment"),
    [
        (b"x" * 2000, "oversized", "2000 bytes"),
        (b"{broken", "not_json", "JSON"),
        (None, "not_json", "null"),
        (b"", "not_json", "empty"),
        (b"\xff\xfe", "not_json", "UTF-8"),
        (b"[" * 499 + b"]" * 499, "not_object", "array"),
        (b'"a string"', "not_object", "string"),
        (b"null", "not_object", "null"),
        (b'{"ts": 1714564800, "value": 1}', "missing_key", "'key'"),
        (message(key=None), "missing_key", "'key'"),
        (message(key=""), "missing_key", "empty"),
        (message(key=1.5), "bad_key", "1.5"),
        (message(key=True), "bad_key", "True"),
        (message(key=["a"]), "bad_key", "array"),
        (b'{"key": "k", "ts": 1714564800}', "missing_value", "'value'"),
        (message(value=None), "missing_value", "'value'"),
        (message(value="abc"), "non_numeric", "'value' is 'abc', not a number"),
        (message(value=True), "non_numeric", "'value'"),
        (message(value={"a": 1}), "non_numeric", "object"),
        (message(value=1e300), "non_finite", "'value'"),
        (b'{"key": "k", "ts": 1714564800, "value": 1e999}', "non_finite", "'value' is inf"),
        (b'{"key": "k", "ts": 1714564800, "value": 1e309}', "non_finite", "'value' is inf"),
        (b'{"key": "k", "ts": 1714564800, "value": NaN}', "non_finite", "'value' is nan"),
        (b'{"key": "k", "ts": 1714564800, "value": Infinity}', "non_finite", "'value' is inf"),
        (b'{"key": "k", "ts": 1714564800, "value": -Infinity}', "non_finite", "'value' is -inf"),
        (b'{"key": "k", "ts": 1714564800, "value": -1' + b"0" * 400 + b"}", "non_finite", "-inf"),
        (b'{"key": "k", "ts": NaN, "value": 1}', "bad_timestamp", "not finite"),
        (b'{"key": "k", "ts": 1714564800, "value": NaN', "not_json", "JSON"),  # and broken
        (b'{"key": "k", "value": 1}', "bad_timestamp", "'ts'"),
        (message(ts="yesterday"), "bad_timestamp", "'yesterday'"),
        (message(ts=False), "bad_timestamp", "'ts'"),
        (message(ts=[1]), "bad_timestamp", "'ts'"),
        (message(ts=-5.0), "absurd_timestamp", "min_timestamp"),
        (message(ts=NOW * 1000 + 400 * 365 * 86400 * 1000), "absurd_timestamp", "max_future_s"),
        (message(ts="9999-12-31T23:59:59Z"), "absurd_timestamp", "max_future_s"),
    ],
)
def test_each_bad_record_gets_its_reason(payload: Any, reason: str, fragment: str) -> None:
    dec = decoder(max_message_bytes=1000)
    got_reason, detail = only_reject(dec.decode_messages([payload]))
    assert reason in REJECT_REASONS
    assert got_reason == reason
    assert fragment in detail


def test_non_finite_numbers_only_refuse_the_fields_they_are_in() -> None:
    unused = b'{"key": "k", "ts": 1714564800, "value": 2, "spare": NaN}'
    integer_key = b'{"key": 0, "ts": 1714564800, "value": 2, "spare": Infinity}'
    decoded = decoder().decode_messages([unused, integer_key])
    assert decoded.rejects == []
    assert decoded.batch.keys.tolist() == ["k", "0"]
    assert decoded.batch.values[:, 0].tolist() == [2.0, 2.0]


def test_what_only_a_lenient_parser_reads_stays_not_json() -> None:
    lone_surrogate = b'{"key": "\\ud800", "ts": 1714564800, "value": NaN}'
    utf16 = '{"key": "k", "ts": 1714564800, "value": NaN}'.encode("utf-16")
    deep = b'{"key": "k", "ts": 1714564800, "value": NaN, "x": ' + b"[" * 600 + b"]" * 600 + b"}"
    rejects = decoder(max_message_bytes=10_000).decode_messages([lone_surrogate, utf16, deep])
    assert [r.reason for r in rejects.rejects] == ["not_json"] * 3


def test_deep_nesting_is_refused_not_crashed() -> None:
    dec = decoder(max_message_bytes=100_000)
    too_deep = b"[" * 5000 + b"]" * 5000
    nested_value = b'{"key":"k","ts":1714564800,"value":' + b"[" * 1000 + b"]" * 1000 + b"}"
    decoded = dec.decode_messages([too_deep, nested_value, message()])
    assert decoded.batch.index.tolist() == [2]
    assert [(r.index, r.reason) for r in decoded.rejects] == [(0, "not_json"), (1, "non_numeric")]


def test_size_limit_is_inclusive() -> None:
    payload = message()
    at_limit = decoder(max_message_bytes=len(payload)).decode_messages([payload])
    assert len(at_limit.batch) == 1
    over = decoder(max_message_bytes=len(payload) - 1).decode_messages([payload])
    assert only_reject(over)[0] == "oversized"


def test_nested_value_path_names_the_whole_path() -> None:
    dec = decoder(value_fields=("metrics.cpu",))
    payloads = [
        orjson.dumps({"key": "k", "ts": T0, "metrics": {"cpu": "abc"}}),
        orjson.dumps({"key": "k", "ts": T0, "metrics": 5}),
        orjson.dumps({"key": "k", "ts": T0, "metrics.cpu": 5}),  # literal dotted name is not a path
    ]
    rejects = dec.decode_messages(payloads).rejects
    assert [r.reason for r in rejects] == ["non_numeric", "missing_value", "missing_value"]
    assert rejects[0].detail == "field 'metrics.cpu' is 'abc', not a number"


def test_timestamp_unit_restricts_accepted_forms() -> None:
    as_text = decoder(timestamp_unit="ms").decode_messages([message(ts="2024-05-01T12:00:00Z")])
    assert only_reject(as_text)[0] == "bad_timestamp"
    as_number = decoder(timestamp_unit="rfc3339").decode_messages([message(ts=T0)])
    assert only_reject(as_number) == (
        "bad_timestamp",
        "timestamp field 'ts' is 1714564800.0, not an RFC 3339 time",
    )


def test_time_without_offset_is_utc_whatever_the_local_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "XYZ+05")  # POSIX zone 5 h west of UTC; needs no tz database
    time.tzset()
    try:
        decoded = decoder().decode_messages([message(ts="2024-05-01T12:00:00")])
    finally:
        monkeypatch.undo()
        time.tzset()
    assert decoded.batch.ts.tolist() == [T0]


@pytest.mark.parametrize("ts", [0, 1, 1_000, 946_684_799.9, "1970-01-01T00:00:00Z"])
def test_default_floor_refuses_times_a_live_feed_cannot_have(ts: Any) -> None:
    reason, detail = only_reject(decoder().decode_messages([message(ts=ts)]))
    assert reason == "absurd_timestamp"
    assert "before input.min_timestamp=946684800.0" in detail


def test_default_floor_is_the_start_of_2000() -> None:
    floor = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
    assert InputConfig().min_timestamp == floor
    decoded = decoder().decode_messages([message(ts=floor), message(ts="2000-01-01T00:00:00Z")])
    assert decoded.rejects == [] and decoded.batch.ts.tolist() == [floor, floor]


def test_min_timestamp_is_configurable() -> None:
    dec = decoder(min_timestamp=T0)
    decoded = dec.decode_messages([message(ts=T0 - 1), message(ts=T0)])
    assert decoded.batch.index.tolist() == [1]
    assert decoded.rejects[0].reason == "absurd_timestamp"


def test_first_failing_field_wins_in_key_timestamp_value_order() -> None:
    bad_everything = orjson.dumps({"key": 1.5, "ts": "x", "value": "y"})
    bad_ts_and_value = orjson.dumps({"key": "k", "ts": "x", "value": "y"})
    rejects = decoder().decode_messages([bad_everything, bad_ts_and_value]).rejects
    assert [r.reason for r in rejects] == ["bad_key", "bad_timestamp"]


# -- columns --------------------------------------------------------------------------------------


def test_decode_columns_reads_text_cells_like_json() -> None:
    dec = decoder(value_fields=("value", "other"), label_field="label")
    columns = {
        "key": ["a", "b", "", "d", "e", "f", "g"],
        "ts": ["1714564800", "2024-05-01T12:00:01Z", "1714564800", "x", "", "1714564800000", str(T0)],
        "value": ["1.5", " 2 ", "3", "4", "5", "6", "7"],
        "other": ["0", "1e2", "0", "0", "0", "inf", "abc"],
        "label": ["1", "0", "1", "1", "1", "true", "0"],
    }
    decoded = dec.decode_columns(columns)
    assert decoded.batch.index.tolist() == [0, 1]
    assert decoded.batch.keys.tolist() == ["a", "b"]
    assert decoded.batch.ts.tolist() == [T0, T0 + 1]
    np.testing.assert_array_equal(decoded.batch.values, np.float32([[1.5, 0], [2, 100]]))
    assert decoded.labels is not None and decoded.labels.tolist() == [1, 0]
    assert [(r.index, r.reason) for r in decoded.rejects] == [
        (2, "missing_key"),
        (3, "bad_timestamp"),
        (4, "bad_timestamp"),
        (5, "non_finite"),
        (6, "non_numeric"),
    ]
    assert decoded.rejects[-1].detail == "field 'other' is 'abc', not a number"


def test_decode_columns_takes_numeric_arrays_and_reports_absent_columns() -> None:
    dec = decoder(label_field="label")
    columns = {
        "key": np.array([1, 2, 3]),
        "ts": np.array([T0 * 1e9, T0 * 1e9, np.nan]),
        "value": np.array([0.5, np.inf, 1.0]),
    }
    decoded = dec.decode_columns(columns)
    assert decoded.batch.keys.tolist() == ["1"]
    assert decoded.batch.ts.tolist() == [T0]
    assert [r.reason for r in decoded.rejects] == ["non_finite", "bad_timestamp"]
    assert decoded.labels is None  # label_field set but the column is not there

    no_values = dec.decode_columns({"key": ["a"], "ts": [T0]})
    assert only_reject(no_values)[0] == "missing_value"


def test_decode_columns_survives_huge_python_ints() -> None:
    columns = {"key": [10**5000, 10**20], "ts": [T0, T0], "value": [1, 10**400]}
    decoded = decoder().decode_columns(columns)
    assert [(r.index, r.reason) for r in decoded.rejects] == [(0, "bad_key"), (1, "non_finite")]


def test_decode_columns_rejects_misuse() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        decoder().decode_columns({"key": ["a"], "ts": [1.0, 2.0], "value": [1.0]})
    with pytest.raises(ValueError, match="key_field must name a column.*'@single_series'"):
        decoder(key_field=None).decode_columns({"ts": [1.0], "value": [1.0]})
    with pytest.raises(ValueError, match="timestamp_field must name a column"):
        decoder(timestamp_field=None).decode_columns({"key": ["a"], "value": [1.0]})
    with pytest.raises(ValueError, match="key_fields names record fields, not '@single_series'"):
        InputConfig(key_fields=("host", "@single_series"))
    assert len(decoder().decode_columns({}).batch) == 0


def test_a_single_series_feed_keys_every_record_alike_from_a_topic_or_a_file() -> None:
    dec = decoder(key_field="@single_series")
    assert InputConfig(key_field="@single_series").key_paths == ()
    payloads = [json.dumps({"ts": T0 + i, "value": float(i), "key": "ignored"}).encode()
                for i in range(3)]  # fmt: skip
    # Message keys, present or not, play no part.
    for keys in (None, [b"a", None, b"c"]):
        decoded = dec.decode_messages(payloads, keys)
        assert decoded.batch.keys.tolist() == ["single_series"] * 3 and not decoded.rejects
    decoded = dec.decode_columns({"ts": [T0, "x"], "value": ["1", "2"]})
    assert decoded.batch.keys.tolist() == ["single_series"]
    assert [r.reason for r in decoded.rejects] == ["bad_timestamp"]


def test_the_reject_tally_names_each_reason_with_its_first_detail() -> None:
    tally = RejectTally()
    assert str(tally) == "no records refused"
    tally.add(decoder().decode_columns({"ts": [T0, T0], "value": [1, 2]}).rejects)
    tally.add(decoder().decode_columns({"key": ["a"], "ts": ["x"], "value": [1]}).rejects)
    assert str(tally) == (
        "3 records refused: missing_key 2 (first: key field 'key' is missing or null), "
        "bad_timestamp 1 (first: timestamp field 'ts' is 'x', not a number or an RFC 3339 time)"
    )


# -- fast path vs per-message path ----------------------------------------------------------------


INJECTIONS = [
    b"1,2",
    b"]",
    b"[",
    b'{"a":1},{"b":2}',
    b'{"key":"k","ts":1714564800,"value":1},{"key":"k","ts":1714564800,"value":2}',
    b'{"a":"}',  # with the next two: a comma join yields three objects from three payloads,
    b'{"}',  # but none of them is one of the payloads
    b'{"x":1},{"y":2}',
    b"[1",
    b"2]",
    b'"',
    b"\\",
    b' ,"~0",',
    b"1,2,3",
    b"[4",
    b"5]",
    b"",
    b"  ",
]


def count_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = orjson.loads

    def counting(data: Any) -> Any:
        calls[0] += 1
        return real(data)

    monkeypatch.setattr(decode_module.orjson, "loads", counting)
    return calls


def test_good_batch_takes_one_parse_and_a_bad_one_falls_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good = [message(key=f"k{i}", value=float(i)) for i in range(10)]
    calls = count_loads(monkeypatch)
    lenient = [0]
    real_json_loads = json.loads

    def counting_json(*args: Any, **kwargs: Any) -> Any:
        lenient[0] += 1
        return real_json_loads(*args, **kwargs)

    monkeypatch.setattr(decode_module.json, "loads", counting_json)
    decoder().decode_messages(good)
    assert calls[0] == 1
    decoder().decode_messages([*good, b"1,2", b'{"value": NaN}'])
    assert calls[0] == 1 + 1 + 12
    assert lenient[0] == 2  # only the two payloads orjson refused are looked at again


@pytest.mark.parametrize(
    "attack",
    [
        [b'{"a":"}', b'{"}', b'{"x":1},{"y":2}'],
        [b"[1", b"2]"],
        [b"1,2", b"[3", b"4]"],
        [b"1,2,3", b"[4", b"5]"],  # as many elements as payloads even with a separator element
        [b"]", b"["],
    ],
)
def test_payloads_that_fool_a_comma_join_are_each_rejected(attack: list[bytes]) -> None:
    good = message()
    decoded = decoder().decode_messages([good, *attack, good])
    assert decoded.batch.index.tolist() == [0, len(attack) + 1]
    assert {r.reason for r in decoded.rejects} == {"not_json"}


def assert_same(a: Decoded, b: Decoded) -> None:
    np.testing.assert_array_equal(a.batch.index, b.batch.index)
    assert a.batch.keys.tolist() == b.batch.keys.tolist()
    np.testing.assert_array_equal(a.batch.ts, b.batch.ts)
    np.testing.assert_array_equal(a.batch.values, b.batch.values)
    assert a.rejects == b.rejects


# -- hostile input against a plain reference ------------------------------------------------------

CONFIG = InputConfig(value_fields=("value", "m.x"), max_message_bytes=300, label_field="label")
_DIVISORS = (1.0, 1e3, 1e6, 1e9)


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def non_finite_reading(payload: bytes) -> Any:
    """Python's reading of a payload orjson refused, if what it holds is a non-finite number."""
    try:
        obj = json.loads(payload.decode("utf-8"))
        orjson.dumps(obj)
    except (ValueError, RecursionError, orjson.JSONEncodeError):
        return None
    return obj if holds_non_finite(obj) else None


def holds_non_finite(obj: Any) -> bool:
    if isinstance(obj, float):
        return not math.isfinite(obj)
    if isinstance(obj, list):
        return any(map(holds_non_finite, obj))
    if isinstance(obj, dict):
        return any(map(holds_non_finite, obj.values()))
    return False


def reference(payload: Any) -> str | tuple[str, float, list[float]]:
    """The rules, one record at a time, as plainly as possible: a reason or (key, ts, values)."""
    if not isinstance(payload, bytes) or len(payload) == 0:
        return "not_json"
    if len(payload) > CONFIG.max_message_bytes:
        return "oversized"
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        obj = non_finite_reading(payload)
        if obj is None:
            return "not_json"
    if not isinstance(obj, dict):
        return "not_object"
    key = _get(obj, "key")
    if key is None or key == "":
        return "missing_key"
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        return "bad_key"
    ts = _get(obj, "ts")
    if isinstance(ts, (int, float)) and not isinstance(ts, bool):
        ts = float(ts)
        seconds = ts / _DIVISORS[sum(abs(ts) >= bound for bound in (1e11, 1e14, 1e17))]
    elif isinstance(ts, str):
        try:
            try:
                moment = datetime.fromisoformat(ts)
            except ValueError:
                moment = datetime.fromisoformat(ts.upper())
            seconds = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
        except (ValueError, OverflowError):
            return "bad_timestamp"
    else:
        return "bad_timestamp"
    if not math.isfinite(seconds):
        return "bad_timestamp"
    if seconds < CONFIG.min_timestamp or seconds > NOW + CONFIG.max_future_s:
        return "absurd_timestamp"
    values = []
    for field in CONFIG.value_fields:
        value = _get(obj, field)
        if value is None:
            return "missing_value"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "non_numeric"
        with np.errstate(over="ignore"):
            as_float32 = np.float32(value)
        if not np.isfinite(as_float32):
            return "non_finite"
        values.append(float(as_float32))
    return (str(key), seconds, values)


# json.dumps writes these as NaN / Infinity / -Infinity, which orjson refuses.
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | non_finite
)
any_json = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
offsets = st.timedeltas(min_value=-timedelta(hours=23), max_value=timedelta(hours=23))
timestamps = (
    st.floats(min_value=-1e20, max_value=1e20)
    | st.integers(-(2**64), 2**64)
    | st.datetimes(timezones=offsets.map(timezone)).map(lambda d: d.isoformat())
    | st.datetimes().map(lambda d: d.isoformat().lower())
    | st.sampled_from(["2024-05-01T12:00:00Z", "2024-13-01T00:00:00Z", "now", ""])
    | any_json
)
numbers = (
    st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**70), 2**70) | non_finite
)


@st.composite
def record(draw: st.DrawFn) -> bytes:
    obj: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        obj["key"] = draw(st.text(max_size=6) | st.integers(-(2**63), 2**63) | any_json)
    if draw(st.integers(0, 9)):
        obj["ts"] = draw(st.just(T0) | timestamps)
    if draw(st.integers(0, 9)):
        obj["value"] = draw(numbers | any_json)
    if draw(st.integers(0, 9)):
        obj["m"] = draw(st.fixed_dictionaries({"x": numbers}) | any_json)
    if draw(st.booleans()):
        obj["label"] = draw(any_json)
    return json.dumps(obj).encode()


payload_strategy = (
    record()
    | any_json.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=40)
    | st.sampled_from(INJECTIONS)
    | st.none()
    | st.just(b'{"key":"k","ts":1714564800,"value":1,"m":{"x":2},"pad":"' + b"x" * 400 + b'"}')
)


def check_invariants(decoded: Decoded, n: int) -> None:
    batch = decoded.batch
    assert len(batch) + len(decoded.rejects) == n
    positions = batch.index.tolist() + [r.index for r in decoded.rejects]
    assert sorted(positions) == list(range(n))
    assert batch.index.tolist() == sorted(batch.index.tolist())
    assert [r.index for r in decoded.rejects] == sorted(r.index for r in decoded.rejects)
    for reject in decoded.rejects:
        assert reject.reason in REJECT_REASONS
        assert reject.detail
    assert batch.values.dtype == np.float32 and batch.values.shape == (len(batch), 2)
    assert np.isfinite(batch.values).all()
    assert np.isfinite(batch.ts).all()
    assert all(type(k) is str and k for k in batch.keys.tolist())
    assert decoded.labels is not None and decoded.labels.shape == (len(batch),)
    assert set(decoded.labels.tolist()) <= {0, 1}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(payload_strategy, max_size=12))
def test_hostile_batches_match_the_reference(payloads: list[Any]) -> None:
    decoded = Decoder(CONFIG, now=lambda: NOW).decode_messages(payloads)
    check_invariants(decoded, len(payloads))
    expected = [reference(p) for p in payloads]
    reasons = {r.index: r.reason for r in decoded.rejects}
    accepted = {i: row for row, i in enumerate(decoded.batch.index.tolist())}
    for i, want in enumerate(expected):
        if isinstance(want, str):
            assert reasons.get(i) == want, (i, payloads[i])
        else:
            assert i in accepted, (i, payloads[i], reasons.get(i))
            row = accepted[i]
            key, seconds, values = want
            assert decoded.batch.keys[row] == key
            assert decoded.batch.ts[row] == seconds
            assert decoded.batch.values[row].tolist() == values


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=30) | st.none(), max_size=10), st.data())
def test_random_bytes_in_kafka_modes_never_raise(payloads: list[Any], data: st.DataObject) -> None:
    n = len(payloads)
    keys = data.draw(st.lists(st.binary(max_size=4) | st.none(), min_size=n, max_size=n))
    broker = data.draw(st.lists(st.integers(-1, 2**62), min_size=n, max_size=n))
    dec = Decoder(InputConfig(key_field=None, timestamp_field=None, label_field="label"))
    decoded = dec.decode_messages(payloads, keys=keys, broker_ts_ms=np.array(broker, np.int64))
    check_invariants_loose(decoded, n)


def check_invariants_loose(decoded: Decoded, n: int) -> None:
    assert len(decoded.batch) + len(decoded.rejects) == n
    positions = decoded.batch.index.tolist() + [r.index for r in decoded.rejects]
    assert sorted(positions) == list(range(n))
    assert all(r.reason in REJECT_REASONS and r.detail for r in decoded.rejects)
    assert np.isfinite(decoded.batch.values).all()


good_records = st.builds(
    lambda key, ts, value, x: orjson.dumps({"key": key, "ts": ts, "value": value, "m": {"x": x}}),
    st.text(min_size=1, max_size=5) | st.integers(0, 10**6),
    st.floats(1e9, 1.9e9) | st.integers(10**12, 19 * 10**11),
    st.floats(-1e30, 1e30),
    st.integers(-1000, 1000),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(good_records, min_size=1, max_size=20))
def test_fast_and_per_message_paths_agree(payloads: list[bytes]) -> None:
    dec = Decoder(CONFIG, now=lambda: NOW)
    fast = dec.decode_messages(payloads)
    slow = dec.decode_messages([*payloads, b"1,2"])  # the last payload forces the fallback
    assert len(fast.batch) == len(payloads) and fast.rejects == []
    assert [r.index for r in slow.rejects] == [len(payloads)]
    assert_same(fast, Decoded(slow.batch, []))


cells = (
    any_json
    | st.floats()
    | st.binary(max_size=4)
    | st.integers(-(10**400), 10**400)
    | st.sampled_from(["", " ", "nan", "-inf", "1e999", "2024-05-01T12:00:00Z", "1714564800"])
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(cells, cells, cells, cells), max_size=10))
def test_hostile_columns_never_raise(rows: list[tuple[Any, Any, Any, Any]]) -> None:
    keys, ts, values, labels = ([row[i] for row in rows] for i in range(4))
    dec = Decoder(InputConfig(label_field="label"), now=lambda: NOW)
    decoded = dec.decode_columns({"key": keys, "ts": ts, "value": values, "label": labels})
    check_invariants_loose(decoded, len(rows))
    assert decoded.labels is not None and len(decoded.labels) == len(decoded.batch)


def test_extra_fields_come_from_the_same_parse_row_for_row_with_the_batch() -> None:
    """Only accepted events get a row; absent paths give None; values are not validated."""
    dec = decoder(key_field="k", timestamp_field="ts", value_fields=("v",))
    payloads = [
        orjson.dumps({"k": "a", "ts": NOW, "v": 1, "dst": {"port": 443, "tags": [1, 2]}}),
        b"{broken",
        orjson.dumps({"k": "b", "ts": NOW, "v": "x", "dst": {"port": 22}}),  # refused: non-numeric
        orjson.dumps({"k": "c", "ts": NOW, "v": 3}),  # no dst at all
        orjson.dumps({"k": "d", "ts": NOW, "v": 4, "dst": {"port": "ssh", "tags": [3, 4]}}),
    ]
    decoded, (ports, tags) = dec.decode_with_fields(payloads, None, None, ("dst.port", "dst.tags"))
    plain = dec.decode_messages(payloads)
    assert decoded.batch.index.tolist() == plain.batch.index.tolist() == [0, 3, 4]
    assert decoded.rejects == plain.rejects
    assert ports.tolist() == [443, None, "ssh"]
    assert tags.tolist() == [[1, 2], None, [3, 4]], "each value kept whole"
    assert dec.decode_with_fields(payloads, None, None, ())[1] == []


# -- event times that go back ---------------------------------------------------------------------


def out_of_order_reference(codes: list[int], ts: list[float], newest: list[float]) -> list[bool]:
    latest = list(newest)
    behind = []
    for code, t in zip(codes, ts, strict=True):
        behind.append(t < latest[code])
        latest[code] = max(latest[code], t)
    return behind


def test_out_of_order_flags_events_behind_their_keys_newest_time() -> None:
    codes = np.array([0, 1, 0, 0, 1, 0, 2], dtype=np.int64)
    ts = np.array([T0 + 5, T0 + 1, T0 + 3, T0 + 6, T0 + 1, T0 + 5.5, T0], dtype=np.float64)
    newest = np.array([T0 + 4, -np.inf, T0 + 1])
    flags = decode_module.out_of_order(codes, ts, newest)
    # key 0: 5 (after 4), 3 (behind 5), 6, 5.5 (behind 6); key 1: equal times are in order;
    # key 2: behind its newest time before the batch.
    assert flags.tolist() == [False, False, True, False, False, True, True]
    in_order = decode_module.out_of_order(codes, np.arange(7.0) + T0, np.full(3, -np.inf))
    assert not in_order.any()
    assert decode_module.out_of_order(codes[:0], ts[:0], newest).shape == (0,)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(-5, 5)), max_size=30),
    st.lists(st.one_of(st.just(-math.inf), st.integers(-5, 5).map(float)), min_size=4, max_size=4),
)
def test_out_of_order_matches_one_event_at_a_time(
    events: list[tuple[int, int]], newest: list[float]
) -> None:
    codes = [code for code, _ in events]
    ts = [T0 + step for _, step in events]
    shifted = [T0 + t for t in newest]
    flags = decode_module.out_of_order(
        np.array(codes, dtype=np.int64), np.array(ts, dtype=np.float64), np.array(shifted)
    )
    assert flags.tolist() == out_of_order_reference(codes, ts, shifted)


def test_flush_at_the_end_of_input_holds_nothing_back() -> None:
    decoder = Decoder(InputConfig(value_fields=("a", "b")))
    decoder.decode_messages([orjson.dumps({"key": "k", "ts": 1.0, "a": 1, "b": 2})])
    held = decoder.flush()
    assert len(held.batch) == 0 and held.batch.values.shape == (0, 2)
    assert held.rejects == [] and held.records == 0
