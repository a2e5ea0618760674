"""Exact k-th smallest key over several tensors, by radix select on fixed-width digits.

The keys are the order-preserving integers of :func:`fprune.selection.rank_keys`. The search
never concatenates tensors and never sorts: it fixes the threshold one digit at a time from
the top (16 bits by default), counting each layer's keys per digit into ``2^bits`` bins, so
extra memory is of the order of the largest layer. ``k`` is a tensor, so a changing target
needs no recompilation, and nothing reads a tensor value back to Python.

The counts come from ``index_add`` into a fixed-size histogram rather than ``bincount``:
``bincount``'s output length depends on the data, which ``torch.cond`` branches under
``vmap`` cannot trace, and it has no ``vmap`` batching rule (it is also no faster on CPU).

Per-layer bounds turn the plain count into a water-filling count: layer ``l`` contributes
``clamp(count_l(key <= t), lo_l, hi_l)``, which is what global selection with per-layer
minimum and maximum counts needs. With ``separate`` every layer has its own ``k`` and its
own threshold instead (local selection of all layers in one search).

Eager callers may pass ``narrow=True``: between digit passes, keys outside the threshold's
prefix are dropped (they are counted already or lie above it), so the later passes read a
few keys instead of whole layers. The result is the same; the shapes then depend on the
data, which tracing does not allow.

With ``combine``, the layers' histograms ``[layers, bins]`` pass through it before they are
counted: a sharded run sums them over the ranks there, so each rank searches the keys of
whole layers while holding only its shard of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

__all__ = ["Found", "kth_key", "search"]

_BITS = 16


class Found(NamedTuple):
    """A search's result: the threshold(s), and per layer the counts of keys ``< t`` and
    ``== t`` (combined over ranks with ``combine``), and of this rank's own keys ``== t``."""

    tau: torch.Tensor
    below: list[torch.Tensor]
    at: list[torch.Tensor]
    mine: list[torch.Tensor]


def _histogram(digit: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts of the digits ``0 .. bins - 1`` in a 1-D tensor (the extra bin ``bins`` goes)."""
    ones = torch.ones((), dtype=torch.int64, device=digit.device).expand(digit.shape)
    return torch.zeros(bins + 1, dtype=torch.int64, device=digit.device).index_add(0, digit, ones)[
        :bins
    ]


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
    found = search(keys, k, lo, hi, base)
    return found.tau, found.below, found.at


def search(
    keys: Sequence[torch.Tensor],
    k: torch.Tensor,
    lo: Sequence[torch.Tensor] | None = None,
    hi: Sequence[torch.Tensor] | None = None,
    base: Sequence[torch.Tensor] | None = None,
    *,
    separate: bool = False,
    combine: Callable[[torch.Tensor], torch.Tensor] | None = None,
    bits: int = _BITS,
    narrow: bool = False,
) -> Found:
    """:func:`kth_key` with options: ``separate`` (``k`` is ``[layers]``, one threshold per
    layer, returned as ``tau`` of shape ``[layers]``; no bounds), ``combine`` (a map of the
    ``[layers, bins]`` histograms, e.g. a sum over ranks), ``bits`` (the digit width, which
    must divide the key width; ``2^bits`` bins per layer and pass) and ``narrow`` (eager
    only: drop the keys outside the threshold's prefix between passes)."""
    dtype = keys[0].dtype
    width = 64 if dtype == torch.int64 else 32
    device = keys[0].device
    bins, half = 1 << bits, 1 << (bits - 1)
    zero = torch.zeros((), dtype=torch.int64, device=device)
    below = torch.stack(list(base)) if base is not None else zero.expand(len(keys))
    bounds = (
        None
        if lo is None or hi is None
        else (torch.stack(list(lo))[:, None], torch.stack(list(hi))[:, None])
    )
    tau = torch.zeros(len(keys) if separate else (), dtype=dtype, device=device)
    top = width - bits
    hist = mine = torch.zeros((len(keys), bins), dtype=torch.int64, device=device)
    at = below
    d = torch.zeros(len(keys) if separate else (), dtype=torch.int64, device=device)
    for shift in range(top, -1, -bits):
        taus = tau.unbind() if separate else [tau] * len(keys)
        hists = []
        for key, t in zip(keys, taus, strict=True):
            if shift == top:
                digit = (key >> shift) + half
            else:
                upper = shift + bits
                in_range = (key >> upper) == (t >> upper)
                digit = torch.where(in_range, (key >> shift) & (bins - 1), bins)
            # Keys outside the current prefix land in the extra bin, which is dropped.
            hists.append(_histogram(digit.reshape(-1), bins))
        mine = torch.stack(hists)
        hist = mine if combine is None else combine(mine)
        running = torch.cumsum(hist, 1)
        count = below[:, None] + running
        if bounds is not None:
            count = count.clamp(min=bounds[0], max=bounds[1])
        if separate:
            d = (count < k[:, None]).sum(1).clamp(max=bins - 1)
        else:
            d = (count.sum(0) < k).sum().clamp(max=bins - 1)
        step = (d - half) if shift == top else d
        tau = (
            (step.to(dtype) * (1 << shift)) if shift == top else tau + step.to(dtype) * (1 << shift)
        )
        index = (d if separate else d.expand(len(keys)))[:, None]
        at = hist.gather(1, index)[:, 0]
        below = below + running.gather(1, index)[:, 0] - at
        if narrow and shift > 0:
            # only keys with the threshold's prefix matter from here on (the others are
            # counted in ``below`` or are above it)
            taus = tau.unbind() if separate else [tau] * len(keys)
            keys = [key[(key >> shift) == (t >> shift)] for key, t in zip(keys, taus, strict=True)]
    index = (d if separate else d.expand(len(keys)))[:, None]
    own = mine.gather(1, index)[:, 0]
    return Found(tau, list(below.unbind()), list(at.unbind()), list(own.unbind()))
