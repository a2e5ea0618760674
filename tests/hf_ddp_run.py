"""``transformers.Trainer`` with fprune's PruningCallback under DDP on CPU (gloo): the worker
behind ``test_integrations_hf.py``.

``python -m torch.distributed.run --nproc_per_node 2 tests/hf_ddp_run.py DIR``: each rank
trains the demo's MLP on its share of digits for 30 steps with the callback, and writes its
final masks to ``DIR/masks<rank>.pt``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fprune
from fprune import demo
from fprune.integrations.hf import PruningCallback
from tests.test_integrations_hf import Classifier, Digits


def main(folder: str) -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    x, y, _, _ = demo.digits(0)
    torch.manual_seed(0)
    model = Classifier()
    args = transformers.TrainingArguments(
        output_dir=folder, max_steps=30, per_device_train_batch_size=32, learning_rate=2e-3,
        report_to=[], use_cpu=True, ddp_backend="gloo", seed=0, disable_tqdm=True,
        save_strategy="no",
    )  # fmt: skip
    prune = fprune.pruner(0.9, pattern="4x1", criterion="snip_momentum",
                          start_step=0, end_step=20, frequency=5)  # fmt: skip
    callback = PruningCallback(prune)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Digits(x, y),
                                   callbacks=[callback])  # fmt: skip
    trainer.train()
    torch.save(callback.masks, Path(folder) / f"masks{args.process_index}.pt")
    assert args.world_size == 2, args.world_size


if __name__ == "__main__":
    main(sys.argv[1])
