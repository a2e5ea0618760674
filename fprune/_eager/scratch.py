"""Scratch space reused across layers in one eager call (private).

A fresh weight-sized tensor per layer costs page faults that dominate an elementwise op;
writing each layer's temporary into one buffer sized for the largest layer avoids them.
A view handed out is valid only until the next one of the same dtype is asked for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = ["Scratch"]


class Scratch:
    """Per-dtype buffers, each sized for the largest of ``tensors`` (or of what it is asked for)."""

    def __init__(self, tensors: Iterable[torch.Tensor]) -> None:
        self._tensors = tensors  # sized on first use: building one costs nothing (traced code too)
        self._size = 0
        self._buffers: dict[torch.dtype, torch.Tensor] = {}

    def like(self, t: torch.Tensor) -> torch.Tensor:
        """A view shaped like ``t``, of its dtype, into the reused buffer (eager calls only)."""
        return self.get(tuple(t.shape), t.dtype, t.device)

    def get(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A view of ``shape`` and ``dtype`` into the reused buffer (eager calls only)."""
        numel = math.prod(shape)
        buf = self._buffers.get(dtype)
        if buf is None or buf.numel() < numel:
            self._size = max(self._size, numel, *(x.numel() for x in self._tensors))
            buf = self._buffers[dtype] = torch.empty(self._size, dtype=dtype, device=device)
        return buf[:numel].view(shape)
