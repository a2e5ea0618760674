"""What a distributed run exchanges: a recorder of the collectives issued in a block of code.

Sharded pruning (``DTensor`` params, e.g. under FSDP2's ``fully_shard``) exchanges only
small per-layer counts and a sample of keys (see :mod:`fprune._sharded.select`).
:class:`Traffic` lets a training loop check that claim on its own model: it records every
collective dispatched while it is active, the ``torch.distributed`` calls and the functional
collectives that ``DTensor`` redistribution issues alike, with the bytes of its tensor arguments.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["Traffic"]

_NAMESPACES = ("c10d", "_c10d_functional", "c10d_functional", "_c10d_functional_autograd")


class Traffic(TorchDispatchMode):
    """Record the collectives dispatched while active: ``(op name, payload bytes)`` each.

    The payload is the size of the op's tensor arguments on this rank (for an all-gather,
    the input and the output buffers). A context can be entered again to add to the record.

    Example:
        >>> import torch, fprune
        >>> with fprune.distributed.Traffic() as traffic:   # no process group: nothing to record
        ...     _ = torch.ones(3) * 2
        >>> traffic.calls, traffic.bytes
        ([], 0)
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.namespace in _NAMESPACES:
            tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            self.calls.append((str(func), sum(t.numel() * t.element_size() for t in tensors)))
        return func(*args, **(kwargs or {}))

    @property
    def bytes(self) -> int:
        """All payload bytes recorded."""
        return sum(b for _, b in self.calls)

    @property
    def largest(self) -> int:
        """The largest single payload, in bytes (0 if none)."""
        return max((b for _, b in self.calls), default=0)
