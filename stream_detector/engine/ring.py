"""Where the window ring's values live: a numpy array on the host, or a tensor on the device.

The window store's bookkeeping (which key has which slot, counts, clocks, eviction) is small and
branchy and stays in numpy on the host. The values, [capacity, W, F] float32, are the bulk of the
state and what the model reads, so with a GPU they stay on it: per batch only the new values
cross, and windows are cut where the model runs instead of being copied over W times. The store
drives either placement through the same few calls, so every line of its bookkeeping is shared:

* ``upload(*arrays)``: host arrays to the ring's kind of array (unchanged on the host);
* ``cut(ring_slots, staged, index)``: windows gathered from (the rows of ``ring_slots``, flat,
  followed by the staged batch values) by an index [B, W];
* ``write(flat, staged, rows)``: one scatter of staged rows into positions ``slot * W + pos``;
* ``grow(capacity)``: a ring starts with no rows and grows with the store's other per-slot
  arrays (`slots.SlotArrays.ensure_capacity`), new rows zero;
* ``ring[slots]`` / ``ring[slots] = rows``: host numpy rows out and in, one gather and one copy
  per call, which is how snapshots export and import them (`slots.GrowingRows`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from stream_detector.engine.slots import grown
from stream_detector.engine.transfer import HostToDevice


class HostRing:
    """Ring values in a numpy array: the CPU default, and what training cuts its windows from."""

    def __init__(self, window: int, n_features: int) -> None:
        self._data = np.zeros((0, window, n_features), dtype=np.float32)
        self.positions = np.arange(window, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    def upload(self, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        return arrays

    def cut(self, ring_slots: np.ndarray, staged: np.ndarray, index: np.ndarray) -> np.ndarray:
        rows = self._data[ring_slots].reshape(-1, self._data.shape[2])
        return np.concatenate([rows, staged])[index]

    def write(self, flat: np.ndarray, staged: np.ndarray, rows: np.ndarray) -> None:
        self._data.reshape(-1, self._data.shape[2])[flat] = staged[rows]

    def grow(self, capacity: int) -> None:
        self._data = grown(self._data, capacity, 0.0)

    def no_windows(self) -> np.ndarray:
        return np.empty((0, *self._data.shape[1:]), dtype=np.float32)

    def __getitem__(self, slots: np.ndarray) -> np.ndarray:
        return self._data[slots]

    def __setitem__(self, slots: np.ndarray, rows: np.ndarray) -> None:
        self._data[slots] = rows


class DeviceRing:
    """Ring values in a float32 tensor on ``device`` (the model's), fed through `HostToDevice`.

    Every operation is queued on the device's current stream in call order, so a cut issued
    before a write reads the values from before it, exactly as on the host.
    """

    def __init__(self, window: int, n_features: int, device: torch.device) -> None:
        self._data = torch.zeros((0, window, n_features), dtype=torch.float32, device=device)
        self._transfer = HostToDevice(device)
        self.positions = torch.arange(window, dtype=torch.int64, device=device)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape)

    def upload(self, *arrays: np.ndarray) -> tuple[Tensor, ...]:
        return self._transfer.upload(arrays)

    def cut(self, ring_slots: Tensor, staged: Tensor, index: Tensor) -> Tensor:
        rows = self._data[ring_slots].reshape(-1, self._data.shape[2])
        return torch.cat([rows, staged])[index]

    def write(self, flat: Tensor, staged: Tensor, rows: Tensor) -> None:
        self._data.view(-1, self._data.shape[2])[flat] = staged[rows]

    def grow(self, capacity: int) -> None:
        bigger = self._data.new_zeros((capacity, *self._data.shape[1:]))
        bigger[: self._data.shape[0]] = self._data
        self._data = bigger

    def no_windows(self) -> Tensor:
        return self._data.new_empty((0, *self._data.shape[1:]))

    def __getitem__(self, slots: np.ndarray) -> np.ndarray:
        (index,) = self.upload(slots)
        return self._data[index].cpu().numpy()

    def __setitem__(self, slots: np.ndarray, rows: np.ndarray) -> None:
        index, values = self.upload(slots, np.asarray(rows, dtype=np.float32))
        self._data[index] = values


RingValues = HostRing | DeviceRing


def ring_values(window: int, n_features: int, device: torch.device | None) -> RingValues:
    """A device ring on ``device``, or a host ring when it is None; with no rows yet."""
    if device is None:
        return HostRing(window, n_features)
    return DeviceRing(window, n_features, device)
