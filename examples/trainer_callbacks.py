"""Pruning under ``transformers.Trainer`` and Lightning with fprune's callbacks, on digits.

For each trainer, the demo's MLP (64-256-256-10) is trained three times on scikit-learn's
digits for the same number of optimizer steps: dense; pruned to 90% 4x1 with
``snip_momentum`` by ``PruningCallback`` (the window is the first half of training); and the
pruned run again, resumed from its mid-window checkpoint. It prints the test accuracies, the
achieved sparsity and whether the resumed run equals the uninterrupted one bit for bit.

Run ``python examples/trainer_callbacks.py`` (the ``hf``, ``lightning`` and ``demo`` extras;
about a minute on 2 cores), or ``--trainer hf`` / ``--trainer lightning``.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch
from _task import set_threads
from torch import nn

import fprune
from fprune import demo

STEPS, BATCH, CHECKPOINT = 300, 64, 92  # 92 = 4 epochs of 23 batches: mid-window


def pruner() -> fprune.Pruner:
    return fprune.pruner(0.9, pattern="4x1", criterion="snip_momentum",
                         start_step=0, end_step=STEPS // 2, frequency=15)  # fmt: skip


class Classifier(nn.Module):
    """The demo's MLP, returning the loss as ``transformers.Trainer`` expects."""

    def __init__(self):
        super().__init__()
        self.net = demo.mlp()

    def forward(self, x, labels=None):
        logits = self.net(x)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


def run_hf(data, folder: Path, prune: bool, resume: bool = False):
    import transformers

    from fprune.integrations.hf import PruningCallback

    x, y, _, _ = data
    dataset = [{"x": a, "labels": b} for a, b in zip(x, y, strict=True)]
    torch.manual_seed(0)
    model = Classifier()
    args = transformers.TrainingArguments(
        output_dir=str(folder), max_steps=STEPS, per_device_train_batch_size=BATCH,
        learning_rate=2e-3, weight_decay=0.0, lr_scheduler_type="constant",
        save_steps=CHECKPOINT, report_to=[], use_cpu=True, seed=0, data_seed=0,
        disable_tqdm=True,
    )  # fmt: skip
    callback = PruningCallback(pruner()) if prune else None
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset,
                                   callbacks=[callback] if callback else [])  # fmt: skip
    trainer.train(
        resume_from_checkpoint=str(folder / f"checkpoint-{CHECKPOINT}") if resume else None
    )
    return model.net, callback


def run_lightning(data, folder: Path, prune: bool, resume: bool = False):
    import lightning as L

    from fprune.integrations.lightning import PruningCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = demo.mlp()

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=2e-3)

    class EpochShuffle(torch.utils.data.Sampler):  # the same batches after a resume
        def __init__(self, n):
            self.n, self.epoch = n, 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __iter__(self):
            gen = torch.Generator().manual_seed(self.epoch)
            return iter(torch.randperm(self.n, generator=gen).tolist())

        def __len__(self):
            return self.n

    x, y, _, _ = data
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH,
                                         sampler=EpochShuffle(len(y)))  # fmt: skip
    torch.manual_seed(0)
    module = Module()
    callback = PruningCallback(pruner()) if prune else None
    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=folder, every_n_train_steps=CHECKPOINT,
                                                save_top_k=-1)  # fmt: skip
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", logger=False,
                        callbacks=[c for c in (callback, saver) if c], enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    ckpt = next(folder.glob(f"*step={CHECKPOINT}.ckpt")) if resume else None
    trainer.fit(module, loader, ckpt_path=str(ckpt) if ckpt else None)
    return module.net, callback


def accuracy(net, data) -> float:
    _, _, x_test, y_test = data
    with torch.no_grad():
        return float((net(x_test).argmax(1) == y_test).float().mean())


def compare(name: str, run, data) -> dict:
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the trainers' own advice on workers and devices
        dense, _ = run(data, Path(tmp) / "dense", prune=False)
        pruned, callback = run(data, Path(tmp) / "pruned", prune=True)
        resumed, _ = run(data, Path(tmp) / "pruned", prune=True, resume=True)
    first, second = pruned.state_dict(), resumed.state_dict()
    same = all(torch.equal(first[k], second[k]) for k in first)
    row = {
        "trainer": name,
        "dense_accuracy": accuracy(dense, data),
        "sparse_accuracy": accuracy(pruned, data),
        "sparsity": float(fprune.total_sparsity(callback.masks, pattern="4x1")),
        "resumed_equal": same,
    }
    print(f"| {name} | {row['dense_accuracy']:.4f} | {row['sparse_accuracy']:.4f} | "
          f"{row['sparsity']:.4f} | {'yes' if same else 'no'} |")  # fmt: skip
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trainer", choices=("hf", "lightning", "both"), default="both")
    args = parser.parse_args(argv)
    set_threads()
    data = demo.digits(0)
    print(f"| trainer ({STEPS} steps) | dense | 90% 4x1 | sparsity | resumed = uninterrupted |")
    print("|---|---|---|---|---|")
    runs = {"transformers.Trainer": run_hf, "Lightning": run_lightning}
    chosen = {"hf": ["transformers.Trainer"], "lightning": ["Lightning"]}.get(args.trainer, runs)
    return [compare(name, runs[name], data) for name in chosen]


if __name__ == "__main__":
    main()
