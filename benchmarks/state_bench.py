"""Benchmark rows for checkpointed state (issue 8): snapshot size and time, restore time.

What a checkpoint costs does not depend on how warm the keys are: every key's ring rows are
allocated whole, so the arrays are as large after one event as after a thousand. The detector is
therefore fed two ticks of the suite's stream (every key tracked, no window due yet, no model
time) and then measured:

* snapshot: `Detector.snapshot` of every key (copies the per-key rows; the only part that runs
  on the service's loop besides encoding) and `encode` to checkpoint bytes;
* restore: `decode` plus `Detector.restore` into a fresh detector (what an assign costs);
* bytes: the checkpoint's size, in total and per key.

Run alone: ``python benchmarks/state_bench.py [--keys 10000 100000] [--out FILE]``. In the suite,
``state_rows(artefact_dir, keys, device=device, seed=seed)`` returns `Row`s for the table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import orjson

from stream_detector.artefact import load_artefact
from stream_detector.benchmarking.report import Row
from stream_detector.benchmarking.workload import bench_settings, tick_stream, untrained_artefact
from stream_detector.engine.detector import Detector
from stream_detector.state.snapshot import decode, encode, make_checkpoint

_STRIDE = 8
_REPEATS = 3  # best of: the machine is shared, the minimum is the least disturbed


def state_row(artefact_dir: Path, keys: int, *, device: str = "cpu", seed: int = 0) -> Row:
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
        f"restore {record['restore_s'] * 1e3:,.0f} ms + decode {record['decode_s'] * 1e3:,.0f} ms"
    )
    label = f"state K={keys // 1000}k" if keys >= 1000 else f"state K={keys}"
    return Row(f"state.k{keys}", label, None, detail, record)


def state_rows(
    artefact_dir: Path, keys: tuple[int, ...] = (10_000, 100_000), *, device: str = "cpu",
    seed: int = 0,
) -> list[Row]:
    return [state_row(artefact_dir, k, device=device, seed=seed) for k in keys]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sd-state-bench-") as work:
        artefact_dir = Path(work) / "model"
        untrained_artefact(artefact_dir, bench_settings(_STRIDE, device=args.device))
        rows = state_rows(artefact_dir, tuple(args.keys), device=args.device)
    for row in rows:
        print(f"{row.label:<14} {row.detail}")
    if args.out is not None:
        args.out.write_bytes(orjson.dumps([r.as_dict() for r in rows], option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
