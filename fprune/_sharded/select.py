"""Exact selection over layers whose units are split across ranks (``Shard(0)`` rows).

Each rank holds a contiguous part of every layer's flat units, in rank order, and its
rank keys (:func:`fprune.selection.rank_keys`). The selection is the general path's radix
select, with the per-layer histograms summed over the ranks, narrowed first by a sample:

1. **Bracket.** Every rank takes a strided sample of its keys (``2^14`` over all layers,
   the same stride everywhere, or ``2^10`` per layer with a threshold per layer; only where
   there are 64 units per sampled key, else step 3 runs on all keys; sizes in
   :class:`fprune._tuning.Tuning`); the samples are
   gathered, so every rank finds the same two sample keys ``ka <= kb`` around the target
   count (6 standard deviations of the sample quantile, with the per-layer bounds scaled
   to the sample).
2. **Candidates.** Each rank counts its keys below ``ka`` and keeps those in ``[ka, kb]``;
   the counts are summed over the ranks. If the threshold is not inside the bracket (a
   sample far off), the search runs on all keys instead: the answer is the same.
3. **Search.** The radix search runs on the candidates only, with the counts below as each
   layer's base: 4 digits of 8 bits for int32 keys (8 for int64), one sum of
   ``layers x 256`` counts per digit.
4. **Ties.** Each layer's keys equal to the threshold are taken by flat index: every rank
   learns how many the ranks before it hold (one gather of ``layers`` counts).

Every decision is taken on summed counts or gathered samples, so all ranks take the same
branches and issue the same collectives. Nothing of weight size is exchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch

from fprune import _radix, _tuning
from fprune.selection import allocate, count_bounds, take, unit_count

__all__ = ["Comm", "lowest_each", "select", "select_global", "select_local_shards", "sizes"]

_BITS = 8  # digit width: 256 bins per layer and pass to sum over ranks


class Comm(Protocol):
    """The collectives a sharded selection needs, over the ranks that hold the shards."""

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks (every rank gets the sum)."""
        ...

    def before(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks before this one (zeros on the first)."""
        ...

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t`` (one shape on all), stacked in rank order: ``[ranks, *t.shape]``."""
        ...


def sizes(keys: list[torch.Tensor], comm: Comm) -> list[int]:
    """Each layer's number of units over all ranks."""
    if not keys:
        return []
    return comm.sum(
        torch.tensor([k.numel() for k in keys], dtype=torch.int64, device=keys[0].device)
    ).tolist()


def _samples(keys: list[torch.Tensor], strides: list[int], comm: Comm) -> list[torch.Tensor]:
    """Every ``stride``-th key of each layer (none for 0) on every rank, gathered: one sample
    per layer, the same on all ranks (two small gathers: the lengths, then the padded keys)."""
    device = keys[0].device
    mine = [k[::s] if s else k[:0] for k, s in zip(keys, strides, strict=True)]  # stride 0: none
    lengths = comm.gather(torch.tensor([m.numel() for m in mine], dtype=torch.int64, device=device))
    width = int(lengths.sum(1).max())
    packed = torch.zeros(width, dtype=keys[0].dtype, device=device)
    flat = torch.cat(mine) if mine else packed[:0]
    packed[: flat.numel()] = flat
    everyone = comm.gather(packed)
    per_layer: list[list[torch.Tensor]] = [[] for _ in keys]
    for rank, row in enumerate(lengths.tolist()):
        at = 0
        for layer, n in enumerate(row):
            per_layer[layer].append(everyone[rank, at : at + n])
            at += n
    return [torch.cat(parts) for parts in per_layer]


def _ends(
    samples: list[torch.Tensor],
    target: torch.Tensor,
    fraction: torch.Tensor,
    sizes_: list[int],
    low: torch.Tensor | None,
    high: torch.Tensor | None,
    separate: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample keys ``ka <= kb`` around the target count (per layer if ``separate``), from a
    water-filling search of the sample with the counts scaled to it."""
    z = _tuning.current().shard_z
    m = torch.tensor([s.numel() for s in samples], dtype=torch.float64)
    n = torch.tensor(sizes_, dtype=torch.float64).clamp(min=1)
    scale = m / n
    if separate:
        spread = z * torch.sqrt(m * fraction * (1 - fraction)) + z
        centre = target.double() * scale
    else:
        total_m = m.sum()
        spread = z * torch.sqrt(total_m * fraction * (1 - fraction)) + z
        centre = target.double() * total_m / n.sum()
    lo_s = None if low is None else list(torch.floor(low.double() * scale).long())
    hi_s = (
        None if high is None else list(torch.minimum(torch.ceil(high.double() * scale), m).long())
    )
    cap = m if separate else m.sum()
    if hi_s is not None and not separate:
        cap = torch.minimum(cap, torch.stack(hi_s).sum().double())
    dtype = samples[0].dtype
    ends = []
    for k, side in ((centre - spread, "below"), (centre + spread, "above")):
        k = torch.floor(k)
        count = torch.minimum(torch.clamp(k, min=1), cap).long()
        found = _radix.search(
            samples, count, lo_s, hi_s, separate=separate, bits=_BITS, narrow=True
        )
        # past the sample's first or last key the bracket is open on that side
        if side == "below":
            ends.append(torch.where(k < 1, torch.iinfo(dtype).min, found.tau))
        else:
            ends.append(torch.where(k >= cap, torch.iinfo(dtype).max, found.tau))
    return ends[0], ends[1]


def _narrow(
    keys: list[torch.Tensor],
    ka: torch.Tensor,
    kb: torch.Tensor,
    comm: Comm,
    separate: bool,
    only: list[bool] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Per layer (of those in ``only``; none of the others): the keys in ``[ka, kb]``, and
    the counts (over all ranks) below ``ka`` and in the bracket."""
    cands, below, inside = [], [], []
    for i, k in enumerate(keys):
        if only is not None and not only[i]:
            cands.append(k[:0])
            below.append(0)
            inside.append(0)
            continue
        a, b = (ka[i], kb[i]) if separate else (ka, kb)
        cand = k[(k >= a) & (k <= b)]
        cands.append(cand)
        below.append(int(torch.count_nonzero(k < a)))
        inside.append(cand.numel())
    counts = comm.sum(torch.tensor([below, inside], dtype=torch.int64, device=keys[0].device))
    return cands, counts[0], counts[1]


def _clamped(
    counts: torch.Tensor, low: torch.Tensor | None, high: torch.Tensor | None
) -> torch.Tensor:
    if low is None or high is None:
        return counts
    return torch.minimum(torch.maximum(counts, low), high)


def _take_shard(
    keys: torch.Tensor,
    tau: torch.Tensor,
    below: torch.Tensor,
    at: torch.Tensor,
    count: torch.Tensor,
    offset: torch.Tensor,
) -> torch.Tensor:
    """This rank's part of a layer's ``count`` lowest keys, given the layer's counts over all
    ranks below and at ``tau``, and ``offset``, the ties at ``tau`` on the ranks before this
    one. A layer whose count a bound moved off ``tau`` has its own threshold (searched
    alone). The counts are read back: the sharded selection runs eager."""
    c, b, a = int(count), int(below), int(at)
    if not b <= c <= b + a:
        raise RuntimeError("fprune internal error: a count outside the threshold's ties")
    if c == b:
        return keys < tau
    if c == b + a:
        return keys <= tau
    return take(keys, tau, below + offset, count)


def _layer_samples(keys: list[torch.Tensor], sizes_: list[int], counts: torch.Tensor, comm: Comm):
    """Each sampled layer's own bracket: its candidates and counts below and inside it."""
    tuning = _tuning.current()
    sampled = [
        s >= tuning.shard_density * tuning.shard_layer_sample for s in sizes_
    ]  # alike on all ranks
    if not any(sampled):
        zeros = torch.zeros((2, len(keys)), dtype=torch.int64, device=keys[0].device)
        return sampled, keys, zeros[0], zeros[1]
    n = torch.tensor(sizes_, dtype=torch.int64)
    strides = [
        s // tuning.shard_layer_sample if u else 0 for s, u in zip(sizes_, sampled, strict=True)
    ]
    samples = _samples(keys, strides, comm)
    fraction = (counts.double().cpu() / n.clamp(min=1)).clamp(0, 1)
    ka, kb = _ends(samples, counts.cpu(), fraction, sizes_, None, None, separate=True)
    return sampled, *_narrow(keys, ka, kb, comm, separate=True, only=sampled)


def lowest_each(keys: list[torch.Tensor], counts: torch.Tensor, comm: Comm) -> list[torch.Tensor]:
    """This rank's part of each layer's ``counts[l]`` lowest keys (True = selected), ties by
    flat index; every layer its own threshold."""
    if not keys:
        return []
    sampled, cands, below, inside = _layer_samples(keys, sizes(keys, comm), counts, comm)
    counts_d = counts.to(below.device)
    searched, base = [], []
    for i, k in enumerate(keys):
        c, b, a = int(counts_d[i]), int(below[i]), int(inside[i])
        if c == 0:  # nothing to select: an empty search
            searched.append(k[:0])
            base.append(torch.zeros_like(below[i]))
        elif sampled[i] and b < c <= b + a:  # the threshold is a candidate
            searched.append(cands[i])
            base.append(below[i])
        else:  # the bracket missed: all keys
            searched.append(k)
            base.append(torch.zeros_like(below[i]))
    found = _radix.search(
        searched, counts_d, base=base, separate=True, combine=comm.sum, bits=_BITS, narrow=True
    )
    offset = comm.before(torch.stack(found.mine))  # ties held by the ranks before this one
    return [
        _take_shard(k, found.tau[i], found.below[i], found.at[i], counts_d[i], offset[i])
        for i, k in enumerate(keys)
    ]


def _global_search(
    ordered: list[torch.Tensor],
    sizes_: list[int],
    total: torch.Tensor,
    bounds: tuple[torch.Tensor, torch.Tensor] | None,
    comm: Comm,
) -> _radix.Found:
    """The global threshold over all ranks: on the candidates of a gathered sample's bracket
    where there are enough units and it holds the threshold, else on all keys."""
    tuning = _tuning.current()
    lo_hi = (None, None) if bounds is None else (list(bounds[0].unbind()), list(bounds[1].unbind()))
    if int(total) > 0 and sum(sizes_) >= tuning.shard_density * tuning.shard_sample:
        stride = sum(sizes_) // tuning.shard_sample
        samples = _samples(ordered, [stride] * len(ordered), comm)
        fraction = torch.tensor(int(total) / max(sum(sizes_), 1), dtype=torch.float64)
        low, high = (None, None) if bounds is None else (bounds[0].cpu(), bounds[1].cpu())
        ka, kb = _ends(samples, total.cpu(), fraction, sizes_, low, high, separate=False)
        cands, below, inside = _narrow(ordered, ka, kb, comm, separate=False)
        b_low, b_high = (None, None) if bounds is None else bounds
        reach = (
            int(_clamped(below, b_low, b_high).sum()),
            int(_clamped(below + inside, b_low, b_high).sum()),
        )
        if reach[0] < int(total) <= reach[1]:
            return _radix.search(
                cands,
                total,
                *lo_hi,
                list(below.unbind()),
                combine=comm.sum,
                bits=_BITS,
                narrow=True,
            )
    return _radix.search(ordered, total, *lo_hi, combine=comm.sum, bits=_BITS, narrow=True)


def select_global(
    keys: Mapping[str, torch.Tensor],
    sparsity: float | torch.Tensor,
    lo: float | torch.Tensor,
    hi: float | torch.Tensor,
    comm: Comm,
) -> dict[str, torch.Tensor]:
    """Pruned units (True) of this rank's shards, global scope (see
    :func:`fprune.selection.select_global`)."""
    names = sorted(keys)  # ties between layers go by sorted name
    ordered = [keys[n] for n in names]
    sizes_ = sizes(ordered, comm)
    low_l, high_l, total, bounded = count_bounds(sizes_, sparsity, lo, hi, ordered[0].device)
    bounds = (torch.stack(low_l), torch.stack(high_l)) if bounded else None
    found = _global_search(ordered, sizes_, total, bounds, comm)
    counts = allocate(total, found.below, found.at, low_l, high_l)
    offsets = comm.before(torch.stack(found.mine)).unbind()  # ties held by the ranks before
    # a layer a bound moved off the global threshold has its own: one search for all such
    own = [
        i
        for i, (b, a, c) in enumerate(zip(found.below, found.at, counts, strict=True))
        if not int(b) <= int(c) <= int(b + a)
    ]
    alone = (
        lowest_each([ordered[i] for i in own], torch.stack([counts[i] for i in own]), comm)
        if own
        else []
    )
    chosen = dict(zip((names[i] for i in own), alone, strict=True))
    for i, (n, k) in enumerate(zip(names, ordered, strict=True)):
        if n not in chosen:
            chosen[n] = _take_shard(
                k, found.tau, found.below[i], found.at[i], counts[i], offsets[i]
            )
    return {n: chosen[n] for n in keys}


def select_local_shards(
    keys: Mapping[str, torch.Tensor], sparsity: float | torch.Tensor, comm: Comm
) -> dict[str, torch.Tensor]:
    """Pruned units (True) of this rank's shards, ``floor(sparsity * n + 1e-9)`` of each layer."""
    if not keys:
        return {}
    ordered = list(keys.values())
    device = ordered[0].device
    counts = torch.stack([unit_count(sparsity, n, device) for n in sizes(ordered, comm)])
    return dict(zip(keys, lowest_each(ordered, counts, comm), strict=True))


def select(
    keys: Mapping[str, torch.Tensor],
    *,
    scope: str,
    sparsity: float | torch.Tensor,
    lo: float | torch.Tensor,
    hi: float | torch.Tensor,
    comm: Comm,
) -> dict[str, torch.Tensor]:
    """:func:`fprune.selection.select` on this rank's shards of the layers' keys, with the
    ranks' counts exchanged through ``comm``."""
    if scope == "local":
        return select_local_shards(keys, sparsity, comm)
    return select_global(keys, sparsity, lo, hi, comm)
