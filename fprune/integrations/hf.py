"""Pruning inside ``transformers.Trainer``: :class:`PruningCallback` (needs transformers).

::

    prune = fprune.pruner(0.9, pattern="4x1", start_step=0, end_step=800, frequency=50)
    trainer = Trainer(model, args, train_dataset=..., callbacks=[PruningCallback(prune)])
    trainer.train()

Once per optimizer step (after gradient accumulation and clipping, before
``optimizer.step()``) the callback runs ``prune.step`` on the weights and gradients, and zeroes
the pruned weights, their gradients and their optimizer state
(:func:`fprune.training.prune_step_`); after ``optimizer.step()`` it zeroes the pruned weights
again, whatever the optimizer did. A step the optimizer skips (a mixed-precision overflow)
still advances the schedule, as it advances ``global_step``; its non-finite gradients change
no score.

The pruner's state is saved beside each checkpoint (``fprune_state.pt`` in
``checkpoint-<step>``, by the main process) and read back when training resumes from a
checkpoint in ``output_dir``, so a resumed run equals the uninterrupted one. Each prune step
adds ``{"prune/target", "prune/sparsity"}`` to ``trainer.state.log_history`` and logs them on
the ``"fprune"`` logger; the end of training warns when the schedule's window was not reached
or not finished. Under DDP every rank computes the same masks from the same all-reduced
gradients, with no extra communication.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fprune import training
from fprune.integrations.hf_oneshot import require_transformers
from fprune.pruner import Pruner

__all__ = ["STATE_FILE", "PruningCallback"]

STATE_FILE = "fprune_state.pt"
_CALLBACK_BASE: Any = require_transformers().TrainerCallback


class PruningCallback(_CALLBACK_BASE, training.CoreAttributes):
    """Prune with ``prune`` while ``transformers.Trainer`` trains.

    Args:
        prune: a :class:`~fprune.pruner.Pruner`, or an INC config dict (one entry).
        names: the parameters to prune (default: ``prune.names``, else what
            :func:`fprune.nn.prunable` selects).

    Attributes:
        state: the pruner's state (None before training starts).
        masks: the current masks.
    """

    def __init__(self, prune: Pruner | Mapping[str, Any], *, names: Sequence[str] | None = None):
        super().__init__()
        self.core = training.CallbackCore(prune, names, "PruningCallback")

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any):
        saved = self._load(args, state.global_step) if state.global_step > 0 else None
        self.core.start(model, saved)

    def _load(self, args: Any, step: int) -> dict[str, torch.Tensor]:
        path = os.path.join(args.output_dir, f"checkpoint-{step}", STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"PruningCallback: training resumes at step {step} but {path} does not exist. "
                "Resume from a checkpoint that a run with PruningCallback saved in output_dir."
            )
        return torch.load(path, map_location="cpu", weights_only=True)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any):
        logged = self.core.step(kw["model"], kw.get("optimizer"))
        if logged is not None:
            state.log_history.append({**logged[1], "step": state.global_step + 1})

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any):
        self.core.keep(kw["model"])

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any):
        if self.core.state is None or not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        os.makedirs(folder, exist_ok=True)
        torch.save(self.core.state.state_dict(), os.path.join(folder, STATE_FILE))

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any):
        message = self.core.finish()
        if message:
            warnings.warn(message, UserWarning, stacklevel=2)
