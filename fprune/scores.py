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

A :class:`Criterion` also states what the pruner may rely on to score faster, as fields:
``stateless`` (no accumulators: scored only on prune steps), ``layer_score`` (each layer's
score from its own weight and gradient alone: scored one layer at a time) and
``accumulation`` (the update is an exponential moving average of that layer score on a
pattern's grid). The functions here are the formulas; faster eager code for the same
results is reached through :mod:`fprune.masking`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch

from fprune import _errors
from fprune._dtypes import widen
from fprune.blocks import REDUCTIONS, check_divisible, grid_shape, to_grid
from fprune.patterns import Pattern, parse_pattern

__all__ = [
    "CRITERIA",
    "LAYER_SCORES",
    "Accumulation",
    "Criterion",
    "LayerScore",
    "LayerScoring",
    "criterion",
    "fold",
    "gradient",
    "magnitude",
    "snip",
    "snip_momentum",
    "stateless",
]

_Tensors = Mapping[str, torch.Tensor]

#: One layer's element-wise score, ``layer_score(w, g, out=None)`` (``g`` may be None for
#: a score that ignores it), written into ``out`` when given, as torch ops do.
LayerScore = Callable[..., torch.Tensor]

#: The built-in layer scores: ``|w|``, ``|g|``, ``|w * g|``.
LAYER_SCORES: Mapping[str, LayerScore] = {
    "magnitude": lambda w, g, out=None: torch.abs(w, out=out),
    "gradient": lambda w, g, out=None: torch.abs(g, out=out),
    "snip": lambda w, g, out=None: torch.mul(w, g, out=out).abs_(),
}


class LayerScoring(NamedTuple):
    """Scores to compute one layer at a time: ``layer_score(params[n], grads[n])`` for every
    layer (weight-shaped), as a criterion with a ``layer_score`` gives them. ``uses_grads``:
    whether the layer score reads its gradient (else ``g`` may be left out)."""

    layer_score: LayerScore
    params: Mapping[str, torch.Tensor]
    grads: Mapping[str, torch.Tensor] | None
    uses_grads: bool

    def scores(self) -> dict[str, torch.Tensor]:
        """Every layer's score, weight-shaped."""
        return {
            n: self.layer_score(w, None if self.grads is None else self.grads[n])
            for n, w in self.params.items()
        }


class Accumulation(NamedTuple):
    """A criterion whose update is a moving average of its layer score on a grid:
    ``aux[n] <- momentum * aux[n] + R(layer_score(widen(w), widen(g)))``, each operation
    rounded as written in the score's dtype, the result stored in the accumulator's dtype
    (:func:`fold`); ``R`` reduces to ``pattern``'s grid with ``reduce`` (None: element-wise);
    ``widen`` computes 16-bit weights in float32. Its scores are the new ``aux``."""

    momentum: float
    pattern: Pattern | None
    reduce: str


class Criterion(NamedTuple):
    """A scoring rule as two pure functions (the optax pattern), and what they promise.

    Attributes:
        init: ``init(params) -> aux``, a dict of tensors (empty for stateless criteria).
        update: ``update(aux, params, grads) -> (scores, aux)``.
        needs_grads: whether ``update`` reads ``grads`` (default True, the safe assumption
            for a custom pair).
        stateless: ``update`` keeps no state (its aux stays empty) and its scores depend on
            ``params`` and ``grads`` alone, so the pruner calls it on prune steps only.
        layer_score: a :data:`LayerScore` with ``scores[n] == layer_score(params[n],
            grads[n])`` for a stateless criterion, or the term its ``accumulation`` folds in:
            the pruner may then score one layer at a time, into reused buffers.
        accumulation: with ``layer_score``, the moving average ``update`` computes
            (:class:`Accumulation`).
    """

    init: Callable[[_Tensors], dict[str, torch.Tensor]]
    update: Callable[
        [_Tensors, _Tensors, _Tensors | None],
        tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]],
    ]
    needs_grads: bool = True
    stateless: bool = False
    layer_score: LayerScore | None = None
    accumulation: Accumulation | None = None


def _params(func: str, params: object) -> _Tensors:
    return _errors.tensor_dict(func, "params", params)


def _grads(func: str, params: _Tensors, grads: object) -> _Tensors:
    if grads is None:
        raise _errors.value_error(
            func,
            "this criterion needs gradients",
            None,
            "Pass grads (e.g. {n: p.grad for n, p in model.named_parameters()}) after backward, "
            "or use criterion='magnitude'.",
        )
    grads = _errors.tensor_dict(func, "grads", grads)
    _errors.same_shapes(func, "grads", grads, "params", params)
    return grads


def magnitude(params: _Tensors, grads: _Tensors | None = None) -> dict[str, torch.Tensor]:
    """``|w|`` for every weight; ``grads`` is accepted and ignored.

    Example:
        >>> magnitude({"w": torch.tensor([-2., 1.])})
        {'w': tensor([2., 1.])}
    """
    params = _params("magnitude", params)
    return {n: p.abs() for n, p in params.items()}


def gradient(params: _Tensors, grads: _Tensors | None) -> dict[str, torch.Tensor]:
    """``|g|`` for every weight.

    Example:
        >>> gradient({"w": torch.tensor([-2., 1.])}, {"w": torch.tensor([0.5, -3.])})
        {'w': tensor([0.5000, 3.0000])}
    """
    params = _params("gradient", params)
    grads = _grads("gradient", params, grads)
    return {n: grads[n].abs() for n in params}


def snip(params: _Tensors, grads: _Tensors | None) -> dict[str, torch.Tensor]:
    """``|w * g|`` for every weight (SNIP's connection sensitivity).

    Example:
        >>> snip({"w": torch.tensor([-2., 1.])}, {"w": torch.tensor([0.5, -3.])})
        {'w': tensor([1., 3.])}
    """
    params = _params("snip", params)
    grads = _grads("snip", params, grads)
    return {n: (p * grads[n]).abs() for n, p in params.items()}


def fold(momentum: float, acc: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """``momentum * acc + term`` in the term's dtype, each operation rounded as written (INC's
    two), returned in the accumulator's dtype.

    Example:
        >>> fold(0.5, torch.tensor([2.0]), torch.tensor([1.0]))
        tensor([2.])
    """
    return (momentum * acc.to(term.dtype) + term).to(acc.dtype)


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
    if (
        isinstance(momentum, bool)
        or not isinstance(momentum, numbers.Real)
        or not 0.0 <= momentum <= 1.0
    ):
        raise _errors.value_error(
            func, "momentum must be a number in [0, 1]", momentum, "INC uses 0.9."
        )
    accumulation = Accumulation(float(momentum), grid_pattern, reduce)

    def init(params: _Tensors) -> dict[str, torch.Tensor]:
        params = _params(func, params)
        if grid_pattern is None:
            return {n: torch.zeros_like(p, dtype=_dtype(p)) for n, p in params.items()}
        check_divisible(func, params, grid_pattern, skip_indivisible=False)
        return {
            n: torch.zeros(grid_shape(grid_pattern, p.shape), dtype=_dtype(p), device=p.device)
            for n, p in params.items()
        }

    def _dtype(p: torch.Tensor) -> torch.dtype:
        return widen(p).dtype if dtype is None else dtype

    def update(
        aux: _Tensors, params: _Tensors, grads: _Tensors | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        params = _params(func, params)
        grads = _grads(func, params, grads)
        # |w * g| in at least float32: float16 products overflow at 65504
        term = {n: (widen(p) * widen(grads[n])).abs() for n, p in params.items()}
        if grid_pattern is not None:
            term = to_grid(term, grid_pattern, reduce)
        _errors.same_shapes(func, "aux", aux, "scores", term)
        new = {n: fold(accumulation.momentum, aux[n], t) for n, t in term.items()}
        return new, new

    return Criterion(
        init, update, needs_grads=True, layer_score=LAYER_SCORES["snip"], accumulation=accumulation
    )


def stateless(
    fn: Callable[[_Tensors, _Tensors | None], dict[str, torch.Tensor]],
    needs_grads: bool,
    *,
    layer_score: LayerScore | None = None,
) -> Criterion:
    """Wrap a scoring function ``f(params, grads) -> scores`` as a stateless :class:`Criterion`.

    ``layer_score`` (the built-ins have one) promises that each layer's score is
    ``layer_score(w, g)`` from that layer alone (see :class:`Criterion`).

    Example:
        >>> crit = stateless(magnitude, needs_grads=False)
        >>> crit.stateless, crit.update({}, {"w": torch.tensor([-1.])}, None)[0]
        (True, {'w': tensor([1.])})
    """

    def init(params: _Tensors) -> dict[str, torch.Tensor]:
        return {}

    def update(
        aux: _Tensors, params: _Tensors, grads: _Tensors | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return fn(params, grads), dict(aux)

    return Criterion(init, update, needs_grads, stateless=True, layer_score=layer_score)


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
        >>> criterion("snip_momentm")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: criterion: unknown criterion (got 'snip_momentm'). Did you mean 'snip_mo...
    """
    name = _errors.choice("criterion", "criterion", name, CRITERIA)
    if name == "snip_momentum":
        return snip_momentum(pattern=pattern, reduce=reduce)
    fn = {"magnitude": magnitude, "gradient": gradient, "snip": snip}[name]
    return stateless(fn, needs_grads=name != "magnitude", layer_score=LAYER_SCORES[name])
