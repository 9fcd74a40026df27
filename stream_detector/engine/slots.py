"""Slots: the row every per-key array is indexed by, and their lifecycle.

Per-key state lives in flat arrays, one row per *slot*, so a batch is handled with array
operations instead of a Python object per key. `SlotRegistry` hands out the slots: which key
holds which, which are free, and how many there are (capacity grows by doubling). Each stage with
per-key state (window ring, normaliser, threshold, episodes) is a `SlotArrays`: it declares its
per-slot fields once, and growing to a new capacity, resetting freed slots, and exporting or
importing rows for a snapshot are written once, here, for all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import repeat
from typing import ClassVar, Protocol

import numpy as np
import structlog

log = structlog.get_logger(__name__)


def grown(array: np.ndarray, capacity: int, empty: object) -> np.ndarray:
    """``array`` with its first axis extended to ``capacity``, the new rows set to ``empty``."""
    bigger = np.full((capacity, *array.shape[1:]), empty, dtype=array.dtype)
    bigger[: array.shape[0]] = array
    return bigger


class GrowingRows(Protocol):
    """Per-slot storage that is not a numpy array (the window ring's values, which may live on
    the model's device): it grows itself, new rows zero, and its rows go in and out as numpy."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def grow(self, capacity: int) -> None: ...

    def __getitem__(self, slots: np.ndarray) -> np.ndarray: ...

    def __setitem__(self, slots: np.ndarray, rows: np.ndarray) -> None: ...


@dataclass(frozen=True)
class SlotField:
    """One per-slot array of a stage, held in the attribute ``_<name>``, its first axis the slot.

    empty: the value of a row no key has written: every new row after growth, and a reset row.
    reset: whether freeing the slot sets its row back to ``empty``. False for rows that the
        slot's next key overwrites before anything reads them (a ring position past the key's
        count, an episode's peak before a run starts): resetting them would be work for nothing,
        a write to the device for the ring, and would change what a snapshot holds.
    """

    name: str
    empty: float | int = 0
    reset: bool = True


def slot_fields(*names: str, empty: float | int = 0, reset: bool = True) -> tuple[SlotField, ...]:
    """Several fields that share their ``empty`` value and ``reset`` rule."""
    return tuple(SlotField(name, empty, reset) for name in names)


class SlotArrays:
    """Mixin for a stage whose per-slot arrays are declared in ``SLOT_FIELDS``.

    A stage creates each array with no rows (its dtype and row shape are the stage's business)
    and calls `ensure_capacity`; from then on growth and resets follow the declaration, so every
    stage's rows for a slot are emptied and grown by the same code and cannot drift apart.
    """

    SLOT_FIELDS: ClassVar[tuple[SlotField, ...]] = ()

    @property
    def capacity(self) -> int:
        return int(self._rows(self.SLOT_FIELDS[0]).shape[0])

    def ensure_capacity(self, capacity: int) -> None:
        """Grow every per-slot array to ``capacity`` rows, the new ones empty; never shrinks."""
        if capacity <= self.capacity:
            return
        for field in self.SLOT_FIELDS:
            rows = self._rows(field)
            if isinstance(rows, np.ndarray):
                setattr(self, "_" + field.name, grown(rows, capacity, field.empty))
            else:
                rows.grow(capacity)

    def reset(self, slots: np.ndarray) -> None:
        """Empty the slots' rows (the fields declared ``reset``): their keys are gone, and a key
        that takes such a slot next starts from nothing."""
        if len(slots) == 0:
            return
        for field in self.SLOT_FIELDS:
            if field.reset:
                self._rows(field)[slots] = field.empty

    def export_slots(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """Copies (fancy indexing) of the slots' rows: later ingests cannot change a snapshot.
        Ring rows are exported as stored: a key's write head is its count modulo W, so they
        stay valid in whatever slot the key gets on restore."""
        return {field.name: self._rows(field)[slots] for field in self.SLOT_FIELDS}

    def import_slots(self, slots: np.ndarray, state: Mapping[str, np.ndarray]) -> None:
        """Overwrite the slots' rows with ``state`` (as returned by `export_slots`)."""
        self.check_import(state, len(slots))
        for field in self.SLOT_FIELDS:
            self._rows(field)[slots] = state[field.name]

    def check_import(self, state: Mapping[str, np.ndarray], n_rows: int) -> None:
        """Raise ValueError unless ``state`` has every field, ``n_rows`` rows each, and rows
        shaped like this instance's: checked before anything is written, so a bad snapshot
        cannot leave a key half restored."""
        for field in self.SLOT_FIELDS:
            name = field.name
            if name not in state:
                raise ValueError(f"{type(self).__name__} state lacks {name!r}")
            want = (n_rows, *self._rows(field).shape[1:])
            if state[name].shape != want:
                raise ValueError(
                    f"{type(self).__name__} {name!r} is shaped {state[name].shape}, expected {want}"
                )

    def _rows(self, field: SlotField) -> np.ndarray | GrowingRows:
        return getattr(self, "_" + field.name)


class SlotRegistry:
    """Which key holds which slot, and which slots are free.

    Slots are handed out lowest first from a free stack; when none is free, capacity doubles
    (never past ``max_keys``). The registry only keeps the books: the stages with per-slot arrays
    learn a new `capacity` and the freed slots from its owner, which passes them on in one place
    (`WindowStage.sync_slots`).
    """

    def __init__(self, initial_capacity: int, max_keys: int) -> None:
        self.max_keys = max_keys
        self._key_of_slot = np.full(initial_capacity, None, dtype=object)
        self._occupied = np.zeros(initial_capacity, dtype=bool)
        self._slot_by_key: dict[str, int] = {}
        # Free-slot stack, top at the end; reversed so that pops hand out low slots first.
        self._free = np.arange(initial_capacity - 1, -1, -1, dtype=np.int64)
        self._n_free = initial_capacity

    @property
    def capacity(self) -> int:
        return int(self._occupied.shape[0])

    @property
    def n_keys(self) -> int:
        return len(self._slot_by_key)

    @property
    def occupied(self) -> np.ndarray:
        """bool [capacity]: whether a key holds the slot (read only)."""
        return self._occupied

    def slots_of(self, keys: np.ndarray) -> np.ndarray:
        """int64 slot of each key, -1 for a key not tracked: one dict lookup per key, run in C
        by ``map``."""
        lookup = map(self._slot_by_key.get, keys.tolist(), repeat(-1))
        return np.fromiter(lookup, np.int64, len(keys))

    def keys_of(self, slots: np.ndarray) -> np.ndarray:
        """The keys (object array) holding occupied ``slots``."""
        return self._key_of_slot[slots]

    def tracked(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(keys, slots) of the given keys that are tracked, in the given order."""
        slots = self.slots_of(keys)
        present = slots >= 0
        return keys[present], slots[present]

    def assign(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """Give every key whose slot is -1 a free slot, growing capacity first if there are too
        few; fills ``slots`` in place."""
        new = np.flatnonzero(slots < 0)
        if len(new) == 0:
            return
        if len(new) > self._n_free:
            self._grow(self.n_keys + len(new))
        top = self._n_free
        popped = self._free[top - len(new) : top][::-1].copy()
        self._n_free = top - len(new)
        slots[new] = popped
        self._key_of_slot[popped] = keys[new]
        self._occupied[popped] = True
        self._slot_by_key.update(zip(keys[new].tolist(), popped.tolist()))

    def free(self, slots: np.ndarray) -> np.ndarray:
        """Forget the keys holding ``slots`` and push the slots on the free stack; returns the
        keys they held."""
        keys = self._key_of_slot[slots]
        for key in keys.tolist():
            del self._slot_by_key[key]
        self._key_of_slot[slots] = None
        self._occupied[slots] = False
        self._free[self._n_free : self._n_free + len(slots)] = slots
        self._n_free += len(slots)
        return keys

    def _grow(self, needed: int) -> None:
        """Double capacity (never past max_keys) until ``needed`` keys fit."""
        old = self.capacity
        cap = old
        while cap < needed:
            cap = min(cap * 2, self.max_keys)
        self._key_of_slot = grown(self._key_of_slot, cap, None)
        self._occupied = grown(self._occupied, cap, False)
        free = np.empty(cap, dtype=np.int64)
        free[: self._n_free] = self._free[: self._n_free]
        free[self._n_free : self._n_free + cap - old] = np.arange(cap - 1, old - 1, -1)
        self._free = free
        self._n_free += cap - old
        log.info("window store grown", capacity=cap, previous=old, n_keys=self.n_keys)
