"""Candidates put in pruning order, and the bounded threshold found among them (private to
the accelerator).

The pruning order is key, then layer (in name order), then index in the layer. A threshold
search wants the smallest key ``t`` whose bounded count
``sum_l clamp(base_l + #(keys_l <= t), low_l, high_l)`` reaches ``k``; the counts at that
key are then split as :func:`fprune.selection.allocate` splits them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from fprune import _tuning
from fprune._eager.keys import rank_keys

__all__ = [
    "Cut",
    "SortedKeys",
    "counts_at",
    "cut_candidates",
    "key_scores",
    "order",
    "sort",
    "threshold",
]


def counts_at(
    sorted_keys: list[torch.Tensor], base: list[int], t: int, *, right: bool
) -> list[int]:
    """Per layer: ``base`` plus the number of keys ``<= t`` (``right``) or ``< t``."""
    return [
        b
        + (
            int(torch.searchsorted(k, torch.tensor([t], dtype=k.dtype), right=right))
            if k.numel()
            else 0
        )
        for b, k in zip(base, sorted_keys, strict=True)
    ]


def sort(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.sort(keys, stable=True)`` of a 1-D tensor, as ``(values, indices)``.

    Torch sorts fewer than ``radix`` (32768) integers by comparisons and more by radix, which
    costs less a key. So from ``pad_from`` integer keys on, they are padded to
    ``radix`` with the dtype's largest value: stable, the padding sorts after every key
    (after equal ones by its indices), and the first ``n`` entries are the answer.
    """
    tuning, n = _tuning.current(), keys.numel()
    if keys.is_floating_point() or not tuning.pad_from <= n < tuning.radix:
        return torch.sort(keys, stable=True)
    pad = torch.full(
        (tuning.radix - n,), torch.iinfo(keys.dtype).max, dtype=keys.dtype, device=keys.device
    )
    values, indices = torch.sort(torch.cat([keys, pad]), stable=True)
    return values[:n].clone(), indices[:n]  # a copy: callers hold the values


def _sort_alone(keys: list[torch.Tensor], idx: list[torch.Tensor], i: int) -> None:
    keys[i], moved = sort(keys[i])
    idx[i] = idx[i].index_select(0, moved)


def _sort_group(
    keys: list[torch.Tensor], idx: list[torch.Tensor], group: list[tuple[int, int, int]]
) -> None:
    """Sort the layers of ``group`` (``(layer, smallest key, span bits)``) in one sort: each
    key less its layer's smallest, plus the layer's place in the group above every span."""
    bits = max(b for _, _, b in group)
    composite = torch.cat(
        [keys[i].sub(low).add_(place << bits) for place, (i, low, _) in enumerate(group)]
    )
    values, moved_order = sort(composite)
    del composite
    moved = torch.cat([idx[i] for i, _, _ in group]).index_select(0, moved_order)
    sizes = [keys[i].numel() for i, _, _ in group]
    for place, ((i, low, _), v, m) in enumerate(
        zip(group, values.split(sizes), moved.split(sizes), strict=True)
    ):
        keys[i], idx[i] = v.sub_(place << bits).add_(low), m  # each scalar within int32


def order(keys: list[torch.Tensor], idx: list[torch.Tensor]) -> None:
    """Put each layer's candidates (``keys[i]``, ``idx[i]``, in index order) in pruning order,
    key then index, in place in both lists.

    A layer's candidates lie inside its bracket, so their int32 keys span a narrow range. The
    keys of consecutive layers with fewer than ``radix`` candidates are sorted together (see
    :func:`_sort_group`): one radix sort for the group instead of a comparison sort per
    layer. Spans too wide to share 31 bits, int64 keys and layers of ``radix`` candidates or
    more are sorted alone.
    """
    tuning = _tuning.current()
    group: list[tuple[int, int, int]] = []  # (layer, its smallest key, its span's bit length)
    held = 0  # the group's candidates
    for i, k in enumerate(keys):
        if not (k.dtype == torch.int32 and 0 < k.numel() < tuning.radix):
            if k.numel():
                _sort_alone(keys, idx, i)
            continue
        low, high = (int(v) for v in torch.aminmax(k))
        bits = (high - low).bit_length()
        widest = max([bits, *(b for _, _, b in group)])
        if group and ((len(group) + 1) << widest > 2**31 or held + k.numel() > tuning.order_group):
            _flush(keys, idx, group)
            held = 0
        group.append((i, low, bits))
        held += k.numel()
    _flush(keys, idx, group)


def _flush(
    keys: list[torch.Tensor], idx: list[torch.Tensor], group: list[tuple[int, int, int]]
) -> None:
    if len(group) == 1:
        _sort_alone(keys, idx, group[0][0])
    elif group:
        _sort_group(keys, idx, group)
    group.clear()


def key_scores(values: list[torch.Tensor], wide: bool) -> None:
    """Replace each layer's candidate scores in ``values`` with their rank keys, in place: one
    :func:`rank_keys` over the candidates of consecutive layers, ``key_group`` or more at a
    time (concatenated, and the scores let go), instead of a call per layer; in groups, so
    that the scores and keys held at once stay small next to the masks."""
    group_size, start = _tuning.current().key_group, 0
    while start < len(values):
        end, held = start, 0
        while end < len(values) and (end == start or held < group_size):
            held += values[end].numel()
            end += 1
        sizes = [v.numel() for v in values[start:end]]
        flat = torch.cat(values[start:end])
        values[start:end] = [flat[:0]] * (end - start)  # let the scores go
        keys = rank_keys(flat, wide=wide)
        del flat
        values[start:end] = keys.split(sizes)
        start = end


def _single_layer_threshold(
    keys: torch.Tensor, base: int, k: int, low: int, high: int
) -> int | None:
    """:func:`threshold` of one layer: ``clamp(base + c, low, high) >= k`` iff ``high >= k``
    and ``c >= k - base``, read off its sorted keys."""
    need = k - base
    if high < k:
        return None
    if low >= k or need <= 0:
        return int(keys[0])
    return int(keys[need - 1]) if need <= keys.numel() else None


def _probe(
    sorted_keys: list[torch.Tensor],
    values: torch.Tensor,
    k: int,
    bounds: tuple[torch.Tensor, ...],
    before: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The first of the sorted key ``values`` whose bounded count reaches ``k``, with every
    layer's count at it and at the value before it; None if none does."""
    base, lo_t, hi_t = bounds
    for chunk in values.split(_tuning.current().probes * 4):  # bounded [layers, chunk] counts
        counts = torch.zeros((len(sorted_keys), chunk.numel()), dtype=torch.int64)
        for keys, row in zip(sorted_keys, counts, strict=True):
            if keys.numel():
                torch.searchsorted(keys, chunk, right=True, out=row)
        bounded = (counts + base).clamp_(min=lo_t, max=hi_t)  # one [layers, chunk] temporary
        hits = (bounded.sum(0) >= k).nonzero()
        del bounded
        if hits.numel():
            j = int(hits[0, 0])
            return chunk[j], counts[:, j], counts[:, j - 1] if j else before
        before = counts[:, -1]
    return None


def threshold(
    sorted_keys: list[torch.Tensor], base: list[int], k: int, low: list[int], high: list[int]
) -> int | None:
    """The smallest key ``t`` with ``sum_l clamp(base_l + #(keys_l <= t), low_l, high_l) >= k``
    (keys sorted per layer), or None if no key reaches ``k``.

    The total only changes at key values, so the answer is a key. A round counts every layer
    at ``p`` key values at once (:func:`_probe`) and keeps the keys between the last value
    short of ``k`` and the first reaching it. The values are every ``n / p``-th key of each
    layer, so about ``n / p`` keys are kept; with ``p`` near ``sqrt(n)`` they are then few
    enough (``exact``) for the next round to probe every distinct one of them, which is
    exact. Usually two rounds; one layer needs none.
    """
    present = [keys for keys in sorted_keys if keys.numel()]
    if not present:
        return None
    if len(sorted_keys) == 1:
        return _single_layer_threshold(sorted_keys[0], base[0], k, low[0], high[0])
    tuning = _tuning.current()
    bounds = tuple(torch.tensor(v, dtype=torch.int64)[:, None] for v in (base, low, high))
    top = torch.stack([keys[-1] for keys in present]).max().reshape(1)  # the answer is at most this
    inside = list(sorted_keys)  # per layer, the keys in (lower, upper]: slices of sorted_keys
    below = torch.zeros(len(sorted_keys), dtype=torch.int64)  # per layer, the keys <= lower
    size, exact = sum(keys.numel() for keys in present), False
    while True:
        probes = min(max(math.isqrt(size), 64), tuning.probes)
        exact = exact or size <= tuning.exact
        every = 1 if exact else max(1, size // probes)
        values = torch.unique(
            torch.cat([*(keys[every - 1 :: every] for keys in inside), top])
        )  # sorted
        found = _probe(sorted_keys, values, k, bounds, below)
        if found is None:
            return None  # not even the largest key reaches k (only possible in the first round)
        value, upto, below = found
        if exact:  # every key that can be the answer was probed
            return int(value)
        top = value.reshape(1)
        inside = [
            keys[s:e] for keys, s, e in zip(sorted_keys, below.tolist(), upto.tolist(), strict=True)
        ]
        kept = sum(keys.numel() for keys in inside)
        exact = kept >= size  # no progress (a run of ties): probe every distinct key left
        size = kept


class Cut(NamedTuple):
    """Where :meth:`SortedKeys.cut` puts the threshold."""

    key: int  # the threshold's key
    end: int  # the pruned keys are the first ``end`` sorted keys, less those of held layers
    free: (
        torch.Tensor | None
    )  # per sorted key: its layer is not held at a bound (None: no layer is)
    at_high: torch.Tensor  # per layer: held at its upper bound
    at_low: torch.Tensor  # per layer: held at its lower bound


class _Guess(NamedTuple):
    """One round of :meth:`SortedKeys.cut`: the threshold for a guess of the held layers."""

    key: torch.Tensor  # [1]
    end_at: int  # the position of the last free key taken
    free: torch.Tensor | None
    below: torch.Tensor  # per layer: base plus its keys < key
    top: torch.Tensor  # per layer: below plus its keys == key


class SortedKeys:
    """Several layers' integer keys in one stable sort: key, then layer, then place in the
    layer, which is the pruning order where the layers come in name order and each layer's
    keys in index order.

    One radix sort of all the keys replaces sorting each layer and probing every layer in
    every round of :func:`threshold`: the bounded threshold is read off it (:meth:`cut`),
    even with layers held at their bounds, and where that reading is not sure
    :func:`threshold` runs on :meth:`per_layer`.
    """

    def __init__(self, flat: torch.Tensor, sizes: list[int]) -> None:
        self.sizes = sizes
        self.values, self.order = sort(flat)
        owner = torch.repeat_interleave(
            torch.arange(len(sizes), dtype=torch.int32), torch.tensor(sizes, dtype=torch.int64)
        )
        self.layer = owner.index_select(0, self.order)  # each sorted key's layer
        self._per_layer: list[torch.Tensor] | None = None

    def per_layer(self) -> list[torch.Tensor]:
        """Every layer's keys, sorted (a stable sort by layer keeps each one's keys in order)."""
        if self._per_layer is None:
            by_layer = torch.sort(self.layer, stable=True).indices
            self._per_layer = list(self.values.index_select(0, by_layer).split(self.sizes))
        return self._per_layer

    def cut(self, base: list[int], k: int, low: list[int], high: list[int]) -> Cut | None:
        """Where :func:`threshold` puts the threshold for these arguments (and so
        :func:`fprune.selection.allocate`'s counts, :meth:`counts`), read off the sorted
        keys; None where that is not sure (then run those).

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
        base_t, low_t, high_t = (torch.tensor(v, dtype=torch.int64) for v in (base, low, high))
        at_high = torch.zeros(len(self.sizes), dtype=torch.bool)
        at_low = torch.zeros(len(self.sizes), dtype=torch.bool)
        for _ in range(_tuning.current().cut_rounds):
            held = at_high | at_low
            guess = self._guess(
                held,
                k - int(high_t[at_high].sum() + low_t[at_low].sum() + base_t[~held].sum()),
                base_t,
            )
            if guess is None:
                return None
            over, under = ~held & (guess.top > high_t), ~held & (guess.below < low_t)
            if not bool((over | under).any()):
                break
            at_high |= over
            at_low |= under
        else:
            return None
        if bool((guess.below[at_high] < high_t[at_high]).any()) or bool(
            (guess.top[at_low] > low_t[at_low]).any()
        ):
            return None  # a held layer's bound is crossed at t itself: not sure
        return Cut(int(guess.key), guess.end_at + 1, guess.free, at_high, at_low)

    def _guess(self, held: torch.Tensor, need: int, base: torch.Tensor) -> _Guess | None:
        """The key at which the free layers' plain counts reach ``need``, and every layer's
        counts there; None if they never do."""
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
        key = self.values[end_at : end_at + 1]
        start = int(torch.searchsorted(self.values, key))
        stop = int(torch.searchsorted(self.values, key, right=True))
        below = self._count_below(start) + base
        top = below + torch.bincount(self.layer[start:stop], minlength=len(self.sizes))
        return _Guess(key, end_at, free, below, top)

    def _count_below(self, start: int) -> torch.Tensor:
        """Per layer, how many of the first ``start`` sorted keys are its (counted on the
        shorter side)."""
        layers = len(self.sizes)
        if 2 * start <= self.values.numel():
            return torch.bincount(self.layer[:start], minlength=layers)
        return torch.tensor(self.sizes) - torch.bincount(self.layer[start:], minlength=layers)

    def counts(self, cut: Cut, base: list[int], low: list[int], high: list[int]) -> list[int]:
        """:func:`fprune.selection.allocate`'s counts at ``cut`` (made with these arguments):
        a held layer's bound, else ``base`` plus its pruned keys."""
        if cut.free is None:
            taken = self._count_below(cut.end)
        else:
            taken = torch.bincount(
                self.layer[: cut.end][cut.free[: cut.end]], minlength=len(self.sizes)
            )
        counts = torch.where(cut.at_low, torch.tensor(low), taken + torch.tensor(base))
        return torch.where(cut.at_high, torch.tensor(high), counts).tolist()

    def threshold(self, base: list[int], k: int, low: list[int], high: list[int]) -> int | None:
        """:func:`threshold` of these keys."""
        got = self.cut(base, k, low, high)
        return got.key if got is not None else threshold(self.per_layer(), base, k, low, high)


def cut_candidates(
    keys: list[torch.Tensor], base: list[int], total: int, low: list[int], high: list[int]
) -> tuple[list[int], list[torch.Tensor | None]] | None:
    """Each layer's count and, for each layer not held at a bound, which of its candidates
    (``keys``, in any order that keeps equal keys in index order) are kept, from one sort of
    every layer's candidates (:meth:`SortedKeys.cut`); None where the cut is not sure."""
    union = SortedKeys(torch.cat(keys), [k.numel() for k in keys])
    cut = union.cut(base, total, low, high)
    if cut is None:
        return None
    counts = union.counts(cut, base, low, high)
    pruned = (
        union.order[: cut.end] if cut.free is None else union.order[: cut.end][cut.free[: cut.end]]
    )
    keep = torch.ones(union.values.numel(), dtype=torch.bool)
    keep[pruned] = False
    held = (cut.at_high | cut.at_low).tolist()
    return counts, [None if h else f for h, f in zip(held, keep.split(union.sizes), strict=True)]
