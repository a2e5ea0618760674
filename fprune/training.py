"""One call per optimizer step: pruning in a plain ``nn.Module`` training loop.

::

    prune = fprune.pruner(0.9, pattern="4x1", start_step=0, end_step=800, frequency=50)
    state = fprune.training.init(model, prune)            # prunes what nn.prunable selects
    for x, y in loader:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        state, masks = fprune.training.prune_step_(model, prune, state, optimizer=opt)
        opt.step()                                        # pruned weights stay exactly zero

:func:`prune_step_` runs ``prune.step`` on the detached weights and gradients, then zeroes
the pruned weights, their gradients and (with ``optimizer``) their optimizer state in place,
so that SGD (momentum, weight decay), Adam, AdamW, Adagrad and RMSprop leave them at zero.
An optimizer whose state is not shaped like its parameters (factored second moments) may
move them; call :func:`fprune.nn.apply_masks_` after its step. Each prune step is logged at
INFO on the ``"fprune"`` logger (target, achieved, layers), and :func:`window_warning` says
when a run ended before the schedule's window closed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fprune import _errors
from fprune.config import from_config
from fprune.nn import apply_masks_, prunable
from fprune.pruner import Pruner
from fprune.schedules import is_prune_step
from fprune.sparsity import total_sparsity
from fprune.state import PruneState

__all__ = [
    "CallbackCore",
    "CoreAttributes",
    "as_pruner",
    "init",
    "is_prune_step_of",
    "keep_pruned_",
    "mask_optimizer_state_",
    "prune_step_",
    "sparsity_log",
    "window_warning",
]

_logger = logging.getLogger("fprune")


def _named(model: nn.Module | Mapping[str, torch.Tensor], func: str) -> dict[str, torch.Tensor]:
    if isinstance(model, nn.Module):
        return dict(model.named_parameters())
    if isinstance(model, Mapping):
        return dict(model)
    raise _errors.type_error(
        func, "model must be an nn.Module or a dict of named parameters", type(model).__name__,
        "Pass the model, or dict(model.named_parameters()).",
    )  # fmt: skip


def _require(
    params: Mapping[str, torch.Tensor], names: Sequence[str], func: str, problem: str, fix: str
) -> None:
    missing = [n for n in names if n not in params]
    if missing:
        raise _errors.value_error(func, problem, missing[:5], fix)


def as_pruner(prune: Pruner | Mapping[str, Any], model: Any, func: str) -> Pruner:
    """A :class:`Pruner`, from itself or from an INC config dict with one pruning entry."""
    if isinstance(prune, Pruner):
        return prune
    if not isinstance(prune, Mapping):
        raise TypeError(
            f"{func}: prune must be a Pruner or an INC config dict (got {type(prune).__name__}). "
            "Pass fprune.pruner(...) or a dict such as {'target_sparsity': 0.9, ...}."
        )
    built = from_config(prune, model)
    if len(built) != 1 or not isinstance(built[0], Pruner):
        raise ValueError(
            f"{func}: the config must describe one training-time pruner (got {len(built)} "
            "entries or a one-shot method). Pass one pruning_configs entry, or one "
            "callback per pruner."
        )
    return built[0]


def init(
    model: nn.Module | Mapping[str, torch.Tensor],
    prune: Pruner,
    *,
    names: Sequence[str] | None = None,
) -> PruneState:
    """The pruner's first state for ``model``'s weights.

    Args:
        model: the model, or its named parameters.
        prune: the pruner.
        names: the parameters to prune; default ``prune.names`` (set by
            :func:`fprune.from_config` with a model), else :func:`fprune.nn.prunable`'s
            choice (which keeps the default-dense layers dense).
    """
    params = _named(model, "init")
    if names is None:
        names = prune.names
    if names is None:
        if not isinstance(model, nn.Module):
            raise _errors.value_error(
                "init", "names is needed with a dict of parameters", None,
                "Pass names=[...], or the model itself.",
            )  # fmt: skip
        names = prunable(model).names
    _require(params, names, "init", "names lists parameters the model lacks",
             "Use names from model.named_parameters().")  # fmt: skip
    return prune.init({n: params[n].detach() for n in names})


def mask_optimizer_state_(
    optimizer: torch.optim.Optimizer,
    model: nn.Module | Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
) -> None:
    """Zero, in place, every optimizer state tensor shaped like a pruned parameter (SGD's
    momentum, Adam's moments, ...) at the pruned positions. ``optimizer.state`` is keyed by
    the parameters themselves, so the optimizer may hold any subset of the model's
    parameters, in any order."""
    params = _named(model, "mask_optimizer_state_")
    _require(params, list(masks), "mask_optimizer_state_",
             "masks names parameters the model lacks", "Pass masks for this model.")  # fmt: skip
    with torch.no_grad():
        for name, mask in masks.items():
            _zero_state_(optimizer, params[name], mask)


def _zero_state_(optimizer: torch.optim.Optimizer, param: torch.Tensor, mask: torch.Tensor) -> None:
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, torch.Tensor) and value.shape == mask.shape:
            value.masked_fill_(~mask.to(value.device), 0)


def _zero_pruned_(
    params: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
) -> None:
    """One pass over the pruned weights: each weight, its gradient and its optimizer state
    zeroed where its mask prunes (masks from ``prune.step``, so not checked again)."""
    with torch.no_grad():
        for name, mask in masks.items():
            param = params[name]
            pruned = ~mask.to(param.device)
            param.masked_fill_(pruned, 0)
            if param.grad is not None:
                param.grad.masked_fill_(pruned, 0)
            if optimizer is not None:
                _zero_state_(optimizer, param, mask)


def is_prune_step_of(prune: Pruner, step: int) -> bool:
    """Whether ``prune`` prunes at ``step`` (its window and frequency; False without one)."""
    s = prune.settings
    if not {"start_step", "end_step", "frequency"} <= set(s):
        return False
    return bool(
        is_prune_step(step, start_step=s["start_step"], end_step=s["end_step"],
                      frequency=s["frequency"])
    )  # fmt: skip


def _step(
    model: nn.Module | Mapping[str, torch.Tensor],
    prune: Pruner,
    state: PruneState,
    optimizer: torch.optim.Optimizer | None,
) -> tuple[PruneState, dict[str, torch.Tensor], int, dict[str, float] | None]:
    """:func:`prune_step_`, also returning the step index it processed and, at a prune step,
    the sparsity log it logged."""
    params = _named(model, "prune_step_")
    names = list(state.masks)
    _require(params, names, "prune_step_", "the state prunes parameters the model lacks",
             "Pass the model the state was initialised for.")  # fmt: skip
    weights = {n: params[n].detach() for n in names}
    grads = {n: params[n].grad for n in names}
    if all(g is None for g in grads.values()):
        grads = None  # a criterion that needs gradients says so
    step = int(state.step)
    state, masks = prune.step(state, weights, grads)
    _zero_pruned_(params, masks, optimizer)
    log = sparsity_log(state, masks) if is_prune_step_of(prune, step) else None
    if log is not None:
        _logger.info(
            "fprune step %d: target %.4f, achieved %.4f in %d layers",
            step, log["prune/target"], log["prune/sparsity"], len(masks),
        )  # fmt: skip
    return state, masks, step, log


def prune_step_(
    model: nn.Module | Mapping[str, torch.Tensor],
    prune: Pruner,
    state: PruneState,
    *,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[PruneState, dict[str, torch.Tensor]]:
    """One pruner step between ``backward()`` and ``optimizer.step()``, applied in place.

    Returns:
        ``(state, masks)`` as ``prune.step`` returns them.
    """
    state, masks, _, _ = _step(model, prune, state, optimizer)
    return state, masks


def sparsity_log(state: PruneState, masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``{"prune/target": current target, "prune/sparsity": achieved element sparsity}``."""
    return {
        "prune/target": float(state.current_target),
        "prune/sparsity": float(total_sparsity(masks)),
    }


def keep_pruned_(
    model: nn.Module | Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> None:
    """Zero the pruned weights in place (after an optimizer step that may have moved them)."""
    params = _named(model, "keep_pruned_")
    apply_masks_({n: params[n] for n in masks}, masks)


def window_warning(prune: Pruner, state: PruneState) -> str | None:
    """A message when the schedule's window was not reached or not finished by ``state``
    (None when it was, or the pruner has no window)."""
    s = prune.settings
    if not {"start_step", "end_step"} <= set(s):
        return None
    done, start, end = int(state.step), int(s["start_step"]), int(s["end_step"])
    if s.get("kind") in ("rigl", "set") and done <= end:  # exact sparsity from init on
        return (
            f"the drop-and-grow updates did not finish: training ran {done} optimizer steps "
            f"and updates run to step {end}, so the masks were still changing (each layer's "
            "sparsity is exact at every step); lower end_step (RigL stops at 75% of training)"
        )
    if done <= start:
        return (
            f"pruning never started: training ran {done} optimizer steps and the schedule "
            f"starts at step {start}; lower start_step (and end_step), or train longer"
        )
    if done <= end:
        return (
            f"pruning did not finish: training ran {done} optimizer steps, the schedule ends "
            f"at step {end}, so the target {float(state.final_target):.4f} was not reached "
            f"(now {float(state.current_target):.4f}); lower end_step, or train longer"
        )
    return None


class CallbackCore:
    """What a trainer callback keeps and does (the Trainer and Lightning callbacks share it):
    the pruner, built from a config dict on :meth:`start` if need be, its state and masks.

    Args:
        prune: a :class:`~fprune.pruner.Pruner`, or an INC config dict (one entry).
        names: the parameters to prune (default: ``prune.names``, else
            :func:`fprune.nn.prunable`'s choice).
        owner: the callback's name, for messages.
    """

    def __init__(
        self, prune: Pruner | Mapping[str, Any], names: Sequence[str] | None, owner: str
    ) -> None:
        self.spec, self.owner = prune, owner
        self.names = None if names is None else tuple(names)
        self.prune: Pruner | None = prune if isinstance(prune, Pruner) else None
        self.state: PruneState | None = None
        self.masks: dict[str, torch.Tensor] = {}

    def start(self, model: nn.Module, saved: Mapping[str, torch.Tensor] | None = None) -> None:
        """Build the pruner and its first state, or the state ``saved`` in a checkpoint."""
        self.prune = as_pruner(self.spec, model, self.owner)
        self.state = init(model, self.prune, names=self.names)
        if saved is not None:
            self.state = PruneState.from_state_dict(saved)

    def step(self, model: nn.Module, optimizer: Any) -> tuple[int, dict[str, float]] | None:
        """:func:`prune_step_`; at a prune step, the step index and its sparsity log."""
        if self.prune is None or self.state is None:
            return None
        self.state, self.masks, step, log = _step(model, self.prune, self.state, optimizer)
        return None if log is None else (step, log)

    def keep(self, model: nn.Module) -> None:
        """Zero the pruned weights again (after the optimizer step)."""
        if self.masks:
            keep_pruned_(model, self.masks)

    def finish(self) -> str | None:
        """The end-of-training message (:func:`window_warning`), prefixed with the owner."""
        if self.prune is None or self.state is None:
            return None
        message = window_warning(self.prune, self.state)
        return None if message is None else f"{self.owner}: {message}"

    def picklable(self) -> CallbackCore:
        """A copy whose pruner travels as its config dict (pruners hold closures)."""
        copy = CallbackCore.__new__(CallbackCore)
        copy.__dict__.update(self.__dict__)
        if isinstance(self.spec, Pruner):
            copy.spec = self.spec.to_config()
            copy.names = self.names if self.names is not None else self.spec.names
        copy.prune = None
        return copy


class CoreAttributes:
    """``state`` and ``masks`` of a callback that keeps a :class:`CallbackCore` as ``core``."""

    core: CallbackCore

    @property
    def state(self) -> PruneState | None:
        """The pruner's state (None before training starts)."""
        return self.core.state

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """The current masks."""
        return self.core.masks
