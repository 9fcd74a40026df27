"""Rows for checkpointed state (docs/state.md): snapshot size and time, restore time.

What a checkpoint costs does not depend on how warm the keys are: every key's ring rows are
allocated whole, so the arrays are as large after one event as after a thousand. The detector is
therefore fed two ticks of the suite's stream (every key tracked, no window due yet, no model
time) and then measured, best of three (the machine is shared; the minimum is the least
disturbed):

* snapshot: `Detector.snapshot` of every key (copies the per-key rows; the only part that runs
  on the service's loop at at-least-once) and `encode` to checkpoint bytes (on the loop too with
  exactly_once, where the checkpoint joins a batch's transaction);
* restore: `decode` plus `Detector.restore` into a fresh detector (what an assign costs);
* bytes: the checkpoint's size, in total and per key.
"""

from __future__ import annotations

import time
from pathlib import Path

from stream_detector.benchmarking.results import Row, keys_label, state_id
from stream_detector.benchmarking.workload import bench_settings, tick_stream
from stream_detector.detector.artefact import load_artefact
from stream_detector.detector.facade import Detector
from stream_detector.detector.snapshot import decode, encode, make_checkpoint

_STRIDE = 8
_REPEATS = 3  # best of: the machine is shared, the minimum is the least disturbed


def state_row(artefact_dir: Path, keys: int, *, device: str = "cpu", seed: int = 0) -> Row:
    """Checkpoint size, snapshot + encode time and decode + restore time at `keys` keys."""
    settings = bench_settings(
        _STRIDE, model_path=artefact_dir, device=device, window={"max_keys": max(keys, 100_000)}
    )
    artefact = load_artefact(artefact_dir, settings)
    detector = Detector(settings, artefact)
    stream = tick_stream(keys, 0, 2, seed=seed)
    detector.process(stream.decoded(0, len(stream)))
    names = stream.names.tolist()

    snapshot_s, encode_s, decode_s, restore_s = [], [], [], []
    data = b""
    for _ in range(_REPEATS):
        started = time.perf_counter()
        snapshot = detector.snapshot(names)
        snapshot_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        data = encode(
            make_checkpoint(snapshot, model_version=detector.model_version, fingerprint="bench",
                            topic="events", partition=0, offset=len(stream))
        )
        encode_s.append(time.perf_counter() - started)
        fresh = Detector(settings, artefact)
        started = time.perf_counter()
        checkpoint = decode(data)
        decode_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        restored = fresh.restore(checkpoint.engine)
        restore_s.append(time.perf_counter() - started)
        if restored != keys:
            raise AssertionError(f"restored {restored} of {keys} keys")
    record = {
        "keys": keys,
        "window": settings.window.size,
        "features": len(settings.input.value_fields),
        "bytes": len(data),
        "bytes_per_key": len(data) / keys,
        "snapshot_s": min(snapshot_s),
        "encode_s": min(encode_s),
        "decode_s": min(decode_s),
        "restore_s": min(restore_s),
        "repeats": _REPEATS,
    }
    detail = (
        f"{len(data) / 1e6:,.1f} MB ({len(data) / keys:,.0f} B/key); snapshot "
        f"{record['snapshot_s'] * 1e3:,.0f} ms + encode {record['encode_s'] * 1e3:,.0f} ms; "
        f"decode {record['decode_s'] * 1e3:,.0f} ms + restore {record['restore_s'] * 1e3:,.0f} ms"
    )
    return Row(state_id(keys), f"state K={keys_label(keys)}", None, detail, record)
