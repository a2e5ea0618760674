"""Scratch space reused across layers in one eager call (private).

A fresh weight-sized tensor per layer costs page faults that dominate an elementwise op;
writing each layer's temporary into one buffer sized for the largest layer avoids them.
A view handed out is valid only until the next one of the same dtype is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class Scratch:
    """Per-dtype buffers, each sized for the largest of ``tensors`` (or of what it is asked for)."""

    def __init__(self, tensors: Iterable[torch.Tensor]) -> None:
        self._tensors = tensors  # sized on first use: building one costs nothing (traced code too)
        self._size = 0
        self._buffers: dict[torch.dtype, torch.Tensor] = {}

    def like(self, t: torch.Tensor) -> torch.Tensor:
        """A view shaped like ``t``, of its dtype, into the reused buffer (eager calls only)."""
        buf = self._buffers.get(t.dtype)
        if buf is None or buf.numel() < t.numel():
            self._size = max(self._size, t.numel(), *(x.numel() for x in self._tensors))
            buf = self._buffers[t.dtype] = torch.empty(self._size, dtype=t.dtype, device=t.device)
        return buf[: t.numel()].view(t.shape)
