"""The checkpoint format: one partition's engine state plus the facts needed to trust it.

A checkpoint is a single ``.npz`` blob (numpy's zip of ``.npy`` arrays) read with
``allow_pickle=False``, so loading one cannot run code. Every per-key array has the keys on its
first axis, and the metadata (format version, model version, config fingerprint, input partition
and the offset the state reflects) is a JSON document stored as one more uint8 array. Keys are
stored as their UTF-8 bytes end to end plus offsets: numpy's fixed-width strings would drop a
key's trailing NUL characters, and object arrays need pickle. The same bytes go to a local file
or into a Kafka changelog topic.

In aggregate mode a checkpoint also carries the partition's bucket aggregator (version 2): its
live keys (their own list: a key may have open buckets before it ever reached the windows), each
key's last non-empty bucket, the open (key, bucket) groups with their partial aggregates and
HyperLogLog registers (``buckets.*`` arrays, one row per group or per aggregator key), and the
aggregator's clock (latest event time, first unemitted bucket) in the metadata.

A checkpoint is only usable by the model and settings that made it: a window of another size or
scores of another model would silently mix, so a mismatch is refused (`check_compatible`) and that
partition starts cold instead.
"""

from __future__ import annotations

import hashlib
import io
import time
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import orjson

from stream_detector.aggregate.buckets import AggregatorState
from stream_detector.aggregate.partials import Partials
from stream_detector.aggregate.streams import SINGLE_STREAM
from stream_detector.config import Settings

# 2: aggregate mode's open buckets and watermark per partition (version 1 had none; refused).
# 3: each key's latest scored window (episodes.last_start / last_end), which the resolve alert of
#    an evicted key reports; older checkpoints are refused (cold start with a warning).
# 4: the flat-line tracker's runs per key and feature ("flat.*"), when flat lines are judged.
# 5: the near-flat tracker's window counts and smallest spreads ("spread.*"), when judged, and
#    whether a flat run was learnt as the new normal ("flat.learnt").
FORMAT_VERSION = 5
_META = "__meta__"
_KEYS = "__keys__"
_KEY_OFFSETS = "__key_offsets__"
_BUCKET_KEYS = "__bucket_keys__"
_BUCKET_KEY_OFFSETS = "__bucket_key_offsets__"
_BUCKETS = "buckets."
_PARTIALS = ("count", "sums", "mins", "maxs", "registers")


class SnapshotError(Exception):
    """A checkpoint that cannot be read (truncated, corrupt, not a checkpoint)."""


class SnapshotMismatch(SnapshotError):
    """A readable checkpoint made by another model, configuration or format version."""


@dataclass(frozen=True)
class EngineSnapshot:
    """Per-key engine state for some keys, independent of the slots they had.

    keys:      object [K] of str
    arrays:    name -> array with K rows ("windows.values", "threshold.mean", ...)
    watermark: the window store's event-time watermark when the snapshot was taken
    seq:       the window store's event sequence number (orders keys for LRU eviction)
    stream:    the source stream (input partition code) whose aggregator `buckets` is
    buckets:   aggregate mode: that stream's bucket aggregator, whole; None in events mode
    """

    keys: np.ndarray
    arrays: Mapping[str, np.ndarray]
    watermark: float
    seq: int
    stream: int = SINGLE_STREAM
    buckets: AggregatorState | None = None

    def __len__(self) -> int:
        return int(self.keys.shape[0])


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint must agree with before it is restored, and where its input resumes.

    offset is the next input offset to consume: the state reflects every record before it.
    """

    format_version: int
    model_version: str
    fingerprint: str
    topic: str
    partition: int
    offset: int
    n_keys: int
    created_at: float


@dataclass(frozen=True)
class Checkpoint:
    meta: CheckpointMeta
    engine: EngineSnapshot


def state_fingerprint(settings: Settings) -> str:
    """Hash of the settings that give the state arrays their shape and meaning.

    The model fingerprint covers features and window size; the input mode decides whether the
    windows hold raw readings or bucket features.
    """
    relevant = {"model": settings.model_fingerprint(), "mode": settings.input.mode}
    return hashlib.sha256(orjson.dumps(relevant, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def make_checkpoint(
    engine: EngineSnapshot,
    *,
    model_version: str,
    fingerprint: str,
    topic: str,
    partition: int,
    offset: int,
) -> Checkpoint:
    meta = CheckpointMeta(
        format_version=FORMAT_VERSION,
        model_version=model_version,
        fingerprint=fingerprint,
        topic=topic,
        partition=partition,
        offset=offset,
        n_keys=len(engine),
        created_at=time.time(),
    )
    return Checkpoint(meta, engine)


def encode(checkpoint: Checkpoint) -> bytes:
    """The checkpoint as .npz bytes (uncompressed: float windows barely compress, and zlib
    would cost more time than the bytes it saves)."""
    engine = checkpoint.engine
    meta = {
        **asdict(checkpoint.meta),
        "watermark": _finite_or_none(engine.watermark),
        "seq": engine.seq,
        "buckets": None if engine.buckets is None else _bucket_clock(engine.stream, engine.buckets),
    }
    arrays = {
        _META: np.frombuffer(orjson.dumps(meta), dtype=np.uint8),
        **dict(zip((_KEYS, _KEY_OFFSETS), _pack_keys(engine.keys), strict=True)),
        **engine.arrays,
        **({} if engine.buckets is None else _bucket_arrays(engine.buckets)),
    }
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def decode(data: bytes) -> Checkpoint:
    """Parse checkpoint bytes; raises SnapshotError if they are not a readable checkpoint."""
    archive = _open(data)
    meta, watermark, seq, clock = _meta_of(archive)
    try:
        keys = _unpack_keys(archive[_KEYS], archive[_KEY_OFFSETS])
        arrays = {
            name: archive[name]
            for name in archive.files
            if name not in (_META, _KEYS, _KEY_OFFSETS, _BUCKET_KEYS, _BUCKET_KEY_OFFSETS)
            and not name.startswith(_BUCKETS)
        }
        buckets = None if clock is None else _buckets_of(archive, clock)
    except (ValueError, OSError, zipfile.BadZipFile, KeyError, IndexError, TypeError) as exc:
        raise SnapshotError(f"checkpoint arrays unreadable: {exc}") from None
    if len(keys) != meta.n_keys:
        raise SnapshotError(f"checkpoint holds {len(keys)} keys, its metadata says {meta.n_keys}")
    if any(array.shape[:1] != keys.shape for array in arrays.values()):
        raise SnapshotError("a checkpoint array does not have one row per key")
    stream = SINGLE_STREAM if clock is None else int(clock["stream"])
    return Checkpoint(meta, EngineSnapshot(keys, arrays, watermark, seq, stream, buckets))


def check_compatible(meta: CheckpointMeta, model_version: str, fingerprint: str) -> None:
    """Raise SnapshotMismatch, saying what differs, unless this process may restore `meta`."""
    if meta.format_version != FORMAT_VERSION:
        raise SnapshotMismatch(
            f"format version {meta.format_version}, this build reads {FORMAT_VERSION}"
        )
    if meta.model_version != model_version:
        raise SnapshotMismatch(
            f"made by model {meta.model_version!r}, the running model is {model_version!r}"
        )
    if meta.fingerprint != fingerprint:
        raise SnapshotMismatch(
            f"made with config fingerprint {meta.fingerprint!r}, the running configuration's is "
            f"{fingerprint!r} (window size, features or input mode changed)"
        )


def _finite_or_none(clock: float) -> float | None:
    """JSON has no -inf, the clocks' value before any event (orjson would write null anyway;
    saying so here keeps the reading side honest)."""
    return clock if np.isfinite(clock) else None


def _bucket_clock(stream: int, buckets: AggregatorState) -> dict[str, float | int | None]:
    """The aggregator's scalars for the JSON metadata (JSON has no -inf: None before any event)."""
    return {
        "stream": stream,
        "max_ts": _finite_or_none(buckets.max_ts),
        "closed_until": buckets.closed_until,
    }


def _bucket_arrays(buckets: AggregatorState) -> dict[str, np.ndarray]:
    return {
        **dict(zip((_BUCKET_KEYS, _BUCKET_KEY_OFFSETS), _pack_keys(buckets.keys), strict=True)),
        _BUCKETS + "last_data": buckets.last_data,
        _BUCKETS + "open_key": buckets.open_key,
        _BUCKETS + "open_bucket": buckets.open_bucket,
        **{_BUCKETS + name: getattr(buckets.open, name) for name in _PARTIALS},
    }


def _buckets_of(archive: np.lib.npyio.NpzFile, clock: dict[str, Any]) -> AggregatorState:
    max_ts, closed_until = clock["max_ts"], clock["closed_until"]
    return AggregatorState(
        keys=_unpack_keys(archive[_BUCKET_KEYS], archive[_BUCKET_KEY_OFFSETS]),
        last_data=archive[_BUCKETS + "last_data"],
        open_key=archive[_BUCKETS + "open_key"],
        open_bucket=archive[_BUCKETS + "open_bucket"],
        open=Partials(*(archive[_BUCKETS + name] for name in _PARTIALS)),
        max_ts=-np.inf if max_ts is None else float(max_ts),
        closed_until=None if closed_until is None else int(closed_until),
    )


def _pack_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes of all keys end to end, offsets [K + 1])."""
    encoded = [key.encode() for key in keys.tolist()]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(key) for key in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def _unpack_keys(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    if blob.dtype != np.uint8 or offsets.ndim != 1 or np.any(np.diff(offsets) < 0):
        raise ValueError("key blob or offsets malformed")
    raw = blob.tobytes()
    bounds = offsets.tolist()
    keys = np.empty(len(bounds) - 1, dtype=object)
    keys[:] = [raw[a:b].decode() for a, b in zip(bounds, bounds[1:])]
    return keys


def _open(data: bytes) -> np.lib.npyio.NpzFile:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise SnapshotError(f"not a checkpoint: {exc}") from None


def _meta_of(
    archive: np.lib.npyio.NpzFile,
) -> tuple[CheckpointMeta, float, int, dict[str, Any] | None]:
    """(metadata, window watermark, window seq, aggregator clock or None). A version-1 checkpoint
    has no "buckets" entry: it reads, and check_compatible then refuses its version."""
    try:
        raw = orjson.loads(archive[_META].tobytes())
        watermark = raw.pop("watermark")
        watermark, seq = -np.inf if watermark is None else float(watermark), int(raw.pop("seq"))
        clock = raw.pop("buckets", None)
        return CheckpointMeta(**raw), watermark, seq, clock
    except (KeyError, TypeError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise SnapshotError(f"checkpoint metadata unreadable: {exc}") from None
