"""Precision rules shared by the numeric modules."""

from __future__ import annotations

import torch

__all__ = ["HALF", "widen", "widened"]

HALF = (torch.float16, torch.bfloat16)


def widened(dtype: torch.dtype) -> torch.dtype:
    """The dtype :func:`widen` gives a tensor of ``dtype``."""
    return torch.float32 if dtype in HALF else dtype


def widen(x: torch.Tensor) -> torch.Tensor:
    """16-bit floats as float32 (sums and products of half values overflow or round badly)."""
    return x.float() if x.dtype in HALF else x
