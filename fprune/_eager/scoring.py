"""Scores for eager calls, one layer at a time into reused buffers (private to the
accelerator): the grids :func:`fprune.blocks.to_grid` gives, and the accumulators a
criterion's :class:`~fprune.scores.Accumulation` gives, with fewer fresh tensors.

A fresh weight-sized tensor per layer costs page faults comparable to the elementwise work
itself; scoring each layer into one buffer sized for the largest layer, and reducing a 2-D
block layer a few block rows at a time while they are in cache, avoids both.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fprune import _errors, _tuning
from fprune._dtypes import widen, widened
from fprune._eager.nm import ranks_by_position
from fprune._eager.sample import diagonal, diagonal_view, sample_positions
from fprune._eager.scratch import Scratch
from fprune.blocks import expand_blocks, reduce_blocks, to_grid
from fprune.layout import shape_2d, to_2d
from fprune.patterns import NM, Pattern
from fprune.scores import Accumulation, Criterion, LayerScore

__all__ = ["BlockPlacement", "LayerScorer", "accumulate", "fold", "reduce_into", "reduce_scored"]

_Tensors = Mapping[str, torch.Tensor]


def reduce_into(
    view: torch.Tensor, block: tuple[int, int], reduce: str, out: torch.Tensor | None
) -> torch.Tensor:
    """:func:`fprune.blocks.reduce_blocks` (unchecked, blocks larger than 1x1), written into
    ``out`` when given (``[rows / bn, cols / bm]`` of the result dtype)."""
    rows, cols = view.shape
    bn, bm = block
    tiles = widen(view).reshape(rows // bn, bn, cols // bm, bm)
    if reduce == "mean":
        return torch.mean(tiles, dim=(1, 3), out=out)
    if reduce == "sum":
        return torch.sum(tiles, dim=(1, 3), out=out)
    return torch.amax(tiles, dim=(1, 3), out=out)


def reduce_scored(
    score: LayerScore,
    w: torch.Tensor,
    g: torch.Tensor | None,
    block: tuple[int, int],
    reduce: str,
    scratch: Scratch,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``out`` = the block reduction of ``score(w, g)`` for a 2-D weight whose block divides it,
    a few block rows at a time (about ``piece`` weights): each piece is scored into
    ``scratch`` and reduced into its rows of ``out`` while it is still in cache. ``score`` is
    element-wise and each block is reduced on its own, so the pieces give the whole layer's
    reduction bit for bit. ``out``: ``[rows / bn, cols / bm]`` of the reduction's dtype
    (16-bit scores are reduced in float32); a fresh one when not given."""
    rows, cols = w.shape
    bn, bm = block
    if out is None:
        out = torch.empty(rows // bn, cols // bm, dtype=widened(w.dtype), device=w.device)
    pieces = -(-w.numel() // _tuning.current().piece)
    step = -(-(rows // bn) // pieces) * bn  # rows a piece: whole blocks
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        part = score(
            w[start:stop],
            None if g is None else g[start:stop],
            out=scratch.get((stop - start, cols), w.dtype, w.device),
        )
        reduce_into(part, block, reduce, out[start // bn : stop // bn])
    return out


class BlockPlacement:
    """Where the units of a block grid lie in 2-D weights: a :class:`fprune._eager.sample.Placer`
    for the 2-D weights whose block is larger than 1x1 (a 1x1 grid is the weight itself;
    other layouts are expanded afterwards)."""

    def __init__(self, pattern: Pattern, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.shapes = {n: (int(s[0]), int(s[1])) for n, s in shapes.items() if len(s) == 2}
        self.blocks = (
            {}
            if isinstance(pattern, NM)
            else {
                n: block
                for n, s in self.shapes.items()
                if (block := pattern.block_shape(s)) != (1, 1)
            }
        )

    def covers(self, name: str) -> bool:
        return name in self.blocks

    def spread(self, name: str, units: torch.Tensor) -> torch.Tensor:
        (rows, cols), (bn, bm) = self.shapes[name], self.blocks[name]
        # fresh and contiguous (a grid of one row or column expands to a broadcast view)
        return expand_blocks(units.reshape(rows // bn, cols // bm), (bn, bm)).contiguous()


class LayerScorer:
    """A layer's unit scores on demand, from an element-wise ``layer_score`` of its weight and
    gradient, into buffers every layer reuses: a view handed out is valid until the next
    layer is scored. Used by the eager selection, which reads one layer at a time."""

    def __init__(
        self,
        layer_score: LayerScore,
        params: _Tensors,
        grads: _Tensors | None,
        *,
        uses_grads: bool,
        pattern: Pattern,
        reduce: str,
    ) -> None:
        self.layer_score, self.params, self.grads, self.uses_grads = (
            layer_score,
            params,
            grads,
            uses_grads,
        )
        self.pattern, self.reduce = pattern, reduce
        self.scratch = Scratch(params.values())
        self.grid_scratch = Scratch(())  # block grids, sized as they come

    def _grad(self, name: str) -> torch.Tensor | None:
        return None if self.grads is None else self.grads[name]

    def grid(self, name: str) -> torch.Tensor:
        """The layer's grid scores (as :func:`fprune.blocks.to_grid` of its score)."""
        w, g = self.params[name], self._grad(name)
        if w.ndim == 2 and not isinstance(self.pattern, NM):
            block = self.pattern.block_shape(tuple(w.shape))
            if block != (1, 1):  # a few block rows at a time, each reduced while in cache
                into = self.grid_scratch.get(
                    (w.shape[0] // block[0], w.shape[1] // block[1]), widened(w.dtype), w.device
                )
                return reduce_scored(self.layer_score, w, g, block, self.reduce, self.scratch, into)
        score = self.layer_score(w, g, out=self.scratch.like(w))
        view = to_2d(score)
        block = (
            (1, 1) if isinstance(self.pattern, NM) else self.pattern.block_shape(tuple(view.shape))
        )
        if block == (1, 1):
            return to_grid({name: score}, self.pattern, self.reduce)[name]
        shape = (view.shape[0] // block[0], view.shape[1] // block[1])
        return reduce_into(
            view, block, self.reduce, self.grid_scratch.get(shape, widen(view).dtype, view.device)
        )

    def grouped(self, name: str) -> torch.Tensor | None:
        """An N:M layer's scores grouped, ``[rows, cols / M, M]``, each group position's scores
        contiguous: scored a position at a time, from strided views of the weights, so its
        groups rank without gathering columns; None where that does not apply."""
        w, m = self.params[name], getattr(self.pattern, "m", 0)
        if (
            not isinstance(self.pattern, NM)
            or w.ndim != 2
            or not w.is_contiguous()
            or not ranks_by_position(m, w.device)
        ):
            return None
        (rows, cols) = w.shape
        groups = rows * cols // m
        g = self._grad(name)
        g = None if g is None else g.reshape(groups, m)
        out = self.scratch.get((m, groups), w.dtype, w.device)  # the buffer grid would use
        w_groups = w.view(groups, m)
        for i in range(m):
            self.layer_score(w_groups[:, i], None if g is None else g[:, i], out=out[i])
        return out.t().view(rows, cols // m, m)

    def sample(self, name: str, stride: int) -> torch.Tensor | None:
        """The unit scores ``grid_sample(grid, stride)`` takes, for the bracket, from only the
        weights of those units (a 2-D contiguous weight with blocks of at most
        ``sampled_block`` weights); None otherwise."""
        w = self.params[name]
        if w.ndim != 2 or not w.is_contiguous() or isinstance(self.pattern, NM):
            return None
        block = self.pattern.block_shape(tuple(w.shape))
        if block[0] * block[1] > _tuning.current().sampled_block:
            return None
        g = self._grad(name) if self.uses_grads else None  # magnitude: w only
        rows, cols = w.shape
        if diagonal(
            rows // block[0], cols // block[1], stride
        ):  # one strided view of the sampled blocks
            g_units = None if g is None else diagonal_view(g, block, stride)
            return self._reduced(diagonal_view(w, block, stride), g_units, block, rows)
        if block == (1, 1):
            w_units = w.reshape(-1)[::stride]
            return self.layer_score(w_units, None if g is None else g.reshape(-1)[::stride])
        across = cols // block[1]
        if across % stride == 0:  # every stride-th column of every block row: one strided view
            grid_view = (rows // block[0], block[0], across, block[1])
            return self._reduced(
                w.view(grid_view)[:, :, ::stride],
                None if g is None else g.view(grid_view)[:, :, ::stride],
                block,
                rows,
            )
        return self._gathered(w, g, block, stride)

    def _reduced(
        self, w_units: torch.Tensor, g_units: torch.Tensor | None, block: tuple[int, int], rows: int
    ) -> torch.Tensor:
        """The block reduction of the layer score of strided views of the sampled blocks."""
        score = self.layer_score(
            w_units,
            g_units,
            out=torch.empty(w_units.shape, dtype=w_units.dtype, device=w_units.device),
        )
        if block == (1, 1):
            return score.reshape(-1)
        return reduce_blocks(score.view(rows, -1), block, reduce=self.reduce).reshape(-1)

    def _gathered(
        self, w: torch.Tensor, g: torch.Tensor | None, block: tuple[int, int], stride: int
    ) -> torch.Tensor:
        """The sampled blocks gathered by flat index (a grid the stride does not divide)."""
        (rows, cols), (bn, bm) = w.shape, block
        across = cols // bm
        at = sample_positions(rows // bn, across, stride, w.device)
        first = (at // across) * (bn * cols) + (at % across) * bm  # a unit's first weight
        within = (
            torch.arange(bn, device=w.device)[:, None] * cols + torch.arange(bm, device=w.device)
        ).reshape(-1)
        flat = (first[:, None] + within).reshape(-1, bn, bm)  # [units, bn, bm] flat indices
        w_units = torch.take(w, flat)
        score = self.layer_score(
            w_units, None if g is None else torch.take(g, flat), out=torch.empty_like(w_units)
        )
        return reduce_blocks(score.reshape(-1, bm), block, reduce=self.reduce).reshape(-1)


def fold(momentum: float, acc: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """:func:`fprune.scores.fold` into ``term`` (a fresh tensor) in place: with both in
    float32 or float64, as ``term + momentum * acc * 1`` (``addcmul_`` with a broadcast one),
    whose product by one is exact, so the rounding is the formula's (a fused multiply-add
    would round once and differ); one pass, and no fresh tensor for the decayed accumulator."""
    if acc.dtype == term.dtype and term.dtype in (torch.float32, torch.float64):
        return term.addcmul_(
            acc, torch.ones((), dtype=term.dtype, device=term.device), value=momentum
        )
    # an accumulator of another dtype (bfloat16 with low_memory_usage): widened, then back
    return term.add_(momentum * acc.to(term.dtype)).to(acc.dtype)


def _term(
    acc: Accumulation, score: LayerScore, params: _Tensors, grads: _Tensors
) -> dict[str, torch.Tensor]:
    """An accumulated criterion's term of every layer: its layer score of the widened weight
    and gradient, reduced to the accumulation's grid, into reused buffers where it is reduced."""
    out, scratch = {}, Scratch(params.values())
    for name, p in params.items():
        w, g = widen(p), widen(grads[name])
        view_shape = shape_2d(tuple(w.shape))
        block = (
            None
            if acc.pattern is None or isinstance(acc.pattern, NM)
            else acc.pattern.block_shape(view_shape)
        )
        if block is None or block == (1, 1):
            prod = score(w, g)  # the grid aliases the score: a fresh tensor
        elif w.ndim == 2 and w.shape[0] % block[0] == 0 and w.shape[1] % block[1] == 0:
            out[name] = reduce_scored(score, w, g, block, acc.reduce, scratch)
            continue
        else:  # a reducing grid: the score is scratch (an indivisible layer: to_grid's error)
            prod = score(w, g, out=scratch.like(w))
        out[name] = (
            prod if acc.pattern is None else to_grid({name: prod}, acc.pattern, acc.reduce)[name]
        )
    return out


def accumulate(
    criterion: Criterion, aux: _Tensors, params: _Tensors, grads: _Tensors
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``criterion.update(aux, params, grads)`` for a criterion with a ``layer_score`` and an
    ``accumulation`` (params and grads already checked)."""
    acc, score = criterion.accumulation, criterion.layer_score
    if acc is None or score is None:
        raise ValueError(
            "accumulate: the criterion has no layer_score and accumulation (got "
            f"{score!r}, {acc!r}). Call criterion.update instead."
        )
    term = _term(acc, score, params, grads)
    _errors.same_shapes("step", "the criterion's state", aux, "scores", term)
    new = {n: fold(acc.momentum, aux[n], t) for n, t in term.items()}
    return new, new
