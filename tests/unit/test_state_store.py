"""Checkpoint stores and the per-partition bookkeeping, without a broker.

The changelog's restore logic is checked against a naive reference over random histories:
checkpoints of several partitions interleaved, split into chunks, the last one possibly cut short
by a crash, and optionally compacted the way a broker would (latest record per key).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from stream_detector.config import load_settings
from stream_detector.detector.artefact import ModelArtefact
from stream_detector.detector.facade import Detector
from stream_detector.detector.snapshot import encode, make_checkpoint, state_fingerprint
from stream_detector.engine.decode import Decoder
from stream_detector.kafka import changelog
from stream_detector.kafka.changelog import ChangelogRecord, chunk_records, latest_checkpoints
from stream_detector.kafka.partitions import PartitionState

# Event times in 2023, above input.min_timestamp's floor.
T0 = 1_700_000_000.0
from stream_detector.detector.training import train
from stream_detector.kafka.store import LocalDirStore, Partition, StateStoreError

# -- local directory ---------------------------------------------------------------------------


def test_local_store_round_trip_and_replace(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path, "group/with:odd chars")
    assert store.load([("events", 0)]) == {}
    store.save({("events", 0): b"first", ("events", 1): b"one"})
    store.save({("events", 0): b"second"})
    assert store.load([("events", 0), ("events", 1), ("events", 2)]) == {
        ("events", 0): b"second",
        ("events", 1): b"one",
    }
    assert not list(tmp_path.rglob("*.tmp")), "no temporary file left behind"
    assert LocalDirStore(tmp_path, "other-group").load([("events", 0)]) == {}


def test_local_store_write_failure_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StateStoreError, match="state.dir"):
        LocalDirStore(blocker, "g").save({("events", 0): b"x"})


# -- changelog: latest complete checkpoint per partition ------------------------------------------

PARTITIONS = [("events", 0), ("events", 1), ("other", 0)]


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[tuple[Partition, bytes, bool]], bool]:
    """(partition, checkpoint bytes, complete?) in write order, and whether to compact.
    Only the last checkpoint of a partition can be incomplete (its writer crashed)."""
    writes = draw(
        st.lists(
            st.tuples(st.sampled_from(PARTITIONS), st.binary(min_size=0, max_size=40)),
            max_size=12,
        )
    )
    crashed = draw(st.sets(st.sampled_from(PARTITIONS)))
    last = {partition: i for i, (partition, _) in enumerate(writes)}
    history = [
        (partition, data, not (partition in crashed and last[partition] == i))
        for i, (partition, data) in enumerate(writes)
    ]
    return history, draw(st.booleans())


def _naive_latest(records: list[ChangelogRecord]) -> dict[Partition, bytes]:
    """Group surviving records by checkpoint id; of each partition's checkpoints with every
    chunk present, the one written last wins."""
    found: dict[bytes, dict[int, ChangelogRecord]] = {}
    for record in records:
        found.setdefault(record.headers["checkpoint"], {})[int(record.headers["chunk"])] = record
    latest: dict[Partition, bytes] = {}
    for chunks in found.values():  # ids in order of first appearance = write order
        count = int(next(iter(chunks.values())).headers["chunks"])
        if len(chunks) == count:
            topic, number, _ = chunks[0].key.decode().rsplit("/", 2)
            latest[(topic, int(number))] = b"".join(chunks[i].value for i in range(count))
    return latest


@given(histories())
def test_changelog_restore_keeps_the_latest_complete_checkpoint(
    case: tuple[list[tuple[Partition, bytes, bool]], bool],
) -> None:
    history, compact = case
    records: list[ChangelogRecord] = []
    original = changelog.CHUNK_BYTES
    changelog.CHUNK_BYTES = 7  # many chunks per checkpoint
    try:
        for n, (partition, data, complete) in enumerate(history):
            chunks = chunk_records(partition, data, f"id-{n}")
            records += chunks if complete else chunks[: len(chunks) - 1]
    finally:
        changelog.CHUNK_BYTES = original
    if compact:
        # What a compacting broker keeps: the newest record of each key. A crashed write can
        # then have cost the previous checkpoint a chunk: that partition restores cold.
        newest = {record.key: i for i, record in enumerate(records)}
        records = [r for i, r in enumerate(records) if newest[r.key] == i]
    latest = latest_checkpoints(records)
    assert latest == _naive_latest(records)
    if not compact:
        complete = {partition: data for partition, data, done in history if done}
        assert latest == complete


def test_changelog_skips_records_that_are_not_chunks() -> None:
    good = chunk_records(("events", 0), b"payload", "a")
    junk = [
        ChangelogRecord(b"no-slashes", b"x", {"checkpoint": b"a", "chunk": b"0", "chunks": b"1"}),
        ChangelogRecord(b"events/0/0", b"x", {}),
        ChangelogRecord(b"events/0/5", b"x", {"checkpoint": b"b", "chunk": b"5", "chunks": b"2"}),
    ]
    assert latest_checkpoints(junk + good) == {("events", 0): b"payload"}


# -- per-partition state over a real detector ------------------------------------------------------


class MemoryStore:
    def __init__(self) -> None:
        self.blobs: dict[Partition, bytes] = {}

    def load(self, partitions: object) -> dict[Partition, bytes]:
        return {p: b for p, b in self.blobs.items() if p in partitions}  # type: ignore[operator]

    def save(self, checkpoints: dict[Partition, bytes]) -> None:
        self.blobs.update(checkpoints)

    def close(self) -> None:
        return None


SETTINGS = load_settings(
    None,
    {
        "window": {"size": 4, "stride": 1},
        "normalize": {"warmup": 2},
        "model": {"hidden_size": 4, "latent_size": 2, "device": "cpu"},
        "train": {"epochs": 1, "batch_size": 64, "max_windows": 200},
    },
)


def _payloads(keys: list[str], steps: int) -> list[bytes]:
    return [
        orjson.dumps({"key": k, "ts": T0 + t, "value": float(np.sin(t + i))})
        for t in range(steps)
        for i, k in enumerate(keys)
    ]


@pytest.fixture(scope="module")
def artefact() -> ModelArtefact:
    decoded = Decoder(SETTINGS.input).decode_messages(_payloads(["a", "b", "c"], 60))
    return train([decoded], SETTINGS, out_dir=None)


def _fed(artefact: ModelArtefact, store: MemoryStore) -> tuple[Detector, PartitionState]:
    detector = Detector(SETTINGS, artefact)
    state = PartitionState(detector, store, state_fingerprint(SETTINGS))
    result = detector.process_messages(_payloads(["a", "b", "c", "d"], 10))
    keys = result.decoded.batch.keys
    # a, b on events/0; c on events/1; d on other/0 and, oddly, on events/0 too.
    partitions = [("events", 0), ("events", 1), ("other", 0)]
    state.observe(partitions, np.where(keys == "d", 2, np.where(keys == "c", 1, 0)), keys)
    state.observe([("events", 0)], np.array([0]), np.array(["d"], dtype=object))
    return detector, state


def test_checkpoint_restore_and_drop_by_partition(artefact: ModelArtefact) -> None:
    store = MemoryStore()
    detector, state = _fed(artefact, store)
    positions = {("events", 0): 20, ("events", 1): 10, ("other", 0): 10}
    assert state.checkpoint(positions).result() == 3
    assert state.checkpoint(positions).result() == 0, "unchanged positions are not written again"

    # Dropping events/0 keeps d, which other/0 still feeds.
    assert state.drop([("events", 0)]) == 2 and detector.n_keys == 2
    assert state.restore([("events", 0), ("nowhere", 0)]) == {("events", 0): 20}
    assert detector.n_keys == 4

    fresh = Detector(SETTINGS, artefact)
    other = PartitionState(fresh, store, state_fingerprint(SETTINGS))
    assert other.restore(list(positions)) == positions
    ours = detector.snapshot(["a", "b", "c", "d"])
    theirs = fresh.snapshot(["a", "b", "c", "d"])
    assert theirs.keys.tolist() == ours.keys.tolist()
    for name, array in ours.arrays.items():
        np.testing.assert_array_equal(theirs.arrays[name], array)


def test_mismatched_checkpoints_are_refused_and_logged(artefact: ModelArtefact) -> None:
    store = MemoryStore()
    detector, state = _fed(artefact, store)
    snapshot = detector.snapshot(["a", "b"])
    store.blobs[("events", 0)] = encode(
        make_checkpoint(snapshot, model_version="lstm-ae-old", fingerprint=state.fingerprint,
                        topic="events", partition=0, offset=5)
    )
    store.blobs[("events", 1)] = encode(  # made for another partition
        make_checkpoint(snapshot, model_version=detector.model_version,
                        fingerprint=state.fingerprint, topic="events", partition=7, offset=5)
    )
    store.blobs[("other", 0)] = b"garbage"
    fresh = Detector(SETTINGS, artefact)
    with structlog.testing.capture_logs() as logs:
        resume = PartitionState(fresh, store, state.fingerprint).restore(list(store.blobs))
    assert resume == {} and fresh.n_keys == 0
    refused = [e for e in logs if e["event"] == "checkpoint refused; partition starts cold"]
    assert len(refused) == 3 and refused[0]["log_level"] == "warning"
    assert any("lstm-ae-old" in e["reason"] for e in refused)


def test_failed_write_is_logged_and_tried_again(artefact: ModelArtefact) -> None:
    class Broken(MemoryStore):
        def save(self, checkpoints: dict[Partition, bytes]) -> None:
            raise StateStoreError("disk full")

    _, state = _fed(artefact, Broken())
    positions = {("events", 0): 20}
    with structlog.testing.capture_logs() as logs:
        assert state.checkpoint(positions).result() == 0
    assert [e["error"] for e in logs if e["log_level"] == "warning"] == ["disk full"]
    state.store = MemoryStore()
    assert state.checkpoint(positions).result() == 1, "not mistaken for already written"
