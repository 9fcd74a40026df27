"""`evaluate` on raw-event files: the network scenario bucketed and labelled per key and time."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest

from stream_detector.config import deep_merge, load_settings
from stream_detector.evaluation.raw_events import NORMAL_GROUP, load_raw_event_file
from stream_detector.scenarios.flows import (
    NETWORK_ANOMALY_KINDS,
    SCENARIOS,
    NetworkConfig,
    labels_path_for,
    network_sections,
    write_scenario,
)

SMALL = NetworkConfig(hosts=12, duration_s=1500, warmup_s=500, anomalies=4, seed=5)


def test_raw_event_file_becomes_labelled_buckets_grouped_by_kind(tmp_path: Path) -> None:
    events = tmp_path / "net.jsonl"
    labels = write_scenario(events, SMALL)
    assert labels == labels_path_for(events) == tmp_path / "net.labels.json"
    ranges = orjson.loads(labels.read_bytes())
    settings = load_settings(None, network_sections(SMALL))
    dataset = load_raw_event_file(events, settings, train_fraction=0.3)

    assert dataset.feature_names == settings.input.value_fields
    groups = {c.key: c.group for c in dataset.channels}
    assert len(groups) == SMALL.hosts
    assert {groups[r["key"]] for r in ranges} == set(NETWORK_ANOMALY_KINDS)
    assert list(groups.values()).count(NORMAL_GROUP) == SMALL.hosts - len(ranges)
    for channel in dataset.channels:
        n = len(channel.train_ts) + len(channel.test_ts)
        assert len(channel.train_ts) == int(n * 0.3)
        assert channel.train_ts[-1] < channel.test_ts[0]
        mine = [r for r in ranges if r["key"] == channel.key]
        ends = np.concatenate([channel.train_ts, channel.test_ts])
        labels_of = np.concatenate([channel.train_labels, channel.test_labels])
        expected = np.zeros(n, dtype=bool)
        for r in mine:  # bucket [end - 10, end) overlaps [start_ts, end_ts]
            expected |= (ends > r["start_ts"]) & (ends - 10.0 <= r["end_ts"])
        assert np.array_equal(labels_of.astype(bool), expected)
        assert expected.any() == bool(mine)


def test_raw_event_file_needs_aggregate_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="aggregate"):
        load_raw_event_file(tmp_path / "x.jsonl", load_settings(None, {}))


# -- `stream-detector evaluate` on raw events and on the network scenarios ---------------------

# The network mapping and the evaluation's detector settings as a user's TOML file would hold
# them (a short training run: the scenario below is small).
NETWORK_TOML = """
[input]
mode = "aggregate"
key_field = "src_ip"
timestamp_field = "ts"
timestamp_unit = "s"
value_fields = ["flows", "bytes", "packets", "dst_ports", "dst_hosts"]

[aggregate]
bucket_width_s = 10.0
allowed_lateness_s = 5.0
idle_timeout_s = 600.0
features = [
  {name = "flows", agg = "count"},
  {name = "bytes", agg = "sum", field = "bytes"},
  {name = "packets", agg = "sum", field = "packets"},
  {name = "dst_ports", agg = "distinct", field = "dst_port"},
  {name = "dst_hosts", agg = "distinct", field = "dst_ip"},
]

[window]
size = 8
stride = 1
idle_ttl_s = 900.0
score_steps = 2

[normalize]
warmup = 24

[model]
hidden_size = 16
latent_size = 4
device = "cpu"

[train]
epochs = 10
batch_size = 128
learning_rate = 3e-3
patience = 4
seed = 0

[threshold]
warmup = 24
sensitivity = 20.0

[episodes]
cooldown = 2
"""

# Two hours, so that each host's train part holds the 250 buckets HalfSpaceTrees needs; a port
# scan and a flood on two of six hosts.
ATTACKS = NetworkConfig(hosts=6, anomalies=2, anomaly_kinds=("port_scan", "ddos_burst"), seed=11)


def _evaluate(*args: str) -> int:
    from stream_detector.cli import main

    return main(["evaluate", "--log-level", "warning", *args])


@pytest.fixture(scope="module")
def attack_feed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The raw flows (JSONL), their labels beside them, and a config file with the mapping."""
    root = tmp_path_factory.mktemp("attacks")
    events = root / "flows.jsonl"
    write_scenario(events, ATTACKS)
    config = root / "flows.toml"
    config.write_text(NETWORK_TOML)
    return events, config


def _rows(table: str) -> set[tuple[str, str]]:
    return {tuple(line.split()[:2]) for line in table.splitlines() if line and line[0] != " "}


def test_toml_mapping_equals_the_scenario_settings() -> None:
    # The hand-written file above is the real thing: the scenario's mapping and sections.
    from stream_detector.evaluation.raw_events import scenario_sections

    expected = load_settings(None, deep_merge(scenario_sections("network"), {"train": {"epochs": 10}}))
    assert load_settings(None, tomllib.loads(NETWORK_TOML)) == expected


def test_evaluate_events_reports_model_and_baselines_and_finds_the_attacks(
    attack_feed: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events, config = attack_feed
    out = tmp_path / "report"
    code = _evaluate(
        "--events", str(events), "--labels", str(labels_path_for(events)),
        "--config", str(config), "--out", str(out), "--no-plots",
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert (out / "table.txt").read_text().strip() in printed
    report = orjson.loads((out / "report.json").read_bytes())
    assert report["methods"] == ["lstm_autoencoder", "rolling_zscore", "half_space_trees"]
    assert {("all", m) for m in report["methods"]} <= _rows(printed)
    assert {"port_scan", "ddos_burst", NORMAL_GROUP} <= set(report["groups"])

    model = report["groups"]["all"]["lstm_autoencoder"]
    assert report["groups"]["all"]["labelled_ranges"] == 2
    assert model["event_wise"]["recall"] >= 0.5  # at least one of the two attacks found
    # Better than chance: alerting at random flags labelled buckets at their base rate.
    point = model["point_wise"]
    test_buckets = sum(key["test_events"] for key in report["keys"].values())
    base_rate = (point["tp"] + point["fn"]) / test_buckets
    assert point["precision"] >= 5 * base_rate


def test_evaluate_network_scenario_is_generated_into_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The named scenario, shrunk: the same dispatch, mapping and tuned settings, fewer hosts.
    monkeypatch.setitem(SCENARIOS, "network", replace(ATTACKS, seed=12))
    out = tmp_path / "net"
    code = _evaluate(
        "--dataset", "network", "--out", str(out), "--no-plots", "--baselines", "rolling_zscore",
        "--set", "train.epochs=3", "--set", "threshold.sensitivity=5",
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert (out / "network.jsonl").exists() and (out / "network.labels.json").exists()
    report = orjson.loads((out / "report.json").read_bytes())
    assert report["methods"] == ["lstm_autoencoder", "rolling_zscore"]
    settings = report["settings"]
    assert settings["input"]["mode"] == "aggregate" and settings["input"]["key_field"] == "src_ip"
    assert settings["train"]["epochs"] == 3 and settings["threshold"]["sensitivity"] == 5
    assert settings["threshold"]["warmup"] == 24  # the scenario's own setting stays
    n_keys = len(report["keys"])
    assert n_keys == ATTACKS.hosts
    # The scenario's own train share: 40% of each host's buckets.
    assert "first 40% of buckets" in " ".join(report["notes"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--events", "x.jsonl", "--dataset", "network"], "either --dataset or --events"),
        (["--labels", "x.labels.json"], "--labels goes with --events"),
        (["--dataset", "network", "--config", "c.toml"], "instead of --config"),
        (["--events", "{events}"], "input.mode = 'aggregate'"),
        (["--events", "{missing}", "--config", "{config}"], "does not exist"),
        (["--events", "{events}", "--config", "{config}", "--labels", "{missing}"],
         "no labels file"),
        (["--events", "{events}", "--config", "{config}", "--labels", "{bad_labels}"],
         "range 0: need key, start_ts <= end_ts"),
        (["--dataset", "{events}", "--config", "{config}"], "pass the file with --events"),
    ],
)  # fmt: skip
def test_evaluate_refuses_unusable_flags_with_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "flows.jsonl"
    events.write_bytes(b'{"src_ip": "10.0.0.1", "ts": 1700000000.0, "bytes": 1}\n')
    bad_labels = tmp_path / "bad.labels.json"
    bad_labels.write_bytes(b'[{"key": "10.0.0.1", "start_ts": 5, "end_ts": 1}]')
    config = tmp_path / "flows.toml"
    config.write_text(NETWORK_TOML)
    paths = {
        "events": events, "missing": tmp_path / "missing.jsonl", "config": config,
        "bad_labels": bad_labels,
    }  # fmt: skip
    assert _evaluate(*(arg.format(**paths) for arg in args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("stream-detector evaluate: ") and message in err
    assert "Traceback" not in err
