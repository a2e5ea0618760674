"""Exact k-th smallest key over several tensors, by radix select on 16-bit digits.

The keys are the order-preserving integers of :func:`fprune.selection.rank_keys`. The search
never concatenates tensors and never sorts: it fixes the threshold 16 bits at a time from
the top, counting each layer's keys per digit into 65,536 bins, so extra memory is of the
order of the largest layer. ``k`` is a tensor, so a changing target needs no recompilation,
and nothing reads a tensor value back to Python.

The counts come from ``index_add`` into a fixed-size histogram rather than ``bincount``:
``bincount``'s output length depends on the data, which ``torch.cond`` branches under
``vmap`` cannot trace, and it has no ``vmap`` batching rule (it is also no faster on CPU).

Per-layer bounds turn the plain count into a water-filling count: layer ``l`` contributes
``clamp(count_l(key <= t), lo_l, hi_l)``, which is what global selection with per-layer
minimum and maximum counts needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fprune import _trace

_BITS = 16
_BINS = 1 << _BITS
_HALF = 1 << (_BITS - 1)


def _histogram(digit: torch.Tensor) -> torch.Tensor:
    """Counts of the digits ``0 .. _BINS - 1`` in a 1-D tensor (the extra bin ``_BINS`` is dropped)."""
    ones = torch.ones((), dtype=torch.int64, device=digit.device).expand(digit.shape)
    return torch.zeros(_BINS + 1, dtype=torch.int64, device=digit.device).index_add(0, digit, ones)[:_BINS]


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(0, index.reshape(1)).reshape(())


def kth_key(
    keys: Sequence[torch.Tensor],
    k: torch.Tensor,
    lo: Sequence[torch.Tensor] | None = None,
    hi: Sequence[torch.Tensor] | None = None,
    base: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Find the smallest key value ``t`` with ``sum_l clamp(count_l(key <= t), lo_l, hi_l) >= k``.

    Args:
        keys: 1-D int32 or int64 tensors (one dtype for all), one per layer.
        k: 0-d int64 tensor, ``0 <= k <= sum_l clamp(numel_l, lo_l, hi_l)``.
        lo, hi: optional 0-d int64 per-layer bounds on the count (``lo_l <= hi_l``).
        base: optional 0-d int64 per-layer counts of units ranked below every key given
            (added to each layer's count; the keys are then the rest of the layer).

    Returns:
        ``(t, below, at)``: the threshold, and per layer the counts of keys ``< t`` and ``== t``
        (all int64 0-d tensors).
    """
    dtype = keys[0].dtype
    width = 64 if dtype == torch.int64 else 32
    device = keys[0].device
    below = list(base) if base is not None else [torch.zeros((), dtype=torch.int64, device=device) for _ in keys]
    at: list[torch.Tensor] = []
    tau = torch.zeros((), dtype=dtype, device=device)
    top = width - _BITS
    for shift in range(top, -1, -_BITS):
        hists, sums = [], []
        total = torch.zeros(_BINS, dtype=torch.int64, device=device)
        for i, key in enumerate(keys):
            if shift == top:
                digit = (key >> shift) + _HALF
            else:
                upper = shift + _BITS
                in_range = (key >> upper) == (tau >> upper)
                digit = torch.where(in_range, (key >> shift) & (_BINS - 1), _BINS)
            # Keys outside the current prefix land in the extra bin, which is dropped.
            hist = _histogram(digit.reshape(-1))
            running = torch.cumsum(hist, 0)
            count = below[i] + running
            if lo is not None and hi is not None:
                count = count.clamp(min=lo[i], max=hi[i])
            total = total + count
            hists.append(hist)
            sums.append(running)
        d = (total < k).sum().clamp(max=_BINS - 1)
        if shift == top:
            tau = (d - _HALF).to(dtype) * (1 << shift)
        else:
            tau = tau + d.to(dtype) * (1 << shift)
        at = [_gather(h, d) for h in hists]
        below = [b + _gather(s, d) - a for b, s, a in zip(below, sums, at, strict=True)]
        if shift > 0 and not _trace.tracing(tau):
            # Eager: only keys with the threshold's prefix matter from here on (the others
            # are counted in ``below`` or are above it), so keep just those: the remaining
            # passes run on a few keys instead of the whole layers.
            keys = [key[(key >> shift) == (tau >> shift)] for key in keys]
    return tau, below, at
