"""N:M masks for eager calls on the CPU (private to the accelerator): the masks of
:func:`fprune.nm.nm_masks`, with fewer passes.

* A group of 4 is ranked into one packed int32 word (:func:`packed_ranks`), with one pass
  per comparison over contiguous columns, instead of a rank tensor per position.
* Scores may arrive grouped, ``[rows, cols / M, M]`` with each group position contiguous
  (scored a position at a time), so that groups rank without gathering columns.
* When every group converts, the kept mask is computed directly (the complement).
* With N = 2 and a sum or mean, a group's score is summed from its two flagged values
  (:func:`pair_score`) instead of picking each rank's value.
* A chosen group's flags are dropped with one multiply per group (:func:`drop_lowest`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

import torch

from fprune import _tuning
from fprune._dtypes import widen, widened
from fprune._eager.keys import all_true, rank_keys
from fprune._eager.sample import Units
from fprune._eager.settle import select_global, select_local
from fprune.nm import PAIRWISE, group_fraction, group_score
from fprune.patterns import NM
from fprune.selection import flat_keys, select

__all__ = [
    "at_least",
    "below",
    "drop_lowest",
    "nm_masks",
    "packed_ranks",
    "pair_score",
    "rank_bit",
    "ranks",
    "ranks_by_position",
    "within_groups",
]

_WORDS = {4: torch.int32}  # m byte-sized ranks packed in one integer (2 and 8 were slower)
_OFFSET = 64  # a packed byte holds rank + 64 - n, so bit 6 is set exactly when rank >= n
_BITS = {torch.float32: torch.int32, torch.float64: torch.int64}  # a float's bits as an integer
_GROUP_WORDS = {
    2: torch.int16,
    4: torch.int32,
    8: torch.int64,
}  # a group's M flag bytes as one integer


def ranks_by_position(m: int, device: torch.device) -> bool:
    """Whether groups of ``m`` on ``device`` are ranked into packed words: on the CPU, ``m``
    has a word (4), and bytes sit in a word in little-endian order. Such groups also rank
    faster from scores written one group position at a time (``grouped``)."""
    return device.type == "cpu" and m in _WORDS and sys.byteorder == "little"


def ranks(keys: torch.Tensor) -> list[torch.Tensor]:
    """:func:`fprune.nm.ranks`, with the running sums updated in place (a rank's first term
    creates it, so there is no separate fill)."""
    m = keys.shape[-1]
    cols = keys.unbind(-1)
    out: list[torch.Tensor | None] = [None] * m

    def update(i: int, first: torch.Tensor, sign: int) -> None:
        rank = out[i]
        if rank is None:  # the first term: m - 1 - i, plus or minus it
            out[i] = torch.add(first, m - 1 - i) if sign > 0 else torch.rsub(first, m - 1 - i)
        elif sign > 0:
            rank.add_(first)
        else:
            rank.sub_(first)

    for i in range(m):
        for j in range(i + 1, m):
            first = (cols[i] <= cols[j]).view(torch.uint8)
            update(i, first, -1)
            update(j, first, +1)
    return [r for r in out if r is not None]  # every one was created (m >= 2)


def packed_ranks(keys: torch.Tensor, n: int) -> torch.Tensor:
    """Each group's ranks (as :func:`ranks`) packed in one integer per group: byte ``i`` of
    the word is ``rank_i + 64 - n``, so the word's memory is the ``[groups, m]`` rank bytes.

    The word is linear in the comparisons: ``sum_i (m - 1 - i + 64 - n) 256^i`` plus
    ``first_ij (256^j - 256^i)`` for each pair ``i < j``. While the sum is built, byte ``i``
    stays in ``[64 - n, 63 - n + m]``: no carry or borrow crosses a byte and the top byte's
    sign bit stays clear. Each comparison and add is one vectorized pass over contiguous
    columns, written as integers (a comparison writing bool runs a scalar loop on the CPU).
    ``keys`` is ``[groups, m]``; when each of its columns is contiguous they are compared
    where they lie.
    """
    groups, m = keys.shape
    word = torch.empty(groups, dtype=_WORDS[m], device=keys.device)
    base = sum((m - 1 - i + _OFFSET - n) << 8 * i for i in range(m))
    chunk = min(_tuning.current().nm_chunk, groups)
    cols = (
        None if keys.stride(0) == 1 else torch.empty(m, chunk, dtype=keys.dtype, device=keys.device)
    )
    first = torch.empty(chunk, dtype=word.dtype, device=keys.device)
    for start in range(0, groups, chunk):
        size = min(chunk, groups - start)
        w, f = word[start : start + size], first[:size]
        if cols is None:
            part = keys[start : start + size].t()  # [m, size], each row contiguous
        else:
            part = cols[:, :size]
            for i in range(m):  # one strided copy per column, then contiguous work
                part[i].copy_(keys[start : start + size, i])
        w.fill_(base)
        for i in range(m):
            for j in range(i + 1, m):
                torch.le(part[i], part[j], out=f)  # i before j: ties rank the lower index first
                w.add_(f, alpha=(1 << 8 * j) - (1 << 8 * i))
    return word


def _packedat_least(word: torch.Tensor, n_bytes: int, *, flip: bool, inplace: bool) -> torch.Tensor:
    """``rank >= n`` per byte of packed ranks, as a bool ``[groups, m]`` (or ``rank < n``
    with ``flip``): bit 6 of each byte, moved to bit 0 by one shift (in ``word`` itself
    with ``inplace``)."""
    ones = sum(1 << 8 * i for i in range(n_bytes))
    shift = _OFFSET.bit_length() - 1
    bits = (word.bitwise_right_shift_(shift) if inplace else word >> shift).bitwise_and_(ones)
    if flip:
        bits.bitwise_xor_(ones)
    return bits.view(torch.uint8).view(-1, n_bytes).view(torch.bool)


def rank_bit(n: int, m: int) -> int | None:
    """``log2(n)`` when ranks below ``m`` are at least ``n`` exactly when that bit is set, so
    one shift answers: ``n`` a power of two and ``m <= 2n`` (1:2, 2:4, 4:8 ...); else None."""
    return n.bit_length() - 1 if n & (n - 1) == 0 and m <= 2 * n else None


def below(rank: torch.Tensor, n: int) -> torch.Tensor:
    """``rank < n`` for uint8 ranks below 128, by arithmetic: ``rank - n`` wraps to 128 or more
    exactly when it is negative, so its top bit is the answer (cheaper than a comparison
    kernel on the CPU)."""
    return ((rank - n) >> 7).view(torch.bool)


def at_least(rank: torch.Tensor, n: int) -> torch.Tensor:
    """``rank >= n`` for uint8 ranks below 128: ``n - 1 - rank`` wraps to 128 or more exactly
    when ``rank >= n`` (the complement of :func:`below`, in one pass)."""
    return (((n - 1) - rank) >> 7).view(torch.bool)


def _view_shape(view: torch.Tensor, m: int) -> tuple[int, int]:
    """``[rows, cols]`` of a 2-D view, or of its grouped ``[rows, cols / m, m]`` form."""
    return (view.shape[0], view.shape[1] * m) if view.ndim == 3 else (view.shape[0], view.shape[1])


def _low_flags(keys: torch.Tensor, pattern: NM, complement: bool, consume: bool):
    """The flags of each group's N lowest (or, with ``complement``, its others) as a bool
    ``[rows, groups, m]``, and ``is_rank(i, k)``: whether position ``i`` has rank ``k``."""
    n, m = pattern.n, pattern.m
    if ranks_by_position(m, keys.device):
        word = packed_ranks(keys.reshape(-1, m), n)
        low = _packedat_least(word, m, flip=not complement, inplace=consume).view(keys.shape)
        packed = word.view(torch.uint8).view(keys.shape)
        return low, lambda i, k: packed[..., i] == k + _OFFSET - n
    rank = ranks(keys)
    shift = rank_bit(n, m)
    if shift is not None:  # interleave the ranks, then one in-place shift (and flip) over them all
        low = torch.stack(rank, dim=-1).bitwise_right_shift_(shift)
        low = (low if complement else low.bitwise_xor_(1)).view(torch.bool)
    else:
        low = torch.stack([(at_least if complement else below)(r, n) for r in rank], dim=-1)
    return low, lambda i, k: rank[i] == k


def within_groups(
    view: torch.Tensor,
    pattern: NM,
    *,
    pruned: torch.Tensor | None,
    reduce: str | None,
    complement: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`fprune.nm.within_groups` for eager calls: ``view`` may also be grouped,
    ``[rows, cols / M, M]`` in any memory layout; with ``complement`` the flags are the
    other M - N weights of each group (the kept mask when every group converts)."""
    n, m = pattern.n, pattern.m
    rows, cols = _view_shape(view, m)
    if pruned is not None:
        pruned = pruned.reshape(view.shape)
    keys = rank_keys(view, pruned=pruned, share=True).reshape(rows, cols // m, m)  # read only
    values = view.reshape(rows, cols // m, m)
    summed = n == 2 and reduce in ("mean", "sum") and widened(values.dtype) in _BITS
    if m > PAIRWISE:
        order = torch.sort(keys, dim=-1, stable=True).indices[..., :n]
        low = torch.zeros_like(keys, dtype=torch.bool).scatter(-1, order, True)
        score = None if reduce is None else group_score(values.gather(-1, order), reduce)
        return ~low if complement else low, score
    low, is_rank = _low_flags(keys, pattern, complement, consume=reduce is None or summed)
    del keys
    if reduce is None:
        return low, None
    if summed:
        return low, pair_score(~low if complement else low, values, reduce)
    cols_v = values.unbind(-1)
    lowest = []
    for k in range(n):  # the value at rank k, picked (not summed), so it is bit for bit the same
        picked = cols_v[m - 1]
        for i in range(m - 2, -1, -1):
            picked = torch.where(is_rank(i, k), cols_v[i], picked)
        lowest.append(picked)
    return low, group_score(torch.stack(lowest, dim=-1), reduce)


def pair_score(low: torch.Tensor, values: torch.Tensor, reduce: str) -> torch.Tensor:
    """Each group's score when N = 2 and the reduction is a sum or mean: its two lowest-ranked
    values (flagged in ``low``) summed with -0.0 in place of the others, as bit operations
    and M additions, with no selection.

    -0.0 is the exact identity of IEEE addition (``x + -0.0 == x`` for every x, +0.0 and
    NaN included) and ``a + b == b + a``, so the sum, begun from +0.0 as ``torch.sum``
    begins (two -0.0 sum to +0.0), is bit for bit the rank-order pair's (only a NaN's
    payload may differ, and every NaN ranks alike); the mean divides it by 2, as
    :func:`fprune.nm.group_score`'s mean of two does (16-bit inputs widened to float32).
    """
    wide = widen(values)
    itype = _BITS[wide.dtype]
    bits = wide.contiguous().view(itype)
    flags = low.reshape(bits.shape).view(torch.uint8).to(itype).neg_()  # -1 where flagged, else 0
    sign = torch.iinfo(itype).min  # the bits of -0.0
    picked = torch.bitwise_xor(bits, sign).bitwise_and_(flags).bitwise_xor_(sign)  # else -0.0
    cols = picked.view(wide.dtype).unbind(-1)
    total = cols[0] + 0.0  # from +0.0, as torch.sum
    for col in cols[1:]:
        total.add_(col)
    return total if reduce == "sum" else total.div_(2)


def drop_lowest(low: torch.Tensor, chosen: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Kept mask ``[rows, cols]``: a chosen (converted) group loses its N lowest weights.

    ``low`` is consumed. With M of 2, 4 or 8, each group's flags are one integer and the mask
    is ``(low * chosen) ^ 0x01..01``, in place: two passes over the flags, instead of a
    broadcast over each group's M bytes.
    """
    m = low.shape[-1]
    word = _GROUP_WORDS.get(m)
    if word is not None and low.is_contiguous() and low.numel() and low.storage_offset() % m == 0:
        ones = int.from_bytes(b"\x01" * m, "little")
        words = low.view(torch.uint8).view(word).reshape(-1)
        words.mul_(chosen.reshape(-1).view(torch.uint8)).bitwise_xor_(ones)
        return words.view(torch.uint8).view(torch.bool).reshape(shape)
    lost = low & chosen.reshape(low.shape[:-1])[..., None]
    return lost.logical_not_().reshape(shape)


def _choose_groups(
    scores: dict[str, torch.Tensor],
    kept: dict[str, torch.Tensor] | None,
    *,
    scope: str,
    fraction: float,
    lo: float,
    hi: float,
) -> dict[str, torch.Tensor]:
    """Chosen groups (True = converted) by the eager selection, or by the general path where
    its bracket misses."""
    names = sorted(scores)
    sizes = [scores[n].numel() for n in names]
    units = Units(scores.__getitem__, (lambda _: None) if kept is None else kept.__getitem__)
    if scope == "local":
        out = select_local(names, sizes, units, sparsity=fraction)
    else:
        out = select_global(names, sizes, units, sparsity=fraction, lo=lo, hi=hi)
    if out is None:
        return select(flat_keys(scores, kept), scope=scope, sparsity=fraction, lo=lo, hi=hi)
    return {n: ~k for n, k in out.items()}


def nm_masks(
    views: Mapping[str, torch.Tensor],
    *,
    pattern: NM,
    sparsity: float,
    scope: str,
    lo: float,
    hi: float,
    previous: Mapping[str, torch.Tensor] | None,
    reduce: str,
    grouped: Callable[[str], torch.Tensor | None] | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`fprune.nm.nm_masks` for eager calls (float fractions, read as numbers).

    ``views`` is read once per layer, in order, and no view is used after the next one is
    read, so a lazy mapping may score one layer at a time into a shared buffer. When every
    group converts, ``grouped(name)`` (if given) is asked first: a layer's scores grouped,
    ``[rows, cols / M, M]``, each group position's scores contiguous; or None to read
    ``views[name]``.
    """
    fraction = float(group_fraction(sparsity, pattern))
    every = fraction >= 1.0  # then no group is ranked, and none needs a score
    low, group_scores, kept_groups, shapes = {}, {}, {}, {}
    for name in views:
        view = grouped(name) if every and grouped is not None else None
        view = views[name] if view is None else view
        rows, cols = shapes[name] = _view_shape(view, pattern.m)
        prev = None if previous is None else previous.get(name)
        pruned = None if prev is None or all_true(prev) else ~prev
        low[name], score = within_groups(
            view, pattern, pruned=pruned, reduce=None if every else reduce, complement=every
        )
        if score is not None:
            group_scores[name] = score
            # a group with a pruned weight was converted: it ranks first
            kept_groups[name] = (
                None
                if pruned is None
                else ~pruned.reshape(rows, cols // pattern.m, pattern.m).any(-1)
            )
    if every:  # the flags are already the kept masks
        return {name: low[name].reshape(shapes[name]) for name in low}
    kept = None
    if any(k is not None for k in kept_groups.values()):
        kept = {
            n: torch.ones_like(group_scores[n], dtype=torch.bool) if k is None else k
            for n, k in kept_groups.items()
        }
    bounds = float(group_fraction(lo, pattern)), float(group_fraction(hi, pattern))
    chosen = _choose_groups(
        group_scores, kept, scope=scope, fraction=fraction, lo=bounds[0], hi=bounds[1]
    )
    return {name: drop_lowest(low[name], chosen[name], shapes[name]) for name in low}
