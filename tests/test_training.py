"""fprune.training: one call per optimizer step in a plain loop, nothing silent."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import fprune
from fprune import training

OPTIMIZERS = {
    "sgd momentum wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5),
}


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )


def _loop(model, prune, opt, steps):
    state = training.init(model, prune)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 16, generator=gen), torch.randint(0, 4, (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        state, masks = training.prune_step_(model, prune, state, optimizer=opt)
        opt.step()
        params = dict(model.named_parameters())
        assert all(bool((params[n][~m] == 0).all()) for n, m in masks.items())
    return state, masks


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_pruned_weights_stay_zero_after_every_optimizer_step(make):
    model = _mlp()
    prune = fprune.pruner(0.75, pattern="4x1", start_step=0, end_step=20, frequency=5)
    state, masks = _loop(model, prune, make(model.parameters()), 30)
    assert set(masks) == {"0.weight", "2.weight"}  # nn.prunable: the head stays dense
    assert float(fprune.total_sparsity(masks, pattern="4x1")) == 0.75
    assert int(state.step) == 30


def test_the_optimizer_may_hold_a_subset_in_any_order():
    model = _mlp()
    params = dict(model.named_parameters())
    opt = torch.optim.Adam([params["2.weight"], params["0.bias"], params["0.weight"]], lr=1e-2)
    prune = fprune.pruner(0.5, pattern="1x1", start_step=0, end_step=4, frequency=2)
    _, masks = _loop(model, prune, opt, 8)
    state = opt.state[params["0.weight"]]
    assert bool((state["exp_avg"][~masks["0.weight"]] == 0).all())


def test_each_prune_step_is_logged(caplog):
    model = _mlp()
    prune = fprune.pruner(0.5, pattern="1x1", start_step=2, end_step=6, frequency=2)
    with caplog.at_level(logging.INFO, logger="fprune"):
        _loop(model, prune, torch.optim.SGD(model.parameters(), lr=0.1), 8)
    lines = [r.getMessage() for r in caplog.records if r.name == "fprune"]
    assert [line.split(":")[0] for line in lines] == [f"fprune step {s}" for s in (2, 4, 6)]
    assert lines[-1].endswith("target 0.5000, achieved 0.5000 in 2 layers")


def test_window_warnings_say_what_happened_and_what_to_do():
    model = _mlp()
    prune = fprune.pruner(0.5, pattern="1x1", start_step=64, end_step=128, frequency=8)
    state, _ = _loop(model, prune, torch.optim.SGD(model.parameters(), lr=0.1), 10)
    assert "never started" in training.window_warning(prune, state)
    early = fprune.pruner(0.5, pattern="1x1", start_step=0, end_step=128, frequency=8)
    state, _ = _loop(_mlp(), early, torch.optim.SGD(model.parameters(), lr=0.1), 10)
    assert "did not finish" in training.window_warning(early, state)
    done = fprune.pruner(0.5, pattern="1x1", start_step=0, end_step=8, frequency=2)
    state, _ = _loop(_mlp(), done, torch.optim.SGD(model.parameters(), lr=0.1), 10)
    assert training.window_warning(done, state) is None


def test_a_dict_of_parameters_works_like_the_model():
    model = _mlp()
    prune = fprune.pruner(0.5, pattern="1x1", criterion="magnitude", start_step=0, end_step=0)
    params = dict(model.named_parameters())
    state = training.init(params, prune, names=["0.weight"])
    state, masks = training.prune_step_(params, prune, state)
    assert float(fprune.total_sparsity(masks)) == 0.5
    assert float((model[0].weight == 0).float().mean()) == 0.5


def test_errors_name_the_argument():
    prune = fprune.pruner(0.5, pattern="1x1")
    with pytest.raises(ValueError, match="names is needed with a dict"):
        training.init(dict(_mlp().named_parameters()), prune)
    with pytest.raises(ValueError, match="lists parameters the model lacks"):
        training.init(_mlp(), prune, names=["nope.weight"])
    with pytest.raises(TypeError, match=r"must be an nn\.Module or a dict"):
        training.init([1, 2], prune)
    with pytest.raises(TypeError, match="must be a Pruner or an INC config dict"):
        training.as_pruner(0.5, None, "f")
