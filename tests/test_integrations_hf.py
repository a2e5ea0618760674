"""fprune.integrations.hf.PruningCallback under transformers.Trainer, on scikit-learn's digits."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("sklearn")

import fprune  # noqa: E402
from fprune import demo  # noqa: E402
from fprune.integrations.hf import STATE_FILE, PruningCallback  # noqa: E402

STEPS, BATCH = 300, 64


class Digits(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class Classifier(nn.Module):
    """The demo's MLP with the loss Trainer expects."""

    def __init__(self):
        super().__init__()
        self.net = demo.mlp()

    def forward(self, x, labels=None):
        logits = self.net(x)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


@pytest.fixture(scope="module")
def data():
    return demo.digits(0)


def _pruner(end_step: int = 150) -> fprune.Pruner:
    return fprune.pruner(0.9, pattern="4x1", criterion="snip_momentum",
                         start_step=0, end_step=end_step, frequency=15)  # fmt: skip


def _train(data, out, callbacks, *, steps=STEPS, resume=None, save_steps=100, accumulate=1):
    x, y, _, _ = data
    torch.manual_seed(0)
    model = Classifier()
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH // accumulate,
        gradient_accumulation_steps=accumulate, learning_rate=2e-3, weight_decay=0.0,
        lr_scheduler_type="constant", save_steps=save_steps, save_strategy="steps",
        logging_steps=50, report_to=[], use_cpu=True, seed=0, data_seed=0,
        disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Digits(x, y), callbacks=callbacks
    )
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


def _accuracy(model, data) -> float:
    _, _, x_test, y_test = data
    with torch.no_grad():
        return float((model.net(x_test).argmax(1) == y_test).float().mean())


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """A dense run, a pruned run, and the pruned run resumed from its step-100 checkpoint."""
    dense, _ = _train(data, tmp_path_factory.mktemp("dense"), [])
    callback = PruningCallback(_pruner())
    out = tmp_path_factory.mktemp("pruned")
    pruned, trainer = _train(data, out, [callback])
    resumed_callback = PruningCallback(_pruner())
    resumed, _ = _train(data, out, [resumed_callback], resume=str(out / "checkpoint-100"))
    return {"dense": dense, "pruned": pruned, "trainer": trainer, "callback": callback,
            "resumed": resumed, "resumed_callback": resumed_callback, "out": out}  # fmt: skip


def test_reaches_exactly_the_target_and_keeps_pruned_weights_zero(runs):
    callback, model = runs["callback"], runs["pruned"]
    assert int(callback.state.step) == STEPS
    assert float(fprune.total_sparsity(callback.masks, pattern="4x1")) == 0.9
    params = dict(model.named_parameters())
    assert set(callback.masks) == {"net.0.weight", "net.2.weight"}  # the head stays dense
    assert all(bool((params[n][~m] == 0).all()) for n, m in callback.masks.items())
    optimizer = runs["trainer"].optimizer
    for name, mask in callback.masks.items():
        moments = optimizer.state[params[name]]
        assert bool((moments["exp_avg"][~mask] == 0).all())
        assert bool((moments["exp_avg_sq"][~mask] == 0).all())


def test_accuracy_within_two_points_of_dense_for_the_same_steps(runs, data):
    dense, sparse = _accuracy(runs["dense"], data), _accuracy(runs["pruned"], data)
    assert dense > 0.9
    assert sparse >= dense - 0.02, (dense, sparse)


def test_a_run_resumed_from_a_mid_window_checkpoint_equals_the_uninterrupted_one(runs):
    assert (runs["out"] / "checkpoint-100" / STATE_FILE).is_file()
    first, second = runs["pruned"].state_dict(), runs["resumed"].state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    masks, again = runs["callback"].masks, runs["resumed_callback"].masks
    assert all(torch.equal(masks[n], again[n]) for n in masks)


def test_each_prune_step_is_in_the_log_history(runs):
    history = [h for h in runs["trainer"].state.log_history if "prune/target" in h]
    assert [h["step"] for h in history] == list(range(1, 152, 15))
    assert history[-1]["prune/target"] == pytest.approx(0.9)
    assert history[-1]["prune/sparsity"] == pytest.approx(0.9)


def test_gradient_accumulation_steps_the_pruner_once_per_optimizer_step(data, tmp_path):
    callback = PruningCallback(_pruner(end_step=30))
    _train(data, tmp_path, [callback], steps=40, save_steps=1000, accumulate=2)
    assert int(callback.state.step) == 40


def test_a_config_dict_drives_the_callback(data, tmp_path):
    config = {"target_sparsity": 0.5, "pattern": "4x1", "pruning_type": "magnitude",
              "start_step": 0, "end_step": 20, "pruning_frequency": 10}  # fmt: skip
    callback = PruningCallback(config)
    _train(data, tmp_path, [callback], steps=25, save_steps=1000)
    assert float(fprune.total_sparsity(callback.masks, pattern="4x1")) == 0.5


def test_a_window_that_never_closes_warns_at_the_end(data, tmp_path):
    callback = PruningCallback(_pruner(end_step=150))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(data, tmp_path, [callback], steps=20, save_steps=1000)
    messages = [str(w.message) for w in caught if "PruningCallback" in str(w.message)]
    assert len(messages) == 1 and "did not finish" in messages[0], messages
    assert not math.isclose(float(callback.state.current_target), 0.9)


def test_resuming_without_a_saved_state_says_what_to_do(data, tmp_path):
    _train(data, tmp_path, [], steps=10, save_steps=5)
    with pytest.raises(FileNotFoundError, match="PruningCallback saved"):
        _train(data, tmp_path, [PruningCallback(_pruner())], steps=20,
               resume=str(tmp_path / "checkpoint-5"))  # fmt: skip


def test_ddp_ranks_compute_identical_masks(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).with_name("hf_ddp_run.py")
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(worker), str(tmp_path)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    first = torch.load(tmp_path / "masks0.pt", weights_only=True)
    second = torch.load(tmp_path / "masks1.pt", weights_only=True)
    assert first.keys() == second.keys() == {"net.0.weight", "net.2.weight"}
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert float(fprune.total_sparsity(first, pattern="4x1")) == 0.9
