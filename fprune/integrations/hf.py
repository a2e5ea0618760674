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
from fprune.state import PruneState

__all__ = ["STATE_FILE", "PruningCallback"]

STATE_FILE = "fprune_state.pt"
_CALLBACK_BASE: Any = require_transformers().TrainerCallback


class PruningCallback(_CALLBACK_BASE):
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
        self._spec, self.names = prune, None if names is None else tuple(names)
        self.prune: Pruner | None = prune if isinstance(prune, Pruner) else None
        self.state: PruneState | None = None
        self.masks: dict[str, torch.Tensor] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any):
        self.prune = training.as_pruner(self._spec, model, "PruningCallback")
        self.state = training.init(model, self.prune, names=self.names)
        if state.global_step > 0:
            self.state = self._load(args, state.global_step)

    def _load(self, args: Any, step: int) -> PruneState:
        path = os.path.join(args.output_dir, f"checkpoint-{step}", STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"PruningCallback: training resumes at step {step} but {path} does not exist. "
                "Resume from a checkpoint that a run with PruningCallback saved in output_dir."
            )
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return PruneState.from_state_dict(saved)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any):
        if self.prune is None or self.state is None:
            return
        before = int(self.state.step)
        self.state, self.masks = training.prune_step_(
            kw["model"], self.prune, self.state, optimizer=kw.get("optimizer")
        )
        if training.is_prune_step_of(self.prune, before):
            state.log_history.append(
                {**training.sparsity_log(self.state, self.masks), "step": state.global_step + 1}
            )

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any):
        if self.masks:
            training.keep_pruned_(kw["model"], self.masks)

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any):
        if self.state is None or not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        os.makedirs(folder, exist_ok=True)
        torch.save(self.state.state_dict(), os.path.join(folder, STATE_FILE))

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any):
        if self.prune is not None and self.state is not None:
            message = training.window_warning(self.prune, self.state)
            if message:
                warnings.warn(f"PruningCallback: {message}", UserWarning, stacklevel=2)
