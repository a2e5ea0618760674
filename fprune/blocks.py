"""Block reduction and expansion on the 2-D view.

A pattern's *grid* is the tensor of its pruning units on the 2-D view: for
:class:`~fprune.patterns.Blocks` one entry per block (``[rows / N, cols / M]``), for
:class:`~fprune.patterns.NM` one entry per weight (``[rows, cols]``; the groups are formed at
selection). Scores are reduced to the grid, masks are computed on the grid, and grid masks
are expanded back to the weight's shape.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fprune import _errors
from fprune._dtypes import widen, widened
from fprune.layout import from_2d, shape_2d, to_2d
from fprune.patterns import NM, Pattern, parse_pattern

__all__ = [
    "REDUCTIONS",
    "block_scores",
    "check_divisible",
    "expand_blocks",
    "expand_masks",
    "grid_shape",
    "indivisible_layers",
    "reduce_blocks",
    "reduce_masks",
    "to_grid",
]

REDUCTIONS = ("mean", "sum", "max")


def reduce_blocks(
    view: torch.Tensor, block: tuple[int, int], *, reduce: str = "mean"
) -> torch.Tensor:
    """Reduce each ``block`` of a 2-D tensor to one value: the block grid.

    ``B[i, j] = R(view[i*bn:(i+1)*bn, j*bm:(j+1)*bm])`` with ``R`` in {mean, sum, max};
    NaN propagates. 16-bit inputs are reduced in (and returned as) float32. Each block is
    summed in row-major order whatever the input's memory layout (a transposed gradient
    included), so equal values give equal bits.

    Args:
        view: ``[rows, cols]`` floating tensor (a 2-D view).
        block: ``(bn, bm)`` dividing ``rows`` and ``cols``.
        reduce: ``"mean"``, ``"sum"`` or ``"max"``.

    Returns:
        ``[rows / bn, cols / bm]`` tensor.

    Example:
        >>> x = torch.tensor([[1., 2.], [3., 4.], [5., 6.], [7., 8.]])
        >>> reduce_blocks(x, (2, 1)).tolist()
        [[2.0, 3.0], [6.0, 7.0]]
        >>> reduce_blocks(x, (4, 2), reduce="max").tolist()
        [[8.0]]
    """
    reduce = _errors.choice("reduce_blocks", "reduce", reduce, REDUCTIONS)
    rows, cols = view.shape
    bn, bm = block
    if rows % bn or cols % bm:
        raise _errors.value_error(
            "reduce_blocks",
            "the block does not divide the tensor",
            _errors.detail(f"block {block} on shape {tuple(view.shape)}"),
            "Use a block whose sides divide the shape.",
        )
    if (bn, bm) == (1, 1):
        return widen(view)
    dense = view.to(widened(view.dtype), memory_format=torch.contiguous_format)
    tiles = dense.reshape(rows // bn, bn, cols // bm, bm)
    return _REDUCE[reduce](tiles, dim=(1, 3))


_REDUCE = {"mean": torch.mean, "sum": torch.sum, "max": torch.amax}


def expand_blocks(grid: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Repeat every grid entry over its ``block``: the inverse of a block reduction's shape.

    Example:
        >>> expand_blocks(torch.tensor([[True, False]]), (2, 1)).tolist()
        [[True, False], [True, False]]
    """
    bn, bm = block
    if (bn, bm) == (1, 1):
        return grid
    rows, cols = grid.shape
    return grid[:, None, :, None].expand(rows, bn, cols, bm).reshape(rows * bn, cols * bm)


def grid_shape(pattern: str | Pattern, shape: tuple[int, ...] | torch.Size) -> tuple[int, int]:
    """The grid shape of a weight of ``shape``: its block grid, or its 2-D view for N:M.

    Example:
        >>> grid_shape("4x1", (8, 3, 2, 2)), grid_shape("2:4", (8, 3, 2, 2))
        ((2, 12), (8, 12))
    """
    pattern = parse_pattern(pattern)
    view = shape_2d(shape)
    return view if isinstance(pattern, NM) else pattern.grid_shape(view)


def indivisible_layers(params: Mapping[str, torch.Tensor], *, pattern: str | Pattern) -> list[str]:
    """Names of the tensors whose 2-D view the pattern does not tile, in sorted order.

    Example:
        >>> indivisible_layers({"a": torch.zeros(8, 8), "b": torch.zeros(6, 8)}, pattern="4x1")
        ['b']
    """
    pattern = parse_pattern(pattern)
    return sorted(
        name
        for name, p in params.items()
        if p.numel() and not pattern.divides(shape_2d(p.shape))  # an empty layer: no units
    )


def check_divisible(
    func: str, params: Mapping[str, torch.Tensor], pattern: Pattern, *, skip_indivisible: bool
) -> frozenset[str]:
    """Raise for the first layer the pattern does not tile, or return them all when skipping;
    layers with no weights (a zero-size dimension) have no units to prune, so they are
    always returned (left dense: an empty mask)."""
    empty = frozenset(n for n, p in params.items() if p.numel() == 0)
    bad = indivisible_layers({n: p for n, p in params.items() if n not in empty}, pattern=pattern)
    if bad and not skip_indivisible:
        name = bad[0]
        shape = tuple(params[name].shape)
        view = shape_2d(shape)
        need = (
            f"inputs divisible by {pattern.m}"
            if isinstance(pattern, NM)
            else (f"a 2-D view tiled by blocks of {pattern.block_shape(view)}")
        )
        raise _errors.value_error(
            func,
            f"pattern {str(pattern)!r} does not divide layer {name!r}",
            _errors.detail(f"shape {shape}, 2-D view {view}"),
            f"The pattern needs {need}; pick another pattern, leave the layer out, "
            "or pass skip_indivisible=True to leave such layers dense.",
        )
    return frozenset(bad) | empty


def block_scores(
    scores: Mapping[str, torch.Tensor], *, pattern: str | Pattern, reduce: str = "mean"
) -> dict[str, torch.Tensor]:
    """Reduce weight-shaped scores to each layer's grid on the 2-D view.

    For :class:`~fprune.patterns.Blocks` the grid has one score per block, reduced with
    ``reduce``; for :class:`~fprune.patterns.NM` it is the 2-D view itself (N:M groups are
    scored at selection, from the N lowest scores of each group).

    Args:
        scores: weight-shaped floating tensors keyed by parameter name.
        pattern: a pattern string or object; it must divide every layer.
        reduce: ``"mean"``, ``"sum"`` or ``"max"``.

    Returns:
        Grid-shaped scores with the same keys.

    Example:
        >>> s = {"w": torch.arange(8.).reshape(4, 2)}
        >>> block_scores(s, pattern="2x1")["w"].tolist()
        [[1.0, 2.0], [5.0, 6.0]]
    """
    pattern = parse_pattern(pattern)
    reduce = _errors.choice("block_scores", "reduce", reduce, REDUCTIONS)
    _errors.tensor_dict("block_scores", "scores", scores)
    check_divisible("block_scores", scores, pattern, skip_indivisible=False)
    return to_grid(scores, pattern, reduce)


def to_grid(
    scores: Mapping[str, torch.Tensor], pattern: Pattern, reduce: str
) -> dict[str, torch.Tensor]:
    """:func:`block_scores` without the checks, for callers that have validated already."""
    out = {}
    for name, score in scores.items():
        view = to_2d(score)
        if isinstance(pattern, NM):
            out[name] = view
        else:
            out[name] = reduce_blocks(view, pattern.block_shape(tuple(view.shape)), reduce=reduce)
    return out


def reduce_masks(
    masks: Mapping[str, torch.Tensor], *, pattern: str | Pattern
) -> dict[str, torch.Tensor]:
    """Map weight-shaped masks to grid masks: a block is pruned iff all its weights are.

    For N:M the grid is the 2-D view, so this is the 2-D view of each mask.

    Example:
        >>> m = {"w": torch.tensor([[True, False], [False, False]])}
        >>> reduce_masks(m, pattern="2x1")["w"].tolist()
        [[True, False]]
    """
    pattern = parse_pattern(pattern)
    out = {}
    for name, mask in masks.items():
        view = to_2d(mask)
        if isinstance(pattern, NM):
            out[name] = view
            continue
        rows, cols = view.shape
        bn, bm = pattern.block_shape((rows, cols))
        if (bn, bm) == (1, 1):
            out[name] = view  # a view, not a copy: 1x1 blocks are the weights
            continue
        out[name] = view.reshape(rows // bn, bn, cols // bm, bm).any(dim=3).any(dim=1)
    return out


def expand_masks(
    masks: Mapping[str, torch.Tensor],
    *,
    pattern: str | Pattern,
    shapes: Mapping[str, torch.Size | tuple[int, ...]],
) -> dict[str, torch.Tensor]:
    """Expand grid masks back to weight-shaped masks (the inverse of :func:`reduce_masks`).

    Example:
        >>> g = {"w": torch.tensor([[True, False]])}
        >>> expand_masks(g, pattern="2x1", shapes={"w": (2, 2)})["w"].tolist()
        [[True, False], [True, False]]
    """
    pattern = parse_pattern(pattern)
    out = {}
    for name, grid in masks.items():
        shape = tuple(shapes[name])
        view_shape = shape_2d(shape)
        block = (1, 1) if isinstance(pattern, NM) else pattern.block_shape(view_shape)
        out[name] = from_2d(expand_blocks(grid, block), shape)
    return out
