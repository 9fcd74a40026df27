"""Host arrays to the device in one transfer per call, through pinned memory on CUDA.

The device-resident window ring needs a handful of small host arrays per batch (the batch's new
values, a few index vectors, the windows' normalisation statistics). Copied one by one, each
would pay a transfer's fixed cost; packed side by side into one buffer they cross in a single
copy, and on CUDA that buffer is page-locked so the copy runs asynchronously (``non_blocking``)
while the host goes on with the batch's bookkeeping.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

_ALIGN = 8  # bytes: every array starts where an int64/float64 view of the buffer may begin


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


class HostToDevice:
    """Packs host arrays into one staging buffer and copies it to ``device`` in one go.

    The staging buffer is reused from call to call. On CUDA its copy may still be in flight when
    the next call wants to refill it, so every copy records an event and the next call waits for
    it first; on the CPU the copy is synchronous and there is nothing to wait for.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._cuda = device.type == "cuda"
        self._buffer = torch.empty(0, dtype=torch.uint8)
        self._copied: torch.cuda.Event | None = None

    def upload(self, arrays: Sequence[np.ndarray]) -> tuple[Tensor, ...]:
        """The arrays as tensors on the device, same shapes and dtypes, in one transfer.

        The tensors are views of one fresh device buffer: later uploads do not change them.
        """
        contiguous = [np.ascontiguousarray(array) for array in arrays]
        offsets = []
        total = 0
        for array in contiguous:
            offsets.append(total)
            total += -(-array.nbytes // _ALIGN) * _ALIGN
        if self._copied is not None:
            self._copied.synchronize()
        if total > self._buffer.numel():
            size = max(total, 2 * self._buffer.numel())
            self._buffer = torch.empty(size, dtype=torch.uint8, pin_memory=self._cuda)
        host = self._buffer.numpy()
        for array, offset in zip(contiguous, offsets, strict=True):
            host[offset : offset + array.nbytes] = array.reshape(-1).view(np.uint8)
        # copy=True: on the CPU `to` would otherwise hand back the staging buffer itself.
        device_bytes = self._buffer[:total].to(self.device, non_blocking=self._cuda, copy=True)
        if self._cuda:
            self._copied = torch.cuda.Event()
            self._copied.record()
        return tuple(
            device_bytes[offset : offset + array.nbytes]
            .view(_torch_dtype(array.dtype))
            .view(array.shape)
            for array, offset in zip(contiguous, offsets, strict=True)
        )
