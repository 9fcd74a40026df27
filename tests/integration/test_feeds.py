"""The Zeek preset through the real broker: conn.log records in, an alert for the scanner out.

A few hosts make ordinary connections (mostly SF, now and then a one-way UDP flow or a refused
one), as Zeek logs them, for three hours used for training and then on the input topic; then one
of them SYN-scans a server: hundreds of S0 / REJ connections to as many ports in five minutes.
The service runs with the `zeek-conn` preset's settings (only the model made small, and the
per-key warm-ups shortened, so the test takes seconds) and must alert on the scanner, keyed by
its `id.orig_h`, and on nobody else.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka_harness import settled, wait_until

from stream_detector.aggregate.decoder import AggregatingDecoder
from stream_detector.config import Settings, deep_merge, load_settings
from stream_detector.detector.artefact import load_artefact
from stream_detector.detector.facade import Detector
from stream_detector.detector.training import train
from stream_detector.scenarios.presets import preset

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
HOSTS = ("10.0.0.5", "10.0.0.12", "10.0.0.20", "192.168.1.33")
SCANNER = "10.0.0.12"
TARGET = "10.0.0.40"
TRAIN_MINUTES = 180
LIVE_MINUTES = 40  # on the topic after training: the per-key warm-up, the scan, the aftermath
SCAN_MINUTE = 25  # of the live part
SCAN_MINUTES = 5
# The preset as `--preset zeek-conn` gives it, but a tiny model and warm-ups of 10 buckets, not
# 60: the scan comes 25 live minutes in rather than after an hour of each host's traffic.
SMALL: dict[str, dict[str, Any]] = {
    "model": {"hidden_size": 8, "latent_size": 2, "device": "cpu"},
    "train": {"epochs": 4, "patience": 2},
    "normalize": {"warmup": 10},
    "threshold": {"warmup": 10},
}
SERVICE_SECTIONS = ("input", "aggregate", "window", "normalize", "threshold", "model", "episodes")


def _sections() -> dict[str, dict[str, Any]]:
    return deep_merge(preset("zeek-conn"), SMALL)


def _settings() -> Settings:
    return load_settings(None, _sections())


def _conn(rng: random.Random, ts: float, host: str, uid: int) -> dict[str, Any]:
    """One ordinary connection, as conn.log has it: mostly a completed exchange (SF) with one of
    the host's usual peers, sometimes a DNS query that got no answer (S0) or a refused one."""
    peer, port, proto = rng.choice([
        ("10.0.0.2", 53, "udp"), ("93.184.216.34", 443, "tcp"),
        ("10.0.0.40", 22, "tcp"), ("140.82.112.4", 443, "tcp"),
    ])
    state = rng.choices(["SF", "S0", "REJ", "RSTO"], weights=[90, 5, 2, 3])[0]
    out = rng.randint(200, 3000) if state == "SF" else 60
    back = out * rng.randint(2, 20) if state == "SF" else (40 if state == "REJ" else 0)
    return {
        "ts": ts, "uid": f"C{uid}", "id.orig_h": host, "id.orig_p": rng.randint(32768, 60999),
        "id.resp_h": peer, "id.resp_p": port, "proto": proto, "conn_state": state,
        "orig_pkts": 10 if state == "SF" else 1, "orig_ip_bytes": out,
        "resp_pkts": 12 if back else 0, "resp_ip_bytes": back,
    }


def _scan(rng: random.Random, ts: float, uid: int, port: int) -> dict[str, Any]:
    """One probe of a SYN scan: a lone SYN, unanswered (S0, filtered) or refused (REJ, closed)."""
    state = rng.choice(["S0", "REJ"])
    return {
        "ts": ts, "uid": f"S{uid}", "id.orig_h": SCANNER, "id.orig_p": 54321,
        "id.resp_h": TARGET, "id.resp_p": port, "proto": "tcp", "conn_state": state,
        "history": "S" if state == "S0" else "Sr", "orig_pkts": 1, "orig_ip_bytes": 44,
        "resp_pkts": int(state == "REJ"), "resp_ip_bytes": 40 if state == "REJ" else 0,
    }


def _conn_log(first_minute: int, minutes: int, seed: int, scan: bool) -> list[dict[str, Any]]:
    """Every host's connections over `minutes` from `first_minute`, in the order Zeek logs them
    (at their end: up to a few seconds after `ts`), with the scan in its minutes if `scan`."""
    rng = random.Random(seed)
    rows = []
    for minute in range(first_minute, first_minute + minutes):
        start = T0 + 60 * minute
        for host in HOSTS:
            for _ in range(rng.randint(3, 7)):
                rows.append(_conn(rng, start + rng.uniform(0, 59), host, len(rows)))
        scanning = scan and 0 <= minute - (TRAIN_MINUTES + SCAN_MINUTE) < SCAN_MINUTES
        if scanning:
            for i in range(200):
                port = 1 + (minute * 200 + i) % 1024
                rows.append(_scan(rng, start + i * 0.29, len(rows), port))
    rows.sort(key=lambda row: row["ts"] + rng.uniform(0, 5))  # logged when they end
    return rows


@pytest.fixture(scope="module")
def zeek_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trained through the real training path on three hours without the scan."""
    settings = _settings()
    normal = _conn_log(0, TRAIN_MINUTES, seed=1, scan=False)
    decoder = AggregatingDecoder(settings)
    parts = [decoder.decode_messages([orjson.dumps(row) for row in normal]), decoder.flush()]
    out = tmp_path_factory.mktemp("zeek-model")
    train(parts, settings, out)
    return out


def _live() -> list[dict[str, Any]]:
    return _conn_log(TRAIN_MINUTES, LIVE_MINUTES, seed=2, scan=True)


def test_the_model_alerts_on_the_scanner_alone_in_process(zeek_model: Path) -> None:
    """The premise, without the broker: the same settings and records give the scanner's alert
    and no other, so a failure of the service test below is the service's."""
    settings = _settings()
    detector = Detector(settings, load_artefact(zeek_model, settings))
    result = detector.process_messages([orjson.dumps(row) for row in _live()])
    assert result.decoded.rejects == []
    opened = [alert for alert in result.alerts if alert.kind == "open"]
    assert {alert.key for alert in opened} == {SCANNER}


def test_zeek_conn_records_in_an_alert_keyed_by_the_scanner_out(
    zeek_model: Path,
    topic_factory: Callable[..., str],
    produce_events: Callable[..., None],
    consume_all: Callable[..., list[Any]],
    start_service: Callable[..., Any],
    service_setup: Any,
) -> None:
    rows = _live()
    conn = topic_factory("zeek-conn", partitions=2)
    sections = _sections()
    overrides = {name: sections.get(name, {}) for name in SERVICE_SECTIONS}
    overrides["model"] = {**overrides["model"], "path": str(zeek_model)}
    service = start_service(kafka={"input_topics": [conn]}, **overrides)
    # keyed as a Zeek-to-Kafka shipper keys them: by the originator, so a host stays on one
    # partition and its buckets are judged against that partition's watermark
    produce_events(conn, [(row["id.orig_h"].encode(), orjson.dumps(row)) for row in rows])

    wait_until(settled(service, len(rows)), 120.0, "the service to consume every connection")

    def alerted() -> bool:
        return bool(consume_all(service_setup.alert_topic, timeout=5.0))

    wait_until(alerted, 30.0, "an alert on the alert topic")
    records = consume_all(service_setup.alert_topic)
    opened = [r for r in records if r.json()["data"]["kind"] == "open"]
    assert opened, "the scan opens an alert"
    assert {r.json()["data"]["key"] for r in opened} == {SCANNER}
    assert {r.key for r in records} == {SCANNER.encode()}, "alerts keyed by id.orig_h"
    scan_start = T0 + 60 * (TRAIN_MINUTES + SCAN_MINUTE)
    first = min(opened, key=lambda r: r.offset).json()["data"]
    assert first["window_end"] > scan_start, "opened on the scan, not before it"
    features = {f["name"] for f in first["top_features"]}
    assert features & {"failed", "connections", "ports"}, first["top_features"]
