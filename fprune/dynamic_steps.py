"""The dynamic pruner's work as module-level pure functions of its static :class:`Settings`.

:func:`fprune.dynamic` validates its arguments into a :class:`Settings` and binds these to it:

* :func:`init` fixes each layer's count of pruned units (:func:`fprune.layer_counts`) and
  draws the first masks with exactly those counts (:func:`start_masks`);
* :func:`step` checks its inputs and, on an update step, swaps units
  (:func:`updated_masks`, the math of :mod:`fprune.regrow`).

A step with non-finite gradients (RigL) changes nothing but the step counter. Under
``torch.compile`` the update is a ``torch.cond`` branch, so no value of the step recompiles;
under ``vmap`` (over seeds, say) both outcomes are computed and selected with ``where``.
Sharded ``DTensor`` params are handled on their local shards; the ranks exchange counts only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch

from fprune import _checks, _errors, _sharded, _trace
from fprune._sharded import select as sharded
from fprune.blocks import check_divisible, expand_masks, grid_shape, reduce_masks, to_grid
from fprune.distributions import layer_counts
from fprune.layout import check_weights, shape_2d
from fprune.nm import ranks as nm_ranks
from fprune.patterns import NM, Pattern
from fprune.random_keys import random_keys, stream_id, uniform_scores
from fprune.regrow import (
    fraction_at,
    magnitude_keys,
    select_local,
    swap,
    swap_count,
    swap_nm,
)
from fprune.schedules import is_prune_step
from fprune.state import PruneState

__all__ = [
    "Settings",
    "Tensors",
    "check_seed",
    "counts",
    "init",
    "start_masks",
    "step",
    "updated_masks",
]

Tensors = Mapping[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Settings:
    """The static configuration of a dynamic pruner, as :func:`fprune.dynamic` checked it."""

    sparsity: float
    grow: str
    pattern: Pattern
    window: tuple[int, int, int]  # start_step, end_step, frequency
    drop_fraction: float
    distribution: str
    dense: tuple[str, ...]
    first_dense: bool
    start: str
    seed: int
    reduce: str
    skip_indivisible: bool
    config_hash: int

    def with_hash(self, config_hash: int) -> Settings:
        return dataclasses.replace(self, config_hash=config_hash)

    def updates_at(self, step: int | torch.Tensor) -> bool | torch.Tensor:
        """Whether ``step`` is an update step of the window."""
        start, end, freq = self.window
        return is_prune_step(step, start_step=start, end_step=end, frequency=freq)


@dataclasses.dataclass(frozen=True)
class _Layer:
    """A layer's static facts: its units and pruned count (over all ranks), and the global
    flat index of this rank's first unit."""

    units: int
    pruned: int
    offset: int


def counts(settings: Settings, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """Each layer's pruned units: the distribution's, or N of every M weights for N:M."""
    pat = settings.pattern
    if not isinstance(pat, NM):
        return layer_counts(
            shapes,
            settings.sparsity,
            distribution=settings.distribution,
            pattern=pat,
            dense=[n for n in settings.dense if n in shapes],
            first_dense=settings.first_dense,
        )
    first = list(shapes)[:1] if settings.first_dense else []
    dense = set(settings.dense) | set(first)
    return {
        n: 0 if n in dense else shape_2d(s)[0] * shape_2d(s)[1] // pat.m * pat.n
        for n, s in shapes.items()
    }


def _units(settings: Settings, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """A layer's unit grid ``(rows, cols)`` and the number of weight rows in a unit's row."""
    rows, cols = shape_2d(shape)
    if isinstance(settings.pattern, NM):
        return rows, cols, 1
    bn, bm = settings.pattern.block_shape((rows, cols))
    return rows // bn, cols // bm, bn


def _table(
    func: str, settings: Settings, params: Tensors, sharding: _sharded.Sharding | None
) -> dict[str, _Layer]:
    """Every layer the pattern divides, pruned count 0 for dense ones, from the global shapes
    (alike on every rank)."""
    skipped = check_divisible(func, params, settings.pattern,
                              skip_indivisible=settings.skip_indivisible)  # fmt: skip
    shapes = tuple((n, tuple(p.shape)) for n, p in params.items() if n not in skipped)
    place = (0, 1) if sharding is None else (sharding.rank, sharding.world)
    return {row[0]: _Layer(*row[1:]) for row in _layer_table(settings, shapes, place)}


def _pruning(table: Mapping[str, _Layer]) -> dict[str, _Layer]:
    """The layers of ``table`` that prune something (the others stay dense)."""
    return {n: layer for n, layer in table.items() if layer.pruned}


@torch.compiler.assume_constant_result
def _layer_table(
    settings: Settings, shapes: tuple[tuple[str, tuple[int, ...]], ...], place: tuple[int, int]
) -> tuple[tuple[str, int, int, int], ...]:
    """:func:`_table` as constants (shapes only: a compiled step does not trace it)."""
    table, by_name = [], dict(shapes)
    for name, pruned in counts(settings, by_name).items():
        shape = by_name[name]
        rows, cols, unit_rows = _units(settings, shape)
        first = _sharded.rows_of(shape[0], place[1], place[0])[0]
        table.append((name, rows * cols, pruned, first // unit_rows * cols))
    return tuple(table)


def check_seed(func: str, seed: object) -> int:
    """A seed: a non-negative int below 2**63 (it is kept as an int64)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise _errors.type_error(func, "seed must be a non-negative int", seed, "Pass e.g. 3.")
    return seed


def _seed(settings: Settings, seed: object) -> torch.Tensor:
    """``init``'s seed as an int64 0-d tensor: the pruner's, an int, or a tensor (vmap)."""
    if seed is None:
        return _checks.scalar(settings.seed, torch.int64)
    if isinstance(seed, torch.Tensor):
        if seed.ndim != 0 or seed.dtype != torch.int64:
            raise _errors.type_error(
                "init",
                "seed must be an int or an int64 0-d tensor",
                _errors.detail(f"{seed.dtype} tensor of shape {tuple(seed.shape)}"),
                "Pass e.g. torch.tensor(3); under vmap, a 1-D int64 tensor of seeds maps to 0-d.",
            )
        return seed.detach()
    return _checks.scalar(check_seed("init", seed), torch.int64)


def _random_scores(
    name: str, layer: _Layer, seed: torch.Tensor, step: torch.Tensor, tag: str,
    shape: tuple[int, ...], device: torch.device,
) -> torch.Tensor:  # fmt: skip
    """Random scores in [0, 1) of a grid of ``shape`` (SET's growth, the random start),
    drawn from the global flat indices of the units (so alike under any sharding)."""
    keys = random_keys(seed, step, stream_id(f"{tag}:{name}"), math.prod(shape),
                       offset=layer.offset, device=device)  # fmt: skip
    return uniform_scores(keys).reshape(shape)


def start_masks(
    settings: Settings,
    params: Tensors,
    layers: Mapping[str, _Layer],
    seed: torch.Tensor,
    comm: sharded.Comm | None = None,
) -> dict[str, torch.Tensor]:
    """The first kept masks of ``layers``: each prunes exactly its count, of the lowest random
    scores (``start="random"``) or magnitudes (``"magnitude"``); N:M prunes N of every group."""
    pat = settings.pattern
    if settings.start == "magnitude":
        scores = to_grid({n: params[n].abs() for n in layers}, pat, settings.reduce)
    else:
        zero = _checks.scalar(0, torch.int64)
        scores = {
            n: _random_scores(n, layer, seed, zero, "start",
                              grid_shape(pat, params[n].shape), params[n].device)
            for n, layer in layers.items()
        }  # fmt: skip
    kept = {}
    for n, layer in layers.items():
        if isinstance(pat, NM):
            rows, cols = scores[n].shape
            grouped = magnitude_keys(scores[n]).reshape(rows, cols // pat.m, pat.m)
            ranks = torch.stack([r.to(torch.int64) for r in nm_ranks(grouped)], dim=-1)
            kept[n] = (ranks >= pat.n).reshape(rows, cols)
        else:
            every = torch.ones_like(scores[n], dtype=torch.bool)
            fraction = torch.tensor(layer.pruned / layer.units, dtype=torch.float64)
            kept[n] = select_local({n: scores[n]}, {n: every}, fraction, comm)[n]
    return expand_masks(kept, pattern=pat, shapes={n: params[n].shape for n in layers})


def init(
    settings: Settings,
    params: Tensors,
    *,
    sparsity: None = None,
    seed: int | torch.Tensor | None = None,
) -> PruneState:
    """The first state (see :func:`fprune.dynamic`); sharded params give sharded masks."""
    if sparsity is not None:
        raise _errors.value_error(
            "init",
            "a dynamic pruner fixes each layer's count from its own sparsity",
            _errors.detail(repr(sparsity)),
            "Build fprune.dynamic(...) with the sparsity you want.",
        )
    seed_t = _seed(settings, seed)
    params = _checks.detached(_errors.tensor_dict("init", "params", params))
    check_weights("init", params)
    unknown = sorted(set(settings.dense) - set(params))
    if unknown:
        raise _errors.value_error(
            "init", "dense names layers that are not given", unknown,
            f"Name layers of params: {sorted(params)[:8]}.",
        )  # fmt: skip
    sharding = _sharded.detect("init", {"params": params})
    table = _table("init", settings, params, sharding)
    layers = _pruning(table)
    if sharding is not None:
        sharding.check_units("init", {n: params[n].shape for n in layers}, settings.pattern)
    local = params if sharding is None else sharding.local(params)
    chosen = start_masks(
        settings, local, layers, seed_t, None if sharding is None else sharding.comm
    )
    masks = {n: chosen.get(n, torch.ones_like(p, dtype=torch.bool)) for n, p in local.items()}
    if sharding is not None:
        masks = sharding.wrap(masks, {n: p.shape for n, p in params.items()})
    units = sum(layer.units for layer in table.values())  # of the layers the pattern divides
    pruned = sum(layer.pruned for layer in table.values())
    achieved = _checks.scalar(pruned / units if units else 0.0, torch.float64)
    return PruneState(
        step=_checks.scalar(0, torch.int64),
        current_target=achieved.clone(),
        initial_target=achieved,
        masks=masks,
        aux={},
        fingerprint=_checks.fingerprint(settings.config_hash, params),
        final_target=_checks.scalar(settings.sparsity, torch.float64),
        seed=seed_t,
    )


def updated_masks(
    settings: Settings,
    step_t: torch.Tensor,
    seed: torch.Tensor,
    previous: Tensors,
    params: Tensors,
    grads: Tensors | None,
    layers: Mapping[str, _Layer],
    comm: sharded.Comm | None = None,
) -> dict[str, torch.Tensor]:
    """An update step's new kept masks of ``layers``: drop and grow (:mod:`fprune.regrow`)."""
    pat = settings.pattern
    start, end, _ = settings.window
    fraction = fraction_at(step_t, start_step=start, end_step=end,
                           drop_fraction=settings.drop_fraction)  # fmt: skip
    kept = reduce_masks({n: previous[n] for n in layers}, pattern=pat)
    magnitudes = to_grid({n: params[n].abs() for n in layers}, pat, settings.reduce)
    if settings.grow == "gradient":
        assert grads is not None  # checked by step
        growth = to_grid({n: grads[n].abs() for n in layers}, pat, settings.reduce)
    else:
        growth = {
            n: _random_scores(n, layer, seed, step_t, "grow", tuple(kept[n].shape),
                              kept[n].device)
            for n, layer in layers.items()
        }  # fmt: skip
    if isinstance(pat, NM):
        room = min(pat.n, pat.m - pat.n)  # a group's most swaps
        swaps = {
            n: swap_count(fraction, layer.units - layer.pruned, layer.units // pat.m * room)
            for n, layer in layers.items()
        }
        drop, grow = swap_nm(magnitudes, growth, kept, swaps, pattern=pat, comm=comm,
                             units={n: la.units for n, la in layers.items()})  # fmt: skip
    else:
        swaps = {
            n: swap_count(fraction, layer.units - layer.pruned, layer.pruned)
            for n, layer in layers.items()
        }
        drop, grow = swap(magnitudes, growth, kept, swaps, comm=comm,
                          units={n: la.units for n, la in layers.items()},
                          pruned={n: la.pruned for n, la in layers.items()})  # fmt: skip
    new = {n: (kept[n] & ~drop[n]) | grow[n] for n in layers}
    return expand_masks(new, pattern=pat, shapes={n: previous[n].shape for n in layers})


def _checked_grads(settings: Settings, params: Tensors, grads: Tensors | None) -> Tensors | None:
    if grads is None and settings.grow == "gradient":
        raise _errors.value_error(
            "step",
            "RigL (grow='gradient') grows by gradient magnitude and needs gradients",
            None,
            "Pass grads (e.g. {n: p.grad for n, p in model.named_parameters() if n in params}) "
            "after backward, or use grow='random' (SET).",
        )
    if grads is None or settings.grow == "random":
        return None
    grads = _checks.detached(_errors.tensor_dict("step", "grads", grads))
    _errors.same_shapes("step", "grads", grads, "params", params)
    return grads


def _advance(
    settings: Settings,
    state: PruneState,
    params: Tensors,
    grads: Tensors | None,
    layers: Mapping[str, _Layer],
    update_now: bool | None,
    sharding: _sharded.Sharding | None,
) -> dict[str, torch.Tensor]:
    """:func:`step`'s new masks on plain tensors (a sharded run's local shards);
    ``update_now`` is None when traced (then decided in the graph)."""
    comm = None if sharding is None else sharding.comm
    previous = {n: state.masks[n] for n in layers}
    assert state.seed is not None  # checked by step

    def update(step_t: torch.Tensor, seed: torch.Tensor, old: Tensors) -> dict[str, torch.Tensor]:
        return updated_masks(settings, step_t, seed, old, params, grads, layers, comm)

    def keep(step_t: torch.Tensor, seed: torch.Tensor, old: Tensors) -> dict[str, torch.Tensor]:
        return {n: m.clone() for n, m in old.items()}

    operands = (state.step, state.seed, previous)
    finite = None
    if grads is not None and layers:  # a step with NaN or inf gradients does not update
        finite = _checks.all_finite([grads[n] for n in layers],
                                    None if comm is None else comm.sum)  # fmt: skip
        if not _trace.tracing(finite) and not bool(finite):
            return dict(state.masks)
    if not layers:
        new = previous
    elif update_now:
        new = update(*operands)
    elif not (_trace.batched(state.step) or _trace.batched(state.seed)):  # compiled
        new = torch.cond(settings.updates_at(state.step), update, keep, operands)
    else:  # vmapped: members may disagree, so compute and select
        pred = torch.as_tensor(settings.updates_at(state.step))
        chosen = update(*operands)
        new = {n: torch.where(pred, chosen[n], previous[n]) for n in layers}
    if finite is not None and _trace.tracing(finite):
        new = {n: torch.where(finite, m, previous[n]) for n, m in new.items()}
    return {n: new.get(n, m) for n, m in state.masks.items()}


def step(
    settings: Settings, state: PruneState, params: Tensors, grads: Tensors | None = None
) -> tuple[PruneState, dict[str, torch.Tensor]]:
    """One step: ``(state, params, grads) -> (state, masks)`` (see the module docstring)."""
    func = "step"
    state = _checks.check_state(func, state)
    params = _checks.detached(_checks.check_params(func, params, state))
    grads = _checked_grads(settings, params, grads)
    _checks.check_fingerprint(func, state, settings.config_hash, params)
    if state.seed is None:
        raise _errors.value_error(
            func,
            "state has no seed, so it was not made by a dynamic pruner",
            _errors.detail("state.seed is None"),
            "Use the state from this pruner's init.",
        )
    update_now = None if _trace.tracing(state.step) else bool(settings.updates_at(int(state.step)))
    if update_now is False:
        return dataclasses.replace(state, step=state.step + 1), dict(state.masks)
    sharding = _sharded.detect(func, {"params": params, "grads": grads, "state.masks": state.masks})
    layers = _pruning(_table(func, settings, params, sharding))
    if sharding is None:
        masks = _advance(settings, state, params, grads, layers, update_now, None)
    else:
        local = dataclasses.replace(state, masks=sharding.local(state.masks))
        grads_l = None if grads is None else sharding.local(grads)
        masks = _advance(settings, local, sharding.local(params), grads_l, layers, update_now,
                         sharding)  # fmt: skip
        masks = sharding.wrap(masks, {n: m.shape for n, m in state.masks.items()})
    return dataclasses.replace(state, step=state.step + 1, masks=masks), dict(masks)
