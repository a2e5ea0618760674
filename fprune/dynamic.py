"""Dynamic sparse training as a pruner: RigL and SET under the ``init``/``step`` contract.

``fprune.dynamic(sparsity, grow="gradient" | "random", ...)`` returns a
:class:`~fprune.pruner.Pruner` whose ``init`` draws a sparse start (random, or the lowest
magnitudes) with exactly each layer's count (:mod:`fprune.distributions`), and whose ``step``
swaps units every ``frequency`` steps inside the window (:mod:`fprune.regrow`): every layer
keeps its sparsity exactly at every step. The work is in :mod:`fprune.dynamic_steps`.
"""

from __future__ import annotations

import types
from collections.abc import Collection
from typing import Any

import torch

from fprune import _errors, _resolve, dynamic_steps, registry
from fprune.blocks import REDUCTIONS
from fprune.distributions import DISTRIBUTIONS
from fprune.patterns import NM, Pattern
from fprune.pruner import Pruner
from fprune.schedules import check_window
from fprune.state import PruneState, hash64

__all__ = ["GROWTH", "STARTS", "dynamic"]

GROWTH = ("gradient", "random")
STARTS = ("random", "magnitude")
_KINDS = {"gradient": "rigl", "random": "set"}


def dynamic(
    sparsity: float,
    *,
    grow: str = "gradient",
    pattern: str | Pattern = "1x1",
    start_step: int = 0,
    end_step: int,
    frequency: int = 100,
    drop_fraction: float = 0.3,
    distribution: str = "uniform",
    dense: Collection[str] = (),
    first_dense: bool = False,
    start: str = "random",
    seed: int = 0,
    reduce: str = "mean",
    skip_indivisible: bool = False,
) -> Pruner:
    """A dynamic sparse training pruner: RigL (``grow="gradient"``) or SET (``"random"``).

    Every layer prunes exactly its count of units from ``init`` on. Each update step (as a
    pruner's window) drops ``c = min(floor(f * kept + 1e-9), pruned)`` lowest-magnitude kept
    units of a layer and grows ``c`` pruned ones, of largest gradient magnitude (RigL, Evci
    et al. 2020) or drawn from ``(seed, step)`` (SET, Mocanu et al. 2018), with
    ``f = drop_fraction * (1 + cos(pi * t / T)) / 2`` (:mod:`fprune.regrow`). A grown weight
    starts at zero: :func:`fprune.training.prune_step_` zeroes pruned weights and their
    optimizer state.

    Args:
        sparsity: the target in [0, 1) (for N:M exactly N/M: every group is N:M).
        grow: ``"gradient"`` (RigL; ``step`` needs ``grads``) or ``"random"`` (SET).
        pattern: ``"1x1"``, an ``"NxM"`` block pattern, or ``"N:M"`` (swaps within groups).
        start_step, end_step, frequency: the update window, ``end_step > start_step``.
        drop_fraction: the update fraction at ``start_step``, in (0, 1].
        distribution: ``"uniform"`` or ``"erk"`` (see :mod:`fprune.distributions`).
        dense, first_dense: layers kept dense (by name; and the first given layer).
        start: ``"random"`` (from ``seed``) or ``"magnitude"`` (the lowest ``|w|`` at ``init``).
        seed: the default seed; ``init(params, seed=...)`` overrides it (vmap: a tensor).
        reduce: the block reduction of ``|w|`` and ``|g|``: ``"mean"``, ``"sum"``, ``"max"``.
        skip_indivisible: leave layers the pattern does not divide dense.

    Raises:
        ValueError: a bad fraction, name or window; N:M with another sparsity than N/M, or
            with ``distribution="erk"``.
        TypeError: an argument of the wrong type.

    Example:
        >>> import torch, fprune
        >>> g = torch.Generator().manual_seed(0)
        >>> params = {"w": torch.randn(8, 8, generator=g)}
        >>> rigl = fprune.dynamic(0.75, end_step=4, frequency=2)
        >>> state = rigl.init(params)
        >>> grads = {"w": torch.randn(8, 8, generator=g)}
        >>> for s in range(5):
        ...     before = state.masks["w"]
        ...     state, masks = rigl.step(state, params, grads)
        ...     params = fprune.apply_masks(params, masks)
        ...     print(s, int((~masks["w"]).sum()), int((before & ~masks["w"]).sum()))
        0 48 4
        1 48 0
        2 48 2
        3 48 0
        4 48 0
    """
    settings, kwargs = _checked_settings(**locals())

    def init(
        params: dynamic_steps.Tensors,
        *,
        sparsity: None = None,
        seed: int | torch.Tensor | None = None,
    ) -> PruneState:
        return dynamic_steps.init(settings, params, sparsity=sparsity, seed=seed)

    def step(
        state: PruneState, params: dynamic_steps.Tensors, grads: dynamic_steps.Tensors | None = None
    ) -> tuple[PruneState, dict[str, torch.Tensor]]:
        return dynamic_steps.step(settings, state, params, grads)

    kind = _KINDS[settings.grow]
    return Pruner(init, step, types.MappingProxyType({**kwargs, "kind": kind}))


def _checked_settings(**given: Any) -> tuple[dynamic_steps.Settings, dict[str, Any]]:
    """:func:`dynamic`'s arguments checked: its settings, and the keyword arguments that
    rebuild it (``Pruner.settings``, whose hash is the states' fingerprint)."""
    func = "dynamic"
    pattern = given["pattern"]
    settings = dynamic_steps.Settings(
        sparsity=_target(func, given["sparsity"]),
        grow=_errors.choice(func, "grow", given["grow"], GROWTH),
        pattern=_resolve.pattern(pattern),
        window=check_window(func, given["start_step"], given["end_step"], given["frequency"]),
        drop_fraction=_drop_fraction(func, given["drop_fraction"]),
        distribution=_errors.choice(func, "distribution", given["distribution"], DISTRIBUTIONS),
        dense=_names(func, given["dense"]),
        first_dense=_flag(func, "first_dense", given["first_dense"]),
        start=_errors.choice(func, "start", given["start"], STARTS),
        seed=dynamic_steps.check_seed(func, given["seed"]),
        reduce=_errors.choice(func, "reduce", given["reduce"], REDUCTIONS),
        skip_indivisible=_flag(func, "skip_indivisible", given["skip_indivisible"]),
        config_hash=0,
    )
    _check_nm(func, settings)
    start, end, frequency = settings.window
    if end <= start:
        raise _errors.value_error(
            func,
            "the update window needs end_step > start_step (the fraction decays over it)",
            _errors.detail(f"start_step={start}, end_step={end}"),
            "Pass e.g. end_step = 75% of the training steps, as RigL does.",
        )
    kwargs = dict(
        sparsity=settings.sparsity,
        grow=settings.grow,
        pattern=pattern if isinstance(pattern, str) else str(settings.pattern),
        start_step=start,
        end_step=end,
        frequency=frequency,
        drop_fraction=settings.drop_fraction,
        distribution=settings.distribution,
        dense=settings.dense,
        first_dense=settings.first_dense,
        start=settings.start,
        seed=settings.seed,
        reduce=settings.reduce,
        skip_indivisible=settings.skip_indivisible,
    )
    return settings.with_hash(hash64(repr(sorted(kwargs.items())))), kwargs


def _target(func: str, sparsity: object) -> float:
    value = _errors.fraction(func, "sparsity", sparsity)
    if isinstance(value, torch.Tensor):
        raise _errors.type_error(func, "sparsity must be a Python float", value, "Pass e.g. 0.9.")
    return float(value)


def _drop_fraction(func: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _errors.type_error(func, "drop_fraction must be a number", value, "Pass e.g. 0.3.")
    if not 0.0 < float(value) <= 1.0:
        raise _errors.value_error(
            func, "drop_fraction must lie in (0, 1]", value, "Pass e.g. 0.3 (RigL's default)."
        )
    return float(value)


def _names(func: str, dense: object) -> tuple[str, ...]:
    if isinstance(dense, str) or not isinstance(dense, Collection):
        raise _errors.type_error(
            func, "dense must be a collection of names", dense, "Pass e.g. ('fc1.weight',)."
        )
    if not all(isinstance(n, str) for n in dense):
        raise _errors.type_error(func, "dense must hold names", dense, "Pass strings.")
    return tuple(sorted(set(dense)))


def _flag(func: str, arg: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _errors.type_error(func, f"{arg} must be a bool", value, "Pass True or False.")
    return value


def _check_nm(func: str, settings: dynamic_steps.Settings) -> None:
    pat = settings.pattern
    if not isinstance(pat, NM):
        return
    if settings.distribution != "uniform":
        raise _errors.value_error(
            func,
            "an N:M pattern fixes every layer's sparsity at N/M",
            f"distribution={settings.distribution!r}",
            "Use distribution='uniform' with N:M, or a block pattern for ERK.",
        )
    if abs(settings.sparsity - pat.max_sparsity) > 1e-12:
        raise _errors.value_error(
            func,
            f"dynamic N:M keeps every group at {pat}, so sparsity must be N/M",
            settings.sparsity,
            f"Pass sparsity={pat.max_sparsity}.",
        )


def _factory(
    *,
    sparsity: float,
    grow: str,
    pattern: str | Pattern = "1x1",
    start_step: int = 0,
    end_step: int,
    frequency: int = 100,
    drop_fraction: float = 0.3,
    distribution: str = "uniform",
    seed: int = 0,
    reduce: str = "mean",
    skip_indivisible: bool = False,
    **ignored: object,
) -> Pruner:
    """The registered ``rigl`` / ``set`` factories (config keys; the rest are ignored)."""
    return dynamic(
        sparsity,
        grow=grow,
        pattern=pattern,
        start_step=start_step,
        end_step=end_step,
        frequency=frequency,
        drop_fraction=drop_fraction,
        distribution=distribution,
        seed=seed,
        reduce=reduce,
        skip_indivisible=skip_indivisible,
    )


def _rigl(**settings: object) -> Pruner:
    return _factory(**{**settings, "grow": "gradient"})  # type: ignore[arg-type]


def _set(**settings: object) -> Pruner:
    return _factory(**{**settings, "grow": "random"})  # type: ignore[arg-type]


registry.register_pruner("rigl", _rigl)
registry.register_pruner("set", _set)
