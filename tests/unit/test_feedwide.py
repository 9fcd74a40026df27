"""Feed-wide labels: attack spans of the whole feed, judged by when alerts open (Westermo)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from stream_detector.config import Settings
from stream_detector.evaluation.datasets import Channel, LabelledDataset
from stream_detector.evaluation.feed_labels import FeedLabels, FeedSpan
from stream_detector.evaluation.feedwide import score_feed
from stream_detector.evaluation.trace import MethodTrace
from stream_detector.evaluation.westermo import (
    CLOCK_SHIFT_S,
    load_westermo,
    read_spans,
    westermo_sections,
)

SPANS = (
    FeedSpan("SSH", 100.0, 150.0, attack=True),
    FeedSpan("MITM", 200.0, 230.0, attack=True),
    FeedSpan("SSH", 300.0, 310.0, attack=False),  # a benign login
    FeedSpan("SCAN", 50.0, 60.0, attack=True),  # before the test part: not scored
)


def _channel(key: str, test_ts: np.ndarray) -> Channel:
    empty = np.empty(0)
    return Channel(
        key, "all", empty, np.empty((0, 1), np.float32), empty.astype(np.int8), test_ts,
        np.zeros((len(test_ts), 1), np.float32), np.zeros(len(test_ts), np.int8),
    )  # fmt: skip


def test_an_alert_on_any_key_detects_the_span_it_opens_in() -> None:
    ts = np.arange(80.0, 400.0, 10.0)  # 10 s buckets ending at 80, 90, ... 390
    dataset = LabelledDataset(
        "feed", ("x",), (_channel("a", ts), _channel("b", ts)), (),
        FeedLabels(SPANS, test_from_ts=70.0, sample_span_s=10.0),
    )  # fmt: skip
    at = {float(t): i for i, t in enumerate(ts)}
    episodes = {
        # Key a opens in the SSH span (bucket ending 110) and stays open past the MITM span:
        # outlasting an attack does not detect it.
        0: np.array([[at[110.0], at[250.0]]]),
        # Key b opens in the benign span, and once in no span at all.
        1: np.array([[at[310.0], at[320.0]], [at[370.0], at[380.0]]]),
    }
    figures = score_feed(dataset, MethodTrace("m", {}, episodes, 0.0), dataset.feed)
    assert figures["attack_spans"] == 2 and figures["detected"] == 1
    assert figures["by_kind"] == {"MITM": {"detected": 0, "spans": 1}, "SSH": {"detected": 1, "spans": 1}}
    assert figures["episodes"] == 3 and figures["true_episodes"] == 1
    assert figures["precision"] == pytest.approx(1 / 3) and figures["recall"] == 0.5
    assert figures["false_in_benign_spans"] == 1 and figures["benign_spans"] == 1


def test_the_injection_log_pairs_start_and_end(tmp_path: Path) -> None:
    log = tmp_path / "events.txt"
    log.write_text(
        "[1000.0 -- 2023-03-10 10:29:34 -- 0.00] [INFO] data collection starts\n"
        "[1010.5 -- 2023-03-10 10:29:44 -- 10.5] [BAD-MITM-START] Manual MITM starts\n"
        "[1020.0 -- 2023-03-10 10:29:54 -- 20.0] [BAD-MITM-END] done\n"
        "[1030.0 -- x -- 30.0] [GOOD-SSH-START] target\n"
        "[1031.0 -- x -- 31.0] [GOOD-SSH-END] done\n"
        "[1040.0 -- x -- 40.0] [BAD-MISCONF-DUPLICATION-START] hub\n"
        "[1050.0 -- x -- 50.0] [BAD-MISCONF-DUPLICATION-END]cleaned up\n"
    )
    assert read_spans(log) == [
        FeedSpan("MITM", 1010.5, 1020.0, True),
        FeedSpan("SSH", 1030.0, 1031.0, False),
        FeedSpan("MISCONF-DUPLICATION", 1040.0, 1050.0, True),
    ]
    log.write_text("[1.0 -- x -- 0] [BAD-SSH-END] done\n")
    with pytest.raises(ValueError, match="without a matching START"):
        read_spans(log)


def test_flows_are_sorted_shifted_and_bucketed_per_source(tmp_path: Path) -> None:
    """Rows in flow-end order on a clock an hour behind the log: sorted by start, shifted, and
    bucketed per source address; buckets inside an attack span are labelled."""
    header = "sAddress,rAddress,protocol,start,end,sPackets,rPackets,sBytesSum,rBytesSum"
    rows = []
    for i in range(300):  # one flow per 2 s from each of two hosts, written in reverse
        for host in ("10.0.0.1", "10.0.0.2"):
            start = 1_678_440_000.0 + 2 * i
            rows.append(f"{host},10.0.0.9,IPV4-TCP,{start},{start + 1},3,,120,")
    (tmp_path / "flows_left.csv.gz").write_bytes(
        gzip.compress(("\n".join([header, *reversed(rows)]) + "\n").encode())
    )
    t0 = 1_678_440_000.0 + CLOCK_SHIFT_S
    (tmp_path / "events.txt").write_text(
        f"[{t0 + 500:.3f} -- x -- 0] [BAD-SSH-START] x\n[{t0 + 520:.3f} -- x -- 0] [BAD-SSH-END] x\n"
    )
    settings = Settings(**westermo_sections())
    dataset = load_westermo(tmp_path, "left", settings)
    assert [c.key for c in dataset.channels] == ["10.0.0.1", "10.0.0.2"]
    host = dataset.channels[0]
    assert host.train_ts[0] == t0 + 10.0  # the first bucket ends 10 s into the shifted clock
    assert np.all(np.diff(np.concatenate([host.train_ts, host.test_ts])) == 10.0)
    assert host.test_ts[-1] == t0 + 600.0  # the last flow's bucket, closed when the file ends
    assert dataset.feed is not None and dataset.feed.test_from_ts > host.train_ts[-1]
    flows = dataset.feature_names.index("flows")
    assert np.all(host.train_values[:, flows] == 5.0)  # five flows per 10 s bucket
    labelled = np.concatenate([host.train_ts, host.test_ts])[
        np.concatenate([host.train_labels, host.test_labels]) == 1
    ]
    assert labelled.tolist() == [t0 + 510.0, t0 + 520.0, t0 + 530.0]
    with pytest.raises(ValueError, match=r"no Westermo recording point 'bottom' .* holds left\)"):
        load_westermo(tmp_path, "bottom", settings)
    # Another recording point is a flow file of its own beside the log, read the same way.
    (tmp_path / "flows_left.csv.gz").rename(tmp_path / "flows_bottom.csv.gz")
    bottom = load_westermo(tmp_path, "bottom", settings)
    assert bottom.name == "westermo_bottom"
    assert [c.key for c in bottom.channels] == ["10.0.0.1", "10.0.0.2"]
