"""Evaluation plumbing: dataset loading, the interleaved stream, episode traces, and a tiny run."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
from pathlib import Path

import numpy as np
import orjson
import pytest

from stream_detector.config import Settings
from stream_detector.engine.alerts import Alert
from stream_detector.engine.types import ScoredWindows
from stream_detector.evaluation.baselines import river_available
from stream_detector.evaluation.datasets import (
    Channel,
    LabelledDataset,
    build_stream,
    load_labelled_file,
)
from stream_detector.evaluation.mixed_scale import load_mixed_scale
from stream_detector.evaluation.plots import matplotlib_available
from stream_detector.evaluation.runner import evaluation_defaults, load_dataset, run_evaluation
from stream_detector.evaluation.skab import SKAB_FEATURES, is_skab, load_skab
from stream_detector.evaluation.trace import TraceRecorder


def _channel(
    key: str, n_train: int, n_test: int, anomaly: tuple[int, int] | None, seed: int
) -> Channel:
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    values = np.sin(np.arange(n) / 6.0 + seed) + rng.normal(0, 0.05, n)
    labels = np.zeros(n_test, dtype=np.int8)
    if anomaly is not None:
        start, end = anomaly
        values[n_train + start : n_train + end + 1] += 3.0
        labels[start : end + 1] = 1
    ts = np.arange(n, dtype=np.float64)
    return Channel(
        key=key,
        group="G1" if seed % 2 else "G2",
        train_ts=ts[:n_train],
        train_values=values[:n_train, None].astype(np.float32),
        train_labels=np.zeros(n_train, dtype=np.int8),
        test_ts=ts[n_train:],
        test_values=values[n_train:, None].astype(np.float32),
        test_labels=labels,
    )


def test_stream_interleaves_by_time_and_keeps_each_key_in_order() -> None:
    dataset = LabelledDataset(
        "toy",
        ("value",),
        (_channel("a", 5, 4, (1, 2), 1), _channel("b", 3, 6, None, 2)),
        (),
    )
    stream = build_stream(dataset)
    assert len(stream) == 18
    assert np.all(np.diff(stream.ts) >= 0)
    for key_id, channel in enumerate(dataset.channels):
        mine = stream.key_id == key_id
        n_train = len(channel.train_ts)
        assert stream.local[mine].tolist() == list(range(-n_train, len(channel.test_ts)))
        assert stream.is_test[mine].tolist() == [i >= n_train for i in range(mine.sum())]
        np.testing.assert_array_equal(stream.labels[mine & stream.is_test], channel.test_labels)
    offsets = [offset for offset, _ in stream.batches(7)]
    assert offsets == [0, 7, 14]
    trained = sum(len(d.batch) for d in stream.training_batches(4))
    assert trained == 8  # train parts only


def _alert(kind: str, episode: str, row: int) -> Alert:
    return Alert(
        kind=kind,  # type: ignore[arg-type]
        alert_id=f"{episode}-{kind}",
        episode_id=episode,
        key="a",
        window_start=0.0,
        window_end=0.0,
        score=1.0,
        threshold=1.0,
        severity="low",
        top_features=(),
        model_version="m",
        episode_start=0.0,
        windows_over=1,
        event_index=row,
    )


def _no_windows() -> ScoredWindows:
    empty = np.empty(0)
    return ScoredWindows(
        slots=empty.astype(np.int64), keys=empty.astype(object), event_index=empty.astype(np.int64),
        start_ts=empty, end_ts=empty, scores=empty, thresholds=empty, exceed=empty.astype(bool),
        feature_errors=np.empty((0, 1)), actual=np.empty((0, 1)), expected=np.empty((0, 1)),
        flat=np.empty((0, 1), dtype=bool),
    )


def test_trace_turns_alerts_into_test_local_episodes() -> None:
    # One key: 6 train rows (local -6..-1) then 10 test rows (local 0..9).
    dataset = LabelledDataset("toy", ("value",), (_channel("a", 6, 10, None, 1),), ())
    stream = build_stream(dataset)
    recorder = TraceRecorder("m")
    recorder.record(0, _no_windows(), [_alert("open", "e1", 1), _alert("resolve", "e1", 3)])
    recorder.record(4, _no_windows(), [_alert("open", "e2", 0), _alert("resolve", "e2", 4)])
    recorder.record(10, _no_windows(), [_alert("open", "e3", 2)])  # never resolved
    trace = recorder.finish(stream)
    # e1 lies wholly in the train part; e2 opened at local -2 and is clipped to 0; e3 opens at
    # local 6 and lasts to the key's last event.
    assert trace.episodes[0].tolist() == [[0, 2], [6, 9]]


def test_an_episode_ends_where_its_resolve_says_the_anomaly_ended() -> None:
    # One key, event time = row: 6 train rows, then test rows at times 6..15.
    dataset = LabelledDataset("toy", ("value",), (_channel("a", 6, 10, None, 1),), ())
    stream = build_stream(dataset)
    recorder = TraceRecorder("m")
    resolve = dataclasses.replace(_alert("resolve", "e1", 14), anomaly_end=10.0)
    recorder.record(0, _no_windows(), [_alert("open", "e1", 8), resolve])
    # Open at local 2; the last exceeding window ended at time 10 (local 4), not at the
    # resolve's row (local 8), which came a cool-down later.
    assert recorder.finish(stream).episodes[0].tolist() == [[2, 4]]


def _write_channel(path: Path, values: np.ndarray, labels: np.ndarray | None) -> None:
    header = "t,value,cmd_1" + (",label" if labels is not None else "")
    lines = [header]
    for t, v in enumerate(values.tolist()):
        line = f"{t},{v:.6g},0"
        lines.append(line + (f",{labels[t]}" if labels is not None else ""))
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


def test_smap_msl_layout_is_read_with_shifted_test_time(tmp_path: Path) -> None:
    root = tmp_path / "smap_msl"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "labeled_anomalies.csv").write_text(
        "chan_id,spacecraft,anomaly_sequences,class,num_values\n"
        'X-1,SMAP,"[[2, 3]]",[point],6\n'
        'Y-1,MSL,"[[0, 0]]",[point],6\n'
        'X-1,SMAP,"[[4, 5]]",[point],6\n'  # listed twice, like P-2: loaded once
    )
    labels = np.array([0, 0, 1, 1, 0, 0])
    for key in ("X-1", "Y-1"):
        _write_channel(root / "train" / f"{key}.csv.gz", np.linspace(-1, 1, 4), None)
        _write_channel(root / "test" / f"{key}.csv.gz", np.linspace(1, -1, 6), labels)
    dataset = load_dataset(root, Settings())
    assert [c.key for c in dataset.channels] == ["X-1", "Y-1"]
    assert [c.group for c in dataset.channels] == ["SMAP", "MSL"]
    x1 = dataset.channels[0]
    assert x1.test_ts.tolist() == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert x1.test_labels.tolist() == labels.tolist()
    np.testing.assert_allclose(x1.train_values[:, 0], np.linspace(-1, 1, 4), rtol=1e-5)
    assert [c.key for c in load_dataset(root, Settings(), spacecraft=["msl"]).channels] == ["Y-1"]
    with pytest.raises(ValueError, match="unknown channels"):
        load_dataset(root, Settings(), channels=["Z-9"])


def _write_skab(path: Path, rows: int, anomaly_from: int) -> None:
    """A SKAB-style experiment: `;`-separated, 1 Hz datetimes, 8 sensors, anomaly/changepoint;
    gzipped when `path` ends in .gz."""
    header = "datetime;" + ";".join(SKAB_FEATURES) + ";anomaly;changepoint"
    lines = [header]
    for i in range(rows):
        stamp = f"2020-03-09 10:{i // 60:02d}:{i % 60:02d}"
        sensors = ";".join(f"{i + k / 10:.1f}" for k in range(len(SKAB_FEATURES)))
        lines.append(f"{stamp};{sensors};{float(i >= anomaly_from)};0.0")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(text) if path.suffix == ".gz" else text)


def test_skab_experiments_are_keys_split_after_their_first_rows(tmp_path: Path) -> None:
    root = tmp_path / "skab"
    for name in ("10", "2"):
        _write_skab(root / "valve1" / f"{name}.csv.gz", rows=12, anomaly_from=9)
    _write_skab(root / "valve2" / "1.csv", rows=12, anomaly_from=9)  # as the repository has it
    _write_skab(root / "anomaly-free" / "anomaly-free.csv.gz", rows=12, anomaly_from=99)
    dataset = load_skab(root, train_rows=5)
    # numeric order within a folder
    assert [c.key for c in dataset.channels] == ["valve1/2", "valve1/10", "valve2/1"]
    first = dataset.channels[0]
    assert first.group == "valve1" and dataset.feature_names == SKAB_FEATURES
    assert len(first.train_ts) == 5 and len(first.test_ts) == 7
    assert first.test_labels.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert np.diff(np.concatenate([first.train_ts, first.test_ts])).tolist() == [1.0] * 11
    np.testing.assert_allclose(first.train_values[1], [1 + k / 10 for k in range(8)], rtol=1e-6)
    assert is_skab(root) and not is_skab(tmp_path / "nothing")
    assert dataset.channels[2].test_labels.tolist() == first.test_labels.tolist()
    # An experiment too short for a test part is left out and said, not fatal to the rest.
    _write_skab(root / "valve2" / "2.csv", rows=5, anomaly_from=9)
    dataset = load_skab(root, train_rows=5)
    assert [c.key for c in dataset.channels] == ["valve1/2", "valve1/10", "valve2/1"]
    assert "Left out, no test part after 5 rows: valve2/2 (5 rows)." in dataset.notes
    with pytest.raises(ValueError, match="no SKAB experiment has a test part"):
        load_skab(root, train_rows=12)
    _write_skab(root / "valve2" / "1.csv.gz", rows=12, anomaly_from=9)  # unzipped, kept both
    with pytest.raises(ValueError, match=r"'valve2/1' is there twice, .*1.csv and .*1.csv.gz"):
        load_skab(root, train_rows=5)
    (root / "valve2" / "1.csv.gz").unlink()
    _write_skab(root / "more" / "valve1" / "2.csv", rows=12, anomaly_from=9)  # another valve1/
    with pytest.raises(ValueError, match=r"'valve1/2' is there twice"):
        load_skab(root, train_rows=5)


def test_skab_by_name_brings_its_sensor_columns(tmp_path: Path) -> None:
    root = tmp_path / "skab"
    _write_skab(root / "valve1" / "0.csv.gz", rows=401, anomaly_from=400)
    args = argparse.Namespace(dataset=str(root), events=None, labels=None, config=None, side=None)
    assert evaluation_defaults(args) == {"input": {"value_fields": list(SKAB_FEATURES)}}
    dataset = load_dataset(root, Settings(input={"value_fields": SKAB_FEATURES}))
    assert dataset.name == "skab" and len(dataset.channels) == 1


def test_a_labelled_file_with_no_key_column_is_one_series_once_configured(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metric.csv"
    path.write_text(
        "timestamp,value,label\n"
        + "".join(f"{1_700_000_000 + t},{t},{int(t == 7)}\n" for t in range(10))
    )
    mapping = {"label_field": "label", "timestamp_field": "timestamp"}
    # The error says why every record was refused, and where a working mapping comes from.
    with pytest.raises(ValueError, match=r"missing_key 10 \(first: key field 'key'.*init --sample"):
        load_labelled_file(path, Settings(input=mapping))
    settings = Settings(input={**mapping, "key_field": "@single_series"})
    dataset = load_labelled_file(path, settings, train_fraction=0.5)
    assert [c.key for c in dataset.channels] == ["single_series"]
    assert dataset.channels[0].test_labels.tolist() == [0, 0, 1, 0, 0]


def test_labelled_file_splits_each_key_by_time(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    rows = [
        {"key": key, "ts": 1_700_000_000 + t, "value": float(t), "label": int(t == 7)}
        for t in range(10)
        for key in ("a", "b")
    ]
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    settings = Settings(input={"label_field": "label", "timestamp_unit": "s"})
    dataset = load_dataset(path, settings, train_fraction=0.4)
    assert [c.key for c in dataset.channels] == ["a", "b"]
    a = dataset.channels[0]
    assert a.train_values[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert a.test_values[:, 0].tolist() == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert a.test_labels.tolist() == [0, 0, 0, 1, 0, 0]


TINY = Settings(
    window={"size": 16, "stride": 4},
    model={"hidden_size": 8, "latent_size": 4, "device": "cpu", "batch_size": 512},
    train={"epochs": 2, "max_windows": 2000, "stride": 4, "patience": 1},
    threshold={"warmup": 16},
)


def test_tiny_end_to_end_report_and_files(tmp_path: Path) -> None:
    dataset = LabelledDataset(
        "toy",
        ("value",),
        (
            _channel("k1", 400, 300, (150, 170), 1),
            _channel("k2", 400, 300, (60, 65), 2),
            _channel("k3", 400, 300, None, 3),
        ),
        ("toy data",),
    )
    stages: list[str] = []
    report = run_evaluation(
        TINY,
        dataset,
        tmp_path / "out",
        batch_size=256,
        progress=lambda stage, _: stages.append(stage),
    )
    methods = ["lstm_autoencoder", "rolling_zscore"] + (
        ["half_space_trees"] if river_available() else []
    )
    assert report["methods"] == methods
    assert "train" in stages and "stream" in stages
    assert set(report["groups"]) == {"G1", "G2", "all"}
    overall = report["groups"]["all"]
    assert overall["labelled_ranges"] == 2 and overall["keys"] == 3
    for method in methods:
        figures = overall[method]
        for definition in ("event_wise", "point_wise", "point_adjusted"):
            assert set(figures[definition]) >= {"precision", "recall", "f1", "tp", "fp", "fn"}
            assert 0.0 <= figures[definition]["f1"] <= 1.0
        # Point-wise alone has normal samples to get right: FAR and MAR beside F1.
        point = figures["point_wise"]
        assert point["far"] == pytest.approx(point["fp"] / (point["fp"] + point["tn"]))
        assert point["mar"] == pytest.approx(1.0 - point["recall"])
        assert figures["event_wise"]["tp"] + figures["event_wise"]["fn"] == 2
        assert set(figures["delay"]) >= {"median_steps", "mean_seconds", "detected_ranges"}
    assert set(report["keys"]) == {"k1", "k2", "k3"}
    assert report["keys"]["k3"]["group"] == "G1"
    assert report["events"] == {"streamed": 2100, "test": 900}

    out = tmp_path / "out"
    assert orjson.loads((out / "report.json").read_bytes())["methods"] == methods
    table = (out / "table.txt").read_text()
    assert "lstm_autoencoder" in table and "event F1" in table
    assert (out / "model").is_dir()
    if matplotlib_available():
        assert sorted(p.name for p in (out / "plots").iterdir()) == ["k1.png", "k2.png", "k3.png"]
        assert (out / "plots" / "k1.png").read_bytes()[:4] == b"\x89PNG"


def test_single_group_dataset_is_not_counted_twice() -> None:
    from stream_detector.evaluation.report import score_methods
    from stream_detector.evaluation.trace import MethodTrace

    channel = _channel("k", 10, 20, (3, 5), 1)
    dataset = LabelledDataset("file", ("value",), (dataclasses.replace(channel, group="all"),), ())
    silent = MethodTrace("m", scores={}, episodes={}, seconds=0.0)
    _, groups = score_methods(dataset, [silent])
    assert list(groups) == ["all"]
    assert groups["all"]["m"].event_wise.fn == 1


def test_mixed_scale_feed_spans_ten_decades_with_anomalies_in_each() -> None:
    dataset = load_mixed_scale()
    groups = sorted({c.group for c in dataset.channels}, key=lambda g: float("1" + g[1:]))
    assert groups == [f"1e{e:+d}" for e in range(-3, 8)]
    level = {
        g: np.median([np.abs(c.train_values).mean() for c in dataset.channels if c.group == g])
        for g in groups
    }
    assert level["1e+7"] / level["1e-3"] == pytest.approx(1e10, rel=0.5)
    reference = [c for c in dataset.channels if c.group == "1e+0"]
    for group in groups:
        members = [c for c in dataset.channels if c.group == group]
        assert all(c.train_labels.sum() == 0 for c in members)  # the first day is clean
        assert sum(int(c.test_labels.any()) for c in members) >= 1
        # The same devices and anomalies in every decade: only the scale differs.
        for member, same in zip(members, reference, strict=True):
            assert member.key.split("@")[0] == same.key.split("@")[0]
            assert member.test_labels.tolist() == same.test_labels.tolist()
            scale = 10.0 ** float(group[2:])
            np.testing.assert_allclose(member.test_values, same.test_values * scale, rtol=1e-6)
