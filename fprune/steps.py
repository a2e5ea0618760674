"""The basic pruner's work as module-level pure functions of its static :class:`Settings`.

:func:`fprune.pruner` validates its arguments into a :class:`Settings` and binds these
functions to it; each can be called and tested on its own:

* :func:`init` builds the first :class:`~fprune.state.PruneState` (all kept, or the
  existing zeros with ``lock_init_sparsity``);
* :func:`step` checks its inputs, then :func:`advance` folds this step's ``grads`` into the
  criterion and, on a prune step, computes new masks with :func:`prune_masks`:

  * the target ``r`` is the schedule's value at this step, never below the current one
    (:func:`targets`);
  * units are selected exactly, ``floor(r * n + 1e-9)`` of them, previously pruned units
    first, so masks are nested (:func:`fprune.masking.update_masks`);
  * in global scope each layer's pruned fraction lies in
    ``[min_layer_sparsity * r / sparsity, max_layer_sparsity]``.

On other steps the masks are returned unchanged and no selection work is done; stateless
criteria are not even evaluated there. Under ``torch.compile`` the prune step is a
``torch.cond`` branch; under ``vmap`` both outcomes are computed and selected with ``where``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import torch

from fprune import _checks, _errors, _sharded, _trace
from fprune.blocks import check_divisible, grid_shape, to_grid
from fprune.distributions import layer_sparsities
from fprune.layout import check_weights
from fprune.masking import pattern_lock_masks, update_masks, update_scores
from fprune.patterns import NM, Pattern
from fprune.schedules import is_prune_step
from fprune.scores import Criterion, LayerScoring
from fprune.selection import check_bounds
from fprune.sparsity import pruned_units, unit_fraction
from fprune.state import PruneState

__all__ = [
    "Settings",
    "Target",
    "active_layers",
    "advance",
    "final_target",
    "grids",
    "init",
    "prune_masks",
    "step",
    "targets",
]

_Tensors = Mapping[str, torch.Tensor]
Target = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Settings:
    """The static configuration of a basic pruner, as :func:`fprune.pruner` validated it.

    Attributes:
        sparsity: the final target (a Python float).
        pattern: the pattern object.
        criterion: the resolved :class:`~fprune.scores.Criterion`.
        start_step, end_step, frequency: the prune window.
        target_at: ``target_at(step, initial, final) -> target``, float64 0-d tensor math
            (the schedule, clamped to ``[0, max(initial, final)]``).
        scope: ``"global"`` or ``"local"``.
        min_layer_sparsity, max_layer_sparsity: the per-layer bounds.
        reduce: the block score reduction.
        lock_init_sparsity: start from the existing zeros at ``init``.
        skip_indivisible: leave layers the pattern does not divide dense.
        distribution: None, or the per-layer distribution of the target (local scope).
        config_hash: the fingerprint of these settings kept in every state.
    """

    sparsity: float
    pattern: Pattern
    criterion: Criterion
    start_step: int
    end_step: int
    frequency: int
    target_at: Target
    scope: str
    min_layer_sparsity: float
    max_layer_sparsity: float
    reduce: str
    lock_init_sparsity: bool
    skip_indivisible: bool
    config_hash: int
    distribution: str | None = None

    @property
    def cap(self) -> float:
        """The highest sparsity the pattern allows: N/M for N:M, else 1."""
        return self.pattern.max_sparsity if isinstance(self.pattern, NM) else 1.0

    def prunes_at(self, step: int | torch.Tensor) -> bool | torch.Tensor:
        """Whether ``step`` is a prune step of the window."""
        return is_prune_step(
            step, start_step=self.start_step, end_step=self.end_step, frequency=self.frequency
        )


def active_layers(settings: Settings, func: str, params: _Tensors) -> dict[str, torch.Tensor]:
    """The layers the pattern divides (the others are skipped or raise), judged on the
    global shapes."""
    skipped = check_divisible(
        func, params, settings.pattern, skip_indivisible=settings.skip_indivisible
    )
    return {n: p for n, p in params.items() if n not in skipped}


def final_target(settings: Settings, value: object) -> torch.Tensor:
    """``init``'s final target: the pruner's, or an override checked like it (in eager calls;
    a traced or vmapped tensor is clamped into the allowed range instead)."""
    lo, hi, cap = settings.min_layer_sparsity, settings.max_layer_sparsity, settings.cap
    if value is None:
        return _checks.scalar(settings.sparsity, torch.float64)
    if settings.distribution is not None:
        raise _errors.value_error(
            "init",
            "a pruner with a distribution fixes each layer's target from its own sparsity",
            _errors.detail(repr(value)),
            "Build the pruner with the sparsity you want (or leave distribution out).",
        )
    if isinstance(value, torch.Tensor) and (value.ndim != 0 or not value.is_floating_point()):
        raise _errors.type_error(
            "init",
            "sparsity must be a float or a floating 0-d tensor",
            _errors.detail(f"{value.dtype} tensor of shape {tuple(value.shape)}"),
            "Pass e.g. torch.tensor(0.8); under vmap, a 1-D tensor of targets maps to 0-d.",
        )
    if not isinstance(value, torch.Tensor) or not _trace.tracing(value):
        number = _errors.fraction(
            "init", "sparsity", float(value) if isinstance(value, torch.Tensor) else value
        )
        check_bounds("init", number, lo, hi)
        if number > cap:
            raise _errors.value_error(
                "init",
                f"pattern {str(settings.pattern)!r} cannot exceed sparsity N/M = {cap}",
                number,
                f"Pass a sparsity of at most {cap}.",
            )
    tensor = (
        value.detach()
        if isinstance(value, torch.Tensor)
        else torch.tensor(value, dtype=torch.float64)
    )
    return tensor.to(device="cpu", dtype=torch.float64).clamp(lo, min(hi, cap))


def _initial_masks(
    settings: Settings,
    active: _Tensors,
    local: _Tensors,
    sharding: _sharded.Sharding | None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The first masks of every layer (of this rank's shards) and the schedule's initial
    sparsity: all kept from 0, or the existing zeros and their sparsity in pattern units
    (counted over all ranks) with ``lock_init_sparsity``."""
    zero = _checks.scalar(0.0, torch.float64)
    if not settings.lock_init_sparsity:
        return {n: torch.ones_like(p, dtype=torch.bool) for n, p in local.items()}, zero
    locked = pattern_lock_masks(active, pattern=settings.pattern) if active else {}
    masks = {
        n: locked[n] if n in locked else torch.ones_like(p, dtype=torch.bool)
        for n, p in local.items()
    }
    if not active:
        return masks, zero
    combine = None if sharding is None else sharding.comm.sum  # counts over all ranks
    return masks, unit_fraction(*pruned_units("init", locked, settings.pattern), combine).cpu()


def init(
    settings: Settings, params: _Tensors, *, sparsity: float | torch.Tensor | None = None
) -> PruneState:
    """The first state: masks, the criterion's accumulators and the targets (see
    :class:`~fprune.pruner.Pruner`); sharded params give sharded masks and accumulators."""
    final = final_target(settings, sparsity)
    params = _checks.detached(_errors.tensor_dict("init", "params", params))
    check_weights("init", params)
    names = tuple(active_layers(settings, "init", params))
    sharding = _sharded.detect("init", {"params": params})
    if sharding is not None:
        sharding.check_units("init", {n: params[n].shape for n in names}, settings.pattern)
    local = params if sharding is None else sharding.local(params)
    active = {n: local[n] for n in names}
    aux = settings.criterion.init(active) if active else {}
    masks, initial = _initial_masks(settings, active, local, sharding)
    if sharding is not None:
        masks = sharding.wrap(masks, {n: p.shape for n, p in params.items()})
        if aux:
            meta = settings.criterion.init(_sharded.meta({n: params[n] for n in names}))
            shapes = _sharded.global_shapes(
                {n: a.shape for n, a in meta.items()},
                aux,
                sharding,
                "init",
                "the criterion's state",
            )
            aux = sharding.wrap(aux, shapes)
    return PruneState(
        step=_checks.scalar(0, torch.int64),
        current_target=initial.clone(),
        initial_target=initial,
        masks=masks,
        aux=dict(aux),
        fingerprint=_checks.fingerprint(settings.config_hash, params),
        final_target=final,
    )


def targets(
    settings: Settings,
    step_t: torch.Tensor,
    initial: torch.Tensor,
    current: torch.Tensor,
    final: torch.Tensor,
) -> tuple[torch.Tensor, float | torch.Tensor]:
    """This prune step's target ``r`` (never below the current one) and the per-layer lower
    bound, which ramps with the schedule: ``min * r / sparsity`` (0 while r is 0)."""
    lo = settings.min_layer_sparsity
    r = torch.maximum(settings.target_at(step_t, initial, final), current)
    return r, 0.0 if lo == 0.0 else r * lo / torch.clamp(final, min=lo)


def grids(
    func: str, scores: object, params: _Tensors, pattern: Pattern, reduce: str
) -> dict[str, torch.Tensor]:
    """A criterion's scores on each layer's grid: weight-shaped scores are reduced,
    grid-shaped ones pass; any other shape is an error."""
    if not params:
        return {}
    scores = _errors.tensor_dict(func, "scores (the criterion's output)", scores)
    _errors.same_keys(func, "scores (the criterion's output)", scores, "params", params)
    out = {}
    for name, score in scores.items():
        shape = tuple(params[name].shape)
        if tuple(score.shape) == shape:
            out[name] = to_grid({name: score}, pattern, reduce)[name]
        elif tuple(score.shape) == grid_shape(pattern, shape):
            out[name] = score
        else:
            raise _errors.value_error(
                func,
                f"the criterion's score for {name!r} has the wrong shape",
                _errors.detail(
                    f"{tuple(score.shape)}; weight {shape}, grid {grid_shape(pattern, shape)}"
                ),
                "A criterion returns scores shaped like the weight or like its pattern grid.",
            )
    return out


def prune_masks(
    settings: Settings,
    step_t: torch.Tensor,
    initial: torch.Tensor,
    current: torch.Tensor,
    final: torch.Tensor,
    previous: _Tensors,
    scores: _Tensors | LayerScoring,
    comm: _sharded.Collectives | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """New masks of the active layers and the new target, at a prune step (a sharded run's
    local shards with ``comm``, the ranks' collectives)."""
    r, low = targets(settings, step_t, initial, current, final)
    if settings.distribution is not None:
        return _distributed_masks(settings, r, previous, scores, comm), r
    masks = update_masks(
        scores,
        previous,
        pattern=settings.pattern,
        sparsity=r,
        scope=settings.scope,
        lo=low,
        hi=settings.max_layer_sparsity,
        reduce=settings.reduce,
        comm=comm,
    )
    return masks, r


@torch.compiler.assume_constant_result
def _layer_shares(
    settings: Settings, shapes: tuple[tuple[str, tuple[int, ...]], ...]
) -> tuple[tuple[float, tuple[str, ...]], ...]:
    """The layers grouped by their share ``s_l / sparsity`` of the target under
    ``settings.distribution`` (constants: a compiled step does not trace this)."""
    if settings.sparsity == 0.0:
        return ((0.0, tuple(n for n, _ in shapes)),)
    fractions = layer_sparsities(
        dict(shapes), settings.sparsity, distribution=settings.distribution or "uniform",
        pattern=settings.pattern,
    )  # fmt: skip
    groups: dict[float, list[str]] = {}
    for name, value in fractions.items():
        groups.setdefault(value / settings.sparsity, []).append(name)
    return tuple((share, tuple(names)) for share, names in groups.items())


def _global_shapes(
    previous: _Tensors, comm: _sharded.Collectives | None
) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The layers' shapes; a sharded step sums its ranks' rows (a count per layer)."""
    shapes = [(n, tuple(m.shape)) for n, m in previous.items()]
    if comm is None:
        return tuple(shapes)
    rows = comm.sum(torch.tensor([s[0] for _, s in shapes], dtype=torch.int64)).tolist()
    return tuple((n, (int(r), *s[1:])) for (n, s), r in zip(shapes, rows, strict=True))


def _distributed_masks(
    settings: Settings,
    r: torch.Tensor,
    previous: _Tensors,
    scores: _Tensors | LayerScoring,
    comm: _sharded.Collectives | None,
) -> dict[str, torch.Tensor]:
    """Local-scope masks with each layer at ``r * s_l / sparsity`` (one selection per share)."""
    masks: dict[str, torch.Tensor] = {}
    for share, names in _layer_shares(settings, _global_shapes(previous, comm)):
        if isinstance(scores, LayerScoring):
            part: _Tensors | LayerScoring = scores._replace(
                params={n: scores.params[n] for n in names},
                grads=None if scores.grads is None else {n: scores.grads[n] for n in names},
            )
        else:
            part = {n: scores[n] for n in names}
        masks.update(
            update_masks(
                part,
                {n: previous[n] for n in names},
                pattern=settings.pattern,
                sparsity=r * share,
                scope="local",
                lo=0.0,
                hi=1.0,
                reduce=settings.reduce,
                comm=comm,
            )
        )
    return {n: masks[n] for n in previous}


def _keep(*operands: object) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The other branch of ``torch.cond`` (same operands as the prune branch): the masks and
    target unchanged, cloned because cond branches may not return their inputs."""
    current, previous = operands[2], operands[4]
    return {n: m.clone() for n, m in previous.items()}, current.clone()  # type: ignore[union-attr]


def _selection_scores(
    settings: Settings,
    state: PruneState,
    active: _Tensors,
    grads: _Tensors | None,
) -> tuple[Callable[[], _Tensors | LayerScoring], dict[str, torch.Tensor]]:
    """What the prune branch selects by (computed when it runs, for a stateless criterion,
    so that a compiled non-prune step skips it) and the criterion's new accumulators."""
    crit, layer_score = settings.criterion, settings.criterion.layer_score
    if crit.stateless and layer_score is not None:
        return lambda: LayerScoring(layer_score, active, grads, crit.needs_grads), {}
    if crit.stateless:
        return lambda: grids(
            "step", crit.update({}, active, grads)[0], active, settings.pattern, settings.reduce
        ), {}
    raw, aux = update_scores(crit, state.aux, active, grads) if active else ({}, {})
    ready = grids("step", raw, active, settings.pattern, settings.reduce)
    return lambda: ready, dict(aux)


def advance(
    settings: Settings,
    state: PruneState,
    params: _Tensors,
    grads: _Tensors | None,
    names: tuple[str, ...],
    prune_now: bool | None,
    comm: _sharded.Collectives | None = None,
) -> tuple[PruneState, dict[str, torch.Tensor]]:
    """:func:`step` after its checks, on plain tensors (a sharded run's local shards, with
    ``comm`` for the selection), for the active layers ``names``; ``prune_now`` is None
    when traced (then decided in the graph)."""
    active = {n: params[n] for n in names}
    scores, aux = _selection_scores(
        settings, state, active, None if grads is None else {n: grads[n] for n in active}
    )

    def prune_branch(
        step_t: torch.Tensor,
        initial: torch.Tensor,
        current: torch.Tensor,
        final: torch.Tensor,
        previous: _Tensors,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return prune_masks(settings, step_t, initial, current, final, previous, scores(), comm)

    previous = {n: state.masks[n] for n in active}
    operands = (
        state.step,
        state.initial_target,
        state.current_target,
        state.final_target,
        previous,
    )
    if not active or prune_now is False:
        new_active, new_target = previous, state.current_target
    elif prune_now:
        new_active, new_target = prune_branch(*operands)
    elif not _trace.batched(state.step):  # compiled: both branches traced, one runs
        new_active, new_target = torch.cond(
            settings.prunes_at(state.step), prune_branch, _keep, operands
        )
    else:  # vmapped (eager or compiled): members may disagree, so compute and select
        pred = torch.as_tensor(settings.prunes_at(state.step))
        chosen, r = prune_branch(*operands)
        new_active = {n: torch.where(pred, chosen[n], state.masks[n]) for n in active}
        new_target = torch.where(pred, r, state.current_target)
    finite = _finite(settings, aux, grads, names, comm) if active else None
    if finite is not None and (_trace.tracing(finite) or not bool(finite)):
        # a step with NaN or inf gradients changes nothing but the step counter
        aux = {n: torch.where(finite, a, state.aux[n]) for n, a in aux.items()}
        new_active = {n: torch.where(finite, m, previous[n]) for n, m in new_active.items()}
        new_target = torch.where(finite, new_target, state.current_target)
    masks = {n: new_active.get(n, state.masks[n]) for n in params}
    new_state = dataclasses.replace(
        state, step=state.step + 1, current_target=new_target, masks=masks, aux=aux
    )
    return new_state, dict(masks)


def _finite(
    settings: Settings,
    aux: _Tensors,
    grads: _Tensors | None,
    names: tuple[str, ...],
    comm: _sharded.Collectives | None,
) -> torch.Tensor | None:
    """A 0-d bool: whether this step's gradients were all finite, read from the new
    accumulators (a NaN or inf gradient makes them NaN or inf; grid-sized, so cheaper than
    the gradients) or, for a stateless criterion, from the gradients; summed over the ranks
    of a sharded run. None for a criterion without gradients."""
    if not settings.criterion.needs_grads or grads is None:
        return None
    checked = list(aux.values()) if aux else [grads[n] for n in names]
    return _checks.all_finite(checked, None if comm is None else comm.sum)


def _checked_grads(settings: Settings, params: _Tensors, grads: _Tensors | None) -> _Tensors | None:
    if grads is None and settings.criterion.needs_grads:
        raise _errors.value_error(
            "step",
            "this criterion needs gradients",
            None,
            "Pass grads (e.g. {n: p.grad for n, p in model.named_parameters() if n in params}) "
            "after backward, or use criterion='magnitude'.",
        )
    if grads is None:
        return None
    grads = _checks.detached(_errors.tensor_dict("step", "grads", grads))
    _errors.same_shapes("step", "grads", grads, "params", params)
    return grads


def step(
    settings: Settings, state: PruneState, params: _Tensors, grads: _Tensors | None = None
) -> tuple[PruneState, dict[str, torch.Tensor]]:
    """One step: ``(state, params, grads) -> (state, masks)`` (see the module docstring)."""
    func = "step"
    state = _checks.check_state(func, state)
    params = _checks.detached(_checks.check_params(func, params, state))
    grads = _checked_grads(settings, params, grads)
    _checks.check_fingerprint(func, state, settings.config_hash, params)
    _checks.check_accumulators(func, state, params)
    prune_now = None if _trace.tracing(state.step) else bool(settings.prunes_at(int(state.step)))
    if (
        prune_now is False and settings.criterion.stateless
    ):  # nothing to accumulate, nothing to select
        return dataclasses.replace(state, step=state.step + 1), dict(state.masks)
    names = tuple(active_layers(settings, func, params))
    sharding = _sharded.detect(
        func, {"params": params, "grads": grads, "state.masks": state.masks, "state.aux": state.aux}
    )
    if sharding is None:
        return advance(settings, state, params, grads, names, prune_now)
    local = dataclasses.replace(
        state, masks=sharding.local(state.masks), aux=sharding.local(state.aux)
    )
    new_state, _ = advance(
        settings,
        local,
        sharding.local(params),
        None if grads is None else sharding.local(grads),
        names,
        prune_now,
        sharding.comm,
    )
    masks = sharding.wrap(new_state.masks, {n: m.shape for n, m in state.masks.items()})
    shapes = _sharded.global_shapes(
        {n: a.shape for n, a in state.aux.items()},
        new_state.aux,
        sharding,
        func,
        "the criterion's state",
    )
    aux = sharding.wrap(new_state.aux, shapes)
    return dataclasses.replace(new_state, masks=masks, aux=aux), dict(masks)
