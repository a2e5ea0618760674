"""Exact selection for eager calls: a sample brackets the threshold, one pass settles it
(private to the accelerator).

The general path (:mod:`fprune.selection`) turns every score into an integer rank key and
runs a radix select over all of them: exact and traceable, but several passes over every
score, and the keys of all layers in memory at once. Eager calls may read values back to
Python, which allows a cheaper exact method with the same result bit for bit:

1. **Sample.** A strided sample of the scores (the same stride in every layer,
   :func:`fprune._eager.sample.grid_sample`) gives two sample scores ``a <= b`` that bracket
   the threshold with a wide margin, with the per-layer bounds scaled to the sample
   (:func:`fprune._eager.sample.bracket`).
2. **One pass.** Each layer's scores are compared with the bracket in their own dtype
   (:class:`BracketPass`): ``score > b`` is kept for sure; scores inside the bracket are the
   candidates (their values and flat indices, a small fraction); everything else
   (previously pruned units, NaN, scores below ``a``) ranks below the bracket and is counted.
3. **Settle.** The candidates are put in pruning order and the exact threshold and
   per-layer counts under the bounds (ties by name, then index: the general path's) are read
   off one sort of them all (:func:`fprune._eager.order.cut_candidates`), or searched for
   (:func:`fprune._eager.order.threshold`); each layer prunes its count's first candidates.

The bracket is verified with exact counts: if the threshold is not inside it (a sample far
off, or a threshold among NaNs), :func:`select_global` returns None and the caller takes the
general path. A layer that the sample shows at its cap below the bracket gets a bracket of
its own around its cap (:func:`own_brackets`); a layer whose count still lies outside its
candidates is selected alone. Local scope (:func:`select_local`) brackets each layer's own
count from its own sample and settles every layer in the same kind of pass, with no search.

Float comparisons rank scores exactly as the rank keys do: NaN fails every comparison (so it
ranks lowest), ``-0.0 == +0.0``, infinities order as values. The bracket ends are sample
scores, so they are exact in every dtype.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from fprune import _tuning
from fprune._eager.compare import compare_into, indices
from fprune._eager.keys import rank_keys
from fprune._eager.order import (
    SortedKeys,
    counts_at,
    cut_candidates,
    key_scores,
    order,
    sort,
    threshold,
)
from fprune._eager.sample import SampledLayers, Units, bracket, stride_for
from fprune.selection import allocate, count_bounds, lowest, unit_count

__all__ = [
    "Bracket",
    "BracketPass",
    "Candidates",
    "OwnBrackets",
    "alone",
    "finish",
    "own_brackets",
    "select_global",
    "select_local",
    "settle",
]

Bracket = tuple[float, float]


class BracketPass:
    """One pass over a layer's scores with a bracket ``[a, b]``; the buffers every pass reuses
    (call :meth:`close` after the passes). ``ordered``: every pass keys its candidates and
    puts them in pruning order (else it hands back their scores, in index order)."""

    def __init__(
        self, sampled: SampledLayers, sizes: list[int], *, wide: dict[str, bool], ordered: bool
    ) -> None:
        self.sampled, self.wide, self.ordered = sampled, wide, ordered
        self.largest = max(sizes)
        self.buffers = {
            "inside": torch.empty(self.largest, dtype=torch.bool, device=sampled.device)
        }

    def close(self) -> None:
        self.buffers.clear()

    def _compare_buffer(self, score: torch.Tensor) -> torch.Tensor | None:
        """A chunk buffer of the scores' dtype for :func:`compare_into`, one per dtype."""
        if not (score.is_floating_point() and score.is_contiguous()):
            return None
        key = f"compare {score.dtype}"
        if key not in self.buffers:
            size = min(self.largest, _tuning.current().compare_chunk)
            self.buffers[key] = torch.empty(size, dtype=score.dtype, device=score.device)
        return self.buffers[key]

    def __call__(
        self, name: str, size: int, bounds: Bracket
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The layer's sure-kept units (its mask), its candidates' keys and indices in pruning
        order (or their scores and indices in index order, without ``ordered``), and its count
        below the bracket."""
        units = self.sampled.units
        score = units.scores(name).reshape(-1)
        prev = None if self.sampled.all_kept[name] else units.kept(name).reshape(-1)
        sure = torch.empty(size, dtype=torch.bool, device=score.device)
        inside = self.buffers["inside"][:size]
        n_sure = compare_into(sure, inside, score, *bounds, self._compare_buffer(score))
        if prev is not None:
            sure &= prev
            inside &= prev
        if n_sure is None or prev is not None:
            n_sure = int(torch.count_nonzero(sure))
        idx = indices(inside)
        if size < 2**31:
            idx = idx.to(torch.int32)  # half the memory per candidate
        below_end = score.numel() - n_sure - idx.numel()
        values = score.index_select(0, idx)
        if not self.ordered:
            return sure, values, idx, below_end
        keys, moved = sort(rank_keys(values, wide=self.wide[name]))  # stable: keys in index order
        return sure, keys, idx.index_select(0, moved), below_end


@dataclasses.dataclass
class Candidates:
    """Per layer (in tie order): its sure-kept mask (by name), its candidates' keys (or
    scores) and indices, and its count below its bracket."""

    kept: dict[str, torch.Tensor]
    keys: list[torch.Tensor]
    idx: list[torch.Tensor]
    base: list[int]


def finish(
    names: Sequence[str],
    sizes: list[int],
    found: Candidates,
    counts: list[int],
    units: Units,
    wide: dict[str, bool],
    flags: list[torch.Tensor | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Each layer prunes its ``base`` units below its bracket, then its candidates in pruning
    order up to its count; the rest are kept (set in its sure-kept mask, in place): a layer's
    ``flags`` (True: kept, in its candidates' order) where given, else the candidates after
    its first ``count - base``. A layer the placer covers then gets its weight-shaped mask. A
    layer whose count is outside its candidates is settled alone."""
    kept = found.kept
    for i, name in enumerate(names):
        first_kept = counts[i] - found.base[i]
        if not 0 <= first_kept <= found.idx[i].numel():  # its threshold is outside its candidates
            kept[name] = alone(name, sizes[i], units, counts[i], wide[name])
            continue
        flag = None if flags is None else flags[i]
        chosen = found.idx[i][first_kept:] if flag is None else found.idx[i][flag]
        kept[name][chosen] = True
        kept[name] = units.place(name, kept[name])
    return kept


def alone(name: str, size: int, units: Units, count: int, wide: bool) -> torch.Tensor:
    """One layer's kept units with exactly ``count`` pruned (its own threshold)."""
    score = units.scores(name)  # scored once for both passes
    prev = units.previous(name)
    own = Units(lambda _: score, lambda _: prev, placer=units.placer)
    got = settle([name], [size], own, count, [0], [size])
    if got is not None:
        return got[name]
    keys = rank_keys(
        score.reshape(-1), pruned=None if prev is None else ~prev.reshape(-1), wide=wide
    )
    return units.place(name, ~lowest(keys, torch.tensor(count)))


@dataclasses.dataclass
class OwnBrackets:
    """Layers with a bracket of their own (see :func:`own_brackets`)."""

    capped: dict[str, Bracket]  # the whole bracket below the global one: a constant in the search
    straddling: dict[str, Bracket]  # from their own lower end to the global upper end

    def of(self, name: str, default: Bracket) -> Bracket:
        return self.capped.get(name, self.straddling.get(name, default))


def own_brackets(
    names: Sequence[str],
    sizes: list[int],
    samples: list[torch.Tensor],
    sample_keys: SortedKeys,
    pruned_before: list[int],
    high: list[int],
    ends: Bracket,
    sampled: SampledLayers,
    wide: bool,
) -> OwnBrackets:
    """Layers the sample shows pruned to their cap below the global bracket ``[a, b]``, each
    with a bracket around its own cap, so that one pass settles them too: those whose own
    bracket lies below ``a`` (capped: a constant in the search), and those whose own bracket
    reaches into the global one (straddling: their bracket runs from their own lower end to
    ``b``; else the cap could lie below their candidates, and such a layer would be settled
    alone, at two more passes). A layer whose share of the sample is too small to bracket its
    cap (many layers) is sampled again on its own, which costs far less than settling it
    alone later."""
    own = OwnBrackets({}, {})
    if len(names) == 1:
        return own
    tuning, (a, b) = _tuning.current(), ends
    for i in _near_cap(sizes, samples, pruned_before, high, a, tuning.z):
        name, size, allowed, unpruned = (
            names[i],
            sizes[i],
            high[i] - pruned_before[i],
            sizes[i] - pruned_before[i],
        )
        keys = sample_keys.per_layer()[i]  # every layer's at once: one sort
        got = bracket([keys], allowed / unpruned, [0], [unpruned], [unpruned], wide)
        if (got is None or got[1] >= a) and keys.numel() < tuning.alone_sample // 2:
            own_sample = sort(
                rank_keys(sampled.take(name, stride_for(size, tuning.alone_sample)), wide=wide)
            )[0]
            got = bracket([own_sample], allowed / unpruned, [0], [unpruned], [unpruned], wide)
        if got is not None and got[1] < a:
            own.capped[name] = got
        elif got is not None and got[0] < a:
            own.straddling[name] = (got[0], b)
    return own


def _near_cap(
    sizes: list[int],
    samples: list[torch.Tensor],
    pruned_before: list[int],
    high: list[int],
    a: float,
    z: float,
) -> list[int]:
    """The layers whose cap may lie below the bracket's lower end ``a``, as the sample tells."""
    near = []
    for i, (size, sample, pruned, hi) in enumerate(
        zip(sizes, samples, pruned_before, high, strict=True)
    ):
        allowed, unpruned = hi - pruned, size - pruned
        if not 0 < allowed < unpruned or sample.numel() == 0:
            continue
        m, f = sample.numel(), allowed / unpruned
        if int(torch.count_nonzero(sample < a)) >= m * f - (z * math.sqrt(m * f * (1 - f)) + z):
            near.append(i)
    return near


def _brackets(
    names: Sequence[str],
    sizes: list[int],
    sampled: SampledLayers,
    total: int,
    low: list[int],
    high: list[int],
) -> tuple[Bracket, OwnBrackets, bool] | None:
    """The global bracket from every layer's sample, the layers' own brackets, and whether the
    keys are int64; None where the threshold is among the pruned units or NaN scores."""
    tuning = _tuning.current()
    stride = stride_for(sum(sizes), tuning.sample if len(names) > 1 else tuning.alone_sample)
    samples = [sampled.first(name, size, stride) for name, size in zip(names, sizes, strict=True)]
    pruned_before = [sampled.pruned_before[name] for name in names]
    wide = any(s.dtype == torch.float64 for s in samples)
    unpruned = sum(sizes) - sum(pruned_before)
    if total <= sum(pruned_before) or unpruned == 0:  # the threshold is among the pruned units
        return None
    sample_keys = SortedKeys(rank_keys(torch.cat(samples), wide=wide), [s.numel() for s in samples])
    ends = bracket(
        sample_keys,
        (total - sum(pruned_before)) / unpruned,
        [max(lo - p, 0) for lo, p in zip(low, pruned_before, strict=True)],
        [max(hi - p, 0) for hi, p in zip(high, pruned_before, strict=True)],
        [max(s - p, 1) for s, p in zip(sizes, pruned_before, strict=True)],
        wide,
    )
    if ends is None:
        return None
    own = own_brackets(names, sizes, samples, sample_keys, pruned_before, high, ends, sampled, wide)
    return ends, own, wide


def _pass_all(
    names: Sequence[str],
    sizes: list[int],
    sampled: SampledLayers,
    ends: Bracket,
    own: OwnBrackets,
    high: list[int],
    wide: bool,
) -> Candidates:
    """One pass over every layer; a capped layer whose cap is not inside its own bracket is
    passed again with the global one. The candidates come back keyed, in index order."""
    one_pass = BracketPass(sampled, sizes, wide=dict.fromkeys(names, wide), ordered=False)
    found = Candidates({}, [], [], [])
    for name, size in zip(names, sizes, strict=True):
        sure, values, idx, below_end = one_pass(name, size, own.of(name, ends))
        found.kept[name] = sure
        found.keys.append(values)
        found.idx.append(idx)
        found.base.append(below_end)
    for i, name in enumerate(names):
        if (
            name in own.capped
            and not found.base[i] < high[i] <= found.base[i] + found.keys[i].numel()
        ):
            del own.capped[name]
            found.kept[name], found.keys[i], found.idx[i], found.base[i] = one_pass(
                name, sizes[i], ends
            )
    one_pass.close()
    key_scores(found.keys, wide)
    return found


def _in_search(
    names: Sequence[str],
    found: Candidates,
    own: OwnBrackets,
    high: list[int],
    key_a: torch.Tensor,
) -> tuple[list[int], list[torch.Tensor]]:
    """Each layer's base and keys in the global search. A capped layer's own threshold lies
    in its bracket, below the global one: verified, it prunes exactly its cap at any
    threshold in ``[a, b]`` and enters the search as a constant. A straddling layer enters
    it with its candidates from ``a`` up (those below are counted in its base there)."""
    base, keys = [], []
    for i, (name, k) in enumerate(zip(names, found.keys, strict=True)):
        if name in own.capped:
            base.append(high[i])
            keys.append(k[:0])
        elif name in own.straddling:
            from_a = k >= key_a
            base.append(found.base[i] + int(from_a.numel() - torch.count_nonzero(from_a)))
            keys.append(k[from_a])
        else:
            base.append(found.base[i])
            keys.append(k)
    return base, keys


def _bounded(counts: list[int], low: list[int], high: list[int]) -> int:
    return sum(min(max(c, lo), hi) for c, lo, hi in zip(counts, low, high, strict=True))


def _by_cut(
    names: Sequence[str],
    found: Candidates,
    own: OwnBrackets,
    search: tuple[list[int], list[torch.Tensor]],
    total: int,
    low: list[int],
    high: list[int],
) -> tuple[list[int], list[torch.Tensor | None]] | None:
    """Counts and kept flags read off one sort of the searched candidates; the capped,
    straddling and held layers then prune their own first candidates in pruning order."""
    settled = cut_candidates(search[1], search[0], total, low, high)
    if settled is None:
        return None
    counts, flags = settled
    mine = [
        i
        for i, name in enumerate(names)
        if name in own.capped or name in own.straddling or flags[i] is None
    ]
    own_keys, own_idx = [found.keys[i] for i in mine], [found.idx[i] for i in mine]
    order(own_keys, own_idx)
    for i, idx in zip(mine, own_idx, strict=True):
        found.idx[i], flags[i] = idx, None
    return counts, flags


def _by_search(
    names: Sequence[str],
    found: Candidates,
    own: OwnBrackets,
    base: list[int],
    key_a: torch.Tensor,
    total: int,
    low: list[int],
    high: list[int],
) -> list[int] | None:
    """Counts from a threshold search over every layer's candidates put in order."""
    order(found.keys, found.idx)
    _, keys = _in_search(names, found, own, high, key_a)
    tau = threshold(keys, base, total, low, high)
    if tau is None:
        return None
    below = counts_at(keys, base, tau, right=False)
    at = [c - b for c, b in zip(counts_at(keys, base, tau, right=True), below, strict=True)]
    as_tensors = [[torch.tensor(v) for v in vs] for vs in (below, at, low, high)]
    return [int(c) for c in allocate(torch.tensor(total), *as_tensors)]


def settle(
    names: Sequence[str],
    sizes: list[int],
    units: Units,
    total: int,
    low: list[int],
    high: list[int],
) -> dict[str, torch.Tensor] | None:
    """Kept flat masks pruning exactly ``total`` units of ``names`` (tie order) under per-layer
    count bounds ``[low, high]`` (``sum(low) <= total <= sum(high)``), or None if the bracket
    missed; weight-shaped for the layers the placer covers."""
    if total == 0:  # nothing to prune (as the general path: earlier pruned units are not kept)
        ones = [torch.ones(s, dtype=torch.bool) for s in sizes]
        return {n: units.place(n, m) for n, m in zip(names, ones, strict=True)}
    sampled = SampledLayers(units)
    got = _brackets(names, sizes, sampled, total, low, high)
    if got is None:
        return None
    ends, own, wide = got
    found = _pass_all(names, sizes, sampled, ends, own, high, wide)
    settled = _counts(names, found, own, ends[0], wide, total, low, high)
    if settled is None:
        return None
    found.keys = []  # only the candidates' indices are needed from here
    return finish(names, sizes, found, settled[0], units, dict.fromkeys(names, wide), settled[1])


def _counts(
    names: Sequence[str],
    found: Candidates,
    own: OwnBrackets,
    a: float,
    wide: bool,
    total: int,
    low: list[int],
    high: list[int],
) -> tuple[list[int], list[torch.Tensor | None] | None] | None:
    """Each layer's count, and which candidates the layers not held at a bound keep (or None:
    each layer keeps its candidates after its first ``count - base``); None where the
    threshold is not among the candidates. The search's keys are dropped on return."""
    key_a = rank_keys(torch.tensor([a], dtype=torch.float64 if wide else torch.float32), wide=wide)
    search = _in_search(names, found, own, high, key_a)
    ends_in_search = [b + k.numel() for b, k in zip(*search, strict=True)]
    if not _bounded(search[0], low, high) < total <= _bounded(ends_in_search, low, high):
        return None  # the threshold is not a candidate
    if sum(ends_in_search) - sum(search[0]) <= _tuning.current().union_max:
        settled = _by_cut(names, found, own, search, total, low, high)
        if settled is not None:
            return settled
    counts = _by_search(names, found, own, search[0], key_a, total, low, high)
    return None if counts is None else (counts, None)


def select_global(
    names: Sequence[str],
    sizes: Sequence[int],
    units: Units,
    *,
    sparsity: float,
    lo: float,
    hi: float,
) -> dict[str, torch.Tensor] | None:
    """Kept flat masks (True = kept) of the layers ``names`` (in tie order), or None if the
    bracket missed; weight-shaped for the layers ``units.placer`` covers."""
    sizes = list(sizes)
    low_t, high_t, total_t, _ = count_bounds(sizes, sparsity, lo, hi, torch.device("cpu"))
    low, high = [int(c) for c in low_t], [int(c) for c in high_t]
    return settle(names, sizes, units, int(total_t), low, high)


def _local_sample(size: int) -> int:
    """Sample size for a layer selected on its own in local scope: about ``size ** (2/3)``
    (``local_sample`` at 2^21 units, at least ``alone_sample``), which balances the sample's
    cost (linear in it) against the candidates' (the bracket narrows as its square root)."""
    tuning = _tuning.current()
    return max(tuning.alone_sample, round(tuning.local_sample * (size / 2**21) ** (2 / 3)))


def _local_brackets(
    names: Sequence[str],
    sizes: list[int],
    counts: list[int],
    sampled: SampledLayers,
    out: dict[str, torch.Tensor],
) -> tuple[dict[str, Bracket], dict[str, bool]]:
    """Each layer's own bracket around its count (a layer with nothing to prune goes to
    ``out`` at once), and whether its keys are int64."""
    brackets, wide = {}, {}
    for name, size, count in zip(names, sizes, counts, strict=True):  # one sample at a time
        if count == 0:  # nothing to prune (as when settled alone)
            out[name] = sampled.units.place(
                name, torch.ones(size, dtype=torch.bool, device=sampled.device)
            )
            continue
        sample = sampled.first(name, size, stride_for(size, _local_sample(size)))
        wide[name] = sample.dtype == torch.float64
        pruned = sampled.pruned_before[name]
        if count <= pruned or sample.numel() == 0:
            continue  # among the pruned units: settled alone
        keys = sort(rank_keys(sample, wide=wide[name]))[0]
        got = bracket(
            [keys],
            (count - pruned) / (size - pruned),
            [0],
            [size - pruned],
            [size - pruned],
            wide[name],
        )
        if got is not None:
            brackets[name] = got
    return brackets, wide


def select_local(
    names: Sequence[str],
    sizes: Sequence[int],
    units: Units,
    *,
    sparsity: float,
) -> dict[str, torch.Tensor]:
    """Kept flat masks, ``floor(sparsity * n + 1e-9)`` units pruned in each layer (weight-shaped
    for the layers ``units.placer`` covers).

    Each layer's own sample brackets its own threshold, and one pass over each layer settles
    it (no search: its count is known); the passes share their buffers. A layer whose bracket
    misses, or whose threshold is among its previously pruned units, is settled alone.
    """
    sizes = list(sizes)
    counts = [int(unit_count(sparsity, size, torch.device("cpu"))) for size in sizes]
    sampled, out = SampledLayers(units), {}
    brackets, wide = _local_brackets(names, sizes, counts, sampled, out)
    chosen = [i for i, name in enumerate(names) if name in brackets]
    if chosen:
        sub = [names[i] for i in chosen]
        one_pass = BracketPass(sampled, [sizes[i] for i in chosen], wide=wide, ordered=True)
        found = Candidates({}, [], [], [])
        for i in chosen:
            found.kept[names[i]], _, idx, below_end = one_pass(
                names[i], sizes[i], brackets[names[i]]
            )
            found.idx.append(idx)
            found.base.append(below_end)
        one_pass.close()
        out.update(
            finish(sub, [sizes[i] for i in chosen], found, [counts[i] for i in chosen], units, wide)
        )
    for name, size, count in zip(names, sizes, counts, strict=True):
        if name not in out:
            out[name] = alone(name, size, units, count, wide[name])
    return {name: out[name] for name in names}
