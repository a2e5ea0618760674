"""fprune.integrations.lightning.PruningCallback on scikit-learn's digits (CPU, and DDP)."""

from __future__ import annotations

import csv
import warnings

import pytest
import torch
from torch import nn

L = pytest.importorskip("lightning")
pytest.importorskip("sklearn")

import fprune  # noqa: E402
from fprune import demo  # noqa: E402
from fprune.integrations.lightning import PruningCallback  # noqa: E402

STEPS, BATCH, EPOCH = 300, 64, 23  # 1,437 training digits: 23 batches an epoch


class DigitsModule(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = demo.mlp()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=2e-3)


class EpochShuffle(torch.utils.data.Sampler):
    """A shuffle that depends on the seed and the epoch only, so a resumed run sees the same
    batches (Lightning calls ``set_epoch``)."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


class SaveMasks(L.Callback):
    """Writes each rank's final masks (for the DDP test)."""

    def __init__(self, pruning: PruningCallback, folder):
        self.pruning, self.folder = pruning, folder

    def on_train_end(self, trainer, pl_module):
        torch.save(self.pruning.masks, self.folder / f"masks{trainer.global_rank}.pt")


@pytest.fixture(scope="module")
def data():
    return demo.digits(0)


def _loader(data, distributed=False):
    x, y, _, _ = data
    dataset = torch.utils.data.TensorDataset(x, y)
    sampler = None if distributed else EpochShuffle(len(y))
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, sampler=sampler,
                                       shuffle=not sampler)  # fmt: skip


def _pruner(end_step: int = 150) -> fprune.Pruner:
    return fprune.pruner(0.9, pattern="4x1", criterion="snip_momentum",
                         start_step=0, end_step=end_step, frequency=15)  # fmt: skip


def _fit(data, folder, callbacks, *, steps=STEPS, ckpt=None, save_every=None, **trainer_kw):
    torch.manual_seed(0)
    module = DigitsModule()
    extra = []
    if save_every:
        extra.append(L.pytorch.callbacks.ModelCheckpoint(
            dirpath=folder, every_n_train_steps=save_every, save_top_k=-1))  # fmt: skip
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", devices=trainer_kw.pop("devices", 1),
        callbacks=[*callbacks, *extra], logger=L.pytorch.loggers.CSVLogger(folder),
        enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=bool(save_every), **trainer_kw,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, _loader(data, trainer_kw.get("strategy") is not None), ckpt_path=ckpt)
    ours = [str(w.message) for w in caught if "PruningCallback" in str(w.message)]
    return module, trainer, ours


def _accuracy(module, data) -> float:
    _, _, x_test, y_test = data
    with torch.no_grad():
        return float((module.net(x_test).argmax(1) == y_test).float().mean())


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    dense, _, _ = _fit(data, tmp_path_factory.mktemp("dense"), [])
    folder = tmp_path_factory.mktemp("pruned")
    callback = PruningCallback(_pruner())
    pruned, trainer, _ = _fit(data, folder, [callback], save_every=4 * EPOCH)
    resumed_callback = PruningCallback(_pruner())
    checkpoint = next(folder.glob(f"*step={4 * EPOCH}.ckpt"))
    resumed, _, _ = _fit(data, tmp_path_factory.mktemp("resumed"), [resumed_callback],
                         ckpt=str(checkpoint))  # fmt: skip
    return {"dense": dense, "pruned": pruned, "callback": callback, "trainer": trainer,
            "resumed": resumed, "resumed_callback": resumed_callback}  # fmt: skip


def test_reaches_exactly_the_target_and_keeps_pruned_weights_zero(runs):
    callback, module = runs["callback"], runs["pruned"]
    assert int(callback.state.step) == STEPS
    assert float(fprune.total_sparsity(callback.masks, pattern="4x1")) == 0.9
    assert set(callback.masks) == {"net.0.weight", "net.2.weight"}  # the head stays dense
    params = dict(module.named_parameters())
    assert all(bool((params[n][~m] == 0).all()) for n, m in callback.masks.items())


def test_accuracy_within_two_points_of_dense_for_the_same_steps(runs, data):
    dense, sparse = _accuracy(runs["dense"], data), _accuracy(runs["pruned"], data)
    assert dense > 0.9
    assert sparse >= dense - 0.02, (dense, sparse)


def test_a_run_resumed_from_a_mid_window_checkpoint_equals_the_uninterrupted_one(runs):
    first, second = runs["pruned"].state_dict(), runs["resumed"].state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    masks, again = runs["callback"].masks, runs["resumed_callback"].masks
    assert all(torch.equal(masks[n], again[n]) for n in masks)
    assert int(runs["resumed_callback"].state.step) == STEPS


def test_each_prune_step_is_logged_through_the_trainer(runs):
    path = runs["trainer"].logger.log_dir + "/metrics.csv"
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r.get("prune/target")]
    assert [int(r["step"]) for r in rows] == list(range(0, 151, 15))
    assert float(rows[-1]["prune/target"]) == pytest.approx(0.9)
    assert float(rows[-1]["prune/sparsity"]) == pytest.approx(0.9)


def test_a_config_dict_drives_the_callback_and_an_open_window_warns(data, tmp_path):
    config = {"target_sparsity": 0.5, "pattern": "4x1", "pruning_type": "magnitude",
              "start_step": 0, "end_step": 100, "pruning_frequency": 10}  # fmt: skip
    callback = PruningCallback(config)
    _, _, ours = _fit(data, tmp_path, [callback], steps=30)
    assert float(fprune.total_sparsity(callback.masks, pattern="4x1")) < 0.5
    assert len(ours) == 1 and "did not finish" in ours[0]


def test_gradient_accumulation_steps_the_pruner_once_per_optimizer_step(data, tmp_path):
    callback = PruningCallback(_pruner(end_step=20))
    _fit(data, tmp_path, [callback], steps=30, accumulate_grad_batches=2)
    assert int(callback.state.step) == 30


def test_ddp_ranks_compute_identical_masks(data, tmp_path):
    callback = PruningCallback(_pruner(end_step=20))
    _fit(data, tmp_path, [callback, SaveMasks(callback, tmp_path)], steps=30,
         devices=2, strategy="ddp_spawn")  # fmt: skip
    first = torch.load(tmp_path / "masks0.pt", weights_only=True)
    second = torch.load(tmp_path / "masks1.pt", weights_only=True)
    assert first.keys() == second.keys() == {"net.0.weight", "net.2.weight"}
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert float(fprune.total_sparsity(first, pattern="4x1")) == 0.9
