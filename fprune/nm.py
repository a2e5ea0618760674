"""N:M masks: in each group of M consecutive inputs, the N lowest-ranked weights are pruned.

Iterative N:M (as INC does it) converts a growing fraction of the groups: at sparsity ``r``
exactly ``floor(r * M / N * n_groups + 1e-9)`` groups are converted to N:M and the others
stay dense. A group's score is the reduction (mean, sum or max) of the N scores it would
lose; groups are then selected like any other unit (:mod:`fprune.selection`), so the
ranking, tie and nesting rules are the same. Inside a group the N lowest-ranked weights go,
ties to the lower index; a group that already has pruned weights ranks first (it stays
converted) and keeps them pruned.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

import torch

from fprune import _fast
from fprune._dtypes import widen, widened
from fprune._sharded_select import Comm
from fprune._trace import tracing
from fprune.blocks import reduce_blocks
from fprune.patterns import NM
from fprune.selection import _keys, flat_keys, select


def _group_score(low: torch.Tensor, reduce: str) -> torch.Tensor:
    """Reduce ``[rows, groups, n]`` (each group's n lowest scores) to ``[rows, groups]``."""
    rows, groups, n = low.shape
    return reduce_blocks(low.reshape(rows, groups * n), (1, n), reduce=reduce)


def group_fraction(value: float | torch.Tensor, pattern: NM) -> float | torch.Tensor:
    """The fraction of groups to convert for an element sparsity ``value``: ``value * M / N``, at most 1."""
    if isinstance(value, torch.Tensor):
        return (value.to(torch.float64) * pattern.m / pattern.n).clamp(max=1.0)
    return min(value * pattern.m / pattern.n, 1.0)


_PAIRWISE = 8  # groups of up to this many weights are ranked by comparisons; larger ones by a sort


def _ranks(keys: torch.Tensor, inplace: bool) -> list[torch.Tensor]:
    """Each weight's position within its group in the stable ascending order of ``keys``
    ``[rows, groups, m]``: one uint8 ``[rows, groups]`` per position in the group.

    ``rank_i = #{j < i: k_j <= k_i} + #{j > i: k_j < k_i}``, from the ``m(m-1)/2`` comparisons
    ``first_ij = k_i <= k_j`` (``i`` before ``j``, ties to the lower index):
    ``rank_i = (m - 1 - i) + sum_{j < i} first_ji - sum_{j > i} first_ij``. A rank's first
    term creates it (no separate fill); in uint8 the running sums are exact (they stay in
    ``[0, m)``).
    """
    m = keys.shape[-1]
    cols = keys.unbind(-1)
    ranks: list[torch.Tensor | None] = [None] * m

    def update(i: int, first: torch.Tensor, sign: int) -> None:
        rank = ranks[i]
        if rank is None:  # the first term: m - 1 - i, plus or minus it
            ranks[i] = torch.add(first, m - 1 - i) if sign > 0 else torch.rsub(first, m - 1 - i)
        elif not inplace:  # traced (vmap cannot update an unbatched tensor in place)
            ranks[i] = rank + first if sign > 0 else rank - first
        elif sign > 0:  # contiguous columns: cheap in-place updates
            rank.add_(first)
        else:
            rank.sub_(first)

    for i in range(m):
        for j in range(i + 1, m):
            first = (cols[i] <= cols[j]).view(torch.uint8)
            update(i, first, -1)
            update(j, first, +1)
    return [r for r in ranks if r is not None]  # every one was created (m >= 2)


_WORDS = {4: torch.int32}  # m byte-sized ranks packed in one integer (m = 2 and 8 measured slower)
_OFFSET = 64  # a packed byte holds rank + 64 - n, so bit 6 is set exactly when rank >= n
_CHUNK = 1 << 20  # groups packed at a time (a BERT-sized layer's 589,824 in one: fewer, longer passes)


def by_columns(m: int, device: torch.device) -> bool:
    """Whether groups of ``m`` on ``device`` are ranked into packed words when eager: on the
    CPU (where it was measured faster), ``m`` has a word (4), and bytes sit in a word in
    little-endian order. Such groups also rank faster from scores written one group
    position at a time (:func:`nm_masks`'s ``grouped``)."""
    return device.type == "cpu" and m in _WORDS and sys.byteorder == "little"


def _packs(keys: torch.Tensor, m: int) -> bool:
    """Whether a group of ``m`` keys is ranked into packed words (:func:`_packed_ranks`)."""
    return by_columns(m, keys.device) and not tracing(keys)


def _packed_ranks(keys: torch.Tensor, n: int) -> torch.Tensor:
    """Each group's ranks (as :func:`_ranks`) packed in one integer per group: byte ``i`` of
    the word is ``rank_i + 64 - n``, so the word's memory is the ``[groups, m]`` rank bytes.

    The word is linear in the comparisons: ``sum_i (m - 1 - i + 64 - n) 256^i`` plus
    ``first_ij (256^j - 256^i)`` for each pair ``i < j``. While the sum is built, byte ``i``
    is ``m - 1 - i`` less some of its ``m - 1 - i`` later pairs plus some of its ``i``
    earlier ones, so it stays in ``[64 - n, 63 - n + m]``: no carry or borrow crosses a
    byte and the top byte's sign bit stays clear. Each comparison and add is one vectorized
    pass over contiguous columns, written as integers (a comparison writing bool runs a
    scalar loop on the CPU), and no rank is interleaved afterwards. ``keys`` is
    ``[groups, m]``, eager; when each of its columns is contiguous (scores written a column
    at a time, :func:`nm_masks`'s ``grouped``) they are compared where they lie.
    """
    groups, m = keys.shape
    word = torch.empty(groups, dtype=_WORDS[m], device=keys.device)
    base = sum((m - 1 - i + _OFFSET - n) << 8 * i for i in range(m))
    chunk = min(_CHUNK, groups)
    in_place = keys.stride(0) == 1
    cols = None if in_place else torch.empty(m, chunk, dtype=keys.dtype, device=keys.device)
    first = torch.empty(chunk, dtype=word.dtype, device=keys.device)
    for start in range(0, groups, chunk):
        size = min(chunk, groups - start)
        w, f = word[start:start + size], first[:size]
        if cols is None:
            part = keys[start:start + size].t()  # [m, size], each row contiguous
        else:
            part = cols[:, :size]
            for i in range(m):  # one strided copy per column, then contiguous work
                part[i].copy_(keys[start:start + size, i])
        w.fill_(base)
        for i in range(m):
            for j in range(i + 1, m):
                torch.le(part[i], part[j], out=f)  # i before j: ties rank the lower index first
                w.add_(f, alpha=(1 << 8 * j) - (1 << 8 * i))
    return word


def _packed_at_least(word: torch.Tensor, n_bytes: int, *, flip: bool, inplace: bool) -> torch.Tensor:
    """``rank >= n`` per byte of packed ranks, as a bool ``[groups, m]`` (or ``rank < n``
    with ``flip``): bit 6 of each byte, moved to bit 0 by one shift (in ``word`` itself
    with ``inplace``)."""
    ones = sum(1 << 8 * i for i in range(n_bytes))
    shift = _OFFSET.bit_length() - 1
    bits = (word.bitwise_right_shift_(shift) if inplace else word >> shift).bitwise_and_(ones)
    if flip:
        bits.bitwise_xor_(ones)
    return bits.view(torch.uint8).view(-1, n_bytes).view(torch.bool)


def _halves(n: int, m: int) -> int | None:
    """``log2(n)`` when ranks below ``m`` are at least ``n`` exactly when that bit is set, so
    one shift answers: ``n`` a power of two and ``m <= 2n`` (1:2, 2:4, 4:8 ...); else None."""
    return n.bit_length() - 1 if n & (n - 1) == 0 and m <= 2 * n else None


def _below(rank: torch.Tensor, n: int) -> torch.Tensor:
    """``rank < n`` for uint8 ranks below 128, by arithmetic: ``rank - n`` wraps to 128 or more
    exactly when it is negative, so its top bit is the answer (several times cheaper than a
    comparison kernel on the CPU)."""
    if tracing(rank):
        return rank < n
    return ((rank - n) >> 7).view(torch.bool)


def _at_least(rank: torch.Tensor, n: int) -> torch.Tensor:
    """``rank >= n`` for uint8 ranks below 128, by arithmetic: ``n - 1 - rank`` wraps to 128 or
    more exactly when ``rank >= n`` (the complement of :func:`_below`, in one pass)."""
    if tracing(rank):
        return rank >= n
    return (((n - 1) - rank) >> 7).view(torch.bool)


def _shape_2d(view: torch.Tensor, m: int) -> tuple[int, int]:
    """``[rows, cols]`` of a 2-D view, or of its grouped ``[rows, cols / m, m]`` form."""
    return (view.shape[0], view.shape[1] * m) if view.ndim == 3 else (view.shape[0], view.shape[1])


def within_groups(
    view: torch.Tensor, pattern: NM, *, pruned: torch.Tensor | None, reduce: str | None,
    complement: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The N lowest-ranked weights of every group, and each group's score.

    Args:
        view: ``[rows, cols]`` scores, ``cols`` divisible by M; or the same scores grouped,
            ``[rows, cols / M, M]``, in any memory layout (each group position's scores
            contiguous is the fastest).
        pattern: the N:M pattern.
        pruned: bool ``[rows, cols]``, True where a weight is already pruned (ranks first).
        reduce: the group-score reduction of the N lowest scores (taken in rank order), or
            None to skip the group scores.
        complement: return the other M - N weights instead (the kept mask when every group
            converts), computed directly rather than negated.

    Returns:
        ``(low, score)``: bool ``[rows, cols / M, M]``, True for the N weights a converted
        group loses (ties to the lower index), or for the others with ``complement``;
        ``[rows, cols / M]`` scores, or None.
    """
    n, m = pattern.n, pattern.m
    rows, cols = _shape_2d(view, m)
    if pruned is not None:
        pruned = pruned.reshape(view.shape)
    keys = _keys(view, pruned=pruned, wide=False, share=True).reshape(rows, cols // m, m)  # read only
    values = view.reshape(rows, cols // m, m)
    # N = 2 scores summed from ``low`` alone (:func:`_pair_score`), so no rank is kept for them
    # (keys, not view: under vmap the earlier masks may be batched while the scores are not)
    summed = n == 2 and reduce in ("mean", "sum") and not tracing(keys) and widened(values.dtype) in _BITS
    if m > _PAIRWISE:
        order = torch.sort(keys, dim=-1, stable=True).indices[..., :n]
        low = torch.zeros_like(keys, dtype=torch.bool).scatter(-1, order, True)
        score = None if reduce is None else _group_score(values.gather(-1, order), reduce)
        return ~low if complement else low, score
    if _packs(keys, m):
        word = _packed_ranks(keys.reshape(-1, m), n)
        del keys
        low = _packed_at_least(word, m, flip=not complement, inplace=reduce is None or summed).view(rows, cols // m, m)
        if reduce is None:
            return low, None
        packed = word.view(torch.uint8).view(rows, cols // m, m)

        def is_rank(i: int, k: int) -> torch.Tensor:
            return packed[..., i] == k + _OFFSET - n
    else:
        ranks = _ranks(keys, inplace=not tracing(view))
        del keys
        shift = None if tracing(view) else _halves(n, m)
        if shift is not None:  # interleave the ranks, then one in-place shift (and flip) over them all
            low = torch.stack(ranks, dim=-1).bitwise_right_shift_(shift)
            low = (low if complement else low.bitwise_xor_(1)).view(torch.bool)
        else:
            low = torch.stack([(_at_least if complement else _below)(r, n) for r in ranks], dim=-1)
        if reduce is None:
            return low, None

        def is_rank(i: int, k: int) -> torch.Tensor:
            return ranks[i] == k
    if summed and reduce is not None:  # (summed implies a reduction; the type checker needs it said)
        return low, _pair_score(~low if complement else low, values, reduce)
    cols_v = values.unbind(-1)
    lowest = []
    for k in range(n):  # the value at rank k, picked (not summed), so it is bit for bit the same
        picked = cols_v[m - 1]
        for i in range(m - 2, -1, -1):
            picked = torch.where(is_rank(i, k), cols_v[i], picked)
        lowest.append(picked)
    return low, _group_score(torch.stack(lowest, dim=-1), reduce)


def _pair_score(low: torch.Tensor, values: torch.Tensor, reduce: str) -> torch.Tensor:
    """Each group's score when N = 2 and the reduction is a sum or mean, eager: its two
    lowest-ranked values (flagged in ``low``) summed with -0.0 in place of the others, as
    bit operations and M additions, with no selection.

    -0.0 is the exact identity of IEEE addition (``x + -0.0 == x`` for every x, +0.0 and
    NaN included) and ``a + b == b + a``, so the sum, begun from +0.0 as ``torch.sum``
    begins (two -0.0 sum to +0.0), is bit for bit the rank-order pair's (only a NaN's
    payload may differ, and every NaN ranks alike); the mean divides it by 2, as
    :func:`_group_score`'s mean of two does (its 16-bit inputs widened to float32 first).
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


_BITS = {torch.float32: torch.int32, torch.float64: torch.int64}  # a float's bits as an integer


def _all_kept(mask: torch.Tensor) -> bool:
    """Whether an eager mask keeps everything (then nothing needs to rank first)."""
    return not tracing(mask) and _fast.all_true(mask)


def _every_group(fraction: float | torch.Tensor) -> bool:
    """Whether every group is converted (the fraction is 1), known without tracing."""
    if isinstance(fraction, torch.Tensor):
        return not tracing(fraction) and bool(fraction >= 1.0)
    return fraction >= 1.0


def nm_masks(
    views: Mapping[str, torch.Tensor],
    *,
    pattern: NM,
    sparsity: float | torch.Tensor,
    scope: str,
    min_layer_sparsity: float | torch.Tensor,
    max_layer_sparsity: float | torch.Tensor,
    previous: Mapping[str, torch.Tensor] | None,
    reduce: str,
    comm: Comm | None = None,
    grouped: Callable[[str], torch.Tensor | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Kept masks on the 2-D views of already-validated N:M layers (see module docstring).

    A layer missing from ``previous`` keeps everything. ``views`` is read once per layer, in
    order, and no view is used after the next one is read, so a lazy mapping may score one
    layer at a time into a shared buffer. When every group converts, ``grouped(name)`` (if
    given) is asked first: a layer's scores as ``[rows, cols / M, M]`` with each group
    position's scores contiguous (written a column at a time, so its groups are ranked
    without first gathering its columns), or None to read ``views[name]`` instead; it is
    read under the same rule. With
    ``comm`` the views are this rank's rows of the layers, and only the group selection
    (below N/M) exchanges anything: groups never cross rows.
    """
    fraction = group_fraction(sparsity, pattern)
    everything = _every_group(fraction)  # then no group is ranked, and none needs a score
    low, group_scores, kept_groups, shapes = {}, {}, {}, {}
    for name in views:
        view = grouped(name) if everything and grouped is not None else None
        view = views[name] if view is None else view
        rows, cols = shapes[name] = _shape_2d(view, pattern.m)
        prev = None if previous is None else previous.get(name)
        pruned = None if prev is None or _all_kept(prev) else ~prev
        # every group converting: each keeps its M - N highest, computed as the kept mask
        low[name], score = within_groups(view, pattern, pruned=pruned, reduce=None if everything else reduce,
                                         complement=everything)
        if score is not None:
            group_scores[name] = score
        if not everything:  # a group with a pruned weight was converted: it ranks first
            kept_groups[name] = None if pruned is None else ~pruned.reshape(rows, cols // pattern.m, pattern.m).any(dim=-1)
    if everything:  # the stored masks are already the kept ones
        return {name: low[name].reshape(shapes[name]) for name in low}
    kept = None
    if any(k is not None for k in kept_groups.values()):
        kept = {n: torch.ones_like(group_scores[n], dtype=torch.bool) if k is None else k for n, k in kept_groups.items()}
    lo, hi = group_fraction(min_layer_sparsity, pattern), group_fraction(max_layer_sparsity, pattern)
    chosen = None
    if comm is None and _fast.applies(group_scores.values(), (fraction, lo, hi)):
        chosen = _fast_groups(group_scores, kept, scope=scope, fraction=fraction, lo=lo, hi=hi)
    if chosen is None:
        chosen = select(flat_keys(group_scores, kept), scope=scope, sparsity=fraction, lo=lo, hi=hi, comm=comm)
    return {name: _lose(low[name], chosen[name], shapes[name]) for name in low}


_GROUP_WORDS = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # a group's M flag bytes as one integer


def _lose(low: torch.Tensor, chosen: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Kept mask ``[rows, cols]``: a chosen (converted) group loses its N lowest weights.

    ``low`` is consumed. Eager, with M of 2, 4 or 8, each group's flags are one integer and
    the mask is ``(low * chosen) ^ 0x01..01``, in place: two passes over the flags, instead
    of a broadcast over each group's M bytes.
    """
    m = low.shape[-1]
    word = _GROUP_WORDS.get(m)
    if word is not None and not tracing(low) and low.is_contiguous() and low.numel() and low.storage_offset() % m == 0:
        ones = int.from_bytes(b"\x01" * m, "little")
        words = low.view(torch.uint8).view(word).reshape(-1)
        words.mul_(chosen.reshape(-1).view(torch.uint8)).bitwise_xor_(ones)
        return words.view(torch.uint8).view(torch.bool).reshape(shape)
    lost = low & chosen.reshape(low.shape[:-1])[..., None]
    return (lost.logical_not_() if not tracing(lost) else ~lost).reshape(shape)  # ours: in place


def _fast_groups(
    scores: dict[str, torch.Tensor],
    kept: dict[str, torch.Tensor] | None,
    *,
    scope: str,
    fraction: float | torch.Tensor,
    lo: float | torch.Tensor,
    hi: float | torch.Tensor,
) -> dict[str, torch.Tensor] | None:
    """Chosen groups (flat, True = converted) by the eager selection, or None to defer."""
    names = sorted(scores)
    sizes = [scores[n].numel() for n in names]
    produce = scores.__getitem__
    prev = (lambda _: None) if kept is None else kept.__getitem__
    if scope == "local":
        out = _fast.select_local(names, sizes, produce, prev, sparsity=float(fraction))
    else:
        out = _fast.select_global(names, sizes, produce, prev, sparsity=float(fraction), lo=float(lo), hi=float(hi))
    return None if out is None else {n: ~k for n, k in out.items()}
