"""The feed presets read what each tool really writes: samples in its documented format decode
through the service's own decode path with no rejects, keyed and featured as each preset says,
and `--preset` puts a preset beneath everything a user sets."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from stream_detector.aggregate.decoder import decoder_for
from stream_detector.cli import _settings, build_parser, main
from stream_detector.config import Settings, deep_merge, load_settings
from stream_detector.detector.sources import read_batches
from stream_detector.engine.types import Decoded, Reject
from stream_detector.scenarios.presets import preset

FEEDS = Path(__file__).parent / "data" / "feeds"

pytestmark = pytest.mark.usefixtures("logging_left_as_found")  # the CLI tests configure logging


def _lines(name: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (FEEDS / name).read_bytes().splitlines() if line]


def _decode(settings: Settings, path: Path) -> tuple[list[Decoded], list[Reject]]:
    """Every batch the file decodes into, the decoder's final flush included, and all rejects."""
    decoder = decoder_for(settings)
    parts = list(read_batches(path, decoder, batch_size=16))
    parts.append(decoder.flush())
    return parts, [reject for part in parts for reject in part.rejects]


def _column(parts: list[Decoded], settings: Settings, feature: str) -> np.ndarray:
    j = settings.input.value_fields.index(feature)
    return np.concatenate([part.batch.values[:, j] for part in parts])


def _keys(parts: list[Decoded]) -> set[str]:
    return {key for part in parts for key in part.batch.keys.tolist()}


@pytest.mark.parametrize("name", ["zeek-conn", "suricata-flow", "goflow2", "telegraf-cpu"])
def test_every_feed_preset_is_complete_settings(name: str) -> None:
    settings = load_settings(None, preset(name))
    assert settings.model.path is None  # a user adds the model, brokers and topics, nothing else
    if settings.input.mode == "aggregate":
        # Alerts go out only after a bucket closes; the lateness must leave it time to fill.
        assert settings.aggregate.allowed_lateness_s <= 5 * settings.aggregate.bucket_width_s
        assert settings.window.idle_ttl_s > settings.aggregate.idle_timeout_s


def test_zeek_conn_buckets_each_originator_with_every_connection_counted() -> None:
    settings = load_settings(None, preset("zeek-conn"))
    rows = _lines("zeek_conn.jsonl")
    parts, rejects = _decode(settings, FEEDS / "zeek_conn.jsonl")
    assert rejects == []
    assert _keys(parts) == {row["id.orig_h"] for row in rows}
    assert settings.input.value_fields == (
        "connections", "failed", "bytes_out", "bytes_in", "peers", "ports"
    )
    assert _column(parts, settings, "connections").sum() == len(rows)
    failed = {"S0", "REJ", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH"}
    assert _column(parts, settings, "failed").sum() == sum(r["conn_state"] in failed for r in rows)
    assert 0 < _column(parts, settings, "failed").sum() < len(rows)  # the sample has both kinds
    assert _column(parts, settings, "bytes_out").sum() == sum(r["orig_ip_bytes"] for r in rows)
    assert _column(parts, settings, "bytes_in").sum() == sum(r["resp_ip_bytes"] for r in rows)
    assert _column(parts, settings, "ports").max() >= 2


def test_zeek_payload_bytes_would_refuse_the_connections_a_scan_is_made_of() -> None:
    """Why the preset sums *_ip_bytes: Zeek leaves orig_bytes out of zero-duration connections
    (a lone SYN), and a sum over an absent field refuses the record."""
    sections = preset("zeek-conn")
    for feature in sections["aggregate"]["features"]:
        if feature.get("field") == "orig_ip_bytes":
            feature["field"] = "orig_bytes"
    settings = load_settings(None, sections)
    _, rejects = _decode(settings, FEEDS / "zeek_conn.jsonl")
    unanswered = [r for r in _lines("zeek_conn.jsonl") if "duration" not in r]
    assert unanswered and len(rejects) == len(unanswered)
    assert {reject.reason for reject in rejects} == {"missing_value"}


def test_suricata_flow_events_are_bucketed_and_the_other_event_types_filtered() -> None:
    settings = load_settings(None, preset("suricata-flow"))
    rows = _lines("suricata_eve.jsonl")
    flows = [row for row in rows if row["event_type"] == "flow"]
    assert len(flows) < len(rows)  # the sample interleaves alert, dns, tls and stats events
    parts, rejects = _decode(settings, FEEDS / "suricata_eve.jsonl")
    assert rejects == []  # skipped, not dead-lettered
    assert _keys(parts) == {row["src_ip"] for row in flows}
    assert _column(parts, settings, "flows").sum() == len(flows)
    for feature in ("bytes_toserver", "bytes_toclient", "pkts_toserver", "pkts_toclient"):
        assert _column(parts, settings, feature).sum() == sum(f["flow"][feature] for f in flows)
    # an ICMP flow has no dest_port: still counted, its port simply not among the distinct ones
    assert any("dest_port" not in flow for flow in flows)


def test_goflow2_records_are_bucketed_per_source_address() -> None:
    settings = load_settings(None, preset("goflow2"))
    rows = _lines("goflow2.jsonl")
    parts, rejects = _decode(settings, FEEDS / "goflow2.jsonl")
    assert rejects == []
    assert _keys(parts) == {row["src_addr"] for row in rows}
    assert _column(parts, settings, "flows").sum() == len(rows)
    assert _column(parts, settings, "bytes").sum() == sum(row["bytes"] for row in rows)
    assert _column(parts, settings, "packets").sum() == sum(row["packets"] for row in rows)
    # buckets are in the collector's receive time (ns), not the exporter's flow times
    first = min(row["time_received_ns"] for row in rows) / 1e9
    width = settings.aggregate.bucket_width_s
    ends = np.concatenate([part.batch.ts for part in parts])
    assert ends.min() == (np.floor(first / width) + 1) * width


def test_telegraf_cpu_readings_are_keyed_per_host_and_core() -> None:
    settings = load_settings(None, preset("telegraf-cpu"))
    rows = _lines("telegraf_cpu.jsonl")
    cpu = [row for row in rows if row["name"] == "cpu"]
    assert len(cpu) < len(rows)  # mem readings share the topic
    parts, rejects = _decode(settings, FEEDS / "telegraf_cpu.jsonl")
    assert rejects == []
    keys = np.concatenate([part.batch.keys for part in parts])
    assert len(keys) == len(cpu)
    assert set(keys.tolist()) == {
        f"{host}|cpu|{core}" for host in ("h1", "h2") for core in ("cpu0", "cpu1", "cpu-total")
    }
    values = np.concatenate([part.batch.values for part in parts])
    first = cpu[0]
    assert keys[0] == "h1|cpu|cpu0"
    expected = [first["fields"][f.rsplit("/", 1)[1]] for f in settings.input.value_fields]
    np.testing.assert_allclose(values[0], expected, rtol=1e-6)
    ts = np.concatenate([part.batch.ts for part in parts])
    assert ts[0] == first["timestamp"]  # seconds, as Telegraf's json_timestamp_units = "1s"


# -- --preset on the command line --------------------------------------------------------------


def test_preset_lies_beneath_config_environment_and_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site.toml"
    site.write_text(
        '[kafka]\nbootstrap_servers = "kafka:9092"\ninput_topics = ["zeek-conn"]\n'
        "[aggregate]\nallowed_lateness_s = 90.0\n[normalize]\nwarmup = 30\n"
    )
    monkeypatch.setenv("SD_NORMALIZE__WARMUP", "40")
    monkeypatch.setenv("SD_THRESHOLD__WARMUP", "50")
    args = build_parser().parse_args(
        ["run", "--preset", "zeek-conn", "--config", str(site), "--set", "threshold.warmup=70"]
    )
    settings = _settings(args, {"kafka": {"bootstrap_servers": None}})
    zeek = preset("zeek-conn")
    assert settings.input.key_field == "/id.orig_h"  # the preset's mapping
    assert settings.aggregate.bucket_width_s == zeek["aggregate"]["bucket_width_s"]
    assert settings.window.size == zeek["window"]["size"]  # from the preset over `flows`
    assert settings.train.epochs == preset("flows")["train"]["epochs"]
    assert settings.kafka.input_topics == ("zeek-conn",)  # the file over the preset
    assert settings.aggregate.allowed_lateness_s == 90.0
    assert settings.normalize.warmup == 40  # the environment over the file
    assert settings.threshold.warmup == 70  # --set over the environment


def test_without_a_preset_settings_are_built_as_before(tmp_path: Path) -> None:
    args = build_parser().parse_args(["run", "--set", "window.size=20"])
    assert args.preset is None
    assert _settings(args).window.size == 20


def test_an_unknown_preset_is_one_line_naming_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed = tmp_path / "feed.jsonl"
    feed.write_text("")
    status = main(["replay", "--preset", "zeek", "--input", str(feed), "--log-level", "error"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1
    assert "no preset named 'zeek'" in err
    assert "zeek-conn" in err and "suricata-flow" in err and "telegraf-cpu" in err


def test_a_missing_config_file_under_a_preset_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["run", "--preset", "goflow2", "--config", str(tmp_path / "absent.toml")]
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err


# -- Zeek end to end: train on normal traffic, replay the sample --------------------------------

HOSTS = ("10.0.0.5", "10.0.0.12", "192.168.1.20")
SMALL = [  # a tiny, fast model; the same for train and replay, as the artefact requires
    "--set", "window.size=4", "--set", "normalize.warmup=0", "--set", "threshold.warmup=4",
    "--set", "model.hidden_size=4", "--set", "model.latent_size=2", "--set", "model.device=cpu",
    "--set", "train.epochs=2",
]


def _normal_conn_log(path: Path, start: float, minutes: int) -> None:
    """Conn-like records of HOSTS: a few connections a minute each, to their usual peers."""
    rng = random.Random(0)
    rows = []
    for minute in range(minutes):
        for host in HOSTS:
            for _ in range(rng.randint(3, 7)):
                peer, port = rng.choice([("10.0.0.2", 53), ("93.184.216.34", 443),
                                         ("10.0.0.40", 22), ("140.82.112.4", 443)])
                out = rng.randint(200, 3000)
                rows.append({
                    "ts": start + 60 * minute + rng.uniform(0, 59), "uid": f"C{len(rows)}",
                    "id.orig_h": host, "id.orig_p": rng.randint(32768, 60999),
                    "id.resp_h": peer, "id.resp_p": port, "proto": "tcp", "conn_state": "SF",
                    "orig_pkts": 10, "orig_ip_bytes": out, "resp_pkts": 12,
                    "resp_ip_bytes": out * rng.randint(2, 20),
                })
    rows.sort(key=lambda row: row["ts"])
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))


def test_zeek_conn_trains_and_replays_end_to_end_keyed_by_originator(tmp_path: Path) -> None:
    """`train` and `replay` with nothing but --preset (and a small model): the sample's buckets
    come out scored per originating host."""
    sample = FEEDS / "zeek_conn.jsonl"
    first = min(row["ts"] for row in _lines("zeek_conn.jsonl"))
    normal, model, out = tmp_path / "normal.jsonl", tmp_path / "model", tmp_path / "scores.jsonl"
    _normal_conn_log(normal, first - 6 * 3600, minutes=180)
    common = ["--preset", "zeek-conn", *SMALL, "--log-level", "error"]
    assert main(["train", *common, "--input", str(normal), "--out", str(model)]) == 0
    assert main(["replay", *common, "--input", str(sample), "--model", str(model),
                 "--out", str(out)]) == 0
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert not any("rejected" in line for line in lines)
    scored = [line for line in lines if line.get("score") is not None]
    assert scored, "the sample's buckets fill whole windows, so some are scored"
    assert {line["key"] for line in lines if "key" in line} <= set(HOSTS)
    assert {line["key"] for line in scored} == set(HOSTS)
    # one line per closed bucket of a host, each in its own 60 s of event time
    assert all(line["bucket_end"] - line["bucket_start"] == 60.0 for line in lines)


def test_the_preset_merges_with_a_config_like_the_shipped_example() -> None:
    """A site file naming only brokers, topics and the model completes the preset."""
    site = {
        "kafka": {"bootstrap_servers": "kafka:9092", "input_topics": ["suricata"]},
        "model": {"path": "/models/suricata"},
    }
    settings = load_settings(None, deep_merge(preset("suricata-flow"), site))
    assert settings.model.path == Path("/models/suricata")
    assert settings.input.filter == {"event_type": "flow"}
