"""Conditional counts (`where`): a count of only the events whose field holds given values.

They are sums of a 0/1 column, so they must count exactly what a person counting by hand would
(absent or non-scalar fields never count, 1 equals 1.0 but not true), whatever the batching,
across a checkpoint restore, and the same from a CSV file as from JSON messages.
"""

from __future__ import annotations

import math
import tomllib
from collections import Counter
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_aggregate_decode import _settings as flow_settings

from stream_detector.aggregate.decoder import AggregatingDecoder, decoder_for
from stream_detector.aggregate.streams import SINGLE_STREAM
from stream_detector.config import ConfigError, Settings, load_settings
from stream_detector.detector.artefact import ModelArtefact
from stream_detector.detector.facade import DetectionResult, Detector
from stream_detector.detector.snapshot import state_fingerprint
from stream_detector.detector.training import train
from stream_detector.engine.types import Decoded

T0 = 1_700_000_000.0
FAILED = ("S0", "REJ", "RSTO")
FEATURES = [
    {"name": "flows", "agg": "count"},
    {"name": "failed", "agg": "count", "where": {"field": "state", "in": list(FAILED)}},
    {"name": "udp", "agg": "count", "where": {"field": "/proto", "equals": "udp"}},
    {"name": "port_one", "agg": "count", "where": {"field": "port", "equals": 1}},
    {"name": "bytes", "agg": "sum", "field": "bytes"},
]
# Values of `state` an event may carry: counted ones, others, and ones that must never count.
STATES: list[Any] = [*FAILED, "SF", "S1", None, "s0", ["S0"], {"S0": 1}, 0]
PORTS: list[Any] = [1, 1.0, True, "1", 2, None]


def _settings(
    features: list[dict[str, Any]] = FEATURES, width: float = 10.0, lateness: float = 2.0,
    idle: float = 0.0, **sections: dict[str, Any],
) -> Settings:
    """test_aggregate_decode's raw flows (key `src`, time `ts`) with these features and buckets."""
    bucketing = {"bucket_width_s": width, "allowed_lateness_s": lateness, "idle_timeout_s": idle}
    return flow_settings(aggregate={"features": features, **bucketing}, **sections)


def _event(src: str, t: float, state: Any = "SF", proto: Any = "tcp", port: Any = 2,
           size: float = 100.0) -> dict[str, Any]:
    """A flow; a None field is left out of the record, as a log leaves out what it lacks."""
    fields = {"state": state, "proto": proto, "port": port}
    present = {name: value for name, value in fields.items() if value is not None}
    return {"src": src, "ts": T0 + t, "bytes": size, **present}


def _payloads(events: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(event) for event in events]


def _rows(parts: list[Decoded], names: tuple[str, ...]) -> dict[tuple[str, float], dict]:
    """(key, bucket end) -> feature values of every closed bucket."""
    rows = {}
    for part in parts:
        batch = part.batch
        for key, end, values in zip(batch.keys.tolist(), batch.ts.tolist(), batch.values):
            rows[(key, end)] = dict(zip(names, values.tolist(), strict=True))
    return rows


def _fed(decoder: AggregatingDecoder, payloads: list[bytes], cuts: list[int]) -> list[Decoded]:
    bounds = sorted({0, len(payloads), *(c % (len(payloads) + 1) for c in cuts)})
    parts = [decoder.decode_messages(payloads[a:b]) for a, b in zip(bounds, bounds[1:])]
    return [*parts, decoder.flush()]


# -- configuration -------------------------------------------------------------------------------


def test_where_reads_from_toml_with_equals_or_in() -> None:
    sections = tomllib.loads(
        """
        [input]
        mode = "aggregate"
        value_fields = ["failed", "udp"]
        [[aggregate.features]]
        name = "failed"
        agg = "count"
        where = { field = "conn_state", in = ["S0", "REJ"] }
        [[aggregate.features]]
        name = "udp"
        agg = "count"
        where = { field = "/proto", equals = "udp" }
        """
    )
    failed, udp = load_settings(None, sections).aggregate.features
    assert failed.where is not None and failed.where.values == ("S0", "REJ")
    assert udp.where is not None and udp.where.values == ("udp",)
    # the dump is the TOML form, so the artefact's recorded settings read back the same
    assert failed.model_dump(mode="json")["where"] == {"field": "conn_state", "in": ["S0", "REJ"]}
    assert udp.model_dump(mode="json")["where"] == {"field": "/proto", "equals": "udp"}


@pytest.mark.parametrize(
    ("where", "agg", "message"),
    [
        ({"field": "state"}, "count", "exactly one of"),
        ({"field": "state", "equals": "S0", "in": ["S0"]}, "count", "exactly one of"),
        ({"field": "state", "in": []}, "count", "at least 1"),
        ({"field": "state", "in": [["S0"]]}, "count", "where.in"),
        ({"field": "state", "equal": "S0"}, "count", "where.equal"),
        ({"field": "/state~2", "equals": "S0"}, "count", "'~' not followed"),
        ({"field": "state", "equals": "S0"}, "sum", "only conditions a count"),
    ],
)
def test_a_bad_where_is_refused_naming_what_is_wrong(
    where: dict[str, Any], agg: str, message: str
) -> None:
    feature = {"name": "f", "agg": agg, "where": where}
    if agg != "count":
        feature["field"] = "b"
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        _settings([feature])


def test_fingerprints_cover_the_condition_and_not_features_without_one() -> None:
    plain = _settings(FEATURES[:1])
    assert "where" not in plain.model_settings()["aggregate.features"][0]
    other = [FEATURES[0], {**FEATURES[1], "where": {"field": "state", "in": ["S0"]}}]
    fingerprints = {
        state_fingerprint(_settings(features)) for features in (FEATURES[:2], other)
    }
    assert len(fingerprints) == 2, "a checkpoint counting other states must not be restored"


# -- counting ------------------------------------------------------------------------------------


def test_only_matching_scalar_values_count_and_missing_fields_are_not_refused() -> None:
    decoder = AggregatingDecoder(_settings())
    events = [
        _event("a", 1, state="S0", proto="udp", port=1),
        _event("a", 2, state="REJ", port=1.0),
        _event("a", 3, state="s0", port=True),  # case matters; true is not 1
        _event("a", 4, state=["S0"], port="1"),  # an array is not its element; text not 1
        _event("a", 5, state=None, proto=None, port=None),  # nothing to compare: not counted
        _event("a", 6, state=0, proto={"udp": 1}),
        _event("b", 30),  # closes a's bucket
    ]
    out = decoder.decode_messages(_payloads(events))
    assert out.rejects == []
    assert _rows([out], decoder.feature_names) == {
        ("a", T0 + 10): {"flows": 6, "failed": 2, "udp": 1, "port_one": 2, "bytes": 600}
    }


def test_one_condition_shared_by_two_features_is_one_column() -> None:
    twin = {"name": "failed_too", "agg": "count", "where": {"field": "state", "in": list(FAILED)}}
    decoder = AggregatingDecoder(_settings([*FEATURES, twin]))
    assert len(decoder.plan.conditions) == 3
    out = decoder.decode_messages(_payloads([_event("a", 1, "S0"), _event("a", 30)]))
    values = _rows([out], decoder.feature_names)[("a", T0 + 10)]
    assert values["failed"] == values["failed_too"] == 1


def _brute_force(
    events: list[dict[str, Any]], width: float, lateness: float
) -> dict[tuple[str, float], Counter]:
    """Per (key, bucket end), the counts of every conditional feature over the events that were
    not late, one event at a time, straight from the rules."""
    latest = -math.inf
    counts: dict[tuple[str, float], Counter] = {}
    for event in events:
        latest = max(latest, event["ts"])
        bucket = math.floor(event["ts"] / width)
        if bucket < math.floor((latest - lateness) / width):
            continue  # late: aggregates nowhere
        tally = counts.setdefault((event["src"], (bucket + 1) * width), Counter())
        tally["flows"] += 1
        tally["failed"] += type(event.get("state")) is str and event["state"] in FAILED
        tally["udp"] += event.get("proto") == "udp"
        port = event.get("port")
        tally["port_one"] += type(port) in (int, float) and port == 1
    return counts


@st.composite
def raw_events(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(0, 50))
    return [
        _event(
            draw(st.sampled_from("abc")),
            round(i * 0.8 + draw(st.floats(-9.0, 4.0)), 2),
            state=draw(st.sampled_from(STATES)),
            proto=draw(st.sampled_from(["udp", "tcp", None])),
            port=draw(st.sampled_from(PORTS)),
        )
        for i in range(n)
    ]


@settings(max_examples=120, deadline=None)
@given(
    events=raw_events(),
    cuts=st.lists(st.integers(0, 1000), max_size=6),
    width=st.sampled_from([1.0, 5.0, 10.0]),
    lateness=st.sampled_from([0.0, 3.0]),
)
def test_counts_per_bucket_equal_a_brute_force_count_for_any_batching(
    events: list[dict[str, Any]], cuts: list[int], width: float, lateness: float
) -> None:
    decoder = AggregatingDecoder(_settings(width=width, lateness=lateness))
    got = _rows(_fed(decoder, _payloads(events), cuts), decoder.feature_names)
    want = _brute_force(events, width, lateness)
    assert set(got) == set(want)  # idle_timeout 0: no empty buckets
    for bucket, tally in want.items():
        for name in ("flows", "failed", "udp", "port_one"):
            assert got[bucket][name] == tally[name], (bucket, name)


def test_csv_columns_count_as_the_json_messages_do() -> None:
    events = [
        _event("a", 1, "S0", "udp", 1), _event("a", 2, "SF", "tcp", 2),
        _event("a", 3, "REJ", None, 1), _event("b", 4, None, "udp", None),
        _event("a", 30),
    ]
    columns = {
        name: [str(e.get(name, "")) for e in events]
        for name in ("src", "ts", "bytes", "state", "proto", "port")
    }
    from_json = AggregatingDecoder(_settings())
    from_csv = AggregatingDecoder(_settings())
    json_rows = _rows([from_json.decode_messages(_payloads(events)), from_json.flush()],
                      from_json.feature_names)
    csv_rows = _rows([from_csv.decode_columns(columns), from_csv.flush()], from_csv.feature_names)
    assert csv_rows == json_rows
    assert json_rows[("a", T0 + 10)]["port_one"] == 2


def test_a_state_without_the_condition_column_is_refused_before_anything_changes() -> None:
    old = AggregatingDecoder(_settings(FEATURES[:1]))
    old.decode_messages(_payloads([_event("a", 1, "S0")]))
    state = old.aggregator.export_state(SINGLE_STREAM)
    new = AggregatingDecoder(_settings(FEATURES[:2]))
    with pytest.raises(ValueError, match="'sums' is shaped"):
        new.aggregator.import_state(SINGLE_STREAM, state)


# -- through the detector: batching and a restart from a snapshot --------------------------------

N_KEYS = 4
DETECTOR_SECTIONS: dict[str, Any] = {
    "window": {"size": 3, "stride": 1, "max_keys": N_KEYS, "idle_ttl_s": 60.0},
    "normalize": {"warmup": 2, "prior_weight": 2.0, "horizon": 8},
    "model": {"hidden_size": 4, "latent_size": 2, "device": "cpu", "batch_size": 7},
    "train": {"epochs": 1, "batch_size": 64, "seed": 0, "max_windows": 200},
    "threshold": {"warmup": 2, "alpha": 0.3, "sensitivity": 1.5},
    "episodes": {"min_consecutive": 1, "cooldown": 2},
}


def _detector_settings() -> Settings:
    return _settings(width=2.0, lateness=2.0, idle=6.0, **DETECTOR_SECTIONS)


@pytest.fixture(scope="module")
def artefact() -> ModelArtefact:
    settings = _detector_settings()
    rng = np.random.default_rng(0)
    events = [
        _event(f"k{k}", t * 0.5, state=str(rng.choice(["SF", "SF", "S0"])),
               proto=str(rng.choice(["udp", "tcp"])), port=int(rng.integers(1, 3)))
        for t in range(300)
        for k in range(N_KEYS)
    ]
    decoded = decoder_for(settings).decode_messages(_payloads(events))
    return train([decoded], settings, out_dir=None)


def _observed(results: list[DetectionResult]) -> tuple[list[tuple[str, float]], list[float]]:
    """(key, window end) of every scored window, and the scores apart, compared to a tolerance."""
    scored = [r.scored for r in results]
    windows = [(str(s.keys[i]), float(s.end_ts[i])) for s in scored for i in range(len(s))]
    return windows, [float(score) for s in scored for score in s.scores]


def _detect(
    artefact: ModelArtefact, payloads: list[bytes], cuts: list[int], restart_at: int | None
) -> tuple[list[tuple[str, float]], list[float]]:
    detector = Detector(_detector_settings(), artefact)
    bounds = sorted({0, len(payloads), *(c % (len(payloads) + 1) for c in cuts)})
    if restart_at is not None:
        restart_at %= len(payloads) + 1
        bounds = sorted({*bounds, restart_at})
    results = []
    for start, stop in zip(bounds, bounds[1:]):
        if start == restart_at:
            snapshot = detector.snapshot([f"k{k}" for k in range(N_KEYS)])
            detector = Detector(_detector_settings(), artefact)
            detector.restore(snapshot)
        results.append(detector.process_messages(payloads[start:stop]))
    return _observed(results)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, N_KEYS - 1),
            st.one_of(st.integers(0, 2), st.integers(-2, -1)),
            st.sampled_from(STATES),
            st.sampled_from(PORTS),
        ),
        min_size=1,
        max_size=90,
    ),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
    restart_at=st.one_of(st.none(), st.integers(0, 10_000)),
)
def test_any_batching_and_a_restart_give_the_one_event_at_a_time_scores(
    artefact: ModelArtefact,
    steps: list[tuple[int, int, Any, Any]],
    cuts: list[int],
    restart_at: int | None,
) -> None:
    times = np.cumsum([step for _, step, _, _ in steps]) * 0.5
    payloads = _payloads([
        _event(f"k{k}", float(t), state=state, port=port)
        for (k, _, state, port), t in zip(steps, times, strict=True)
    ])
    want_windows, want_scores = _detect(artefact, payloads, list(range(len(payloads))), None)
    got_windows, got_scores = _detect(artefact, payloads, cuts, restart_at)
    assert got_windows == want_windows
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-6)
