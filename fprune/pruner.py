"""The functional pruner: ``Pruner(init, step)`` built by a factory (the optax pattern).

``init(params) -> PruneState`` and ``step(state, params, grads) -> (state, masks)`` are pure:
inputs are never mutated. :func:`pruner` checks its arguments once, into a frozen
:class:`~fprune.steps.Settings`, and binds the module-level functions of
:mod:`fprune.steps` to it, where the work is done.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from fprune import _errors, _resolve, _trace, registry, steps
from fprune.blocks import REDUCTIONS
from fprune.distributions import DISTRIBUTIONS, block_pattern
from fprune.inc_keys import config_dict
from fprune.masking import SCOPES
from fprune.patterns import NM, Pattern
from fprune.schedules import check_window, decay_curve
from fprune.selection import check_bounds
from fprune.state import PruneState, hash64

__all__ = ["Pruner", "checked_settings", "pruner"]

_Tensors = Mapping[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Pruner:
    """A pruning method as two pure functions, plus the settings that built it.

    Attributes:
        init: ``init(params, *, sparsity=None) -> PruneState``; ``sparsity`` (a float or
            a 0-d tensor) overrides the final target, as data in the state.
        step: ``step(state, params, grads=None) -> (state, masks)``.
        settings: the keyword arguments that rebuild it with its factory (read-only),
            including ``kind``, the registered pruner name (``"basic"``, ``"pattern_lock"``).
        names: the parameter names it prunes, when known (set by :func:`fprune.from_config`
            with a model); None otherwise.
        extra: config keys that concern the training loop rather than ``init``/``step``
            (layer selection, regularizer), kept so :meth:`to_config` round-trips.
    """

    init: Callable[..., PruneState]
    step: Callable[..., tuple[PruneState, dict[str, torch.Tensor]]]
    settings: Mapping[str, Any]
    names: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))

    def __iter__(self) -> Iterator[Callable[..., Any]]:
        """Unpack as the ``(init, step)`` pair: ``init, step = fprune.pruner(0.5)``."""
        return iter((self.init, self.step))

    def to_config(self) -> dict[str, Any]:
        """An INC-style config dict that :func:`fprune.from_config` turns back into this pruner.

        Example:
            >>> import fprune
            >>> fprune.pruner(0.5, pattern="2:4", start_step=0, end_step=9).to_config()["pattern"]
            '2:4'
        """
        return config_dict(self.settings, self.extra)

    def regularize(
        self, params: _Tensors, *, step: int, lr: float, grads: _Tensors | None = None
    ) -> dict[str, torch.Tensor]:
        """Apply the configured regularizer (``reg_type``) after the optimizer step.

        Inside ``start_step <= step <= end_step`` returns ``reg(params, pattern=...,
        strength=lr * reg_coeff, grads=grads)``; outside the window, or without a
        regularizer, returns ``params`` unchanged (as a new dict).

        Example:
            >>> import torch, fprune
            >>> cfg = {"reg_type": "group_lasso", "parameters": {"reg_coeff": 1.0},
            ...        "pattern": "1x1", "end_step": 5}
            >>> (p,) = fprune.from_config(cfg)
            >>> p.regularize({"w": torch.tensor([[0.5, -2.0]])}, step=3, lr=1.0)["w"].tolist()
            [[0.0, -1.0]]
            >>> p.regularize({"w": torch.tensor([[0.5, -2.0]])}, step=6, lr=1.0)["w"].tolist()
            [[0.5, -2.0]]
        """
        reg_type = self.extra.get("reg_type")
        start = self.settings.get("start_step", 0)
        end = self.settings.get("end_step", start)
        if reg_type is None or not start <= step <= end:
            return dict(params)
        reg = registry.get_reg(reg_type) if isinstance(reg_type, str) else reg_type
        strength = lr * float(self.extra.get("reg_coeff", 0.0))
        pattern = _resolve.pattern(self.settings["pattern"])  # registered names too
        return reg(params, pattern=pattern, strength=strength, grads=grads)


def pruner(
    sparsity: float,
    *,
    pattern: str | Pattern = "4x1",
    criterion: Any = "snip_momentum",
    start_step: int = 0,
    end_step: int | None = None,
    frequency: int = 1,
    schedule: str | Callable[..., Any] | None = None,
    decay: str | Callable[..., Any] = "exp",
    scope: str = "global",
    min_layer_sparsity: float = 0.0,
    max_layer_sparsity: float = 0.98,
    reduce: str = "mean",
    low_memory_usage: bool = False,
    lock_init_sparsity: bool = False,
    skip_indivisible: bool = False,
    distribution: str | None = None,
) -> Pruner:
    """Build a pruner: ``init(params) -> state``, ``step(state, params, grads) -> (state, masks)``.

    Args:
        sparsity: final target in [0, 1), in the pattern's units (at most N/M for N:M).
        pattern: ``"4x1"``, ``"1x1"``, ``"channelx1"``, ``"1xchannel"``, ``"2:4"``, a registered
            name or a pattern object.
        criterion: ``"magnitude"``, ``"gradient"``, ``"snip"``, ``"snip_momentum"``, a
            registered name, a :class:`~fprune.Criterion`, or a stateless ``f(params, grads)
            -> scores`` (weight- or grid-shaped, lower pruned first; called on prune steps
            only, with ``grads`` as given; a ``needs_grads = True`` attribute makes ``step``
            require them).
        start_step, end_step, frequency: prune at ``start_step <= s <= end_step`` with
            ``(s - start_step) % frequency == 0``; ``end_step`` defaults to ``start_step``.
        schedule: ``"oneshot"``, ``"iterative"``, a registered scheduler or ``step ->
            sparsity``; None: ``"oneshot"`` if ``start_step == end_step``, else iterative.
        decay: the iterative ramp: ``"exp"``, ``"cos"``, ``"linear"``, ``"cube"`` or
            ``decay(x, initial, final)``.
        scope: ``"global"`` ranks all layers together; ``"local"`` prunes each to the target.
        min_layer_sparsity, max_layer_sparsity: per-layer bounds in global scope; the lower
            one ramps with the schedule (``min * r / sparsity``).
        reduce: block score reduction, ``"mean"``, ``"sum"`` or ``"max"``.
        low_memory_usage: keep snip_momentum's accumulators in bfloat16.
        lock_init_sparsity: start from the existing zeros of the params given to ``init``
            (kept pruned even where they do not fill a unit) and ramp from their sparsity.
        skip_indivisible: leave layers the pattern does not divide dense (see
            :func:`fprune.indivisible_layers`) instead of raising at ``init``.
        distribution: ``"uniform"`` or ``"erk"`` (:func:`fprune.layer_counts`; local scope, a
            block pattern): each layer ramps as ``r * s_l / sparsity`` to its exact count.

    Raises:
        ValueError: a bad fraction, name or window; ``min > sparsity > max``; N:M above N/M;
            ``"oneshot"`` with ``end_step != start_step``.
        TypeError: an argument of the wrong type.

    Example:
        >>> import torch, fprune
        >>> g = torch.Generator().manual_seed(0)
        >>> params = {"a": torch.randn(8, 16, generator=g), "b": torch.randn(4, 8, generator=g)}
        >>> prune = fprune.pruner(0.5, pattern="4x1", criterion="magnitude", end_step=2)
        >>> state = prune.init(params)
        >>> for s in range(3):
        ...     state, masks = prune.step(state, params)
        ...     params = fprune.apply_masks(params, masks)
        ...     achieved = fprune.total_sparsity(masks, pattern="4x1")
        ...     print(s, round(float(state.current_target), 4), round(float(achieved), 4))
        0 0.0 0.0
        1 0.2929 0.275
        2 0.5 0.5
    """
    settings, kwargs = _checked_settings(**locals())

    def init(params: _Tensors, *, sparsity: float | torch.Tensor | None = None) -> PruneState:
        return steps.init(settings, params, sparsity=sparsity)

    def step(
        state: PruneState, params: _Tensors, grads: _Tensors | None = None
    ) -> tuple[PruneState, dict[str, torch.Tensor]]:
        return steps.step(settings, state, params, grads)

    return Pruner(init, step, types.MappingProxyType({**kwargs, "kind": "basic"}))


def checked_settings(sparsity: float, **options: Any) -> steps.Settings:
    """The :class:`~fprune.steps.Settings` that ``fprune.pruner(sparsity, **options)`` binds
    its ``init`` and ``step`` to, for calling the functions of :mod:`fprune.steps` directly.

    Example:
        >>> import torch
        >>> from fprune import steps
        >>> settings = checked_settings(0.5, pattern="1x1", criterion="magnitude")
        >>> state = steps.init(settings, {"w": torch.tensor([[3.0, -1.0], [0.5, 2.0]])})
        >>> r, low = steps.targets(settings, state.step, state.initial_target,
        ...                        state.current_target, state.final_target)
        >>> float(r), low
        (0.5, 0.0)
    """
    defaults = {
        k: p.default for k, p in inspect.signature(pruner).parameters.items() if k != "sparsity"
    }
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise _errors.type_error(
            "checked_settings", "unknown options", unknown, f"Valid: {', '.join(defaults)}."
        )
    return _checked_settings(**{**defaults, **options, "sparsity": sparsity})[0]


def _checked_settings(**given: Any) -> tuple[steps.Settings, dict[str, Any]]:
    """:func:`pruner`'s arguments checked: its :class:`~fprune.steps.Settings`, and the keyword
    arguments that rebuild it (``Pruner.settings``, whose hash is the states' fingerprint)."""
    func = "pruner"
    target = _errors.fraction(func, "sparsity", given["sparsity"])
    if isinstance(target, torch.Tensor):
        raise _errors.type_error(func, "sparsity must be a Python float", target, "Pass e.g. 0.8.")
    pattern = given["pattern"]
    pat = _resolve.pattern(pattern)
    start, end = given["start_step"], given["end_step"]
    start, end, freq = check_window(func, start, start if end is None else end, given["frequency"])
    scope = _errors.choice(func, "scope", given["scope"], SCOPES)
    reduce = _errors.choice(func, "reduce", given["reduce"], REDUCTIONS)
    lo, hi = _layer_bounds(func, target, given["min_layer_sparsity"], given["max_layer_sparsity"])
    if isinstance(pat, NM) and target > pat.max_sparsity:
        raise _errors.value_error(
            func,
            f"pattern {str(pat)!r} cannot exceed sparsity N/M = {pat.max_sparsity}",
            target,
            f"Lower sparsity to at most {pat.max_sparsity}, or use a larger N:M ratio.",
        )
    distribution = _distribution(func, given["distribution"], scope, pat)
    flags = {k: given[k] for k in ("low_memory_usage", "lock_init_sparsity", "skip_indivisible")}
    for arg, flag in flags.items():
        if not isinstance(flag, bool):
            raise _errors.type_error(func, f"{arg} must be a bool", flag, "Pass True or False.")
    kwargs = dict(
        sparsity=target,
        pattern=str(pat) if not isinstance(pattern, str) else pattern,
        criterion=given["criterion"],
        start_step=start,
        end_step=end,
        frequency=freq,
        schedule=given["schedule"],
        decay=given["decay"],
        scope=scope,
        min_layer_sparsity=lo,
        max_layer_sparsity=hi,
        reduce=reduce,
        **flags,
        **({} if distribution is None else {"distribution": distribution}),
    )
    dtype = torch.bfloat16 if flags["low_memory_usage"] else None
    settings = steps.Settings(
        sparsity=target,
        pattern=pat,
        criterion=_resolve.criterion(given["criterion"], pattern=pat, reduce=reduce, dtype=dtype),
        start_step=start,
        end_step=end,
        frequency=freq,
        target_at=_target_fn(
            func, given["schedule"], start, end, freq, decay_curve(func, given["decay"])
        ),
        scope=scope,
        min_layer_sparsity=lo,
        max_layer_sparsity=hi,
        reduce=reduce,
        lock_init_sparsity=flags["lock_init_sparsity"],
        skip_indivisible=flags["skip_indivisible"],
        distribution=distribution,
        config_hash=hash64(repr(sorted((k, _resolve.describe(v)) for k, v in kwargs.items()))),
    )
    return settings, kwargs


def _distribution(func: str, value: object, scope: str, pattern: Pattern) -> str | None:
    """A per-layer distribution, checked against the scope and pattern (None: none)."""
    if value is None:
        return None
    name = _errors.choice(func, "distribution", value, DISTRIBUTIONS)
    if scope != "local":
        raise _errors.value_error(
            func,
            "a per-layer distribution sets each layer's target, which global scope does not",
            f"scope={scope!r}",
            "Pass scope='local' with distribution, or leave distribution out.",
        )
    block_pattern(func, pattern)
    return name


def _layer_bounds(func: str, target: float, lo: object, hi: object) -> tuple[float, float]:
    """The per-layer bounds as Python floats, checked against the target."""
    if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):
        raise _errors.type_error(
            func,
            "layer bounds must be Python floats",
            _errors.detail("a tensor"),
            "Pass e.g. 0.98.",
        )
    low, high = check_bounds(func, target, lo, hi)
    return float(low), float(high)


def _target_fn(
    func: str, schedule: object, start: int, end: int, freq: int, curve: Any
) -> steps.Target:
    """``(step, initial, final) -> target`` as float64 0-d tensor math, from ``schedule``."""
    if schedule is None:
        schedule = "oneshot" if start == end else "iterative"
    if schedule == "oneshot" and start != end:
        raise _errors.value_error(
            func,
            "a oneshot schedule prunes once, at start_step",
            _errors.detail(f"start_step={start}, end_step={end}"),
            "Set end_step = start_step (or leave it out), or use schedule='iterative'.",
        )
    if isinstance(schedule, str):
        rich = registry.get_scheduler(schedule)
    elif callable(schedule):
        rich = schedule if _resolve.is_factory(schedule) else None
    else:
        raise _errors.type_error(
            func,
            "schedule must be a name or a callable",
            type(schedule).__name__,
            "Pass 'oneshot', 'iterative', or a function step -> sparsity.",
        )
    simple = None if rich is not None else schedule

    def target_at(step: torch.Tensor, initial: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
        if rich is not None:
            value = rich(
                step,
                initial=initial,
                sparsity=final,
                start_step=start,
                end_step=end,
                frequency=freq,
                decay=curve,
            )
        else:
            value = simple(step if _trace.tracing(step) else int(step))  # type: ignore[misc]
        if not _trace.tracing(step):
            _scheduled(func, value, step)
        value = torch.as_tensor(value, dtype=torch.float64)
        return torch.clamp(torch.minimum(value, torch.maximum(initial, final)), min=0.0)

    return target_at


def _scheduled(func: str, value: object, step: torch.Tensor) -> None:
    """An eager call's schedule value: a real number (or a 0-d tensor), not NaN."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _errors.type_error(
            func,
            f"the schedule returned a {type(value).__name__} at step {int(step)}",
            value,
            "A schedule returns the target sparsity, a float in [0, 1].",
        )
    if math.isnan(value):
        raise _errors.value_error(
            func,
            f"the schedule returned NaN at step {int(step)}",
            value,
            "Check the schedule (or its decay) for a division by zero.",
        )


registry.register_pruner("basic", pruner)
