"""Export and import of per-slot state arrays, shared by every engine stage that keeps them.

Each stage holds its per-key state in flat arrays indexed by the window store's slot. A snapshot
needs those rows for some keys, and a restore writes them into whatever slots the keys get in
another process; naming the arrays once per class keeps that one generic loop instead of a
hand-written copy in every stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np


class SlotArrays:
    """Mixin for a class whose per-slot arrays live in attributes ``_<name>`` for each name in
    ``SLOT_FIELDS``; every array's first axis is the slot."""

    SLOT_FIELDS: ClassVar[tuple[str, ...]] = ()

    def export_slots(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """Copies (fancy indexing) of the slots' rows: later ingests cannot change a snapshot."""
        return {name: getattr(self, "_" + name)[slots] for name in self.SLOT_FIELDS}

    def import_slots(self, slots: np.ndarray, state: Mapping[str, np.ndarray]) -> None:
        """Overwrite the slots' rows with ``state`` (as returned by `export_slots`)."""
        self.check_import(state, len(slots))
        for name in self.SLOT_FIELDS:
            getattr(self, "_" + name)[slots] = state[name]

    def check_import(self, state: Mapping[str, np.ndarray], n_rows: int) -> None:
        """Raise ValueError unless ``state`` has every field, ``n_rows`` rows each, and rows
        shaped like this instance's: checked before anything is written, so a bad snapshot
        cannot leave a key half restored."""
        for name in self.SLOT_FIELDS:
            if name not in state:
                raise ValueError(f"{type(self).__name__} state lacks {name!r}")
            want = (n_rows, *getattr(self, "_" + name).shape[1:])
            if state[name].shape != want:
                raise ValueError(
                    f"{type(self).__name__} {name!r} is shaped {state[name].shape}, expected {want}"
                )
