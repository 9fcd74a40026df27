"""Where checkpoints live: one interface, a local directory or a Kafka changelog topic.

Stores move opaque checkpoint bytes per input partition; reading, validating and restoring them
is the caller's job (`state.partitions`), so both stores are refused, logged and restored the
same way and a new store needs only these three methods.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import structlog

log = structlog.get_logger(__name__)

Partition = tuple[str, int]


class StateStoreError(Exception):
    """The store could not be read or written; the caller logs it and carries on (cold start
    on load, an older checkpoint stays in place on save)."""


class StateStore(Protocol):
    def load(self, partitions: Collection[Partition]) -> dict[Partition, bytes]:
        """The latest checkpoint of each of `partitions` that has one."""
        ...

    def save(self, checkpoints: Mapping[Partition, bytes]) -> None:
        """Persist checkpoints durably before returning; raises StateStoreError."""
        ...

    def close(self) -> None: ...


class LocalDirStore:
    """Files ``<root>/<group>/<topic>/<partition>.npz``, each replaced atomically.

    Fine for one instance, the demo, or instances sharing one volume. A file is written next to
    its final name and renamed over it, so a crash mid-write leaves the previous checkpoint.
    """

    def __init__(self, root: Path, group: str) -> None:
        self.root = root.expanduser() / quote(group, safe="")

    def path_of(self, partition: Partition) -> Path:
        topic, number = partition
        return self.root / quote(topic, safe="") / f"{number}.npz"

    def load(self, partitions: Collection[Partition]) -> dict[Partition, bytes]:
        found: dict[Partition, bytes] = {}
        for partition in partitions:
            try:
                found[partition] = self.path_of(partition).read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StateStoreError(f"cannot read {self.path_of(partition)}: {exc}") from None
        return found

    def save(self, checkpoints: Mapping[Partition, bytes]) -> None:
        for partition, data in checkpoints.items():
            path = self.path_of(partition)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
                    try:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    except OSError:
                        os.unlink(f.name)
                        raise
                os.replace(f.name, path)
            except OSError as exc:
                raise StateStoreError(
                    f"cannot write {path}: {exc}; check state.dir is writable"
                ) from None

    def close(self) -> None:
        return None
