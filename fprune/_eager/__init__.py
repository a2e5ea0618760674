"""The eager accelerator: faster CPU code for the masks and scores the math modules define.

Eager calls may read tensor values back to Python, reuse buffers and pick a layout by
size; traced calls (``torch.compile``, ``vmap``) may not. So the math modules hold the one
traceable implementation of each primitive, and this package holds eager-CPU code that
gives the same results bit for bit, reached only from :mod:`fprune.masking` (the dispatch
point) and proven equal by ``tests/test_eager.py``:

* :mod:`~fprune._eager.settle`: exact selection by a sample that brackets the threshold and
  one pass that settles it (instead of a radix select over every key);
* :mod:`~fprune._eager.nm`: N:M groups ranked in packed words;
* :mod:`~fprune._eager.scoring`: scores and accumulators one layer at a time into reused
  buffers, block layers reduced in cache-sized pieces.

Every function here may decline (return None) where its method does not apply; the caller
then runs the math. The sizes it tunes itself by are :class:`fprune._tuning.Tuning`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch

from fprune import _trace, _tuning
from fprune._eager import nm, settle
from fprune._eager.keys import all_true
from fprune._eager.sample import Units
from fprune._eager.scoring import BlockPlacement, LayerScorer, accumulate
from fprune.blocks import expand_masks, grid_shape, reduce_masks
from fprune.patterns import NM, Pattern
from fprune.scores import LayerScoring

__all__ = ["accumulate", "applies", "select_grids", "update_masks"]

_Tensors = Mapping[str, torch.Tensor]


def applies(tensors: Iterable[object]) -> bool:
    """Whether the eager accelerator may run on these tensors (other values are ignored):
    nothing traced, and everything on the CPU (on a GPU the math's few large kernels beat
    passes with host round trips); and not turned off (:func:`fprune._tuning.tuned`)."""
    on_cpu = all(
        t.device.type == "cpu" and not _trace.tracing(t)
        for t in tensors
        if isinstance(t, torch.Tensor)
    )
    return on_cpu and _tuning.current().eager  # (the setting is read in eager calls only)


def select_grids(
    grid: _Tensors,
    *,
    pattern: Pattern,
    sparsity: float,
    scope: str,
    lo: float,
    hi: float,
    previous: _Tensors | None,
    reduce: str,
) -> dict[str, torch.Tensor] | None:
    """Kept grid masks of grid-shaped scores (:func:`fprune.masking.grid_masks` after its
    checks), or None where the eager selection declines."""
    if isinstance(pattern, NM):
        return nm.nm_masks(
            grid,
            pattern=pattern,
            sparsity=sparsity,
            scope=scope,
            lo=lo,
            hi=hi,
            previous=previous,
            reduce=reduce,
        )
    names = sorted(grid)
    units = Units(grid.__getitem__, (lambda _: None) if previous is None else previous.__getitem__)
    kept = _select(names, [grid[n].numel() for n in names], units, scope, sparsity, lo, hi)
    return None if kept is None else {n: kept[n].reshape(s.shape) for n, s in grid.items()}


def _select(
    names: list[str],
    sizes: list[int],
    units: Units,
    scope: str,
    sparsity: float,
    lo: float,
    hi: float,
) -> dict[str, torch.Tensor] | None:
    if scope == "local":
        return settle.select_local(names, sizes, units, sparsity=sparsity)
    return settle.select_global(names, sizes, units, sparsity=sparsity, lo=lo, hi=hi)


class _LazyGrids(Mapping[str, torch.Tensor]):
    """A read-only mapping that scores each layer on access (into buffers the layers share)."""

    def __init__(self, get: Callable[[str], torch.Tensor], names: tuple[str, ...]) -> None:
        self._get, self._names = get, names

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        return self._get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def update_masks(
    scores: _Tensors | LayerScoring,
    previous: _Tensors,
    *,
    pattern: Pattern,
    sparsity: float,
    scope: str,
    lo: float,
    hi: float,
    reduce: str,
) -> dict[str, torch.Tensor] | None:
    """:func:`fprune.masking.update_masks` for an eager step on the CPU, one layer's scores
    at a time, so memory beyond the new masks is of the order of the largest layer; or None
    where the eager selection declines. ``scores`` are grid-shaped, or a
    :class:`~fprune.scores.LayerScoring` to score layer by layer."""
    if isinstance(scores, LayerScoring):
        scorer = LayerScorer(
            scores.layer_score,
            scores.params,
            scores.grads,
            uses_grads=scores.uses_grads,
            pattern=pattern,
            reduce=reduce,
        )
        grid_of, sample_of, grouped_of = scorer.grid, scorer.sample, scorer.grouped
    else:
        grid_of, sample_of, grouped_of = scores.__getitem__, None, None
    # the layers whose previous mask prunes something: one read of each mask, here only
    partial = {n: m for n, m in previous.items() if not all_true(m)}
    if isinstance(pattern, NM):  # a layer left out of ``partial`` keeps everything
        chosen = nm.nm_masks(
            _LazyGrids(grid_of, tuple(previous)),
            pattern=pattern,
            sparsity=sparsity,
            scope=scope,
            lo=lo,
            hi=hi,
            previous=reduce_masks(partial, pattern=pattern),
            reduce=reduce,
            grouped=grouped_of,
        )
        return {
            n: _and_previous(_expand(chosen.pop(n), n, pattern, previous), n, partial)
            for n in previous
        }
    shapes = {n: grid_shape(pattern, tuple(m.shape)) for n, m in previous.items()}
    placement = BlockPlacement(
        pattern, {n: tuple(m.shape) for n, m in previous.items()}
    )  # 2-D block layers
    units = Units(
        grid_of,
        lambda n: reduce_masks({n: partial[n]}, pattern=pattern)[n] if n in partial else None,
        sample_of,
        placement,
    )
    names = sorted(previous)
    kept = _select(names, [math.prod(shapes[n]) for n in names], units, scope, sparsity, lo, hi)
    if kept is None:
        return None
    out = {}
    for name in previous:  # one layer at a time, dropping its grid mask
        mask = kept.pop(name)  # weight-shaped already where the placement covers the layer
        mask = (
            mask
            if placement.covers(name)
            else _expand(mask.reshape(shapes[name]), name, pattern, previous)
        )
        out[name] = _and_previous(mask, name, partial)
    return out


def _expand(
    grid_mask: torch.Tensor, name: str, pattern: Pattern, previous: _Tensors
) -> torch.Tensor:
    """A layer's grid mask expanded to its weight's shape."""
    return expand_masks({name: grid_mask}, pattern=pattern, shapes={name: previous[name].shape})[
        name
    ]


def _and_previous(mask: torch.Tensor, name: str, partial: _Tensors) -> torch.Tensor:
    """A layer's new weight-shaped mask ANDed with its previous mask if that is in ``partial``
    (it prunes something): in place when the mask is a fresh tensor (not a broadcast view)."""
    if name not in partial:
        return mask
    return mask.__iand__(partial[name]) if mask.is_contiguous() else mask & partial[name]
