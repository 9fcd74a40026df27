"""Record mapping: JSON Pointer field paths, composite keys, the record filter and the CSV
delimiter, in events and aggregate mode, from topics and files."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from stream_detector.aggregate.decoder import AggregatingDecoder
from stream_detector.config import (
    ConfigError,
    InputConfig,
    Settings,
    column_name,
    load_settings,
    path_segments,
)
from stream_detector.detector.artefact import TrainingResult, create_artefact
from stream_detector.detector.facade import Detector
from stream_detector.detector.replay import replay
from stream_detector.detector.sources import read_batches, sniff_delimiter
from stream_detector.engine.decode import Decoder
from stream_detector.engine.model import LSTMAutoencoder
from stream_detector.kafka.telemetry import ServiceMetrics

T0 = 1_714_564_800.0


def decoder(**overrides: Any) -> Decoder:
    return Decoder(InputConfig(**overrides), now=lambda: 2e9)


def dumps(*records: dict[str, Any]) -> list[bytes]:
    return [orjson.dumps(record) for record in records]


def aggregate_settings(**input_overrides: Any) -> Settings:
    return load_settings(
        None,
        {
            "input": {
                "mode": "aggregate",
                "timestamp_field": "ts",
                "value_fields": ["flows", "bytes", "peers"],
                **input_overrides,
            },
            "aggregate": {
                "bucket_width_s": 10.0,
                "allowed_lateness_s": 0.0,
                "idle_timeout_s": 0.0,
                "features": [
                    {"name": "flows", "agg": "count"},
                    {"name": "bytes", "agg": "sum", "field": "/orig.bytes"},
                    {"name": "peers", "agg": "distinct", "field": "/id.resp_h"},
                ],
            },
            "window": {"size": 2, "stride": 1},
            "normalize": {"warmup": 0},
            "model": {"hidden_size": 4, "latent_size": 2, "device": "cpu"},
        },
    )


def zeek(host: str, t: float, size: int = 100, peer: str = "10.0.0.9", **extra: Any) -> dict:
    return {"id.orig_h": host, "id.resp_h": peer, "ts": T0 + t, "orig.bytes": size, **extra}


# -- field paths --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        ("id.orig_h", ("id", "orig_h")),  # dotted, as before
        ("/id.orig_h", ("id.orig_h",)),
        ("/tags/host", ("tags", "host")),
        ("/a~1b/c~0d", ("a/b", "c~d")),
        ("/~01", ("~1",)),  # ~0 is decoded last, so "~01" is "~" then "1"
    ],
)
def test_paths_parse_into_their_keys(path: str, segments: tuple[str, ...]) -> None:
    assert path_segments(path) == segments


@pytest.mark.parametrize("path", ["/a~2", "/a~", "/", "/a//b"])
def test_malformed_pointers_are_refused_at_validation_with_the_path_and_syntax(path: str) -> None:
    for section in (
        {"input": {"value_fields": [path]}},
        {"input": {"key_field": path}},
        {"input": {"key_fields": ["name", path]}},
        {"input": {"filter": {path: 1}}},
        {"aggregate": {"features": [{"name": "events", "agg": "sum", "field": path}]}},
    ):
        with pytest.raises(ConfigError) as info:
            load_settings(None, section)
        assert repr(path) in str(info.value) and "JSON Pointer" in str(info.value)


def test_pointer_names_a_top_level_key_holding_dots() -> None:
    records = dumps(
        {"id.orig_h": "10.0.0.7", "ts": T0, "orig.bytes": 5, "id": {"orig_h": "nested"}},
        {"id": {"orig_h": "10.0.0.8"}, "ts": T0, "orig.bytes": 6},
    )
    flat = decoder(key_field="/id.orig_h", value_fields=["/orig.bytes"]).decode_messages(records)
    assert flat.batch.keys.tolist() == ["10.0.0.7"]
    assert [r.reason for r in flat.rejects] == ["missing_key"]
    assert "key field '/id.orig_h'" in flat.rejects[0].detail
    nested = decoder(key_field="id.orig_h", value_fields=["/orig.bytes"]).decode_messages(records)
    assert nested.batch.keys.tolist() == ["nested", "10.0.0.8"], "dotted paths stay nested"


def test_pointer_reaches_nested_and_escaped_keys_in_every_role() -> None:
    record = {"tags": {"host": "h1", "a/b": 3.0}, "meta": {"t~s": T0}, "lbl": {"x": 1}}
    decoded = decoder(
        key_field="/tags/host",
        timestamp_field="/meta/t~0s",
        value_fields=["/tags/a~1b"],
        label_field="/lbl/x",
    ).decode_messages(dumps(record))
    assert decoded.batch.keys.tolist() == ["h1"]
    assert decoded.batch.ts.tolist() == [T0]
    assert decoded.batch.values.tolist() == [[3.0]]
    assert decoded.labels is not None and decoded.labels.tolist() == [1]


def test_csv_columns_are_named_by_the_paths_keys_joined_with_dots(tmp_path: Path) -> None:
    assert column_name("/id.orig_h") == column_name("id.orig_h") == "id.orig_h"
    assert column_name("/tags/host") == "tags.host"
    source = tmp_path / "conn.csv"
    source.write_text("id.orig_h,ts,tags.host,orig.bytes\n10.0.0.7,1714564800,h1,5\n")
    for key in ("/id.orig_h", "id.orig_h"):
        batches = list(read_batches(source, decoder(key_field=key, value_fields=["/orig.bytes"])))
        assert batches[0].batch.keys.tolist() == ["10.0.0.7"]
    composite = decoder(key_fields=["/id.orig_h", "/tags/host"], value_fields=["orig.bytes"])
    assert list(read_batches(source, composite))[0].batch.keys.tolist() == ["10.0.0.7|h1"]


# -- composite keys -----------------------------------------------------------------------------


def test_composite_key_joins_escaped_components_in_order() -> None:
    cfg = {"key_fields": ["/tags/host", "name", "/tags/cpu"]}
    records = dumps(
        {"tags": {"host": "h1", "cpu": "cpu0"}, "name": "cpu", "ts": T0, "value": 1},
        {"tags": {"host": "a|b", "cpu": 7}, "name": "c\\", "ts": T0, "value": 1},
        {"tags": {"host": "a", "cpu": 7}, "name": "b|c\\", "ts": T0, "value": 1},
    )
    keys = decoder(**cfg).decode_messages(records).batch.keys.tolist()
    assert keys == ["h1|cpu|cpu0", "a\\|b|c\\\\|7", "a|b\\|c\\\\|7"]
    assert len(set(keys)) == 3, "different component tuples never share a key"


def test_composite_key_missing_or_bad_component_is_refused_naming_it() -> None:
    records = dumps(
        {"host": "h1", "ts": T0, "value": 1},
        {"host": "h1", "cpu": "", "ts": T0, "value": 1},
        {"host": "h1", "cpu": [1], "ts": T0, "value": 1},
        {"cpu": "c", "ts": T0, "value": 1},
        {"host": "h1", "cpu": "c", "ts": T0, "value": 1},
    )
    decoded = decoder(key_fields=["host", "cpu"]).decode_messages(records)
    assert decoded.batch.index.tolist() == [4]
    assert [(r.index, r.reason) for r in decoded.rejects] == [
        (0, "missing_key"),
        (1, "missing_key"),
        (2, "bad_key"),
        (3, "missing_key"),
    ]
    assert "key field 'cpu'" in decoded.rejects[0].detail
    assert "key field 'host'" in decoded.rejects[3].detail


def test_composite_key_and_an_explicit_key_field_are_exclusive() -> None:
    with pytest.raises(ValidationError, match="key_field and key_fields"):
        InputConfig(key_field="key", key_fields=["a", "b"])
    with pytest.raises(ConfigError, match="key_fields"):
        load_settings(None, {"input": {"key_field": "@message_key", "key_fields": ["a"]}})
    assert InputConfig(key_fields=["a"]).key_paths == ("a",)


def test_composite_key_in_aggregate_mode_buckets_per_tuple() -> None:
    settings = aggregate_settings(key_fields=["/id.orig_h", "/id.resp_h"])
    agg = AggregatingDecoder(settings)
    records = [zeek("h1", 1), zeek("h1", 2, peer="p2"), zeek("h1", 3), zeek("h2", 30)]
    closed = agg.decode_messages(dumps(*records))
    assert sorted(closed.batch.keys.tolist()) == ["h1|10.0.0.9", "h1|p2"]


# -- the record filter --------------------------------------------------------------------------


def test_filter_keeps_only_matching_records_and_counts_the_rest() -> None:
    cfg = {"filter": {"/event_type": "flow", "/ok": True, "/proto": 6}}
    records = dumps(
        {"event_type": "flow", "ok": True, "proto": 6, "key": "a", "ts": T0, "value": 1},
        {"event_type": "dns", "ok": True, "proto": 6},  # wrong type: skipped, not missing_key
        {"event_type": "flow", "ok": 1, "proto": 6},  # 1 is not true
        {"event_type": "flow", "ok": True, "proto": True},  # true is not 6
        {"event_type": "flow", "ok": True},  # absent field never matches
        {"event_type": "flow", "ok": True, "proto": 6.0, "key": "b", "ts": T0, "value": "x"},
    )
    decoded = decoder(**cfg).decode_messages([*records, b"not json"])
    assert decoded.batch.keys.tolist() == ["a"]
    assert decoded.filtered == 4
    assert [(r.index, r.reason) for r in decoded.rejects] == [(5, "non_numeric"), (6, "not_json")]


def test_no_filter_filters_nothing() -> None:
    decoded = decoder().decode_messages(dumps({"key": "k", "ts": T0, "value": 1}))
    assert decoded.filtered == 0 and len(decoded.batch) == 1


def test_filter_applies_to_csv_cells(tmp_path: Path) -> None:
    source = tmp_path / "mixed.csv"
    source.write_text(
        "key,ts,value,kind,proto,ok\n"
        "a,1714564800,1,flow,6,true\n"
        "b,1714564800,2,dns,6,true\n"
        "c,1714564800,3,flow,17,True\n"
        "d,1714564800,4,flow,6,false\n"
        "e,1714564800,x,flow,6,TRUE\n"
        "broken,row\n"
    )
    cfg = decoder(filter={"kind": "flow", "proto": 6, "ok": True})
    [decoded] = list(read_batches(source, cfg))
    assert decoded.batch.keys.tolist() == ["a"] and decoded.batch.index.tolist() == [0]
    assert decoded.filtered == 3
    assert [(r.index, r.reason) for r in decoded.rejects] == [(4, "non_numeric"), (5, "not_json")]


def test_filter_in_aggregate_mode_skips_before_bucketing() -> None:
    agg = AggregatingDecoder(aggregate_settings(key_field="/id.orig_h", filter={"/kind": "conn"}))
    records = [zeek("h1", 1, kind="conn"), zeek("h1", 2, kind="dns"), {"kind": "dns"}]
    records.append(zeek("h1", 20, kind="conn"))
    decoded = agg.decode_messages(dumps(*records))
    assert decoded.filtered == 2 and decoded.records == 4 and not decoded.rejects
    # The dns flow is not counted (the distinct count is a sketch's estimate).
    assert decoded.batch.values.tolist() == [[1.0, 100.0, pytest.approx(1.0, rel=0.05)]]


def _detector(settings: Settings) -> Detector:
    n = len(settings.input.value_fields)
    model = LSTMAutoencoder(n, settings.window.size, hidden_size=4, num_layers=1, latent_size=2)
    result = TrainingResult((0.0,) * n, (1.0,) * n, {}, 1.0, {})
    return Detector(settings, create_artefact(model, settings, result))


def test_replay_gives_filtered_records_no_line_but_keeps_offsets(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        {
            "input": {"filter": {"/type": "reading"}},
            "window": {"size": 2, "stride": 1},
            "normalize": {"warmup": 0},
            "model": {"hidden_size": 4, "latent_size": 2, "device": "cpu"},
        },
    )
    records = [
        {"type": "reading", "key": "k", "ts": T0 + i, "value": float(i)}
        if i % 2 == 0
        else {"type": "log", "msg": "hello"}
        for i in range(8)
    ]
    source = tmp_path / "feed.jsonl"
    source.write_bytes(b"\n".join([*dumps(*records), b"not json"]) + b"\n")
    out = io.BytesIO()
    summary = replay(source, _detector(settings), out, batch_size=3)
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [line["offset"] for line in lines] == [0, 2, 4, 6, 8]
    assert lines[-1]["rejected"] == "not_json"
    assert (summary.records, summary.rejected, summary.filtered) == (9, 1, 4)


def test_service_metrics_count_filtered_records_apart_from_rejects() -> None:
    settings = aggregate_settings(key_field="/id.orig_h", filter={"/kind": "conn"})
    detector = _detector(settings)
    metrics = ServiceMetrics()
    payloads = dumps(zeek("h1", 1, kind="conn"), zeek("h1", 2, kind="dns"), {"kind": "x"})
    for batch in (payloads, payloads[1:]):
        result = detector.process_messages(batch, streams=np.zeros(len(batch), dtype=np.int64))
        metrics.record_batch(len(batch), result, detector, 0.01)
    sample = metrics.registry.get_sample_value
    assert sample("sd_filtered_records_total") == 4.0
    assert sample("sd_dead_letters_total") == 0.0
    assert metrics.totals()["filtered"] == 4


# -- CSV delimiter ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("key,ts,value\n", ","),
        ("key;ts;value\n", ";"),
        ("key\tts\tvalue\n", "\t"),
        ("key|ts|value\n", "|"),
        ("value\n", ","),  # undecided: the default
        ("", ","),
    ],
)
def test_auto_delimiter_is_sniffed_from_the_header(header: str, expected: str) -> None:
    assert sniff_delimiter(header) == expected


@pytest.mark.parametrize(("delimiter", "setting"), [(";", "auto"), ("|", "auto"), (";", ";")])
def test_csv_rows_are_split_by_the_configured_or_sniffed_delimiter(
    tmp_path: Path, delimiter: str, setting: str
) -> None:
    source = tmp_path / "data.csv"
    rows = [["key", "ts", "value"], ["a", "1714564800", "1,5"], ["b", "1714564801", "2"]]
    source.write_text("\n".join(delimiter.join(row) for row in rows) + "\n")
    [decoded] = list(read_batches(source, decoder(csv_delimiter=setting)))
    assert decoded.batch.keys.tolist() == ["b"]
    assert [r.reason for r in decoded.rejects] == ["non_numeric"], "'1,5' is not a number"


def test_explicit_delimiter_overrides_sniffing(tmp_path: Path) -> None:
    source = tmp_path / "data.csv"
    source.write_text("key;ts;value\na;1714564800;3\n")
    [decoded] = list(read_batches(source, decoder(csv_delimiter=",")))
    assert [r.reason for r in decoded.rejects] == ["missing_key"], "one column, 'key;ts;value'"


@pytest.mark.parametrize("value", ["", ";;", "ab", "a", '"', "\n"])
def test_bad_delimiters_are_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="csv_delimiter"):
        InputConfig(csv_delimiter=value)


def test_aggregate_decoder_reads_csv_with_pointer_fields(tmp_path: Path) -> None:
    source = tmp_path / "conn.csv"
    source.write_text(
        "id.orig_h;id.resp_h;ts;orig.bytes;kind\n"
        "h1;p1;1714564801;10;conn\nh1;p2;1714564802;20;conn\nh1;p3;1714564803;40;dns\n"
        "h1;p1;1714564821;5;conn\n"
    )
    agg = AggregatingDecoder(aggregate_settings(key_field="/id.orig_h", filter={"kind": "conn"}))
    [decoded] = list(read_batches(source, agg))
    assert decoded.filtered == 1
    assert decoded.batch.values.tolist() == [[2.0, 30.0, pytest.approx(2.0, rel=0.05)]]
