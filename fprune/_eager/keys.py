"""Rank keys and mask reads for eager calls (private to the accelerator).

:func:`rank_keys` gives :func:`fprune.selection.rank_keys`'s keys with fewer passes, by
reading values back: scores with no sign bit and no NaN (most magnitudes) are their own
keys, with no pass at all, and the NaN pass runs only when there is a NaN.
"""

from __future__ import annotations

import torch

__all__ = ["all_true", "rank_keys", "within"]

_INF_BITS = {torch.int32: 0x7F800000, torch.int64: 0x7FF0000000000000}  # the bits of +inf


def rank_keys(
    scores: torch.Tensor,
    *,
    pruned: torch.Tensor | None = None,
    wide: bool = False,
    share: bool = False,
) -> torch.Tensor:
    """:func:`fprune.selection.rank_keys`, eager; with ``share`` the keys may be a view of
    ``scores``' memory (when the scores are already their own keys), for callers that only
    read them. A pruned mask laid out differently from the scores keeps the scores' layout."""
    if wide or scores.dtype == torch.float64:
        x, itype, width = scores.double(), torch.int64, 64
    else:
        x, itype, width = scores.float(), torch.int32, 32
    lowest = torch.iinfo(itype).min
    inf = _INF_BITS[itype]
    if within(x.view(itype), 0, inf):
        # no sign bit (so no -0.0) and no NaN: the bits already order like the floats
        keys = x.view(itype)
        if pruned is not None:
            return _lowest_where(pruned, lowest, keys)
        return keys if share or x is not scores else keys.clone()
    x = x + 0.0  # -0.0 + 0.0 is +0.0 (IEEE), any other x is unchanged; one pass
    bits = x.view(itype)
    # negative floats order backwards as integers: flip their magnitude bits
    keys = (bits >> (width - 1)).bitwise_and_(torch.iinfo(itype).max).bitwise_xor_(bits)
    if not within(keys, ~inf, inf):  # NaN bits map above +inf's key or below -inf's
        keys = torch.where(torch.isnan(x), lowest + 1, keys)
    if pruned is not None:
        keys = _lowest_where(pruned, lowest, keys)
    return keys


def _lowest_where(pruned: torch.Tensor, lowest: int, keys: torch.Tensor) -> torch.Tensor:
    """``lowest`` where ``pruned``, else ``keys``, laid out in memory as ``keys`` is (a grouped
    N:M layout stays grouped), not as the mask is."""
    low = torch.full((), lowest, dtype=keys.dtype, device=keys.device)
    return torch.where(pruned, low, keys, out=torch.empty_like(keys))


def all_true(mask: torch.Tensor) -> bool:
    """Whether a bool tensor is all True, as the minimum of its bytes: one vectorised
    read-only pass (``Tensor.all`` is much slower on the CPU)."""
    return mask.numel() == 0 or bool(mask.reshape(-1).view(torch.uint8).amin() == 1)


def within(t: torch.Tensor, low: int, high: int) -> bool:
    """Whether every value of an integer tensor lies in ``[low, high]`` (one read-only pass;
    a comparison that writes a bool tensor costs several)."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(_memory_order(t))
    return bool(lo >= low) and bool(hi <= high)


def _memory_order(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its dimensions permuted into its memory order, when that makes it contiguous
    (a transposed or grouped layout), so a reduction over every element reads memory in
    order; else ``t`` itself."""
    if t.is_contiguous():
        return t
    permuted = t.permute(sorted(range(t.ndim), key=lambda d: (-t.stride(d), -t.shape[d])))
    return permuted if permuted.is_contiguous() else t
