"""The functional pruner: ``Pruner(init, step)`` built by a factory (the optax pattern).

``init(params) -> PruneState`` and ``step(state, params, grads) -> (state, masks)`` are pure:
inputs are never mutated, and every setting lives in the factory's closure. ``step`` folds
this step's ``grads`` into the criterion first, then, on a prune step, computes new masks:

* the target ``r`` is the schedule's value at this step (never below the previous target);
* units (blocks, channels, N:M groups) are selected exactly, ``floor(r * n + 1e-9)`` of
  them, previously pruned units first, so masks are nested;
* in global scope each layer's pruned fraction lies in
  ``[min_layer_sparsity * r / sparsity, max_layer_sparsity]``.

On other steps the masks are returned unchanged and no selection work is done; stateless
criteria (magnitude, gradient, snip, plain functions) are not even evaluated there.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from fprune import _checks, _errors, _fast, _resolve, _sharded, _trace, nm, registry
from fprune._dtypes import widen, widened
from fprune._scratch import Scratch
from fprune.blocks import (
    REDUCTIONS,
    Placement,
    check_divisible,
    expand_masks,
    grid_shape,
    reduce_blocks,
    reduce_into,
    reduce_masks,
    reduce_scored,
    to_grid,
)
from fprune.layout import to_2d
from fprune.masking import SCOPES, _ndim_at_least_2, _select, fast_select, pattern_lock_masks
from fprune.patterns import NM, Pattern
from fprune.schedules import _window, decay_curve, is_prune_step
from fprune.selection import check_bounds
from fprune.sparsity import _fraction, _pruned_units
from fprune.state import PruneState, hash64

__all__ = ["Pruner", "pruner"]

Tensors = Mapping[str, torch.Tensor]


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
        from fprune.config import to_config  # the config layer sits above this one

        return to_config(self)

    def regularize(
        self, params: Tensors, *, step: int, lr: float, grads: Tensors | None = None
    ) -> dict[str, torch.Tensor]:
        """Apply the configured regularizer (``reg_type``) after the optimizer step.

        Inside ``start_step <= step <= end_step`` returns ``reg(params, pattern=...,
        strength=lr * reg_coeff, grads=grads)``; outside the window, or without a
        regularizer, returns ``params`` unchanged (as a new dict).

        Example:
            >>> import torch, fprune
            >>> (p,) = fprune.from_config({"reg_type": "group_lasso", "parameters": {"reg_coeff": 1.0},
            ...                            "pattern": "1x1", "end_step": 5})
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


_SAMPLED_BLOCK = 64  # blocks up to this many weights are sampled from their weights alone


class _Lazy(Mapping[str, torch.Tensor]):
    """A read-only mapping that computes each value on access (a layer's scores, on demand)."""

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
) -> Pruner:
    """Build a pruner: ``init(params) -> state`` and ``step(state, params, grads) -> (state, masks)``.

    Args:
        sparsity: final target, in [0, 1) (at most N/M for N:M patterns); counted in the
            pattern's units (blocks, channels, or N:M groups times N/M).
        pattern: ``"4x1"``, ``"1x1"``, ``"channelx1"``, ``"1xchannel"``, ``"2:4"``, a
            registered name, or a pattern object.
        criterion: ``"magnitude"``, ``"gradient"``, ``"snip"``, ``"snip_momentum"``, a
            registered name, a :class:`~fprune.Criterion`, or ``f(params, grads) -> scores``
            (weight-shaped or grid-shaped scores; lower is pruned first). A plain function
            is stateless, so it is called on prune steps only (in eager mode); it receives
            ``grads`` as given, None included; give it a ``needs_grads = True``
            attribute to make ``step`` reject calls without gradients.
        start_step, end_step, frequency: prune at ``start_step <= s <= end_step`` with
            ``(s - start_step) % frequency == 0``; ``end_step`` defaults to ``start_step``.
        schedule: ``"oneshot"``, ``"iterative"``, a registered scheduler, or a callable
            ``step -> sparsity`` (called on the prune steps; clamped to ``[0, sparsity]``).
            None: ``"oneshot"`` if ``start_step == end_step``, else ``"iterative"``.
        decay: the iterative ramp, ``"exp"``, ``"cos"``, ``"linear"``, ``"cube"`` or
            ``decay(x, initial, final)``.
        scope: ``"global"`` ranks all layers together, ``"local"`` prunes each layer to the
            target.
        min_layer_sparsity, max_layer_sparsity: per-layer bounds in global scope; the lower
            one ramps with the schedule (``min * r / sparsity``).
        reduce: block score reduction, ``"mean"``, ``"sum"`` or ``"max"``.
        low_memory_usage: keep snip_momentum's accumulators in bfloat16.
        lock_init_sparsity: start from the existing zeros of the params given to ``init``
            (their pattern-lock masks), and ramp from their sparsity (INC's init ratio).
            Existing zeros stay pruned even where they do not fill a unit (an N:M group with
            fewer or more than N zeros), so element sparsity can then exceed the target.
        skip_indivisible: leave layers the pattern does not divide dense instead of raising
            at ``init`` (see :func:`fprune.indivisible_layers`).

    Returns:
        A :class:`Pruner`.

    Raises:
        ValueError: a bad fraction, name or window; ``sparsity > max_layer_sparsity``;
            ``min_layer_sparsity > sparsity``; N:M ``sparsity > N/M``; ``"oneshot"`` with
            ``end_step != start_step``.
        TypeError: an argument of the wrong type.

    Example:
        >>> import torch, fprune
        >>> g = torch.Generator().manual_seed(0)
        >>> params = {"fc1.weight": torch.randn(8, 16, generator=g), "fc2.weight": torch.randn(4, 8, generator=g)}
        >>> prune = fprune.pruner(0.5, pattern="4x1", criterion="magnitude", end_step=2)
        >>> state = prune.init(params)
        >>> for s in range(3):
        ...     state, masks = prune.step(state, params)
        ...     params = fprune.apply_masks(params, masks)
        ...     print(s, round(float(state.target), 4), round(float(fprune.total_sparsity(masks, pattern="4x1")), 4))
        0 0.0 0.0
        1 0.2929 0.275
        2 0.5 0.5
    """
    func = "pruner"
    target = _errors.fraction(func, "sparsity", sparsity)
    if isinstance(target, torch.Tensor):
        raise _errors.type_error(func, "sparsity must be a Python float", sparsity, "Pass e.g. 0.8.")
    pat = _resolve.pattern(pattern)
    end = start_step if end_step is None else end_step
    start, end, freq = _window(func, start_step, end, frequency)
    scope = _errors.choice(func, "scope", scope, SCOPES)
    reduce = _errors.choice(func, "reduce", reduce, REDUCTIONS)
    if isinstance(min_layer_sparsity, torch.Tensor) or isinstance(max_layer_sparsity, torch.Tensor):
        raise _errors.type_error(
            func, "layer bounds must be Python floats", _errors.detail("a tensor"), "Pass e.g. 0.98.",
        )
    lo, hi = (float(b) for b in check_bounds(func, target, min_layer_sparsity, max_layer_sparsity))
    if isinstance(pat, NM) and target > pat.max_sparsity:
        raise _errors.value_error(
            func, f"pattern {str(pat)!r} cannot exceed sparsity N/M = {pat.max_sparsity}", target,
            f"Lower sparsity to at most {pat.max_sparsity}, or use a larger N:M ratio.",
        )
    for arg, flag in (("low_memory_usage", low_memory_usage), ("lock_init_sparsity", lock_init_sparsity),
                      ("skip_indivisible", skip_indivisible)):
        if not isinstance(flag, bool):
            raise _errors.type_error(func, f"{arg} must be a bool", flag, "Pass True or False.")
    crit = _resolve.criterion(
        criterion, pattern=pat, reduce=reduce, dtype=torch.bfloat16 if low_memory_usage else None
    )
    stateless = getattr(crit.update, "stateless", False)  # built-in |w|, |g|, |w g|: no aux
    layer_score = getattr(crit.update, "layer_score", None)  # built-ins: a layer's score is its own
    cap = pat.max_sparsity if isinstance(pat, NM) else 1.0
    curve = decay_curve(func, decay)
    target_at = _target_fn(func, schedule, start, end, freq, curve)

    settings = dict(
        sparsity=target, pattern=str(pat) if not isinstance(pattern, str) else pattern,
        criterion=criterion, start_step=start, end_step=end, frequency=freq, schedule=schedule,
        decay=decay, scope=scope, min_layer_sparsity=lo, max_layer_sparsity=hi, reduce=reduce,
        low_memory_usage=low_memory_usage, lock_init_sparsity=lock_init_sparsity,
        skip_indivisible=skip_indivisible,
    )
    config_hash = hash64(repr(sorted((k, _resolve.describe(v)) for k, v in settings.items())))
    settings["kind"] = "basic"

    def _active(params: Tensors) -> dict[str, torch.Tensor]:
        """The layers the pattern divides (the others are skipped or raise)."""
        skipped = check_divisible("init", params, pat, skip_indivisible=skip_indivisible)
        return {n: p for n, p in params.items() if n not in skipped}

    def init(params: Tensors, *, sparsity: float | torch.Tensor | None = None) -> PruneState:
        final = _final_target(sparsity)
        params = _checks.detached(_errors.tensor_dict("init", "params", params))
        _ndim_at_least_2("init", params)
        names = tuple(_active(params))  # judged on the global shapes
        sharding = _sharded.detect("init", {"params": params})
        if sharding is not None:
            sharding.check_units("init", {n: params[n].shape for n in names}, pat)
        local = params if sharding is None else sharding.local(params)
        active = {n: local[n] for n in names}
        aux = crit.init(active) if active else {}
        if lock_init_sparsity:
            locked = pattern_lock_masks(active, pattern=pat) if active else {}
            masks = {n: locked[n] if n in locked else torch.ones_like(p, dtype=torch.bool) for n, p in local.items()}
            combine = None if sharding is None else sharding.comm.sum  # counts over all ranks
            initial = (_fraction(*_pruned_units("init", locked, pat), combine).cpu() if active
                       else _checks.scalar(0.0, torch.float64))
        else:
            masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in local.items()}
            initial = _checks.scalar(0.0, torch.float64)
        if sharding is not None:
            masks = sharding.wrap(masks, {n: p.shape for n, p in params.items()})
            if aux:
                shapes = {n: a.shape for n, a in crit.init(_sharded.meta({n: params[n] for n in names})).items()}
                aux = sharding.wrap(aux, _sharded.global_shapes(shapes, aux, sharding, "init",
                                                                 "the criterion's state"))
        return PruneState(
            step=_checks.scalar(0, torch.int64),
            target=initial.clone(),
            initial=initial,
            masks=masks,
            aux=dict(aux),
            fingerprint=_checks.fingerprint(config_hash, params),
            sparsity=final,
        )

    def _final_target(value: object) -> torch.Tensor:
        """``init``'s final target: the factory's, or an override checked like it (in eager
        calls; a traced or vmapped tensor is clamped into the allowed range instead)."""
        if value is None:
            return _checks.scalar(target, torch.float64)
        if isinstance(value, torch.Tensor) and (value.ndim != 0 or not value.is_floating_point()):
            raise _errors.type_error(
                "init", "sparsity must be a float or a floating 0-d tensor",
                _errors.detail(f"{value.dtype} tensor of shape {tuple(value.shape)}"),
                "Pass e.g. torch.tensor(0.8); under vmap, a 1-D tensor of targets maps to 0-d.",
            )
        if not isinstance(value, torch.Tensor) or not _trace.tracing(value):
            number = _errors.fraction("init", "sparsity", float(value) if isinstance(value, torch.Tensor) else value)
            check_bounds("init", number, lo, hi)
            if number > cap:
                raise _errors.value_error(
                    "init", f"pattern {str(pat)!r} cannot exceed sparsity N/M = {cap}", number,
                    f"Pass a sparsity of at most {cap}.",
                )
        tensor = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float64)
        return tensor.to(device="cpu", dtype=torch.float64).clamp(lo, min(hi, cap))

    def _targets(
        step_t: torch.Tensor, initial: torch.Tensor, current: torch.Tensor, final: torch.Tensor
    ) -> tuple[torch.Tensor, float | torch.Tensor]:
        """This prune step's target ``r`` (never below the current one) and the per-layer
        lower bound, which ramps with the schedule: ``min * r / sparsity`` (0 while r is 0)."""
        r = torch.maximum(target_at(step_t, initial, final), current)
        return r, 0.0 if lo == 0.0 else r * lo / torch.clamp(final, min=lo)

    def _prune(
        step_t: torch.Tensor,
        initial: torch.Tensor,
        current: torch.Tensor,
        final: torch.Tensor,
        previous: dict[str, torch.Tensor],
        grid: dict[str, torch.Tensor],
        comm: _sharded.Collectives | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """New masks of the active layers and the new target, at a prune step (pure tensors;
        a sharded run's local shards with ``comm``)."""
        r, low = _targets(step_t, initial, current, final)
        chosen = _select(grid, pat, r, scope, low, hi, reduce_masks(previous, pattern=pat), reduce, comm)
        expanded = expand_masks(chosen, pattern=pat, shapes={n: m.shape for n, m in previous.items()})
        return {n: expanded[n] & previous[n] for n in grid}, r

    def _eager_layers(active: Tensors) -> bool:
        """Whether an eager prune step can score and select layer by layer (on the CPU)."""
        return _fast.applies(active.values(), ())

    def _prune_eager(
        step_t: torch.Tensor,
        initial: torch.Tensor,
        current: torch.Tensor,
        final: torch.Tensor,
        previous: dict[str, torch.Tensor],
        grid_of: Callable[[str], torch.Tensor],
        sample_of: Callable[[str, int], torch.Tensor | None],
        grouped_of: Callable[[str], torch.Tensor | None],
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        """``_prune`` for an eager step, one layer's scores at a time, so memory beyond the new
        masks is of the order of the largest layer. N:M ranks each layer within its groups
        before the next is scored; block patterns select by sample and settle (None where it
        defers to the general path)."""
        r, low = _targets(step_t, initial, current, final)
        # the layers whose previous mask prunes something: one read of each mask, here only
        partial = {n: m for n, m in previous.items() if not _fast.all_true(m)}
        if isinstance(pat, NM):  # a layer left out of ``partial`` keeps everything
            chosen = _select(_Lazy(grid_of, tuple(previous)), pat, r, scope, low, hi,
                             reduce_masks(partial, pattern=pat), reduce, grouped=grouped_of)
            return {name: _and_previous(_expanded(chosen.pop(name), name, previous), name, partial)
                    for name in previous}, r
        shapes = {n: grid_shape(pat, tuple(m.shape)) for n, m in previous.items()}
        placement = Placement(pat, {n: tuple(m.shape) for n, m in previous.items()})  # 2-D block layers
        kept = fast_select(
            sorted(previous), grid_of,
            lambda n: reduce_masks({n: partial[n]}, pattern=pat)[n] if n in partial else None,
            {n: math.prod(shape) for n, shape in shapes.items()}, scope=scope, sparsity=r, lo=low, hi=hi,
            sampler=sample_of, placer=placement,
        )
        if kept is None:
            return None
        out = {}
        for name in previous:  # one layer at a time, dropping its grid mask
            mask = kept.pop(name)  # weight-shaped already where the placement covers the layer
            mask = mask if placement.covers(name) else _expanded(mask.reshape(shapes[name]), name, previous)
            out[name] = _and_previous(mask, name, partial)
        return out, r

    def _expanded(grid_mask: torch.Tensor, name: str, previous: dict[str, torch.Tensor]) -> torch.Tensor:
        """A layer's grid mask expanded to its weight's shape."""
        return expand_masks({name: grid_mask}, pattern=pat, shapes={name: previous[name].shape})[name]

    def _and_previous(mask: torch.Tensor, name: str, partial: dict[str, torch.Tensor]) -> torch.Tensor:
        """A layer's new weight-shaped mask ANDed with its previous mask if that is in
        ``partial`` (it prunes something): in place when the mask is our own fresh tensor
        (not a broadcast view)."""
        if name not in partial:
            return mask
        return mask.__iand__(partial[name]) if mask.is_contiguous() else mask & partial[name]

    def _keep(*operands: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The other branch of ``torch.cond`` (same operands as the prune branch): unchanged
        masks and target, cloned because cond branches may not return their inputs."""
        current, previous = operands[2], operands[4]
        return {n: m.clone() for n, m in previous.items()}, current.clone()

    def step(
        state: PruneState, params: Tensors, grads: Tensors | None = None
    ) -> tuple[PruneState, dict[str, torch.Tensor]]:
        func = "step"
        state = _checks.check_state(func, state)
        params = _checks.detached(_checks.check_params(func, params, state))
        if grads is None and crit.needs_grads:
            raise _errors.value_error(
                func, "this criterion needs gradients", None,
                "Pass grads (e.g. {n: p.grad for n, p in model.named_parameters() if n in params}) "
                "after backward, or use criterion='magnitude'.",
            )
        if grads is not None:
            grads = _checks.detached(_errors.tensor_dict(func, "grads", grads))
            _errors.same_shapes(func, "grads", grads, "params", params)
        _checks.check_fingerprint(func, state, config_hash, params)
        tracing = _trace.tracing(state.step)
        prune_now = None if tracing else is_prune_step(int(state.step), start_step=start, end_step=end,
                                                       frequency=freq)
        if prune_now is False and stateless:  # nothing to accumulate, nothing to select
            return dataclasses.replace(state, step=state.step + 1), dict(state.masks)
        names = tuple(_active(params))  # judged on the global shapes
        sharding = _sharded.detect(
            func, {"params": params, "grads": grads, "state.masks": state.masks, "state.aux": state.aux}
        )
        if sharding is None:
            return _advance(state, params, grads, names, tracing, prune_now, None)
        local = dataclasses.replace(state, masks=sharding.local(state.masks), aux=sharding.local(state.aux))
        new_state, _ = _advance(local, sharding.local(params), None if grads is None else sharding.local(grads),
                                names, tracing, prune_now, sharding.comm)
        masks = sharding.wrap(new_state.masks, {n: m.shape for n, m in state.masks.items()})
        shapes = {n: a.shape for n, a in state.aux.items()}
        aux = sharding.wrap(new_state.aux, _sharded.global_shapes(shapes, new_state.aux, sharding, func,
                                                                  "the criterion's state"))
        return dataclasses.replace(new_state, masks=masks, aux=aux), dict(masks)

    def _advance(
        state: PruneState, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor] | None,
        names: tuple[str, ...], tracing: bool, prune_now: bool | torch.Tensor | None,
        comm: _sharded.Collectives | None,
    ) -> tuple[PruneState, dict[str, torch.Tensor]]:
        """``step`` after its checks, on plain tensors (a sharded run's local shards, with
        ``comm`` for the selection), for the active layers ``names``."""
        func = "step"
        active = {n: params[n] for n in names}
        agrads = None if grads is None else {n: grads[n] for n in active}
        if stateless:  # scored inside the prune branch: a compiled non-prune step skips it too
            aux: Mapping[str, torch.Tensor] = {}

            def grid() -> dict[str, torch.Tensor]:
                return _grids(func, crit.update({}, active, agrads)[0], active, pat, reduce)

            def grid_of(name: str) -> torch.Tensor:  # one layer at a time (eager selection)
                if layer_score is None:  # a user's function may look across layers: score all once
                    if not memo:
                        memo.update(grid())
                    return memo[name]
                w = active[name]
                g = None if agrads is None else agrads[name]
                if w.ndim == 2 and not isinstance(pat, NM) and (block := pat.block_shape(tuple(w.shape))) != (1, 1):
                    # a few block rows at a time, each reduced while in cache
                    into = grid_scratch.get((w.shape[0] // block[0], w.shape[1] // block[1]), widened(w.dtype), w.device)
                    return reduce_scored(layer_score, w, g, block, reduce, scratch, into)
                # into one buffer reused by every layer and pass (the eager selection uses a
                # score only until it asks for the next)
                score = layer_score(w, g, scratch.like(w))
                view = to_2d(score)
                block = (1, 1) if isinstance(pat, NM) else pat.block_shape(tuple(view.shape))
                if block == (1, 1):
                    return to_grid({name: score}, pat, reduce)[name]
                shape = (view.shape[0] // block[0], view.shape[1] // block[1])
                into = grid_scratch.get(shape, widen(view).dtype, view.device)
                return reduce_into(view, block, reduce, into)

            def grouped_of(name: str) -> torch.Tensor | None:
                """An N:M layer's scores grouped, ``[rows, cols / M, M]``, each group position's
                scores contiguous (``nm_masks``'s ``grouped``): scored a position at a time, from
                strided views of the weights, so its groups rank without gathering columns;
                None where that is not faster or the layer is not a plain 2-D weight."""
                w = active[name]
                if (layer_score is None or not isinstance(pat, NM) or w.ndim != 2 or not w.is_contiguous()
                        or not nm.by_columns(pat.m, w.device)):
                    return None
                (rows, cols), m = w.shape, pat.m
                groups = rows * cols // m
                g = None if agrads is None else agrads[name].reshape(groups, m)
                out = scratch.get((m, groups), w.dtype, w.device)  # the buffer grid_of would use
                w_groups = w.view(groups, m)
                for i in range(m):
                    layer_score(w_groups[:, i], None if g is None else g[:, i], out[i])
                return out.t().view(rows, cols // m, m)

            def sample_of(name: str, stride: int) -> torch.Tensor | None:
                """The unit scores ``_fast.grid_sample(grid, stride)`` takes, for the bracket, from
                only the weights of those units (an element-wise criterion on a 2-D weight with
                small blocks); None otherwise."""
                w = active[name]
                if layer_score is None or w.ndim != 2 or not w.is_contiguous() or isinstance(pat, NM):
                    return None
                (rows, cols), (bn, bm) = w.shape, pat.block_shape(tuple(w.shape))
                if bn * bm > _SAMPLED_BLOCK:
                    return None
                g = None if agrads is None or not crit.needs_grads else agrads[name]  # magnitude: w only
                if _fast.diagonal(rows // bn, cols // bm, stride):  # one strided view of the sampled blocks
                    w_units = _fast.diagonal_view(w, (bn, bm), stride)
                    g_units = None if g is None else _fast.diagonal_view(g, (bn, bm), stride)
                    score = layer_score(w_units, g_units, torch.empty(w_units.shape, dtype=w.dtype, device=w.device))
                    if (bn, bm) == (1, 1):
                        return score.reshape(-1)
                    return reduce_blocks(score.view(rows, -1), (bn, bm), reduce=reduce).reshape(-1)
                if (bn, bm) == (1, 1):
                    w_units = w.reshape(-1)[::stride]
                    g_units = None if g is None else g.reshape(-1)[::stride]
                    return layer_score(w_units, g_units, torch.empty_like(w_units))
                across = cols // bm
                if across % stride == 0:  # every stride-th column of every block row: one strided view
                    w_units = w.view(rows // bn, bn, across, bm)[:, :, ::stride]
                    g_units = None if g is None else g.view(rows // bn, bn, across, bm)[:, :, ::stride]
                    score = layer_score(w_units, g_units, torch.empty(w_units.shape, dtype=w.dtype, device=w.device))
                    return reduce_blocks(score.view(rows, -1), (bn, bm), reduce=reduce).reshape(-1)
                at = _fast.sample_positions(rows // bn, across, stride, w.device)  # flat here: not diagonal
                first = (at // across) * (bn * cols) + (at % across) * bm  # a unit's first weight
                within = (torch.arange(bn, device=w.device)[:, None] * cols + torch.arange(bm, device=w.device)).reshape(-1)
                flat = (first[:, None] + within).reshape(-1, bn, bm)  # [units, bn, bm] flat indices
                w_units = torch.take(w, flat)
                g_units = None if g is None else torch.take(g, flat)
                score = layer_score(w_units, g_units, torch.empty_like(w_units))
                return reduce_blocks(score.reshape(-1, bm), (bn, bm), reduce=reduce).reshape(-1)

            memo: dict[str, torch.Tensor] = {}
            scratch = Scratch(active.values())
            grid_scratch = Scratch(())  # block grids, sized as they come
        else:  # accumulators fold in every step's grads
            scores, aux = crit.update(state.aux, active, agrads) if active else ({}, {})
            ready = _grids(func, scores, active, pat, reduce)

            def grid() -> dict[str, torch.Tensor]:
                return ready

            def grid_of(name: str) -> torch.Tensor:
                return ready[name]

            def grouped_of(name: str) -> torch.Tensor | None:
                return None

            def sample_of(name: str, stride: int) -> torch.Tensor | None:
                return None

        def prune_branch(
            step_t: torch.Tensor, initial: torch.Tensor, current: torch.Tensor, final: torch.Tensor,
            previous: dict[str, torch.Tensor],
        ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
            return _prune(step_t, initial, current, final, previous, grid(), comm)

        previous = {n: state.masks[n] for n in active}
        operands = (state.step, state.initial, state.target, state.sparsity, previous)
        if not active:
            new_active, new_target = {}, state.target
        elif tracing and not _trace.batched(state.step):  # compiled: both branches traced, one runs
            pred = is_prune_step(state.step, start_step=start, end_step=end, frequency=freq)
            new_active, new_target = torch.cond(pred, prune_branch, _keep, operands)
        elif tracing:  # vmapped (eager or compiled): members may disagree, so compute and select
            pred = torch.as_tensor(is_prune_step(state.step, start_step=start, end_step=end, frequency=freq))
            chosen, r = prune_branch(*operands)
            new_active = {n: torch.where(pred, chosen[n], state.masks[n]) for n in active}
            new_target = torch.where(pred, r, state.target)
        elif prune_now:
            fast = (_prune_eager(*operands, grid_of, sample_of, grouped_of)
                    if comm is None and _eager_layers(active) else None)
            new_active, new_target = fast if fast is not None else prune_branch(*operands)
        else:
            new_active, new_target = previous, state.target
        masks = {n: new_active.get(n, state.masks[n]) for n in params}
        new_state = dataclasses.replace(
            state, step=state.step + 1, target=new_target, masks=masks, aux=dict(aux)
        )
        return new_state, dict(masks)

    return Pruner(init, step, types.MappingProxyType(settings))


def _grids(
    func: str, scores: object, params: Tensors, pat: Pattern, reduce: str
) -> dict[str, torch.Tensor]:
    """Scores on each layer's grid: weight-shaped scores are reduced, grid-shaped pass."""
    if not params:
        return {}
    scores = _errors.tensor_dict(func, "scores (the criterion's output)", scores)
    _errors.same_keys(func, "scores (the criterion's output)", scores, "params", params)
    out = {}
    for name, score in scores.items():
        shape = tuple(params[name].shape)
        if tuple(score.shape) == shape:
            out[name] = to_grid({name: score}, pat, reduce)[name]
        elif tuple(score.shape) == grid_shape(pat, shape):
            out[name] = score
        else:
            raise _errors.value_error(
                func, f"the criterion's score for {name!r} has the wrong shape",
                _errors.detail(f"{tuple(score.shape)}; weight {shape}, grid {grid_shape(pat, shape)}"),
                "A criterion returns scores shaped like the weight or like its pattern grid.",
            )
    return out


def _target_fn(
    func: str, schedule: object, start: int, end: int, freq: int, curve: Any
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(step, initial, final) -> target`` as float64 0-d tensor math, from ``schedule``."""
    if schedule is None:
        schedule = "oneshot" if start == end else "iterative"
    if schedule == "oneshot" and start != end:
        raise _errors.value_error(
            func, "a oneshot schedule prunes once, at start_step",
            _errors.detail(f"start_step={start}, end_step={end}"),
            "Set end_step = start_step (or leave it out), or use schedule='iterative'.",
        )
    if isinstance(schedule, str):
        rich = registry.get_scheduler(schedule)
    elif callable(schedule):
        rich = schedule if _resolve.is_factory(schedule) else None
    else:
        raise _errors.type_error(
            func, "schedule must be a name or a callable", type(schedule).__name__,
            "Pass 'oneshot', 'iterative', or a function step -> sparsity.",
        )
    simple = None if rich is not None else schedule

    def target_at(step: torch.Tensor, initial: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
        if rich is not None:
            value = rich(step, initial=initial, sparsity=final, start_step=start, end_step=end,
                         frequency=freq, decay=curve)
        else:
            value = simple(step if _trace.tracing(step) else int(step))  # type: ignore[misc]
        value = torch.as_tensor(value, dtype=torch.float64)
        return torch.clamp(torch.minimum(value, torch.maximum(initial, final)), min=0.0)

    return target_at


registry.register_pruner("basic", pruner)
