"""Importance scores: lower scores are pruned first.

Stateless criteria are plain functions ``f(params, grads) -> scores`` over dicts keyed by
parameter name:

* :func:`magnitude` ``|w|`` (``grads`` unused, may be None);
* :func:`gradient` ``|g|``;
* :func:`snip` ``|w * g|``.

The stateful ``snip_momentum`` criterion keeps an accumulator
``S <- 0.9 * S + |w * g|`` (INC's constants), elementwise or on the pattern's block grid
(reduction is linear for mean and sum, so accumulating reduced scores is equal and much
smaller). It is a :class:`Criterion` pair of pure functions, ``init(params) -> aux`` and
``update(aux, params, grads) -> (scores, aux)``; :func:`criterion` turns any built-in name
into that form.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch

from fprune import _errors, _trace
from fprune._dtypes import widen
from fprune._scratch import Scratch
from fprune.blocks import REDUCTIONS, check_divisible, grid_shape, reduce_scored, to_grid
from fprune.layout import shape_2d
from fprune.patterns import NM, Pattern, parse_pattern

__all__ = [
    "CRITERIA",
    "Criterion",
    "criterion",
    "gradient",
    "magnitude",
    "snip",
    "snip_momentum",
]

Tensors = Mapping[str, torch.Tensor]


class Criterion(NamedTuple):
    """A scoring rule as two pure functions (the optax pattern).

    Attributes:
        init: ``init(params) -> aux``, a dict of tensors (empty for stateless criteria).
        update: ``update(aux, params, grads) -> (scores, aux)``.
        needs_grads: whether ``update`` reads ``grads`` (default True, the safe assumption
            for a custom pair).
    """

    init: Callable[[Tensors], dict[str, torch.Tensor]]
    update: Callable[
        [Tensors, Tensors, Tensors | None], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]
    ]
    needs_grads: bool = True


def _params(func: str, params: object) -> Tensors:
    return _errors.tensor_dict(func, "params", params)


def _grads(func: str, params: Tensors, grads: object) -> Tensors:
    if grads is None:
        raise _errors.value_error(
            func, "this criterion needs gradients", None,
            "Pass grads (e.g. {n: p.grad for n, p in model.named_parameters()}) after backward, "
            "or use criterion='magnitude'.",
        )
    grads = _errors.tensor_dict(func, "grads", grads)
    _errors.same_shapes(func, "grads", grads, "params", params)
    return grads


def magnitude(params: Tensors, grads: Tensors | None = None) -> dict[str, torch.Tensor]:
    """``|w|`` for every weight; ``grads`` is accepted and ignored.

    Example:
        >>> magnitude({"w": torch.tensor([-2., 1.])})
        {'w': tensor([2., 1.])}
    """
    params = _params("magnitude", params)
    return {n: p.abs() for n, p in params.items()}


def gradient(params: Tensors, grads: Tensors | None) -> dict[str, torch.Tensor]:
    """``|g|`` for every weight.

    Example:
        >>> gradient({"w": torch.tensor([-2., 1.])}, {"w": torch.tensor([0.5, -3.])})
        {'w': tensor([0.5000, 3.0000])}
    """
    params = _params("gradient", params)
    grads = _grads("gradient", params, grads)
    return {n: grads[n].abs() for n in params}


def snip(params: Tensors, grads: Tensors | None) -> dict[str, torch.Tensor]:
    """``|w * g|`` for every weight (SNIP's connection sensitivity).

    Example:
        >>> snip({"w": torch.tensor([-2., 1.])}, {"w": torch.tensor([0.5, -3.])})
        {'w': tensor([1., 3.])}
    """
    params = _params("snip", params)
    grads = _grads("snip", params, grads)
    return {n: (p * grads[n]).abs() for n, p in params.items()}


def snip_momentum(
    *,
    pattern: str | Pattern | None = None,
    reduce: str = "mean",
    momentum: float = 0.9,
    dtype: torch.dtype | None = None,
) -> Criterion:
    """The snip_momentum criterion: ``S <- momentum * S + R(|w * g|)``, ``S_0 = 0``.

    Args:
        pattern: accumulate on this pattern's grid (``R`` = block reduction with
            ``reduce``); None accumulates elementwise in the weight's shape.
        reduce: ``"mean"``, ``"sum"`` or ``"max"``. For ``max`` the accumulated block score
            differs from the block max of elementwise momentum (as in INC).
        momentum: decay of the accumulator (INC: 0.9).
        dtype: accumulator dtype; default float32 for 16-bit weights, else the weight's.
            ``torch.bfloat16`` halves the memory (INC's ``low_memory_usage``).

    Returns:
        A :class:`Criterion` whose ``aux`` is ``{name: S}`` and whose scores are ``S``.

    Example:
        >>> crit = snip_momentum()
        >>> p, g = {"w": torch.tensor([2., -1.])}, {"w": torch.tensor([1., 1.])}
        >>> aux = crit.init(p)
        >>> scores, aux = crit.update(aux, p, g)
        >>> scores, aux = crit.update(aux, p, g)
        >>> [round(v, 4) for v in scores["w"].tolist()]   # 0.9 * 2 + 2, 0.9 * 1 + 1
        [3.8, 1.9]
    """
    func = "snip_momentum"
    reduce = _errors.choice(func, "reduce", reduce, REDUCTIONS)
    grid_pattern = None if pattern is None else parse_pattern(pattern)
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0.0 <= momentum <= 1.0:
        raise _errors.value_error(func, "momentum must be a number in [0, 1]", momentum, "INC uses 0.9.")

    def _term(params: Tensors, grads: Tensors) -> dict[str, torch.Tensor]:
        # |w * g| in at least float32: float16 products overflow at 65504. The product is a
        # fresh tensor, so abs works in place (one pass and one allocation fewer).
        if grid_pattern is None:
            return {n: torch.mul(widen(p), widen(grads[n])).abs_() for n, p in params.items()}
        out, scratch = {}, Scratch(params.values())
        for name, p in params.items():
            w, g = widen(p), widen(grads[name])
            if _reducing(grid_pattern, p) and not _trace.tracing(w) and not _trace.tracing(g):
                # eager, and the grid is a reduction: the product is scratch, so one buffer
                # serves every layer (no fresh weight-sized tensor per layer)
                block = None if isinstance(grid_pattern, NM) else grid_pattern.block_shape(shape_2d(tuple(w.shape)))
                if block is not None and w.ndim == 2 and w.shape[0] % block[0] == 0 and w.shape[1] % block[1] == 0:
                    out[name] = reduce_scored(_LAYER_SCORES["snip"], w, g, block, reduce, scratch)
                    continue  # (an indivisible layer goes on to to_grid's error)
                prod = torch.mul(w, g, out=scratch.like(w)).abs_()
            else:
                prod = torch.mul(w, g).abs_()
            out[name] = to_grid({name: prod}, grid_pattern, reduce)[name]  # validated by update
        return out

    def _dtype(p: torch.Tensor) -> torch.dtype:
        return widen(p).dtype if dtype is None else dtype

    def init(params: Tensors) -> dict[str, torch.Tensor]:
        params = _params(func, params)
        if grid_pattern is None:
            return {n: torch.zeros_like(p, dtype=_dtype(p)) for n, p in params.items()}
        check_divisible(func, params, grid_pattern, skip_indivisible=False)
        return {
            n: torch.zeros(grid_shape(grid_pattern, p.shape), dtype=_dtype(p), device=p.device)
            for n, p in params.items()
        }

    def update(
        aux: Tensors, params: Tensors, grads: Tensors | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        params = _params(func, params)
        grads = _grads(func, params, grads)
        term = _term(params, grads)
        _errors.same_shapes(func, "aux", aux, "scores", term)
        new = {n: _fold(momentum, aux[n], t) for n, t in term.items()}
        return new, new

    return Criterion(init, update, needs_grads=True)


def _fold(momentum: float, acc: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """``momentum * acc + term`` in the term's dtype, each operation rounded as written (INC's
    two), returned in the accumulator's dtype.

    Eager, with both in float32 or float64, it is folded into ``term`` (a fresh tensor) in
    place, as ``term + momentum * acc * 1`` (``addcmul_`` with a broadcast one): the product
    by one is exact, so the rounding is the same (a fused multiply-add would round once and
    differ); one pass and no fresh tensor for the decayed accumulator. Under vmap the
    accumulator may be batched while the term is not (a sweep over targets on shared
    weights), so there it is out of place.
    """
    if _trace.tracing(acc) or _trace.tracing(term):
        decayed = momentum * acc.to(term.dtype)
        return (decayed + term).to(acc.dtype)
    if acc.dtype == term.dtype and term.dtype in (torch.float32, torch.float64):
        return term.addcmul_(acc, torch.ones((), dtype=term.dtype, device=term.device), value=momentum)
    # an accumulator of another dtype (bfloat16 with low_memory_usage): widened, then back
    return term.add_(momentum * acc.to(term.dtype)).to(acc.dtype)


def _reducing(pattern: Pattern, param: torch.Tensor) -> bool:
    """Whether the pattern's grid reduces blocks (so it never aliases the scores)."""
    return not isinstance(pattern, NM) and pattern.block_shape(shape_2d(tuple(param.shape))) != (1, 1)


LayerScore = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor], torch.Tensor]

# One layer's built-in score written into ``out`` (a buffer the caller reuses across layers).
_LAYER_SCORES: dict[str, LayerScore] = {
    "magnitude": lambda w, g, out: torch.abs(w, out=out),
    "gradient": lambda w, g, out: torch.abs(g, out=out),  # type: ignore[arg-type]
    "snip": lambda w, g, out: torch.mul(w, g, out=out).abs_(),  # type: ignore[arg-type]
}


def stateless(
    fn: Callable[[Tensors, Tensors | None], dict[str, torch.Tensor]],
    needs_grads: bool,
    *,
    layer_score: LayerScore | None = None,
) -> Criterion:
    """Wrap a scoring function ``f(params, grads) -> scores`` as a :class:`Criterion` with no aux.

    Its ``update`` is tagged ``stateless``, so the pruner may skip it on non-prune steps.
    ``layer_score(w, g, out)`` (the built-ins) scores one layer into a given buffer: a
    promise that each layer's score depends on that layer alone, so the pruner may score one
    layer at a time, more than once, into one reused buffer, to save memory and time.
    """

    def init(params: Tensors) -> dict[str, torch.Tensor]:
        return {}

    def update(
        aux: Tensors, params: Tensors, grads: Tensors | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return fn(params, grads), dict(aux)

    update.stateless = True  # type: ignore[attr-defined]
    update.layer_score = layer_score  # type: ignore[attr-defined]
    return Criterion(init, update, needs_grads)


CRITERIA = ("magnitude", "gradient", "snip", "snip_momentum")


def criterion(
    name: str, *, pattern: str | Pattern | None = None, reduce: str = "mean"
) -> Criterion:
    """The built-in criterion ``name`` as a :class:`Criterion` pair.

    Args:
        name: ``"magnitude"``, ``"gradient"``, ``"snip"`` or ``"snip_momentum"``.
        pattern, reduce: where snip_momentum accumulates (see :func:`snip_momentum`).

    Raises:
        ValueError: an unknown name (the closest valid name is suggested).

    Example:
        >>> criterion("snip").needs_grads, criterion("magnitude").needs_grads
        (True, False)
        >>> criterion("snip_momentm")
        Traceback (most recent call last):
        ...
        ValueError: criterion: unknown criterion (got 'snip_momentm'). Did you mean 'snip_momentum'? Valid names: magnitude, gradient, snip, snip_momentum.
    """
    name = _errors.choice("criterion", "criterion", name, CRITERIA)
    if name == "snip_momentum":
        return snip_momentum(pattern=pattern, reduce=reduce)
    fn = {"magnitude": magnitude, "gradient": gradient, "snip": snip}[name]
    return stateless(fn, needs_grads=name != "magnitude", layer_score=_LAYER_SCORES[name])
