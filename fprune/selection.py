"""Exact selection of the lowest-ranked units, per layer (local) or across layers (global).

A *unit* is one entry of a grid of scores (a block, a group or a weight). Selection prunes
exactly ``floor(sparsity * n_units + 1e-9)`` units, lowest ranked first, in one total order:

1. units already pruned in ``previous`` (so masks are nested and never revive);
2. NaN scores;
3. ``-inf``;
4. finite scores, ascending (``-0.0`` equals ``+0.0``);
5. ``+inf``;

and ties by sorted parameter name, then by flat (row-major) index in the grid. The order is
encoded in integer keys (:func:`rank_keys`), and the threshold is found by an exact radix
select over those keys, without sorting or concatenating layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch

from fprune import _errors, _radix, _sharded, _trace

if TYPE_CHECKING:
    from fprune._sharded_select import Comm

__all__ = ["global_masks", "local_masks", "rank_keys"]

_EPS = 1e-9


def rank_keys(
    scores: torch.Tensor, *, pruned: torch.Tensor | None = None, wide: bool = False
) -> torch.Tensor:
    """Map scores to integers whose order is the selection order (lowest pruned first).

    float16, bfloat16 and float32 scores give int32 keys (through float32, exactly); float64
    scores, or ``wide=True``, give int64 keys. Already-pruned units get the smallest key,
    then NaN; ``-0.0`` and ``+0.0`` get the same key. Equal keys are tied.

    Args:
        scores: floating tensor of any shape.
        pruned: optional bool tensor of the same shape, True where a unit is already pruned.
        wide: compute int64 keys through float64 (needed to compare with float64 keys).

    Returns:
        Integer tensor shaped like ``scores``.

    Example:
        >>> k = rank_keys(torch.tensor([1.0, float("nan"), -float("inf"), -0.0, 0.0, 2.0]))
        >>> torch.argsort(k, stable=True).tolist()
        [1, 2, 3, 4, 0, 5]
    """
    return _keys(scores, pruned=pruned, wide=wide, share=False)


def _keys(scores: torch.Tensor, *, pruned: torch.Tensor | None, wide: bool, share: bool) -> torch.Tensor:
    """:func:`rank_keys`; with ``share``, eager keys may be a view of ``scores``' memory (when
    the scores are already their own keys), for callers that only read them."""
    if wide or scores.dtype == torch.float64:
        x, itype, width = scores.double(), torch.int64, 64
    else:
        x, itype, width = scores.float(), torch.int32, 32
    lowest = torch.iinfo(itype).min
    inf = 0x7F800000 if itype == torch.int32 else 0x7FF0000000000000  # the bits of +inf
    traced = _trace.tracing(x)
    if not traced and _within(x.view(itype), 0, inf):
        # no sign bit (so no -0.0) and no NaN: the bits already order like the floats
        keys = x.view(itype)
        if pruned is not None:
            return _lowest_where(pruned, lowest, keys)
        return keys if share or x is not scores else keys.clone()
    if traced:  # a compiler may drop ``x + 0.0`` as a no-op
        x = torch.where(x == 0, 0.0, x)  # -0.0 -> +0.0
    else:
        x = x + 0.0  # -0.0 + 0.0 is +0.0 (IEEE), any other x is unchanged; one pass
    bits = x.view(itype)
    # Negative floats order backwards as integers: flip their magnitude bits.
    keys = bits >> (width - 1)
    if traced:
        keys = bits ^ (keys & torch.iinfo(itype).max)
    else:
        keys.bitwise_and_(torch.iinfo(itype).max).bitwise_xor_(bits)
    # NaN bits map above +inf's key or below -inf's (``~inf``)
    if traced or not _within(keys, ~inf, inf):
        keys = torch.where(torch.isnan(x), lowest + 1, keys)
    if pruned is not None:
        keys = _lowest_where(pruned, lowest, keys)
    return keys


def _lowest_where(pruned: torch.Tensor, lowest: int, keys: torch.Tensor) -> torch.Tensor:
    """``lowest`` where ``pruned``, else ``keys``; eager, laid out in memory as ``keys`` is
    (a grouped N:M layout stays grouped), not as the mask is. Traced when either is (under
    ``vmap`` the masks may be batched while the scores are not), where ``out=`` has no
    batching rule."""
    if _trace.tracing(pruned) or _trace.tracing(keys):
        return torch.where(pruned, lowest, keys)
    low = torch.full((), lowest, dtype=keys.dtype, device=keys.device)
    return torch.where(pruned, low, keys, out=torch.empty_like(keys))


def all_true(mask: torch.Tensor) -> bool:
    """Whether an eager bool tensor is all True, as the minimum of its bytes: one vectorised
    read-only pass (``Tensor.all`` costs about 30 times as much on the CPU)."""
    return mask.numel() == 0 or bool(mask.reshape(-1).view(torch.uint8).amin() == 1)


def _within(t: torch.Tensor, low: int, high: int) -> bool:
    """Whether every value of an eager integer tensor lies in ``[low, high]`` (one read-only
    pass; a comparison that writes a bool tensor costs several)."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(_dense(t))
    return bool(lo >= low) and bool(hi <= high)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its dimensions permuted into its memory order, when that makes it contiguous
    (a transposed or grouped layout), so a reduction over every element reads memory in
    order; else ``t`` itself."""
    if t.is_contiguous():
        return t
    permuted = t.permute(sorted(range(t.ndim), key=lambda d: (-t.stride(d), -t.shape[d])))
    return permuted if permuted.is_contiguous() else t


def _count(sparsity: float | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """``floor(sparsity * n + 1e-9)`` clamped to ``[0, n]``, as a 0-d int64 tensor (float64 math)."""
    if isinstance(sparsity, torch.Tensor):
        exact = torch.floor(sparsity.to(device=device, dtype=torch.float64) * n + _EPS)
        return exact.to(torch.int64).clamp(0, n)
    return torch.tensor(min(max(math.floor(sparsity * n + _EPS), 0), n), device=device)


def _lowest(keys: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """True at the ``count`` smallest entries of a 1-D key tensor, ties by index."""
    tau, below, _ = _radix.kth_key([keys], count)
    return _take(keys, tau, below[0], count)


def _take(keys: torch.Tensor, tau: torch.Tensor, below: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """The ``count`` smallest keys, given ``tau`` and ``below = #(keys < tau)``, where
    ``below <= count <= below + #(keys == tau)``: ties at ``tau`` are taken by index."""
    tied = keys == tau
    if _trace.tracing(keys) or _trace.tracing(count) or _trace.tracing(below):
        return (keys < tau) | (tied & (torch.cumsum(tied, 0) <= count - below))
    pruned = keys < tau  # eager: the first ties by their indices (few), not a running count
    extra = int(count - below)
    if extra > 0:
        pruned[tied.nonzero().squeeze(1)[:extra]] = True
    return pruned


def _take_eager(
    keys: torch.Tensor, tau: torch.Tensor, below: torch.Tensor, at: torch.Tensor, count: torch.Tensor,
    offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`_lowest` for an eager call that knows the global threshold: a layer whose count
    lies within its keys below and at ``tau`` needs no search of its own, and usually no
    tie breaking (the values are read back to Python, which tracing forbids). Sharded, the
    counts are the layer's over all ranks, and ``offset`` counts the ties of the ranks before."""
    c, b, a = int(count), int(below), int(at)
    if not b <= c <= b + a:  # a bound moved this layer's threshold off the global one
        return _lowest(keys, count)
    if c == b:
        return keys < tau
    if c == b + a:
        return keys <= tau
    return _take(keys, tau, below if offset is None else below + offset, count)


def select_local(
    keys: Mapping[str, torch.Tensor], sparsity: float | torch.Tensor, comm: Comm | None = None
) -> dict[str, torch.Tensor]:
    """Pruned units (True) of each 1-D key tensor: ``floor(sparsity * n + 1e-9)`` per layer.

    No validation: ``sparsity`` may be any fraction in [0, 1] (N:M passes 1.0). With
    ``comm`` (eager only), the keys are this rank's shards of the layers, searched together
    with small collectives (:mod:`fprune._sharded_select`).
    """
    if comm is None:
        return {n: _lowest(k, _count(sparsity, k.numel(), k.device)) for n, k in keys.items()}
    from fprune import _sharded_select  # built on this module's helpers

    return _sharded_select.select_local(keys, sparsity, comm)


def select_global(
    keys: Mapping[str, torch.Tensor],
    sparsity: float | torch.Tensor,
    lo: float | torch.Tensor = 0.0,
    hi: float | torch.Tensor = 1.0,
    comm: Comm | None = None,
) -> dict[str, torch.Tensor]:
    """Pruned units (True) across 1-D key tensors of one dtype; see :func:`global_masks`.

    No validation: the fractions may be anything in [0, 1] (N:M passes 1.0). With ``comm``
    (eager only), the keys are this rank's shards of the layers (:mod:`fprune._sharded_select`).
    """
    names = sorted(keys)  # ties between layers go by sorted name
    if comm is not None:
        from fprune import _sharded_select  # built on this module's helpers

        chosen = _sharded_select.select_global(keys, names, sparsity, lo, hi, comm)
        return {n: chosen[n] for n in keys}
    ordered = [keys[n] for n in names]
    low, high, total, bounded = _budget([k.numel() for k in ordered], sparsity, lo, hi, ordered[0].device)
    bounds = (low, high) if bounded else (None, None)
    tau, below, at = _radix.kth_key(ordered, total, *bounds)
    counts = _allocate(total, below, at, low, high)
    if _trace.tracing(counts[0]):  # counts depend on the keys and the target: traced if either is
        chosen = {n: _lowest(k, c) for n, k, c in zip(names, ordered, counts, strict=True)}
    else:
        chosen = {
            n: _take_eager(k, tau, b, a, c)
            for n, k, b, a, c in zip(names, ordered, below, at, counts, strict=True)
        }
    return {n: chosen[n] for n in keys}


def _budget(
    sizes: list[int], sparsity: float | torch.Tensor, lo: float | torch.Tensor, hi: float | torch.Tensor,
    device: torch.device,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, bool]:
    """A global selection's per-layer count bounds, its total (clamped to what they allow),
    and whether the bounds can bind at all."""
    low = [_count(lo, n, device) for n in sizes]
    high = [_count(hi, n, device) for n in sizes]
    total = _count(sparsity, sum(sizes), device)
    total = torch.minimum(torch.maximum(total, torch.stack(low).sum()), torch.stack(high).sum())
    bounded = not (isinstance(lo, float) and lo == 0.0 and isinstance(hi, float) and hi >= 1.0)
    return low, high, total, bounded


def select(
    keys: Mapping[str, torch.Tensor],
    *,
    scope: str,
    sparsity: float | torch.Tensor,
    lo: float | torch.Tensor = 0.0,
    hi: float | torch.Tensor = 1.0,
    comm: Comm | None = None,
) -> dict[str, torch.Tensor]:
    """Pruned units (True) of 1-D keys in ``"local"`` or ``"global"`` scope (no validation);
    with ``comm``, of this rank's shards of the layers (:mod:`fprune._sharded_select`)."""
    if scope == "local":
        return select_local(keys, sparsity, comm)
    return select_global(keys, sparsity, lo, hi, comm)


def flat_keys(
    scores: Mapping[str, torch.Tensor], previous: Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """1-D rank keys of every layer, all int64 if any score is float64 (comparable globally).

    For the selection, which only reads them: eager keys may share the scores' memory, and an
    eager all-kept previous mask is skipped (it changes no key)."""
    wide = any(s.dtype == torch.float64 for s in scores.values())
    out = {}
    for n, s in scores.items():
        eager = not _trace.tracing(s)
        prev = None if previous is None else previous[n]
        if prev is not None and eager and not _trace.tracing(prev) and all_true(prev):
            prev = None
        out[n] = _keys(s, pruned=None if prev is None else ~prev, wide=wide, share=eager).reshape(-1)
    return out


def _check(
    func: str, scores: object, previous: object, sparsity: object
) -> tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor] | None, float | torch.Tensor]:
    scores = _errors.tensor_dict(func, "scores", scores)
    previous = _errors.previous_masks(func, previous, "scores", scores)
    return scores, previous, _errors.fraction(func, "sparsity", sparsity)


def local_masks(
    scores: Mapping[str, torch.Tensor],
    *,
    sparsity: float | torch.Tensor,
    previous: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Prune each layer separately: exactly ``floor(sparsity * n_l + 1e-9)`` units of each.

    Args:
        scores: floating tensors (grids of unit scores) keyed by name; lower is pruned first.
        sparsity: fraction of units to prune in every layer, in [0, 1); a 0-d float tensor
            is used as data (clamped, not checked).
        previous: bool masks shaped like ``scores`` (True = kept); their pruned units rank
            first, so masks are nested when ``sparsity`` does not decrease.

    Returns:
        Bool masks shaped like ``scores``, True = kept, in the input's key order.

    Example:
        >>> s = {"w": torch.tensor([[3., 1.], [2., 1.]])}
        >>> local_masks(s, sparsity=0.5)["w"].tolist()   # the tie at 1.0 fills by index
        [[True, False], [True, False]]
    """
    scores, previous, sparsity = _check("local_masks", scores, previous, sparsity)
    return _on_shards("local_masks", scores, previous, lambda s, p, comm: _local(s, p, sparsity, comm))


def _local(scores: Mapping[str, torch.Tensor], previous: Mapping[str, torch.Tensor] | None,
           sparsity: float | torch.Tensor, comm: Comm | None) -> dict[str, torch.Tensor]:
    keys = {
        n: rank_keys(s, pruned=None if previous is None else ~previous[n]).reshape(-1)
        for n, s in scores.items()
    }
    pruned = select_local(keys, sparsity, comm)
    return {n: ~pruned[n].reshape(s.shape) for n, s in scores.items()}


def _on_shards(func: str, scores: Mapping[str, torch.Tensor], previous: Mapping[str, torch.Tensor] | None,
               compute: Callable[..., dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``compute(scores, previous, comm)`` on plain tensors, or on ``Shard(0)`` DTensors'
    local shards (their rows come in flat order) with the masks wrapped back."""
    sharding = _sharded.detect(func, {"scores": scores, "previous": previous})
    if sharding is None:
        return compute(scores, previous, None)
    local = compute(sharding.local(scores), None if previous is None else sharding.local(previous), sharding.comm)
    return sharding.wrap(local, {n: s.shape for n, s in scores.items()})


def global_masks(
    scores: Mapping[str, torch.Tensor],
    *,
    sparsity: float | torch.Tensor,
    min_layer_sparsity: float | torch.Tensor = 0.0,
    max_layer_sparsity: float | torch.Tensor = 1.0,
    previous: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Prune the lowest-ranked units across all layers, with per-layer bounds.

    Exactly ``K = floor(sparsity * N + 1e-9)`` units are pruned (``N`` = all units). Layer
    ``l`` with ``n_l`` units prunes between ``floor(min_layer_sparsity * n_l + 1e-9)`` and
    ``floor(max_layer_sparsity * n_l + 1e-9)`` of them: each layer first takes its minimum
    (its lowest-ranked units), and the rest of the budget goes to the lowest-ranked units
    still allowed, so capped layers stop at their maximum and the others absorb the rest.
    If the maxima cannot hold ``K`` units (only possible with ``max_layer_sparsity`` at or
    near ``sparsity``), every layer ends at its maximum.

    Args:
        scores: floating tensors (grids of unit scores) keyed by name; lower is pruned first.
        sparsity: fraction of all units to prune, in [0, 1).
        min_layer_sparsity: per-layer lower bound, ``<= sparsity``.
        max_layer_sparsity: per-layer upper bound, ``>= sparsity``, at most 1.
        previous: bool masks shaped like ``scores`` (True = kept); their pruned units rank
            first. 0-d float tensors for the three fractions are used as data (clamped).

    Returns:
        Bool masks shaped like ``scores``, True = kept, in the input's key order.

    Raises:
        ValueError: a fraction is out of range, or ``min > sparsity``, or ``sparsity > max``.

    Example:
        >>> s = {"a": torch.tensor([1., 2., 3., 4.]), "b": torch.tensor([5., 6., 7., 8.])}
        >>> m = global_masks(s, sparsity=0.5)
        >>> m["a"].tolist(), m["b"].tolist()
        ([False, False, False, False], [True, True, True, True])
        >>> m = global_masks(s, sparsity=0.5, max_layer_sparsity=0.5)
        >>> m["a"].tolist(), m["b"].tolist()
        ([False, False, True, True], [False, False, True, True])
    """
    func = "global_masks"
    scores, previous, sparsity = _check(func, scores, previous, sparsity)
    lo, hi = check_bounds(func, sparsity, min_layer_sparsity, max_layer_sparsity)

    def compute(s: Mapping[str, torch.Tensor], p: Mapping[str, torch.Tensor] | None, comm: Comm | None) -> dict[str, torch.Tensor]:
        pruned = select_global(flat_keys(s, p), sparsity, lo, hi, comm)
        return {n: ~pruned[n].reshape(v.shape) for n, v in s.items()}

    return _on_shards(func, scores, previous, compute)


def _allocate(
    total: torch.Tensor,
    below: list[torch.Tensor],
    at: list[torch.Tensor],
    low: list[torch.Tensor],
    high: list[torch.Tensor],
) -> list[torch.Tensor]:
    """Per-layer counts at the threshold: bounded counts below it, ties filled in layer order."""
    base = [b.clamp(lo, hi) for b, lo, hi in zip(below, low, high, strict=True)]
    room = [(b + a).clamp(lo, hi) - s for b, a, lo, hi, s in zip(below, at, low, high, base, strict=True)]
    need = total - torch.stack(base).sum()
    counts, used = [], torch.zeros_like(need)
    for start, extra in zip(base, room, strict=True):
        counts.append(start + (need - used).clamp(min=0).minimum(extra))
        used = used + extra
    return counts


def check_bounds(
    func: str, sparsity: float | torch.Tensor, lo: object, hi: object
) -> tuple[float | torch.Tensor, float | torch.Tensor]:
    """Validate per-layer bounds: ``0 <= min <= sparsity <= max <= 1`` where they are numbers."""
    lo = _errors.fraction(func, "min_layer_sparsity", lo)
    hi = _errors.fraction(func, "max_layer_sparsity", hi, allow_one=True)
    if isinstance(sparsity, float) and isinstance(lo, float) and lo > sparsity:
        raise _errors.value_error(
            func, "min_layer_sparsity exceeds sparsity", _errors.detail(f"min {lo} > sparsity {sparsity}"),
            "Lower min_layer_sparsity to at most the target sparsity.",
        )
    if isinstance(sparsity, float) and isinstance(hi, float) and sparsity > hi:
        raise _errors.value_error(
            func, "sparsity exceeds max_layer_sparsity", _errors.detail(f"sparsity {sparsity} > max {hi}"),
            "Raise max_layer_sparsity or lower the target sparsity.",
        )
    return lo, hi
