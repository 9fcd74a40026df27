"""`stream-detector init --sample`: a draft config from a few hundred records that loads, and
whose choices (key, time and unit, readings, mode, preset) are the ones a person would make."""

from __future__ import annotations

import csv
import gzip
import json
import random
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError

from stream_detector.aggregate.decoder import decoder_for
from stream_detector.cli import main
from stream_detector.config import KafkaConfig, Settings, load_settings
from stream_detector.detector.sources import read_batches
from stream_detector.inspect.command import InitError, InitOptions, run_init
from stream_detector.inspect.plan import plan_for
from stream_detector.inspect.sample import Sample

T0 = 1_700_000_000.0


def _jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def _iot(n: int = 400) -> list[dict[str, Any]]:
    rnd = random.Random(1)
    return [
        {"device": f"dev-{i % 20:02d}", "ts": int(T0) + i, "temp": round(rnd.gauss(21, 2), 2),
         "hum": round(rnd.uniform(30, 60), 1), "sent": i, "fw": "1.2.0",
         "port": rnd.choice([1883, 8883])}
        for i in range(n)
    ]


def _zeek(n: int = 400) -> list[dict[str, Any]]:
    rnd = random.Random(2)
    records = []
    for i in range(n):
        record = {
            "ts": T0 + i * 0.5 - rnd.uniform(0, 20), "uid": f"C{i:08d}",
            "id.orig_h": f"10.0.0.{rnd.randint(1, 8)}", "id.orig_p": rnd.randint(32768, 60999),
            "id.resp_h": f"93.184.{rnd.randint(0, 3)}.{rnd.randint(1, 250)}",
            "id.resp_p": rnd.choice([22, 53, 80, 443]), "proto": rnd.choice(["tcp", "udp"]),
            "conn_state": rnd.choice(["SF", "S0", "REJ"]), "missed_bytes": 0,
            "orig_pkts": rnd.randint(1, 40), "orig_ip_bytes": rnd.randint(40, 9000),
            "resp_pkts": rnd.randint(0, 60), "resp_ip_bytes": rnd.randint(0, 90000),
        }
        if i % 7:  # Zeek leaves the payload bytes out of zero-duration connections
            record["orig_bytes"] = rnd.randint(0, 8000)
        records.append(record)
    return records


def _telegraf(n: int = 400) -> list[dict[str, Any]]:
    rnd = random.Random(3)
    records = []
    for i in range(n):
        host, cpu = f"h{i % 3}", f"cpu{(i // 3) % 4}"
        stamp = int(T0 * 1000) + i * 10
        if i % 5 == 4:
            records.append({"name": "mem", "tags": {"host": host}, "timestamp": stamp,
                            "fields": {"used_percent": rnd.uniform(20, 80)}})
            continue
        user = rnd.uniform(1, 20)
        records.append({
            "name": "cpu", "tags": {"host": host, "cpu": cpu}, "timestamp": stamp,
            "fields": {"usage_user": user, "usage_system": rnd.uniform(0.5, 5),
                       "usage_idle": 100 - user, "usage_nice": 0, "usage_guest": 0},
        })
    return records


def _init(sample: Path, out: Path, *extra: str) -> Settings:
    assert main(["init", "--sample", str(sample), "--out", str(out), *extra]) == 0
    return load_settings(out)


def _core(settings: Settings) -> tuple[str, str | None, str | None, str]:
    """Mode, key field, time field and unit: what every sample's draft must get right."""
    i = settings.input
    return i.mode, i.key_field, i.timestamp_field, i.timestamp_unit


def _rejects(settings: Settings, path: Path) -> int:
    return sum(len(batch.rejects) for batch in read_batches(path, decoder_for(settings)))


def test_iot_readings_give_events_mode_with_the_device_key(tmp_path: Path) -> None:
    sample = _jsonl(tmp_path / "iot.jsonl.gz", _iot())
    settings = _init(sample, tmp_path / "out.toml")
    assert _core(settings) == ("events", "device", "ts", "s")
    # sent is a counter, port an identifier, fw text: none of them a reading.
    assert settings.input.value_fields == ("temp", "hum")
    assert settings.input.label_field is None
    text = (tmp_path / "out.toml").read_text()
    assert "400 records of" in text and "--preset" not in text
    assert max(map(len, text.splitlines())) <= 100
    comments = text.replace("\n#   ", " ")  # long comments are wrapped
    assert "sent: a counter" in comments and "port: named like an identifier" in comments
    assert _rejects(settings, sample) == 0


def test_zeek_like_flows_give_aggregate_mode_and_name_the_preset(tmp_path: Path) -> None:
    sample = _jsonl(tmp_path / "conn.jsonl", _zeek())
    settings = _init(sample, tmp_path / "out.toml")
    assert _core(settings) == ("aggregate", "/id.orig_h", "ts", "s")
    features = {(f.agg, f.field) for f in settings.aggregate.features}
    assert ("count", None) in features
    assert {("sum", "orig_ip_bytes"), ("sum", "resp_ip_bytes")} <= features
    assert ("sum", "orig_bytes") not in features  # absent from some records: a sum would refuse
    assert {("distinct", "/id.resp_h"), ("distinct", "/id.resp_p")} <= features
    assert ("sum", "missed_bytes") not in features  # constant
    # Records arrive up to 20 s out of order: the lateness covers that.
    assert settings.aggregate.allowed_lateness_s >= 20
    text = (tmp_path / "out.toml").read_text()
    assert "--preset zeek-conn" in text
    assert _rejects(settings, sample) == 0


def test_telegraf_like_records_get_a_composite_key_and_a_type_filter(tmp_path: Path) -> None:
    sample = _jsonl(tmp_path / "metrics.jsonl", _telegraf())
    settings = _init(sample, tmp_path / "out.toml")
    assert settings.input.mode == "events"
    assert settings.input.key_fields is not None
    assert set(settings.input.key_fields) == {"tags.host", "tags.cpu", "name"}
    assert (settings.input.timestamp_field, settings.input.timestamp_unit) == ("timestamp", "ms")
    assert settings.input.filter == {"name": "cpu"}
    assert set(settings.input.value_fields) == {
        "fields.usage_user", "fields.usage_system", "fields.usage_idle"}
    assert "--preset telegraf-cpu" in (tmp_path / "out.toml").read_text()
    assert _rejects(settings, sample) == 0


def test_a_semicolon_csv_is_read_with_its_delimiter(tmp_path: Path) -> None:
    rnd = random.Random(4)
    sample = tmp_path / "plant.csv"
    with sample.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(["sensor", "time", "temperature", "pressure", "port"])
        for i in range(300):
            writer.writerow([f"s{i % 6}", f"2024-03-01T10:{i // 60:02d}:{i % 60:02d}Z",
                             f"{rnd.uniform(50, 70):.2f}", f"{rnd.uniform(1, 2):.3f}", 502])
    settings = _init(sample, tmp_path / "out.toml", "--records", "200")
    assert settings.input.csv_delimiter == ";"
    assert _core(settings) == ("events", "sensor", "time", "rfc3339")
    assert settings.input.value_fields == ("temperature", "pressure")
    assert "200 records of" in (tmp_path / "out.toml").read_text()
    assert _rejects(settings, sample) == 0


def test_a_file_with_no_key_is_one_series_whose_draft_trains_and_evaluates(
    tmp_path: Path,
) -> None:
    """One metric in a CSV (timestamp, value, label), as single-series benchmarks ship: no
    message key to fall back on, so the draft keys every record as one series, and the file
    then decodes whole under it."""
    rnd = random.Random(5)
    sample = tmp_path / "metric.csv"
    with sample.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "value", "is_anomaly"])
        for i in range(300):
            writer.writerow([f"2024-03-01T10:{i // 60:02d}:{i % 60:02d}Z",
                             f"{rnd.uniform(50, 70):.2f}", 0])
    settings = _init(sample, tmp_path / "out.toml")
    assert _core(settings) == ("events", "@single_series", "timestamp", "rfc3339")
    assert "the records are one series" in (tmp_path / "out.toml").read_text()
    assert settings.input.value_fields == ("value",)
    # The 0/1 column named like a label is what `evaluate` scores against, not a reading.
    assert settings.input.label_field == "is_anomaly"
    batches = list(read_batches(sample, decoder_for(settings)))
    assert _rejects(settings, sample) == 0
    assert {key for b in batches for key in b.batch.keys.tolist()} == {"single_series"}
    assert sum(len(b.batch) for b in batches) == 300


def test_a_file_numbering_its_rows_takes_them_as_seconds_from_the_epoch(tmp_path: Path) -> None:
    """A step index in place of a time (timestamp = 1, 2, 3 ...): read as seconds, with the
    plausibility floor lowered so that 1970 is let in, instead of the broker's time a file
    lacks. A number column that falls is no step index."""
    rnd = random.Random(6)
    sample = tmp_path / "series.csv"
    sample.write_text("timestamp,value\n" + "".join(
        f"{i},{rnd.uniform(0, 1):.3f}\n" for i in range(1, 301)))
    settings = _init(sample, tmp_path / "out.toml")
    assert _core(settings) == ("events", "@single_series", "timestamp", "s")
    assert settings.input.min_timestamp == 0.0
    assert "timestamp: a step index (1 .. 300)" in (tmp_path / "out.toml").read_text()
    batches = list(read_batches(sample, decoder_for(settings)))
    assert _rejects(settings, sample) == 0
    assert [t for b in batches for t in b.batch.ts.tolist()] == [float(i) for i in range(1, 301)]

    sample.write_text("timestamp,value\n" + "".join(
        f"{300 - i},{rnd.uniform(0, 1):.3f}\n" for i in range(300)))
    settings = _init(sample, tmp_path / "falling.toml")
    assert settings.input.timestamp_field is None  # the broker's: the draft says to add a time


def test_a_topic_sample_with_no_key_or_time_falls_back_on_the_message_and_broker() -> None:
    """Records from a topic carry a message key and a broker time; the same records from a file
    have neither, and a 0/1 column named otherwise (or a text label) is no label."""
    records = [{"step": i, "value": float(i % 7), "flag": i % 2, "label": "ok"}
               for i in range(1, 201)]  # fmt: skip
    topic = plan_for(Sample(records, "events", "kafka"))
    assert (topic.key.paths, topic.key.no_field) == ((), "@message_key")
    assert (topic.time.path, topic.time.min_timestamp) == (None, None)
    file = plan_for(Sample(records, "series.jsonl", "jsonl"))
    assert (file.key.no_field, file.time.path, file.time.min_timestamp) == (
        "@single_series", "step", 0.0)
    assert topic.label is None and file.label is None


def test_the_draft_goes_to_stdout_without_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = _jsonl(tmp_path / "iot.jsonl", _iot(100))
    assert main(["init", "--sample", str(sample)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Drafted by `stream-detector init` from 100 records")
    assert 'key_field = "device"' in out


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.jsonl", b"", "holds no records"),
        ("garbage.jsonl", b"\x00\x01 not json\n[1, 2]\n", "(2 unreadable lines)"),
        ("broken.jsonl.gz", b"not gzip at all", "cannot read"),
        ("text.jsonl", b'{"a": "x"}\n{"a": "y"}\n', "no field in"),
    ],
)
def test_an_unusable_sample_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes, expected: str
) -> None:
    sample = tmp_path / name
    sample.write_bytes(content)
    out = tmp_path / "out.toml"
    assert main(["init", "--sample", str(sample), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stream-detector init: ") and expected in err
    assert err.count("\n") == 1 and not out.exists()


def test_a_missing_file_is_not_asked_of_a_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "--sample", str(tmp_path / "nope.jsonl")]) == 2
    assert "is not a readable file" in capsys.readouterr().err


def test_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["init", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--bootstrap-servers" in out and "run --config" in out


class _Message:
    def __init__(self, value: bytes | None, partition: int, eof: bool = False) -> None:
        self._value, self._partition, self._eof = value, partition, eof

    def value(self) -> bytes | None:
        return self._value

    def partition(self) -> int:
        return self._partition

    def error(self) -> KafkaError | None:
        return KafkaError(KafkaError._PARTITION_EOF) if self._eof else None


class _Topic:
    def __init__(self, partitions: int) -> None:
        self.partitions = {p: object() for p in range(partitions)}
        self.error = None


class _Metadata:
    def __init__(self, topics: dict[str, _Topic]) -> None:
        self.topics = topics


class FakeConsumer:
    """What read_topic asks of confluent_kafka.Consumer: metadata, assign, consume, close."""

    def __init__(self, conf: dict[str, Any], payloads: list[bytes], topic: str) -> None:
        self.conf, self.topic, self.assigned, self.closed = conf, topic, [], False
        self._messages = [_Message(p, i % 2) for i, p in enumerate(payloads)]
        self._messages += [_Message(None, 0, eof=True), _Message(None, 1, eof=True)]

    def list_topics(self, topic: str, timeout: float) -> _Metadata:
        return _Metadata({self.topic: _Topic(2)} if topic == self.topic else {})

    def assign(self, partitions: list[Any]) -> None:
        self.assigned = partitions

    def consume(self, num_messages: int, timeout: float) -> list[_Message]:
        taken, self._messages = self._messages[:num_messages], self._messages[num_messages:]
        return taken

    def close(self) -> None:
        self.closed = True


def test_a_topic_sample_is_read_from_the_beginning_without_a_group(tmp_path: Path) -> None:
    payloads = [json.dumps(r).encode() for r in _iot(200)] + [None]  # type: ignore[list-item]
    made: list[FakeConsumer] = []

    def factory(conf: dict[str, Any]) -> FakeConsumer:
        made.append(FakeConsumer(conf, payloads, "sensors"))
        return made[-1]

    out = tmp_path / "out.toml"
    kafka = KafkaConfig(bootstrap_servers="kafka:9092")
    assert run_init(InitOptions("sensors", out, 150), kafka, factory) == 0
    consumer = made[0]
    assert consumer.conf["bootstrap.servers"] == "kafka:9092"
    assert str(consumer.conf["group.id"]).startswith("stream-detector-init-")
    assert consumer.conf["enable.auto.commit"] is False
    assert [(tp.partition, tp.offset) for tp in consumer.assigned] == [
        (0, OFFSET_BEGINNING), (1, OFFSET_BEGINNING)]
    assert consumer.closed
    settings = load_settings(out)
    assert settings.kafka.input_topics == ("sensors",)
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.input.key_field == "device"
    assert "150 records of topic sensors on kafka:9092" in out.read_text()


def test_a_missing_topic_is_an_init_error(tmp_path: Path) -> None:
    def factory(conf: dict[str, Any]) -> FakeConsumer:
        return FakeConsumer(conf, [], "other")

    with pytest.raises(InitError, match="neither an existing file nor a topic"):
        run_init(InitOptions("sensors"), KafkaConfig(), factory)
