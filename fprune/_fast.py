"""Exact selection for eager calls: a sample brackets the threshold, one pass settles it.

The general path (:mod:`fprune.selection`) turns every score into an integer rank key and
runs a radix select over all of them: exact, traceable, but several passes over every score
and the keys of all layers in memory at once. Eager calls may read values back to Python,
which allows a cheaper exact method, with the same result bit for bit:

1. **Sample.** A strided sample of about 2^18 scores (2^14 for a layer settled alone; the same
   stride in every layer, a power of two, on diagonals of each layer's grid where it divides
   both sides, :func:`grid_sample`) gives two sample keys that bracket the threshold
   with a wide margin (4.5 standard deviations of the sample quantile), with the per-layer
   bounds scaled to the sample (read off one sort of the whole sample, as in step 3).
2. **One pass.** Each layer's scores are compared with the bracket ``[a, b]`` in their own
   dtype: ``score > b`` is kept for sure; scores inside the bracket are the candidates
   (their values and flat indices, a small fraction); everything else (previously pruned
   units, NaN, scores below ``a``) ranks below the bracket and is counted.
3. **Settle.** All layers' candidates are put in pruning order (key, then layer, then index)
   by one stable sort (:class:`_Union`), with each layer's count below the bracket as its
   base; the exact threshold and the per-layer counts (under the bounds, ties by name then
   index: the general path's) are read off it (:meth:`_Union.cut`), and the first of them
   are pruned. Where the bounds hold layers in a way that reading cannot be sure of, or
   the candidates are too many to hold in one sort next to the new masks, each layer's
   candidates are put in order (:func:`_order`) and the threshold is searched for
   (:func:`_threshold`: a few rounds of probing the water-filling count); a layer then
   prunes its first ``count - base`` candidates in that order and keeps the rest.

The bracket is verified with exact counts: if the threshold is not inside it (a sample far
off, or a threshold among NaNs), :func:`select_global` returns None and the caller takes the
general path. A layer whose count a bound moves outside its candidates is selected alone,
by the same method with its own count. Local scope (:func:`select_local`) brackets each
layer's own count from its own sample and settles every layer in the same kind of pass, with
no search (each count is known). Scores are produced layer by layer on demand
(``produce(name)``), so a stateless criterion needs memory of the order of the largest
layer, not of the model. With a :class:`Placer`, block layers get weight-shaped masks
directly.

Float comparisons rank scores exactly as the rank keys do: NaN fails every comparison
(so it ranks lowest), ``-0.0 == +0.0``, infinities order as values. The bracket ends are
sample scores, so they are exact in every dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, Protocol

import torch

from fprune import _trace
from fprune.selection import _allocate, _budget, _count, _lowest, all_true, rank_keys

__all__ = ["Placer", "all_true", "applies", "diagonal", "diagonal_view", "grid_sample", "sample_positions", "select_global", "select_local"]

Producer = Callable[[str], torch.Tensor]
PreviousProducer = Callable[[str], "torch.Tensor | None"]
# ``sampler(name, stride)``: the layer's unit scores at the units ``grid_sample(grid, stride)``
# takes from its grid, in that order, computed without scoring the whole layer; or None where
# it cannot (then ``produce`` runs).
Sampler = Callable[[str, int], "torch.Tensor | None"]


class Placer(Protocol):
    """Where a layer's units lie in its weight, for a caller that wants weight-shaped masks.

    With a placer, a covered layer's unit mask (its sure-kept units from its pass, and its
    chosen candidates set in it once the threshold is known) is spread to a fresh
    weight-shaped mask and dropped, one layer at a time: the weight-shaped masks are allocated
    in the same order and sizes on every step (which lets the allocator reuse a previous
    step's freed masks where it keeps them, instead of faulting in fresh pages). Setting the
    chosen units in the unit mask before it is spread costs a fraction of setting their
    blocks in the weight-shaped mask (one flat index per unit, not a block of them).
    """

    def covers(self, name: str) -> bool:
        """Whether this layer's masks are to be weight-shaped (else its flat unit mask is returned)."""
        ...

    def full(self, name: str, units: torch.Tensor) -> torch.Tensor:
        """A fresh weight-shaped mask: every weight takes its unit's value (``units`` is flat)."""
        ...


def _place(placer: Placer | None, name: str, units: torch.Tensor) -> torch.Tensor:
    """A layer's result: its weight-shaped mask where the placer covers it, else ``units``."""
    return placer.full(name, units) if placer is not None and placer.covers(name) else units


def applies(scores: Iterable[torch.Tensor], fractions: Iterable[object]) -> bool:
    """Whether the eager method may run: eager (nothing traced) and on the CPU (on a GPU the
    general path's few large kernels beat a pass with host round trips)."""
    tensors = [*scores, *(f for f in fractions if isinstance(f, torch.Tensor))]
    return all(t.device.type == "cpu" and not _trace.tracing(t) for t in tensors)


def _indices(mask: torch.Tensor) -> torch.Tensor:
    """``mask.nonzero()`` of a sparse flat bool tensor (the ~1% candidates), in index order.

    The mask is scanned 8 bytes at a time as int64 words; only the words with a set byte are
    looked into. About twice as fast as ``nonzero`` over every byte at 1% density.
    """
    n = mask.numel()
    head = n - n % 8
    if head == 0 or mask.storage_offset() % 8:
        return mask.nonzero().squeeze(1)
    packed = mask[:head].view(torch.int64)
    words = torch.nonzero(packed).squeeze(1)
    word, byte = packed.index_select(0, words).view(torch.uint8).view(-1, 8).nonzero().unbind(1)
    idx = words.index_select(0, word).mul_(8).add_(byte)
    if head < n:
        idx = torch.cat([idx, mask[head:].nonzero().squeeze(1) + head])
    return idx


_COMPARE_CHUNK = 1 << 19  # scores compared at a time through a buffer of their dtype (2 MiB of float32)


def _compare_into(
    sure: torch.Tensor, inside: torch.Tensor, score: torch.Tensor, lo_end: float, hi_end: float,
    buf: torch.Tensor | None,
) -> int | None:
    """``sure = score > hi_end`` and ``inside = lo_end <= score <= hi_end`` (bool, flat);
    returns the number of True in ``sure`` when it comes cheaply (with ``buf``), else None.

    A comparison writing bool runs a scalar loop on the CPU; written in the scores' own
    floating dtype (0 or 1) it is vectorized, and the copy to bool is cheap. So with ``buf``
    (of the scores' dtype; for contiguous scores: on strided ones the bool kernels are
    faster) each chunk of ``buf.numel()`` scores is compared into it (it stays in cache) and
    copied: about 2.5 times as fast as comparing into bool. NaN fails both comparisons.
    The count is then the sum of each chunk's 0s and 1s while it is in cache (exact: a chunk
    is far below 2^24, and 16-bit chunks are summed in float32), which costs a fraction of a
    ``count_nonzero`` over the bool result.
    """
    if buf is None:
        torch.gt(score, hi_end, out=sure)
        torch.ge(score, lo_end, out=inside)
        count = None
    else:
        step, wide = buf.numel(), torch.float32 if buf.element_size() < 4 else None
        sums = []
        for start in range(0, score.numel(), step):
            end = min(start + step, score.numel())
            part, out = score[start:end], buf[: end - start]
            sure[start:end].copy_(torch.gt(part, hi_end, out=out))
            sums.append(out.sum(dtype=wide))
            inside[start:end].copy_(torch.ge(part, lo_end, out=out))
        count = sum(int(s) for s in sums)
    inside ^= sure  # lo <= score <= hi: score > hi implies score >= lo (lo <= hi, NaN in neither)
    return count


_SAMPLE = 1 << 18  # sample size over all layers
_ALONE_SAMPLE = 1 << 14  # sample size of a layer settled (or bracketed) on its own
# The bracket's half-width in standard deviations of the sample quantile. A random sample
# misses the threshold at 4.5 about 7 times in a million brackets (each miss costs the
# general path, or a layer settled alone); narrower than 6, it holds a quarter fewer
# candidates. On the pretrained MiniLM-L6 encoder (36 weights; 1x1, 4x1, 2x2, 1x4 at 50 to 95%,
# global and local) no bracket missed even at 3.5.
_Z = 4.5


def _stride(units: int, sample: int) -> int:
    """The sampling stride for about ``sample`` of ``units`` units: ``units / sample`` rounded
    to the nearest power of two (in log scale), so that it divides the widths of most weights:
    a block layer's sampled units are then every ``stride``-th column of every block row, which
    a sampler reads as one strided view instead of gathering them."""
    ratio = units / sample
    return 1 if ratio <= 1 else 1 << round(math.log2(ratio))


def diagonal(rows: int, cols: int, stride: int) -> bool:
    """Whether a ``[rows, cols]`` grid is sampled on diagonals (:func:`grid_sample`): the stride
    divides both sides."""
    return stride > 1 and rows % stride == 0 and cols % stride == 0


def diagonal_view(t: torch.Tensor, block: tuple[int, int], stride: int) -> torch.Tensor:
    """The blocks :func:`grid_sample` takes from the ``block`` grid of a 2-D tensor (any
    strides; the stride divides both sides of the grid), as a view shaped ``[groups, stride,
    bn, units per row, bm]``: stacked, its rows are the sampled blocks' rows in grid order
    (block row ``r`` takes the block columns ``c = r (mod stride)``)."""
    (bn, bm), (sr, sc) = block, t.stride()
    rows, cols = t.shape
    size = (rows // (bn * stride), stride, bn, cols // (bm * stride), bm)
    strides = (stride * bn * sr, bn * sr + bm * sc, sr, stride * bm * sc, sc)
    return t.as_strided(size, strides, t.storage_offset())


def grid_sample(grid: torch.Tensor, stride: int) -> torch.Tensor:
    """Every ``stride``-th unit of a grid-shaped tensor (2-D; any other shape is one row), as a
    fresh 1-D tensor: the sample's units, in row-major order.

    A flat stride that divides the width takes the same columns in every row (``0, stride,
    ...``), which is no sample of a weight whose columns differ in scale (input features, a
    conv's kernel positions): on a pretrained encoder's layers such a sample missed its
    bracket for up to 8 of 36 layers. So where the stride divides both sides, row ``r``
    takes the columns ``c`` with ``c = r (mod stride)``: each group of ``stride`` rows takes
    every column once, with the same number of units as the flat stride, read as one
    strided view. Otherwise the flat positions ``0, stride, 2 * stride, ...`` are taken (a
    width the stride does not divide moves them along the columns anyway).
    """
    grid = grid if grid.ndim == 2 else grid.reshape(1, -1)
    rows, cols = grid.shape
    if diagonal(rows, cols, stride):
        view = diagonal_view(grid, (1, 1), stride)
        return view.clone(memory_format=torch.contiguous_format).reshape(-1)  # a copy, never a view
    return grid.reshape(-1)[::stride].clone()  # a copy: a view would keep the whole layer alive


def sample_positions(rows: int, cols: int, stride: int, device: torch.device) -> torch.Tensor:
    """The flat positions of the units :func:`grid_sample` takes from a ``[rows, cols]`` grid,
    in its order (int64)."""
    if not diagonal(rows, cols, stride):
        return torch.arange(0, rows * cols, stride, device=device)
    group = torch.arange(0, rows, stride, device=device)[:, None, None]
    offset = torch.arange(stride, device=device)[None, :, None]
    column = torch.arange(0, cols, stride, device=device)[None, None, :]
    return ((group + offset) * cols + offset + column).reshape(-1)


def _bits_to_score(key: int, wide: bool) -> float | None:
    """The score whose rank key is ``key``; None for the pruned and NaN classes."""
    itype, ftype = (torch.int64, torch.float64) if wide else (torch.int32, torch.float32)
    if key <= torch.iinfo(itype).min + 1:
        return None
    bits = key ^ (torch.iinfo(itype).max if key < 0 else 0)  # the key map is its own inverse
    return float(torch.tensor(bits, dtype=itype).view(ftype))


def _kept(previous: PreviousProducer, name: str) -> torch.Tensor:
    """A layer's previous kept mask (grid-shaped, as given), for a layer known to have pruned
    units."""
    prev = previous(name)
    if prev is None:  # not reachable: callers ask only for layers with pruned units
        raise RuntimeError(f"fprune internal error: no previous mask for {name!r}")
    return prev


def _counts_at(sorted_keys: list[torch.Tensor], base: list[int], t: int, *, right: bool) -> list[int]:
    """Per layer: ``base`` plus the number of keys ``<= t`` (``right``) or ``< t``."""
    return [
        b + (int(torch.searchsorted(k, torch.tensor([t], dtype=k.dtype), right=right)) if k.numel() else 0)
        for b, k in zip(base, sorted_keys, strict=True)
    ]


_RADIX = 1 << 15  # torch sorts an integer tensor of this many elements or more by radix
_PAD_FROM = 5 << 10  # from this many integer keys, sorting them padded to ``_RADIX`` is faster


def _sort(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.sort(keys, stable=True)`` of a 1-D tensor, as ``(values, indices)``.

    Torch sorts fewer than 32768 integers by comparisons, at 40 to 60 ns a key on the CPU,
    and 32768 or more by radix, at about 7 ns. So from ``_PAD_FROM`` integer keys on, they
    are padded to ``_RADIX`` with the dtype's largest value: stable, the padding sorts after
    every key (after equal ones by its indices), and the first ``n`` entries are the answer.
    """
    n = keys.numel()
    if keys.is_floating_point() or not _PAD_FROM <= n < _RADIX:
        return torch.sort(keys, stable=True)
    pad = torch.full((_RADIX - n,), torch.iinfo(keys.dtype).max, dtype=keys.dtype, device=keys.device)
    values, order = torch.sort(torch.cat([keys, pad]), stable=True)
    return values[:n].clone(), order[:n]  # a copy: callers hold the values (the indices are spent at once)


_ORDER_GROUP = 1 << 15  # candidates of small layers are put in order together, about this many at a time


def _grouped(keys: torch.Tensor) -> bool:
    """Whether :func:`_order` sorts these candidate keys in a group (else alone)."""
    return keys.dtype == torch.int32 and 0 < keys.numel() < _RADIX


def _order(keys: list[torch.Tensor], idx: list[torch.Tensor]) -> None:
    """Put each layer's candidates (``keys[i]``, ``idx[i]``, in index order) in pruning order,
    key then index, in place in both lists.

    A layer's candidates lie inside its bracket, so their int32 keys span a narrow range. The
    keys of consecutive layers with fewer than ``_RADIX`` candidates are sorted together as
    one int32 tensor, each less its layer's smallest key plus the layer's place in the group
    above every key's span (``place << bits``), with a stable sort: one radix sort for the group
    instead of a sort per layer, which costs far more at a few thousand keys (see :func:`_sort`).
    Spans too wide to share 31 bits, int64 keys and layers of ``_RADIX`` candidates or more
    (see :func:`_grouped`) are sorted alone.
    """
    group: list[tuple[int, int, int]] = []  # (layer, its smallest key, its span's bit length)
    held = 0  # the group's candidates

    def flush() -> None:
        if len(group) == 1:
            (i, _, _), = group
            keys[i], order = _sort(keys[i])
            idx[i] = idx[i].index_select(0, order)
        elif group:
            bits = max(b for _, _, b in group)
            composite = torch.cat([keys[i].sub(low).add_(place << bits) for place, (i, low, _) in enumerate(group)])
            values, order = _sort(composite)
            del composite
            moved = torch.cat([idx[i] for i, _, _ in group]).index_select(0, order)
            sizes = [keys[i].numel() for i, _, _ in group]
            for place, ((i, low, _), v, m) in enumerate(zip(group, values.split(sizes), moved.split(sizes),
                                                            strict=True)):
                keys[i], idx[i] = v.sub_(place << bits).add_(low), m  # each scalar within int32
        group.clear()

    for i, k in enumerate(keys):
        if not _grouped(k):
            if k.numel():
                keys[i], order = _sort(k)
                idx[i] = idx[i].index_select(0, order)
            continue
        low, high = (int(v) for v in torch.aminmax(k))
        bits = (high - low).bit_length()
        widest = max([bits, *(b for _, _, b in group)])
        if group and ((len(group) + 1) << widest > 2**31 or held + k.numel() > _ORDER_GROUP):
            flush()
            held = 0
        group.append((i, low, bits))
        held += k.numel()
    flush()


_PROBES = 2048  # at most this many key values probed at once by the threshold search
_EXACT = 1024  # the threshold search probes every distinct key once at most this many are left


def _threshold(
    sorted_keys: list[torch.Tensor], base: list[int], k: int, low: list[int], high: list[int]
) -> int | None:
    """The smallest key ``t`` with ``sum_l clamp(base_l + #(keys_l <= t), low_l, high_l) >= k``
    (keys sorted per layer), or None if no key reaches ``k``.

    The total only changes at key values, so the answer is a key. A round counts every layer
    at ``p`` key values at once (one batched ``searchsorted`` per layer) and keeps the keys
    between the last value short of ``k`` and the first reaching it. The values are every
    ``n / p``-th key of each layer, so about ``n / p`` keys are kept; with ``p`` near
    ``sqrt(n)`` (at most ``_PROBES``) they are then few enough (``_EXACT``) for the next round
    to probe every distinct one of them, which is exact. Usually two rounds; one layer needs
    none (its answer is read off its sorted keys).
    """
    present = [keys for keys in sorted_keys if keys.numel()]
    if not present:
        return None
    if len(sorted_keys) == 1:  # clamp(base + c, low, high) >= k  <=>  high >= k and c >= k - base
        keys, need = sorted_keys[0], k - base[0]
        if high[0] < k:
            return None
        if low[0] >= k or need <= 0:
            return int(keys[0])
        return int(keys[need - 1]) if need <= keys.numel() else None

    def column(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64)[:, None]

    b, lo_t, hi_t = column(base), column(low), column(high)
    top = torch.stack([keys[-1] for keys in present]).max().reshape(1)  # the answer is at most the largest key
    inside = list(sorted_keys)  # per layer, the keys in (lower, upper]: slices of sorted_keys
    below = torch.zeros(len(sorted_keys), dtype=torch.int64)  # per layer, the keys <= lower
    size = sum(keys.numel() for keys in present)
    exact = False
    while True:
        probes = min(max(math.isqrt(size), 64), _PROBES)
        exact = exact or size <= _EXACT
        every = 1 if exact else max(1, size // probes)
        values = torch.unique(torch.cat([*(keys[every - 1::every] for keys in inside), top]))  # sorted
        before, found = below, None
        for chunk in values.split(_PROBES * 4):  # bounded [layers, chunk] counts
            counts = torch.zeros((len(sorted_keys), chunk.numel()), dtype=torch.int64)
            for keys, row in zip(sorted_keys, counts, strict=True):
                if keys.numel():
                    torch.searchsorted(keys, chunk, right=True, out=row)
            bounded = (counts + b).clamp_(min=lo_t, max=hi_t)  # one [layers, chunk] temporary
            hits = (bounded.sum(0) >= k).nonzero()
            del bounded
            if hits.numel():
                j = int(hits[0, 0])
                found = (chunk[j], counts[:, j], counts[:, j - 1] if j else before)
                break
            before = counts[:, -1]
        if found is None:
            return None  # not even the largest key reaches k (only possible in the first round)
        value, upto, below = found
        if exact:  # every key that can be the answer was probed
            return int(value)
        top = value.reshape(1)
        inside = [keys[s:e] for keys, s, e in zip(sorted_keys, below.tolist(), upto.tolist(), strict=True)]
        kept = sum(keys.numel() for keys in inside)
        exact = kept >= size  # no progress (a run of ties): probe every distinct key left
        size = kept


_CUT_ROUNDS = 8  # rounds of :meth:`_Union.cut` guessing which layers its bounds hold


class _Cut(NamedTuple):
    """Where :meth:`_Union.cut` puts the threshold."""

    key: int  # the threshold's key
    end: int  # the pruned keys are the first ``end`` sorted keys, less those of held layers
    free: torch.Tensor | None  # per sorted key: its layer is not held at a bound (None: no layer is)
    at_high: torch.Tensor  # per layer: held at its upper bound
    at_low: torch.Tensor  # per layer: held at its lower bound


class _Union:
    """Several layers' integer keys in one stable sort: key, then layer, then place in the
    layer, which is the pruning order where the layers come in name order and each layer's
    keys in index order.

    One radix sort of all the keys (a millisecond or two for a few hundred thousand) replaces
    sorting each layer and probing every layer in every round of :func:`_threshold`: the
    bounded threshold is read off it (:meth:`cut`), even with layers held at their bounds,
    and where that reading is not sure :func:`_threshold` runs on :meth:`per_layer`.
    """

    def __init__(self, flat: torch.Tensor, sizes: list[int]) -> None:
        self.sizes = sizes
        self.values, self.order = _sort(flat)
        owner = torch.repeat_interleave(torch.arange(len(sizes), dtype=torch.int32),
                                        torch.tensor(sizes, dtype=torch.int64))
        self.layer = owner.index_select(0, self.order)  # each sorted key's layer
        self._per_layer: list[torch.Tensor] | None = None

    def per_layer(self) -> list[torch.Tensor]:
        """Every layer's keys, sorted (a stable sort of the layers keeps each one's keys in order)."""
        if self._per_layer is None:
            by_layer = torch.sort(self.layer, stable=True).indices
            self._per_layer = list(self.values.index_select(0, by_layer).split(self.sizes))
        return self._per_layer

    def cut(self, base: list[int], k: int, low: list[int], high: list[int]) -> _Cut | None:
        """Where :func:`_threshold` puts the threshold for these arguments (and so
        :func:`_allocate`'s counts, :meth:`counts`), read off the sorted keys; None where that
        is not sure (then run those).

        Each layer's bounded count ``clamp(base + #(keys <= t), low, high)`` is either held at
        a bound near the answer or equal to its plain count. Guess which (first: none held),
        take the key where the plain counts of the others reach what the held ones leave,
        and move to the held sets the layers whose bounds it crosses; repeat until none
        crosses (a few rounds). At the answer ``t``, with ``below`` (``base`` plus the keys
        ``< t``) and ``top`` (``below`` plus the keys ``== t``): a layer held at ``high`` has
        ``below >= high``, one held at ``low`` has ``top <= low``, and every other has ``low
        <= below`` and ``top <= high``, all checked. Then no clamp changes between the
        largest key below ``t`` and ``t`` except the free layers' counts, which reach ``k``
        at ``t`` and not below it, so ``t`` is the smallest key that reaches ``k``; the ties
        at ``t`` go to the free layers in layer order, as in the stable sort.
        """
        layers = len(self.sizes)
        base_t, low_t, high_t = (torch.tensor(v, dtype=torch.int64) for v in (base, low, high))
        at_high = torch.zeros(layers, dtype=torch.bool)
        at_low = torch.zeros(layers, dtype=torch.bool)
        for _ in range(_CUT_ROUNDS):
            held = at_high | at_low
            need = k - int(high_t[at_high].sum() + low_t[at_low].sum() + base_t[~held].sum())
            free = None if not bool(held.any()) else ~held.index_select(0, self.layer)  # per sorted key
            if free is None:
                if not 1 <= need <= self.values.numel():
                    return None
                end_at = need - 1  # the need-th free key's position
            else:
                ranks = torch.cumsum(free, 0)
                if not 1 <= need <= (int(ranks[-1]) if ranks.numel() else 0):
                    return None
                end_at = int(torch.searchsorted(ranks, torch.tensor([need])))
            t = self.values[end_at : end_at + 1]
            start = int(torch.searchsorted(self.values, t))
            stop = int(torch.searchsorted(self.values, t, right=True))
            below = self._count_below(start) + base_t
            top = below + torch.bincount(self.layer[start:stop], minlength=layers)
            over, under = ~held & (top > high_t), ~held & (below < low_t)
            if not bool((over | under).any()):
                break
            at_high |= over
            at_low |= under
        else:
            return None
        if bool((below[at_high] < high_t[at_high]).any()) or bool((top[at_low] > low_t[at_low]).any()):
            return None  # a held layer's bound is crossed at t itself: not sure
        return _Cut(int(t), end_at + 1, free, at_high, at_low)

    def _count_below(self, start: int) -> torch.Tensor:
        """Per layer, how many of the first ``start`` sorted keys are its (counted on the
        shorter side)."""
        layers = len(self.sizes)
        if 2 * start <= self.values.numel():
            return torch.bincount(self.layer[:start], minlength=layers)
        return torch.tensor(self.sizes) - torch.bincount(self.layer[start:], minlength=layers)

    def counts(self, cut: _Cut, base: list[int], low: list[int], high: list[int]) -> list[int]:
        """:func:`_allocate`'s counts at ``cut`` (made with these arguments): a held layer's
        bound, else ``base`` plus its pruned keys."""
        if cut.free is None:
            taken = self._count_below(cut.end)
        else:
            taken = torch.bincount(self.layer[: cut.end][cut.free[: cut.end]], minlength=len(self.sizes))
        counts = torch.where(cut.at_low, torch.tensor(low), taken + torch.tensor(base))
        return torch.where(cut.at_high, torch.tensor(high), counts).tolist()

    def threshold(self, base: list[int], k: int, low: list[int], high: list[int]) -> int | None:
        """:func:`_threshold` of these keys."""
        got = self.cut(base, k, low, high)
        return got.key if got is not None else _threshold(self.per_layer(), base, k, low, high)


def _bracket(
    keys: _Union | list[torch.Tensor], fraction: float, low: list[int], high: list[int], sizes: list[int], wide: bool
) -> tuple[float, float] | None:
    """Scores ``a <= b`` that bracket the threshold at ``fraction`` of the units (from the
    sample's rank keys: all layers' in a :class:`_Union`, or sorted per layer), with the
    per-layer bounds scaled to the sample; None if the threshold is among NaN scores."""
    m = keys.sizes if isinstance(keys, _Union) else [s.numel() for s in keys]
    total_m = sum(m)
    if total_m == 0:
        return None
    lo_s = [math.floor(lo * k / n) for lo, k, n in zip(low, m, sizes, strict=True)]
    hi_s = [min(math.ceil(hi * k / n), k) for hi, k, n in zip(high, m, sizes, strict=True)]
    spread = _Z * math.sqrt(total_m * fraction * (1 - fraction)) + _Z
    zeros = [0] * len(m)
    ends: list[float | None] = []
    for k in (total_m * fraction - spread, total_m * fraction + spread):
        k = min(max(int(k), 1), sum(hi_s))
        if k >= total_m:
            tau = None
        elif isinstance(keys, _Union):
            tau = keys.threshold(zeros, k, lo_s, hi_s)
        else:
            tau = _threshold(keys, zeros, k, lo_s, hi_s)
        ends.append(math.inf if tau is None else _bits_to_score(tau, wide))
    a, b = ends
    if b is None:  # the threshold is among NaN scores: leave it to the general path
        return None
    a = -math.inf if a is None else a  # open below: every non-NaN score up to b is a candidate
    return (a, b) if a <= b else None


class _Survey:
    """Each layer's sample and what it shows of the layer's previous mask (its first read)."""

    def __init__(self, produce: Producer, previous: PreviousProducer, sampler: Sampler | None) -> None:
        self.produce, self.previous, self.sampler = produce, previous, sampler
        self.all_kept: dict[str, bool] = {}
        self.pruned_before: dict[str, int] = {}
        self.device = torch.device("cpu")

    def first(self, name: str, size: int, stride: int) -> torch.Tensor:
        """The layer's sample (see :meth:`take`), noting whether its previous mask keeps every
        unit and how many it prunes."""
        prev = self.previous(name)
        self.all_kept[name] = prev is None or all_true(prev)
        kept = None if prev is None or self.all_kept[name] else prev
        self.pruned_before[name] = 0 if kept is None else size - int(torch.count_nonzero(kept))
        sample = self.take(name, stride, kept)
        self.device = sample.device
        return sample

    def take(self, name: str, stride: int, kept: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's unit scores at the units :func:`grid_sample` takes, less its pruned units
        (``kept``: its previous kept mask, grid-shaped as its scores, if already at hand)."""
        sample = None if self.sampler is None else self.sampler(name, stride)
        if sample is None:
            sample = grid_sample(self.produce(name), stride)
        if not self.all_kept[name]:
            kept = _kept(self.previous, name) if kept is None else kept
            sample = sample[grid_sample(kept, stride)]  # pruned units rank below any bracket
        return sample.float() if sample.dtype in (torch.float16, torch.bfloat16) else sample


Pass = Callable[[str, int, float, float], "tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]"]


def _passer(
    names: Sequence[str], sizes: list[int], survey: _Survey, wide: Callable[[str], bool], placer: Placer | None,
    *, ordered: bool = True,
) -> tuple[Pass, dict[str, bool], dict[str, torch.Tensor]]:
    """``one_pass(name, size, a, b)`` over one layer's scores with the bracket ``[a, b]``; which
    layers the placer covers; and the buffers every pass reuses (clear them after the passes).
    ``wide(name)``: whether the layer's keys are int64; ``ordered``: whether every pass keys its
    candidates and puts them in pruning order (else it hands back their scores in index order,
    for :func:`_keyed` and :func:`_order`)."""
    placed = {n: placer is not None and placer.covers(n) for n in names}
    buffers: dict[str, torch.Tensor] = {"inside": torch.empty(max(sizes), dtype=torch.bool, device=survey.device)}

    def compare_buffer(score: torch.Tensor) -> torch.Tensor | None:  # see _compare_into; one per dtype
        if not (score.is_floating_point() and score.is_contiguous()):
            return None
        key = f"compare {score.dtype}"
        if key not in buffers:
            buffers[key] = torch.empty(min(max(sizes), _COMPARE_CHUNK), dtype=score.dtype, device=score.device)
        return buffers[key]

    def one_pass(name: str, size: int, lo_end: float, hi_end: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The layer's sure-kept units (its mask), its candidates' keys and indices in pruning
        order (key, then index) where ``ordered``, else their scores and indices in index order
        (for :func:`_keyed`), and its count below the bracket."""
        score = survey.produce(name).reshape(-1)
        prev = None if survey.all_kept[name] else _kept(survey.previous, name).reshape(-1)
        sure = torch.empty(size, dtype=torch.bool, device=score.device)
        inside = buffers["inside"][:size]
        n_sure = _compare_into(sure, inside, score, lo_end, hi_end, compare_buffer(score))
        if prev is not None:
            sure &= prev
            inside &= prev
        if n_sure is None or prev is not None:
            n_sure = int(torch.count_nonzero(sure))
        idx = _indices(inside)
        if size < 2**31:
            idx = idx.to(torch.int32)  # half the memory per candidate
        below_end = score.numel() - n_sure - idx.numel()
        values = score.index_select(0, idx)
        if not ordered:
            return sure, values, idx, below_end
        keys, order = _sort(rank_keys(values, wide=wide(name)))  # a stable sort of keys in index order
        return sure, keys, idx.index_select(0, order), below_end

    return one_pass, placed, buffers


def _finish(
    names: Sequence[str], sizes: list[int], kept: dict[str, torch.Tensor], cand_idx: list[torch.Tensor],
    base: list[int], counts: list[int], survey: _Survey, wide: Callable[[str], bool], placed: dict[str, bool],
    placer: Placer | None, flags: list[torch.Tensor | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Each layer prunes its ``base`` units below its bracket, then its candidates in pruning
    order up to its count; the rest of them are kept (``kept`` holds its sure-kept units, in
    place): a layer's ``flags`` (True: kept, in its candidates' order) where given, else the
    candidates after its first ``count - base``. A layer the placer covers then gets its
    weight-shaped mask instead. A layer whose count is outside its candidates is settled
    alone."""
    for i, name in enumerate(names):
        first_kept = counts[i] - base[i]
        if not 0 <= first_kept <= cand_idx[i].numel():  # its threshold is outside its candidates
            kept[name] = _alone(name, sizes[i], survey.produce, survey.previous, counts[i], wide(name), placer)
            continue
        flag = None if flags is None else flags[i]
        chosen = cand_idx[i][first_kept:] if flag is None else cand_idx[i][flag]
        kept[name][chosen] = True
        if placed[name]:
            kept[name] = placer.full(name, kept[name])  # type: ignore[union-attr]
    return kept


def _settle(
    names: Sequence[str],
    sizes: list[int],
    produce: Producer,
    previous: PreviousProducer,
    total: int,
    low: list[int],
    high: list[int],
    sampler: Sampler | None = None,
    placer: Placer | None = None,
) -> dict[str, torch.Tensor] | None:
    """Kept flat masks pruning exactly ``total`` units of ``names`` (tie order) under per-layer
    count bounds ``[low, high]`` (``sum(low) <= total <= sum(high)``), or None if the bracket
    missed; weight-shaped for the layers ``placer`` covers."""
    stride = _stride(sum(sizes), _SAMPLE if len(names) > 1 else _ALONE_SAMPLE)
    survey = _Survey(produce, previous, sampler)
    samples = [survey.first(name, size, stride) for name, size in zip(names, sizes, strict=True)]
    pruned_before = [survey.pruned_before[name] for name in names]
    is_wide = any(s.dtype == torch.float64 for s in samples)

    def wide(_: str) -> bool:  # one key width for all layers: their keys are compared
        return is_wide

    if total == 0:  # nothing to prune (as the general path: earlier pruned units are not kept pruned)
        return {n: _place(placer, n, torch.ones(s, dtype=torch.bool, device=survey.device))
                for n, s in zip(names, sizes, strict=True)}
    unpruned = sum(sizes) - sum(pruned_before)
    if total <= sum(pruned_before) or unpruned == 0:  # the threshold is among the pruned units
        return None
    sample_keys = _Union(rank_keys(torch.cat(samples), wide=is_wide), [s.numel() for s in samples])  # sorted once
    ends = _bracket(
        sample_keys, (total - sum(pruned_before)) / unpruned,
        [max(lo - p, 0) for lo, p in zip(low, pruned_before, strict=True)],
        [max(hi - p, 0) for hi, p in zip(high, pruned_before, strict=True)],
        [max(s - p, 1) for s, p in zip(sizes, pruned_before, strict=True)], is_wide,
    )
    if ends is None:
        return None
    a, b = ends

    def finer(name: str, size: int) -> torch.Tensor:  # a layer's own sample, as if settled alone
        return _sort(rank_keys(survey.take(name, _stride(size, _ALONE_SAMPLE)), wide=is_wide))[0]

    capped, reaching = _capped(names, sizes, samples, sample_keys, pruned_before, high, a, b, is_wide, finer)
    del samples, sample_keys

    one_pass, placed, buffers = _passer(names, sizes, survey, wide, placer, ordered=False)
    kept, cand_keys, cand_idx, base = {}, [], [], []
    for name, size in zip(names, sizes, strict=True):
        sure, keys, idx, below_end = one_pass(name, size, *capped.get(name, reaching.get(name, (a, b))))
        kept[name] = sure
        cand_keys.append(keys)
        cand_idx.append(idx)
        base.append(below_end)
    for i, name in enumerate(names):
        if name in capped and not base[i] < high[i] <= base[i] + cand_keys[i].numel():
            # the cap is not inside the layer's own bracket: pass it again with the global one
            del capped[name]
            kept[name], cand_keys[i], cand_idx[i], base[i] = one_pass(name, sizes[i], a, b)
    buffers.clear()
    _keyed(cand_keys, is_wide)

    def bounded(counts: list[int]) -> int:
        return sum(min(max(c, lo), hi) for c, lo, hi in zip(counts, low, high, strict=True))

    # A capped layer's own threshold lies in its bracket, below the global one: verified here,
    # it prunes exactly its cap at any threshold in [a, b] and enters the search as a constant.
    # A layer whose bracket reaches below the global one enters it with its candidates from a
    # up (those below a are counted in its base there).
    key_a = rank_keys(torch.tensor([a], dtype=torch.float64 if is_wide else torch.float32), wide=is_wide)

    def searched(i: int, name: str, keys: torch.Tensor) -> tuple[int, torch.Tensor]:  # base and keys in the search
        if name in capped:
            return high[i], keys[:0]
        if name in reaching:
            from_a = keys >= key_a
            return base[i] + int(from_a.numel() - torch.count_nonzero(from_a)), keys[from_a]
        return base[i], keys

    in_search = [searched(i, name, keys) for i, (name, keys) in enumerate(zip(names, cand_keys, strict=True))]
    glob_base, glob_keys = [b_ for b_, _ in in_search], [k for _, k in in_search]
    del in_search
    glob_ends = [b_ + k.numel() for b_, k in zip(glob_base, glob_keys, strict=True)]
    if not bounded(glob_base) < total <= bounded(glob_ends):  # the threshold is not a candidate
        return None
    if sum(glob_ends) - sum(glob_base) <= _UNION_MAX:
        settled = _cut_candidates(glob_keys, glob_base, total, low, high)
        if settled is not None:
            counts, flags = settled
            # capped, reaching and held layers prune their own first candidates in pruning order
            own = [i for i, name in enumerate(names) if name in capped or name in reaching or flags[i] is None]
            own_keys, own_idx = [cand_keys[i] for i in own], [cand_idx[i] for i in own]
            _order(own_keys, own_idx)
            for i, idx in zip(own, own_idx, strict=True):
                cand_idx[i], flags[i] = idx, None
            del cand_keys, glob_keys
            return _finish(names, sizes, kept, cand_idx, base, counts, survey, wide, placed, placer, flags)
    _order(cand_keys, cand_idx)
    glob_keys = [searched(i, name, keys)[1] for i, (name, keys) in enumerate(zip(names, cand_keys, strict=True))]
    tau = _threshold(glob_keys, glob_base, total, low, high)
    if tau is None:
        return None
    below = _counts_at(glob_keys, glob_base, tau, right=False)
    at = [c - b_ for c, b_ in zip(_counts_at(glob_keys, glob_base, tau, right=True), below, strict=True)]
    as_tensors = [[torch.tensor(v) for v in vs] for vs in (below, at, low, high)]
    counts = [int(c) for c in _allocate(torch.tensor(total), *as_tensors)]
    del cand_keys, glob_keys
    # (a capped layer's count is its cap, reached among its own candidates; a bound may move
    # any layer's count)
    return _finish(names, sizes, kept, cand_idx, base, counts, survey, wide, placed, placer)


_KEY_GROUP = 1 << 16  # candidates keyed together, about this many at a time


def _keyed(values: list[torch.Tensor], wide: bool) -> None:
    """Replace each layer's candidate scores in ``values`` with their rank keys, in place: one
    :func:`rank_keys` over the candidates of consecutive layers, ``_KEY_GROUP`` or more at a
    time (concatenated, and the scores let go), instead of a call per layer; in groups, so that
    the scores and keys held at once stay small next to the masks."""
    start = 0
    while start < len(values):
        end, held = start, 0
        while end < len(values) and (end == start or held < _KEY_GROUP):
            held += values[end].numel()
            end += 1
        sizes = [v.numel() for v in values[start:end]]
        flat = torch.cat(values[start:end])
        values[start:end] = [flat[:0]] * (end - start)  # let the scores go
        keys = rank_keys(flat, wide=wide)
        del flat
        values[start:end] = keys.split(sizes)
        start = end


_UNION_MAX = 1 << 18  # at most this many candidates are put in order in one sort (held with the new masks)


def _cut_candidates(
    keys: list[torch.Tensor], base: list[int], total: int, low: list[int], high: list[int]
) -> tuple[list[int], list[torch.Tensor | None]] | None:
    """Each layer's count and, for each layer not held at a bound, which of its candidates
    (``keys``, in any order that keeps equal keys in index order) are kept, from one sort of
    every layer's candidates (:meth:`_Union.cut`); None where the cut is not sure."""
    union = _Union(torch.cat(keys), [k.numel() for k in keys])
    cut = union.cut(base, total, low, high)
    if cut is None:
        return None
    counts = union.counts(cut, base, low, high)
    pruned = union.order[: cut.end] if cut.free is None else union.order[: cut.end][cut.free[: cut.end]]
    keep = torch.ones(union.values.numel(), dtype=torch.bool)
    keep[pruned] = False
    held = (cut.at_high | cut.at_low).tolist()
    return counts, [None if h else f for h, f in zip(held, keep.split(union.sizes), strict=True)]


def _capped(
    names: Sequence[str], sizes: list[int], samples: list[torch.Tensor], sample_keys: _Union,
    pruned_before: list[int], high: list[int], a: float, b: float, wide: bool,
    finer: Callable[[str, int], torch.Tensor],
) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[float, float]]]:
    """Layers the sample shows pruned to their cap below the global bracket ``[a, b]``, each
    with a bracket around its own cap, so that one pass settles them too: those whose own
    bracket lies below ``a`` (capped: a constant in the search), and those whose own bracket
    reaches into the global one (reaching: their bracket runs from their own lower end to
    ``b``; else the cap could lie below their candidates, and such a layer would be settled
    alone, at two more passes). A layer whose share of the sample is too small to bracket its
    cap (many layers) is sampled again on its own (``finer(name, size)``: sorted keys of
    about ``_ALONE_SAMPLE`` of its units), which costs far less than settling it alone later."""
    capped: dict[str, tuple[float, float]] = {}
    reaching: dict[str, tuple[float, float]] = {}
    if len(names) == 1:
        return capped, reaching
    near: list[int] = []
    for i, (size, sample, pruned, hi) in enumerate(zip(sizes, samples, pruned_before, high, strict=True)):
        allowed, unpruned = hi - pruned, size - pruned
        if not 0 < allowed < unpruned or sample.numel() == 0:
            continue
        m, f = sample.numel(), allowed / unpruned
        if int(torch.count_nonzero(sample < a)) >= m * f - (_Z * math.sqrt(m * f * (1 - f)) + _Z):
            near.append(i)  # the cap may lie below the bracket, as far as the sample tells
    for i in near:
        name, size, allowed, unpruned = names[i], sizes[i], high[i] - pruned_before[i], sizes[i] - pruned_before[i]
        keys = sample_keys.per_layer()[i]  # every layer's at once: one sort
        own = _bracket([keys], allowed / unpruned, [0], [unpruned], [unpruned], wide)
        if (own is None or own[1] >= a) and keys.numel() < _ALONE_SAMPLE // 2:
            own = _bracket([finer(name, size)], allowed / unpruned, [0], [unpruned], [unpruned], wide)
        if own is not None and own[1] < a:
            capped[name] = own
        elif own is not None and own[0] < a:
            reaching[name] = (own[0], b)
    return capped, reaching


def _alone(
    name: str, size: int, produce: Producer, previous: PreviousProducer, count: int, wide: bool,
    placer: Placer | None = None,
) -> torch.Tensor:
    """One layer's kept units with exactly ``count`` pruned (its own threshold)."""
    score = produce(name)  # produced once for both passes
    prev = previous(name)
    got = _settle([name], [size], lambda _: score, lambda _: prev, count, [0], [size], placer=placer)
    if got is not None:
        return got[name]
    keys = rank_keys(score.reshape(-1), pruned=None if prev is None else ~prev.reshape(-1), wide=wide)
    return _place(placer, name, ~_lowest(keys, torch.tensor(count)))


def select_global(
    names: Sequence[str],
    sizes: Sequence[int],
    produce: Producer,
    previous: PreviousProducer,
    *,
    sparsity: float,
    lo: float,
    hi: float,
    sampler: Sampler | None = None,
    placer: Placer | None = None,
) -> dict[str, torch.Tensor] | None:
    """Kept flat masks (True = kept) of the layers ``names`` (in tie order), or None if the
    bracket missed; ``produce(name)`` gives a layer's unit scores, ``previous(name)`` its
    kept units or None (all kept), and ``sampler`` (optional) a strided sample of them. The
    sample only places the bracket, which exact counts then verify, so any sample is safe.
    The layers ``placer`` covers get weight-shaped masks instead (:class:`Placer`)."""
    sizes = list(sizes)
    low_t, high_t, total_t, _ = _budget(sizes, sparsity, lo, hi, torch.device("cpu"))
    low, high = [int(c) for c in low_t], [int(c) for c in high_t]
    return _settle(names, sizes, produce, previous, int(total_t), low, high, sampler, placer)


_LOCAL_SAMPLE = 1 << 16


def _local_sample(size: int) -> int:
    """Sample size for a layer selected on its own in local scope: about ``size ** (2/3)``
    (``_LOCAL_SAMPLE`` at 2^21 units, at least ``_ALONE_SAMPLE``), which balances the sample's
    cost (linear in it) against the candidates' (the bracket narrows as its square root)."""
    return max(_ALONE_SAMPLE, round(_LOCAL_SAMPLE * (size / 2**21) ** (2 / 3)))


def select_local(
    names: Sequence[str], sizes: Sequence[int], produce: Producer, previous: PreviousProducer, *, sparsity: float,
    sampler: Sampler | None = None, placer: Placer | None = None,
) -> dict[str, torch.Tensor]:
    """Kept flat masks, ``floor(sparsity * n + 1e-9)`` units pruned in each layer (weight-shaped
    for the layers ``placer`` covers).

    Each layer's own sample brackets its own threshold, and one pass over each layer settles
    it (no search: its count is known); the passes share their buffers. A layer whose bracket
    misses, or whose threshold is among its previously pruned units, is settled alone.
    """
    sizes = list(sizes)
    cpu = torch.device("cpu")
    counts = [int(_count(sparsity, size, cpu)) for size in sizes]
    survey = _Survey(produce, previous, sampler)
    dtypes, brackets, out = {}, {}, {}
    for name, size, count in zip(names, sizes, counts, strict=True):  # one sample at a time
        if count == 0:  # nothing to prune (as when settled alone)
            out[name] = _place(placer, name, torch.ones(size, dtype=torch.bool, device=survey.device))
            continue
        sample = survey.first(name, size, _stride(size, _local_sample(size)))
        dtypes[name] = sample.dtype
        pruned = survey.pruned_before[name]
        if count <= pruned or sample.numel() == 0:
            continue  # among the pruned units: settled alone below
        keys = _sort(rank_keys(sample, wide=sample.dtype == torch.float64))[0]
        own = _bracket([keys], (count - pruned) / (size - pruned), [0], [size - pruned], [size - pruned],
                       sample.dtype == torch.float64)
        if own is not None:
            brackets[name] = own

    def wide(name: str) -> bool:  # per layer: no layer's keys meet another's
        return dtypes[name] == torch.float64

    bracketed = [(n, size, count) for n, size, count in zip(names, sizes, counts, strict=True) if n in brackets]
    if bracketed:
        sub, sub_sizes, sub_counts = (list(column) for column in zip(*bracketed, strict=True))
        one_pass, placed, buffers = _passer(sub, sub_sizes, survey, wide, placer)
        kept, cand_idx, base = {}, [], []
        for name, size in zip(sub, sub_sizes, strict=True):
            kept[name], _, idx, below_end = one_pass(name, size, *brackets[name])
            cand_idx.append(idx)
            base.append(below_end)
        buffers.clear()
        out.update(_finish(sub, sub_sizes, kept, cand_idx, base, sub_counts, survey, wide, placed, placer))
    for name, size, count in zip(names, sizes, counts, strict=True):
        if name not in out:
            out[name] = _alone(name, size, produce, previous, count, wide(name), placer)
    return {name: out[name] for name in names}
