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


class PruningCallback(_callback_base(), training.CoreAttributes):
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
        self.core = training.CallbackCore(prune, names, "PruningCallback")
        self._restored: dict[str, torch.Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for ``ddp_spawn``: a pruner (closures) travels as its config dict."""
        return {**self.__dict__, "core": self.core.picklable()}

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.core.start(pl_module, self._restored)
        self._restored = None

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        logged = self.core.step(pl_module, optimizer)
        if logged is None:
            return
        step, log = logged
        for logger in trainer.loggers:  # at every prune step, whatever log_every_n_steps says
            logger.log_metrics(log, step=step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kw: Any) -> None:
        self.core.keep(pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        message = self.core.finish()
        if message:
            warnings.warn(message, UserWarning, stacklevel=2)

    def state_dict(self) -> dict[str, Any]:
        state = self.core.state
        return {} if state is None else {"prune_state": state.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "prune_state" not in state_dict:
            return
        saved = dict(state_dict["prune_state"])
        if self.core.state is None:
            self._restored = saved  # read when fit starts
        else:  # restored after fit started
            self.core.state = PruneState.from_state_dict(saved)
