"""Whether code runs traced (compiled or under a torch.func transform): private, no dependencies.

Eager calls may read tensor values back to Python (to validate, or to skip work); traced
calls must not.
"""

from __future__ import annotations

import torch
from torch._C import _functorch  # type: ignore[attr-defined]

__all__ = ["batched", "tracing"]


def tracing(t: torch.Tensor) -> bool:
    """True under torch.compile or a torch.func transform (no Python reads of values)."""
    return torch.compiler.is_compiling() or _functorch.is_functorch_wrapped_tensor(t)


def batched(t: torch.Tensor) -> bool:
    """True for a tensor batched by ``vmap`` (eager or compiled). ``torch.cond`` cannot take a
    batched predicate with several outputs (torch 2.13), so ``step`` selects with ``where``."""
    return _functorch.is_batchedtensor(t)
