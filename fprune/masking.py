"""Masks from scores, pattern, sparsity, scope and bounds; pattern-lock masks; applying masks.

A mask is a ``torch.bool`` tensor shaped like its parameter, ``True`` = kept. The functions
here compose the bottom-layer pieces: scores are reduced to the pattern's grid
(:mod:`fprune.blocks`), units are selected exactly (:mod:`fprune.selection`, or
:mod:`fprune.nm` for N:M), and grid masks are expanded back to the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from fprune import _errors, _fast, _sharded
from fprune._sharded_select import Comm
from fprune.blocks import REDUCTIONS, check_divisible, expand_masks, reduce_masks, to_grid
from fprune.nm import nm_masks
from fprune.patterns import NM, Pattern, parse_pattern
from fprune.selection import check_bounds, flat_keys, select

__all__ = ["SCOPES", "apply_masks", "grid_masks", "masks", "pattern_lock_masks"]

SCOPES = ("global", "local")


def _options(
    func: str,
    pattern: str | Pattern,
    sparsity: object,
    scope: object,
    lo: object,
    hi: object,
    reduce: object,
) -> tuple[Pattern, float | torch.Tensor, str, float | torch.Tensor, float | torch.Tensor, str]:
    pattern = parse_pattern(pattern)
    scope = _errors.choice(func, "scope", scope, SCOPES)
    reduce = _errors.choice(func, "reduce", reduce, REDUCTIONS)
    sparsity = _errors.fraction(func, "sparsity", sparsity)
    lo, hi = check_bounds(func, sparsity, lo, hi)
    if isinstance(pattern, NM) and isinstance(sparsity, float) and sparsity > pattern.max_sparsity:
        raise _errors.value_error(
            func, f"pattern {str(pattern)!r} cannot exceed sparsity N/M = {pattern.max_sparsity}",
            sparsity, f"Lower sparsity to at most {pattern.max_sparsity}, or use a larger N:M ratio.",
        )
    return pattern, sparsity, scope, lo, hi, reduce


def _ndim_at_least_2(func: str, scores: Mapping[str, torch.Tensor]) -> None:
    for name, score in scores.items():
        if score.ndim < 2:
            raise _errors.value_error(
                func, f"layer {name!r} has fewer than 2 dimensions", tuple(score.shape),
                "Only weights with a 2-D view (Linear, conv) can be pruned; leave biases "
                "and norms out of the dict.",
            )


def _select(
    grid: Mapping[str, torch.Tensor],
    pattern: Pattern,
    sparsity: float | torch.Tensor,
    scope: str,
    lo: float | torch.Tensor,
    hi: float | torch.Tensor,
    previous: Mapping[str, torch.Tensor] | None,
    reduce: str,
    comm: Comm | None = None,
    grouped: Callable[[str], torch.Tensor | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Kept grid masks; with ``comm``, of this rank's shards (the general path, eager).
    ``grouped``: N:M only, see :func:`fprune.nm.nm_masks`."""
    if isinstance(pattern, NM):
        return nm_masks(
            grid, pattern=pattern, sparsity=sparsity, scope=scope, min_layer_sparsity=lo,
            max_layer_sparsity=hi, previous=previous, reduce=reduce, comm=comm, grouped=grouped,
        )
    if comm is None and _fast.applies(grid.values(), (sparsity, lo, hi)):
        kept = fast_select(
            sorted(grid), lambda n: grid[n], None if previous is None else previous.__getitem__,
            {n: s.numel() for n, s in grid.items()}, scope=scope, sparsity=sparsity, lo=lo, hi=hi,
        )
        if kept is not None:
            return {n: kept[n].reshape(s.shape) for n, s in grid.items()}
    pruned = select(flat_keys(grid, previous), scope=scope, sparsity=sparsity, lo=lo, hi=hi, comm=comm)
    return {n: ~pruned[n].reshape(s.shape) for n, s in grid.items()}


def fast_select(
    names: list[str],
    produce: Callable[[str], torch.Tensor],
    previous: Callable[[str], torch.Tensor | None] | None,
    sizes: Mapping[str, int],
    *,
    scope: str,
    sparsity: float | torch.Tensor,
    lo: float | torch.Tensor,
    hi: float | torch.Tensor,
    sampler: _fast.Sampler | None = None,
    placer: _fast.Placer | None = None,
) -> dict[str, torch.Tensor] | None:
    """Kept flat masks by the eager sample-and-settle selection (:mod:`fprune._fast`), or
    None where it defers to the general path. ``names`` in tie order (sorted); the layers
    ``placer`` covers get weight-shaped masks."""
    prev = (lambda _: None) if previous is None else previous
    counts = [sizes[n] for n in names]
    if scope == "local":
        return _fast.select_local(names, counts, produce, prev, sparsity=float(sparsity), sampler=sampler,
                                  placer=placer)
    return _fast.select_global(
        names, counts, produce, prev, sparsity=float(sparsity), lo=float(lo), hi=float(hi), sampler=sampler,
        placer=placer,
    )


def grid_masks(
    grid_scores: Mapping[str, torch.Tensor],
    *,
    pattern: str | Pattern,
    sparsity: float | torch.Tensor,
    scope: str = "global",
    min_layer_sparsity: float | torch.Tensor = 0.0,
    max_layer_sparsity: float | torch.Tensor = 0.98,
    previous: Mapping[str, torch.Tensor] | None = None,
    reduce: str = "mean",
) -> dict[str, torch.Tensor]:
    """Select units on already-reduced scores: the grid-level core of :func:`masks`.

    Use it when scores are kept on the grid (as a block-reduced snip_momentum accumulator
    is). For :class:`~fprune.patterns.Blocks` a grid has one score per block; for
    :class:`~fprune.patterns.NM` it is the 2-D view and ``reduce`` scores each group from
    its N lowest entries. Arguments as in :func:`masks`; ``previous`` are grid masks.

    Returns:
        Bool grid masks, True = kept.

    Example:
        >>> g = {"w": torch.tensor([[0.5, 2.0], [1.0, 3.0]])}   # a 2x2 block grid
        >>> grid_masks(g, pattern="4x1", sparsity=0.5)["w"].tolist()
        [[False, True], [False, True]]
    """
    func = "grid_masks"
    pattern, sparsity, scope, lo, hi, reduce = _options(
        func, pattern, sparsity, scope, min_layer_sparsity, max_layer_sparsity, reduce
    )
    grid_scores = _errors.tensor_dict(func, "grid_scores", grid_scores)
    for name, score in grid_scores.items():
        if score.ndim != 2:
            raise _errors.value_error(
                func, f"grid_scores[{name!r}] must be 2-D", tuple(score.shape),
                "Reduce weight-shaped scores with fprune.block_scores first.",
            )
    if isinstance(pattern, NM):
        check_divisible(func, grid_scores, pattern, skip_indivisible=False)
    previous = _errors.previous_masks(func, previous, "grid_scores", grid_scores)
    sharding = _sharded.detect(func, {"grid_scores": grid_scores, "previous": previous})
    if sharding is None:
        return _select(grid_scores, pattern, sparsity, scope, lo, hi, previous, reduce)
    # grid rows are the units' rows: any Shard(0) split keeps units whole
    local = _select(sharding.local(grid_scores), pattern, sparsity, scope, lo, hi,
                    None if previous is None else sharding.local(previous), reduce, sharding.comm)
    return sharding.wrap(local, {n: s.shape for n, s in grid_scores.items()})


def masks(
    scores: Mapping[str, torch.Tensor],
    *,
    pattern: str | Pattern,
    sparsity: float | torch.Tensor,
    scope: str = "global",
    min_layer_sparsity: float | torch.Tensor = 0.0,
    max_layer_sparsity: float | torch.Tensor = 0.98,
    previous: Mapping[str, torch.Tensor] | None = None,
    reduce: str = "mean",
    skip_indivisible: bool = False,
) -> dict[str, torch.Tensor]:
    """Compute pruning masks from weight-shaped scores.

    Units (blocks, or N:M groups) are pruned lowest score first, exactly
    ``floor(sparsity * n_units + 1e-9)`` of them (N:M: that many groups at sparsity
    ``sparsity * M / N``), in the order documented in :mod:`fprune.selection`.

    Args:
        scores: weight-shaped floating tensors (2 or more dims) keyed by parameter name.
        pattern: ``"4x1"``, ``"channelx1"``, ``"2:4"``, ... or a pattern object.
        sparsity: target fraction of pruned units, in [0, 1) (at most N/M for N:M).
        scope: ``"global"`` ranks all layers together; ``"local"`` gives every layer
            ``sparsity`` (the bounds are then only checked against ``sparsity``).
        min_layer_sparsity, max_layer_sparsity: per-layer bounds in global scope.
        previous: earlier masks (True = kept); their pruned units rank first, so masks are
            nested. A block counts as pruned when all of its weights are.
        reduce: block score reduction, ``"mean"``, ``"sum"`` or ``"max"`` (N:M: the
            reduction of the N scores a group would lose).
        skip_indivisible: leave layers the pattern does not divide dense (their previous
            mask, if any) instead of raising; list them with
            :func:`fprune.indivisible_layers`.

    Returns:
        Bool masks shaped like ``scores`` (True = kept), in the input's key order.

    Raises:
        ValueError: bad pattern, scope, reduce or fraction; ``min > sparsity`` or
            ``sparsity > max``; N:M ``sparsity > N/M``; an indivisible layer.
        TypeError: non-floating scores or non-bool previous masks.

    Example:
        >>> w = {"fc.weight": torch.tensor([[1., -4.], [2., 3.], [-5., 6.], [7., 0.5]])}
        >>> scores = {k: v.abs() for k, v in w.items()}
        >>> masks(scores, pattern="2x1", sparsity=0.5)["fc.weight"].int().tolist()
        [[0, 1], [0, 1], [1, 0], [1, 0]]
        >>> masks(scores, pattern="1:2", sparsity=0.5)["fc.weight"].int().tolist()
        [[0, 1], [0, 1], [0, 1], [1, 0]]
    """
    func = "masks"
    pattern, sparsity, scope, lo, hi, reduce = _options(
        func, pattern, sparsity, scope, min_layer_sparsity, max_layer_sparsity, reduce
    )
    scores = _errors.tensor_dict(func, "scores", scores)
    _ndim_at_least_2(func, scores)
    previous = _errors.previous_masks(func, previous, "scores", scores)
    skipped = check_divisible(func, scores, pattern, skip_indivisible=skip_indivisible)
    sharding = _sharded.detect(func, {"scores": scores, "previous": previous})
    comm, shapes = None, {n: s.shape for n, s in scores.items()}
    if sharding is not None:  # each rank its own rows (see fprune._sharded)
        sharding.check_units(func, {n: shapes[n] for n in scores if n not in skipped}, pattern)
        scores, comm = sharding.local(scores), sharding.comm
        previous = None if previous is None else sharding.local(previous)
    active = {n: s for n, s in scores.items() if n not in skipped}
    out: dict[str, torch.Tensor] = {}
    if active:
        grid = to_grid(active, pattern, reduce)  # validated above
        prev = None if previous is None else reduce_masks({n: previous[n] for n in active}, pattern=pattern)
        chosen = _select(grid, pattern, sparsity, scope, lo, hi, prev, reduce, comm)
        out = expand_masks(chosen, pattern=pattern, shapes={n: s.shape for n, s in active.items()})
    for n in skipped:  # left dense, or as they were
        out[n] = torch.ones_like(scores[n], dtype=torch.bool) if previous is None else previous[n]
    out = {n: out[n] for n in scores}
    return out if sharding is None else sharding.wrap(out, shapes)


def pattern_lock_masks(
    params: Mapping[str, torch.Tensor], *, pattern: str | Pattern, skip_indivisible: bool = False
) -> dict[str, torch.Tensor]:
    """Masks that keep exactly the existing non-zero structure of ``params``.

    :class:`~fprune.patterns.Blocks`: a block is kept iff any of its weights is non-zero
    (NaN counts as non-zero). :class:`~fprune.patterns.NM`: every non-zero weight is kept,
    every zero pruned, whatever the group counts.

    Args:
        params: weight tensors (2 or more dims) keyed by parameter name.
        pattern: the pattern whose structure is locked.
        skip_indivisible: give layers the pattern does not divide an all-True mask
            instead of raising.

    Returns:
        Bool masks shaped like ``params``.

    Example:
        >>> w = {"w": torch.tensor([[0., 1.], [0., 0.], [0., 0.], [0., 0.]])}
        >>> pattern_lock_masks(w, pattern="2x1")["w"].int().tolist()
        [[0, 1], [0, 1], [0, 0], [0, 0]]
    """
    func = "pattern_lock_masks"
    pattern = parse_pattern(pattern)
    params = _errors.tensor_dict(func, "params", params)
    _ndim_at_least_2(func, params)
    skipped = check_divisible(func, params, pattern, skip_indivisible=skip_indivisible)
    nonzero = {n: p != 0 for n, p in params.items() if n not in skipped}
    # A block is kept iff any entry is: the same reduction as reducing masks to the grid.
    locked = expand_masks(
        reduce_masks(nonzero, pattern=pattern), pattern=pattern,
        shapes={n: params[n].shape for n in nonzero},
    )
    return {
        n: locked[n] if n in locked else torch.ones_like(p, dtype=torch.bool)
        for n, p in params.items()
    }


def apply_masks(
    params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Zero the pruned weights: a new dict, with ``where(mask, param, 0)`` for masked keys.

    Parameters without a mask (biases, say) pass through unchanged. Pruned entries become
    exactly ``+0.0`` even if the weight was NaN or infinite; gradients flow to kept entries.

    Args:
        params: tensors keyed by parameter name.
        masks: bool masks for some or all of those names, shaped like them.

    Returns:
        A new dict with the keys of ``params``.

    Example:
        >>> p = {"w": torch.tensor([1., 2.]), "b": torch.tensor([3.])}
        >>> apply_masks(p, {"w": torch.tensor([True, False])})
        {'w': tensor([1., 0.]), 'b': tensor([3.])}
    """
    func = "apply_masks"
    params = _errors.tensor_dict(func, "params", params, floating=False)
    masks = _errors.bool_masks(func, "masks", masks)
    unexpected = sorted(set(masks) - set(params))
    if unexpected:
        raise _errors.value_error(
            func, "masks has names that params lacks", unexpected,
            "Give masks only for tensors in params.",
        )
    _errors.same_shapes(func, "masks", masks, "params", {n: params[n] for n in masks})
    return {
        name: torch.where(masks[name], p, torch.zeros((), dtype=p.dtype, device=p.device))
        if name in masks else p
        for name, p in params.items()
    }
