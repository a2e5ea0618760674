"""Pruning inside a Lightning ``Trainer``: :class:`PruningCallback` (needs ``lightning``).

::

    prune = fprune.pruner(0.9, pattern="4x1", start_step=0, end_step=800, frequency=50)
    trainer = lightning.Trainer(max_steps=1600, callbacks=[PruningCallback(prune)])
    trainer.fit(module, loader)

Once per optimizer step (after gradient accumulation, before ``optimizer.step()``) the callback
runs ``prune.step`` on the module's weights and gradients and zeroes the pruned weights, their
gradients and their optimizer state (:func:`fprune.training.prune_step_`); after each training
batch it zeroes the pruned weights again. A step the optimizer skips (a mixed-precision
overflow) still advances the schedule; its non-finite gradients change no score.

The pruner's state is part of the callback's ``state_dict``, so Lightning saves it in every
checkpoint and restores it with ``trainer.fit(..., ckpt_path=...)``. Each prune step logs
``prune/target`` and ``prune/sparsity`` to the trainer's loggers at that step (and on the
``"fprune"`` logger); the end of training warns when the schedule's window was not reached or not
finished. Under DDP every rank computes the same masks from the same all-reduced gradients.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fprune import training
from fprune.pruner import Pruner
from fprune.state import PruneState

__all__ = ["MissingLightning", "PruningCallback"]


class MissingLightning(ImportError):
    """``lightning`` is not installed; the message says how to install it."""


def _callback_base() -> Any:
    try:
        from lightning.pytorch.callbacks import Callback
    except ImportError:
        raise MissingLightning(
            "the Lightning callback needs lightning: pip install 'fprune[lightning]'"
        ) from None
    return Callback


class PruningCallback(_callback_base()):
    """Prune with ``prune`` while Lightning trains.

    Args:
        prune: a :class:`~fprune.pruner.Pruner`, or an INC config dict (one entry).
        names: the parameters of the ``LightningModule`` to prune (default:
            ``prune.names``, else what :func:`fprune.nn.prunable` selects).

    Attributes:
        state: the pruner's state (None before training starts).
        masks: the current masks.
    """

    def __init__(self, prune: Pruner | Mapping[str, Any], *, names: Sequence[str] | None = None):
        super().__init__()
        self._spec, self.names = prune, None if names is None else tuple(names)
        self.prune: Pruner | None = prune if isinstance(prune, Pruner) else None
        self.state: PruneState | None = None
        self.masks: dict[str, torch.Tensor] = {}
        self._restored: dict[str, torch.Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for ``ddp_spawn``: a pruner (closures) travels as its config dict."""
        state = dict(self.__dict__)
        spec = state["_spec"]
        if isinstance(spec, Pruner):
            state["_spec"] = spec.to_config()
            state["names"] = state["names"] if state["names"] is not None else spec.names
        state["prune"] = None
        return state

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.prune = training.as_pruner(self._spec, pl_module, "PruningCallback")
        self.state = training.init(pl_module, self.prune, names=self.names)
        if self._restored is not None:
            self.state = PruneState.from_state_dict(self._restored)
            self._restored = None

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.prune is None or self.state is None:
            return
        before = int(self.state.step)
        self.state, self.masks = training.prune_step_(
            pl_module, self.prune, self.state, optimizer=optimizer
        )
        if training.is_prune_step_of(self.prune, before):  # every prune step, whatever
            log = training.sparsity_log(self.state, self.masks)  # log_every_n_steps says
            for logger in trainer.loggers:
                logger.log_metrics(log, step=before)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kw: Any) -> None:
        if self.masks:
            training.keep_pruned_(pl_module, self.masks)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.prune is not None and self.state is not None:
            message = training.window_warning(self.prune, self.state)
            if message:
                warnings.warn(f"PruningCallback: {message}", UserWarning, stacklevel=2)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.state is None else {"prune_state": self.state.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "prune_state" in state_dict:
            self._restored = dict(state_dict["prune_state"])
            if self.state is not None:  # restored after fit started
                self.state = PruneState.from_state_dict(self._restored)
                self._restored = None
