"""Masks from scores, pattern, sparsity, scope and bounds; pattern-lock masks; applying masks.

A mask is a ``torch.bool`` tensor shaped like its parameter, ``True`` = kept. The functions
here compose the bottom-layer pieces: scores are reduced to the pattern's grid
(:mod:`fprune.blocks`), units are selected exactly (:mod:`fprune.selection`, or
:mod:`fprune.nm` for N:M), and grid masks are expanded back to the weights.

This module is also the one dispatch point: an eager call on the CPU runs the eager
accelerator (:mod:`fprune._eager`, the same masks with fewer passes), sharded ``DTensor``
inputs run the sharded selection (:mod:`fprune._sharded`), and anything else (compiled,
``vmap``, CUDA) runs the math. :func:`update_masks` and :func:`update_scores` are the
pruner's entry points.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch

from fprune import _eager, _errors, _sharded
from fprune._sharded import select as sharded
from fprune.blocks import REDUCTIONS, check_divisible, expand_masks, reduce_masks, to_grid
from fprune.layout import check_weights
from fprune.nm import nm_masks
from fprune.patterns import NM, Pattern, parse_pattern
from fprune.scores import Criterion, LayerScoring
from fprune.selection import check_bounds, flat_keys, select

__all__ = [
    "SCOPES",
    "apply_masks",
    "global_masks",
    "grid_masks",
    "local_masks",
    "masks",
    "pattern_lock_masks",
    "select_grids",
    "update_masks",
    "update_scores",
]

SCOPES = ("global", "local")

_Tensors = Mapping[str, torch.Tensor]


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
            func,
            f"pattern {str(pattern)!r} cannot exceed sparsity N/M = {pattern.max_sparsity}",
            sparsity,
            f"Lower sparsity to at most {pattern.max_sparsity}, or use a larger N:M ratio.",
        )
    return pattern, sparsity, scope, lo, hi, reduce


def _math_select(
    grid: _Tensors,
    pattern: Pattern,
    sparsity: float | torch.Tensor,
    scope: str,
    lo: float | torch.Tensor,
    hi: float | torch.Tensor,
    previous: _Tensors | None,
    reduce: str,
    comm: sharded.Comm | None,
) -> dict[str, torch.Tensor]:
    """Kept grid masks by the math (any device, traceable); with ``comm``, of this rank's
    shards, the counts exchanged (eager)."""
    choose = select if comm is None else functools.partial(sharded.select, comm=comm)
    if isinstance(pattern, NM):
        return nm_masks(
            grid,
            pattern=pattern,
            sparsity=sparsity,
            scope=scope,
            min_layer_sparsity=lo,
            max_layer_sparsity=hi,
            previous=previous,
            reduce=reduce,
            choose=choose,
        )
    pruned = choose(flat_keys(grid, previous), scope=scope, sparsity=sparsity, lo=lo, hi=hi)
    return {n: ~pruned[n].reshape(s.shape) for n, s in grid.items()}


def select_grids(
    grid: _Tensors,
    *,
    pattern: Pattern,
    sparsity: float | torch.Tensor,
    scope: str,
    lo: float | torch.Tensor,
    hi: float | torch.Tensor,
    previous: _Tensors | None,
    reduce: str,
    comm: sharded.Comm | None = None,
) -> dict[str, torch.Tensor]:
    """Kept grid masks of validated grid-shaped scores (no checks): the eager accelerator
    where it applies, else the math; with ``comm``, of this rank's shards."""
    if comm is None and _eager.applies(
        [*grid.values(), *(previous or {}).values(), sparsity, lo, hi]
    ):
        kept = _eager.select_grids(
            grid,
            pattern=pattern,
            sparsity=float(sparsity),
            scope=scope,
            lo=float(lo),
            hi=float(hi),
            previous=previous,
            reduce=reduce,
        )
        if kept is not None:
            return kept
    return _math_select(grid, pattern, sparsity, scope, lo, hi, previous, reduce, comm)


def update_masks(
    scores: _Tensors | LayerScoring,
    previous: _Tensors,
    *,
    pattern: Pattern,
    sparsity: float | torch.Tensor,
    scope: str,
    lo: float | torch.Tensor,
    hi: float | torch.Tensor,
    reduce: str,
    comm: sharded.Comm | None = None,
) -> dict[str, torch.Tensor]:
    """A prune step's new weight-shaped kept masks, nested in ``previous`` (no checks).

    Args:
        scores: grid-shaped scores of the layers of ``previous``, or a
            :class:`~fprune.scores.LayerScoring` to score them layer by layer (an eager step
            on the CPU then holds one layer's scores at a time).
        previous: the weight-shaped masks; their pruned units rank first, and the new masks
            are ANDed with them.
        pattern, sparsity, scope, lo, hi, reduce: as :func:`masks` (``lo``, ``hi``: the
            per-layer bounds).
        comm: the collectives of a sharded step (the tensors are this rank's shards).
    """
    tensors = [*previous.values(), sparsity, lo, hi]
    if isinstance(scores, LayerScoring):
        tensors += [*scores.params.values(), *(scores.grads or {}).values()]
    else:
        tensors += list(scores.values())
    if comm is None and _eager.applies(tensors):
        new = _eager.update_masks(
            scores,
            previous,
            pattern=pattern,
            sparsity=float(sparsity),
            scope=scope,
            lo=float(lo),
            hi=float(hi),
            reduce=reduce,
        )
        if new is not None:
            return new
    grid = to_grid(scores.scores(), pattern, reduce) if isinstance(scores, LayerScoring) else scores
    chosen = select_grids(
        grid,
        pattern=pattern,
        sparsity=sparsity,
        scope=scope,
        lo=lo,
        hi=hi,
        previous=reduce_masks(previous, pattern=pattern),
        reduce=reduce,
        comm=comm,
    )
    expanded = expand_masks(chosen, pattern=pattern, shapes={n: previous[n].shape for n in chosen})
    return {n: expanded[n] & previous[n] for n in grid}


def update_scores(
    criterion: Criterion, aux: _Tensors, params: _Tensors, grads: _Tensors | None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``criterion.update(aux, params, grads)``; by the eager accelerator for an accumulating
    criterion with a layer score on the CPU (the same scores, into reused buffers)."""
    fast = (
        criterion.accumulation is not None
        and criterion.layer_score is not None
        and grads is not None
    )
    if fast and _eager.applies([*aux.values(), *params.values(), *grads.values()]):  # type: ignore[union-attr]
        return _eager.accumulate(criterion, aux, params, grads)  # type: ignore[arg-type]
    return criterion.update(aux, params, grads)


def _on_shards(
    func: str,
    tensors: _Tensors,
    previous: _Tensors | None,
    compute: Callable[[_Tensors, _Tensors | None, sharded.Comm | None], dict[str, torch.Tensor]],
    names: tuple[str, str] = ("scores", "previous"),
) -> dict[str, torch.Tensor]:
    """``compute(tensors, previous, comm)`` on plain tensors, or on ``Shard(0)`` DTensors'
    local shards (their rows come in flat order) with the masks wrapped back."""
    sharding = _sharded.detect(func, {names[0]: tensors, names[1]: previous})
    if sharding is None:
        return compute(tensors, previous, None)
    local = compute(
        sharding.local(tensors),
        None if previous is None else sharding.local(previous),
        sharding.comm,
    )
    return sharding.wrap(local, {n: s.shape for n, s in tensors.items()})


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
                func,
                f"grid_scores[{name!r}] must be 2-D",
                tuple(score.shape),
                "Reduce weight-shaped scores with fprune.block_scores first.",
            )
    if isinstance(pattern, NM):
        check_divisible(func, grid_scores, pattern, skip_indivisible=False)
    previous = _errors.previous_masks(func, previous, "grid_scores", grid_scores)

    def compute(
        g: _Tensors, p: _Tensors | None, comm: sharded.Comm | None
    ) -> dict[str, torch.Tensor]:
        # grid rows are the units' rows: any Shard(0) split keeps units whole
        return select_grids(
            g,
            pattern=pattern,
            sparsity=sparsity,
            scope=scope,
            lo=lo,
            hi=hi,
            previous=p,
            reduce=reduce,
            comm=comm,
        )

    return _on_shards(func, grid_scores, previous, compute, ("grid_scores", "previous"))


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
            nested and none revives, as long as ``sparsity`` asks for at least as many
            units as are already pruned (with fewer, the count is still exact and the
            surplus previously pruned units revive). A block counts as pruned when all of
            its weights are.
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
    check_weights(func, scores)
    previous = _errors.previous_masks(func, previous, "scores", scores)
    skipped = check_divisible(func, scores, pattern, skip_indivisible=skip_indivisible)
    sharding = _sharded.detect(func, {"scores": scores, "previous": previous})
    if sharding is not None:  # each rank its own rows (see fprune._sharded)
        active = {n: s.shape for n, s in scores.items() if n not in skipped}
        sharding.check_units(func, active, pattern)

    options = dict(pattern=pattern, sparsity=sparsity, scope=scope, lo=lo, hi=hi, reduce=reduce)
    return _on_shards(func, scores, previous, functools.partial(_masks, skipped=skipped, **options))


def _masks(
    scores: _Tensors,
    previous: _Tensors | None,
    comm: sharded.Comm | None,
    *,
    skipped: frozenset[str],
    pattern: Pattern,
    sparsity: float | torch.Tensor,
    scope: str,
    lo: float | torch.Tensor,
    hi: float | torch.Tensor,
    reduce: str,
) -> dict[str, torch.Tensor]:
    """:func:`masks` after its checks: the layers not ``skipped`` selected on their grids and
    expanded; the skipped ones dense, or as they were."""
    active = {n: v for n, v in scores.items() if n not in skipped}
    out: dict[str, torch.Tensor] = {}
    if active:
        grid = to_grid(active, pattern, reduce)  # validated above
        prev = (
            None
            if previous is None
            else reduce_masks({n: previous[n] for n in active}, pattern=pattern)
        )
        chosen = select_grids(
            grid,
            pattern=pattern,
            sparsity=sparsity,
            scope=scope,
            lo=lo,
            hi=hi,
            previous=prev,
            reduce=reduce,
            comm=comm,
        )
        out = expand_masks(chosen, pattern=pattern, shapes={n: v.shape for n, v in active.items()})
    for n in skipped:
        out[n] = torch.ones_like(scores[n], dtype=torch.bool) if previous is None else previous[n]
    return {n: out[n] for n in scores}


def _selection_inputs(
    func: str, scores: object, previous: object, sparsity: object
) -> tuple[_Tensors, _Tensors | None, float | torch.Tensor]:
    scores = _errors.tensor_dict(func, "scores", scores)
    previous = _errors.previous_masks(func, previous, "scores", scores)
    return scores, previous, _errors.fraction(func, "sparsity", sparsity)


def _flat_select(
    scores: _Tensors,
    previous: _Tensors | None,
    *,
    scope: str,
    sparsity: float | torch.Tensor,
    lo: float | torch.Tensor,
    hi: float | torch.Tensor,
    comm: sharded.Comm | None,
) -> dict[str, torch.Tensor]:
    """Kept masks of scores of any shapes, each layer's units in flat order."""
    flat = {n: s.reshape(1, -1) for n, s in scores.items()}  # one row: any shape, flat order
    prev = None if previous is None else {n: p.reshape(1, -1) for n, p in previous.items()}
    kept = select_grids(
        flat,
        pattern=_UNITS,
        sparsity=sparsity,
        scope=scope,
        lo=lo,
        hi=hi,
        previous=prev,
        reduce="mean",
        comm=comm,
    )
    return {n: kept[n].reshape(s.shape) for n, s in scores.items()}


_UNITS = parse_pattern("1x1")  # a grid's own entries are the units


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
    scores, previous, sparsity = _selection_inputs("local_masks", scores, previous, sparsity)

    def compute(
        s: _Tensors, p: _Tensors | None, comm: sharded.Comm | None
    ) -> dict[str, torch.Tensor]:
        return _flat_select(s, p, scope="local", sparsity=sparsity, lo=0.0, hi=1.0, comm=comm)

    return _on_shards("local_masks", scores, previous, compute)


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
    scores, previous, sparsity = _selection_inputs(func, scores, previous, sparsity)
    lo, hi = check_bounds(func, sparsity, min_layer_sparsity, max_layer_sparsity)

    def compute(
        s: _Tensors, p: _Tensors | None, comm: sharded.Comm | None
    ) -> dict[str, torch.Tensor]:
        return _flat_select(s, p, scope="global", sparsity=sparsity, lo=lo, hi=hi, comm=comm)

    return _on_shards(func, scores, previous, compute)


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
    check_weights(func, params)
    skipped = check_divisible(func, params, pattern, skip_indivisible=skip_indivisible)
    nonzero = {n: p != 0 for n, p in params.items() if n not in skipped}
    # A block is kept iff any entry is: the same reduction as reducing masks to the grid.
    locked = expand_masks(
        reduce_masks(nonzero, pattern=pattern),
        pattern=pattern,
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
            func,
            "masks has names that params lacks",
            unexpected,
            "Give masks only for tensors in params.",
        )
    _errors.same_shapes(func, "masks", masks, "params", {n: params[n] for n in masks})
    return {
        name: torch.where(masks[name], p, torch.zeros((), dtype=p.dtype, device=p.device))
        if name in masks
        else p
        for name, p in params.items()
    }
