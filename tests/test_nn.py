"""fprune.nn: INC-style layer selection, in-place masking, optimizer state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fprune
from fprune.nn import apply_masks_, classifier_head, mask_grads_, masked_optimizer_state, prunable
from tests.models import MLP, ConvNet


def test_prunable_excludes_the_head_and_reports_it():
    assert prunable(MLP()) == (("fc1.weight", "fc2.weight", "fc3.weight"), "head", ())
    assert prunable(ConvNet()).names == ("conv1.weight", "conv2.weight", "fc.weight")
    assert prunable(MLP(), exclude_head=False).names[-1] == "head.weight"


def test_head_detection_follows_inc():
    relu_last = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    assert classifier_head(relu_last) is None and prunable(relu_last).names == ("0.weight",)
    dropout_last = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2), nn.Dropout())
    assert classifier_head(dropout_last) == "1"
    assert classifier_head(nn.Sequential(nn.ReLU())) is None  # INC raises IndexError here


def test_prunable_uses_regex_search_exclusions_and_type_substrings():
    model = nn.ModuleDict(
        {
            "blocks": nn.ModuleList(
                [
                    nn.ModuleDict(
                        {
                            "fc1": nn.Linear(4, 4),
                            "conv": nn.Conv1d(4, 4, 3),
                            "norm": nn.LayerNorm(4),
                        }
                    )
                ]
            ),
            "out": nn.ReLU(),
        }
    )
    assert prunable(model, op_names=["fc"]).names == (
        "blocks.0.fc1.weight",
    )  # search, not fullmatch
    assert prunable(model).names == (
        "blocks.0.fc1.weight",
        "blocks.0.conv.weight",
    )  # LayerNorm: 1-D, not Linear
    assert prunable(model, op_types=["Conv"]).names == ("blocks.0.conv.weight",)
    assert prunable(model, excluded_op_names=[r"conv$"]).names == ("blocks.0.fc1.weight",)


def test_prunable_errors():
    with pytest.raises(TypeError, match="op_names must be a list of strings"):
        prunable(MLP(), op_names="fc1")
    with pytest.raises(ValueError, match="invalid regex"):
        prunable(MLP(), excluded_op_names=["("])
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"):
        prunable({"w": torch.ones(2, 2)})


def test_apply_and_mask_grads_in_place():
    model = MLP()
    masks = {"fc1.weight": torch.rand(32, 16) > 0.5}
    model(torch.randn(2, 16)).sum().backward()
    apply_masks_(model, masks)
    mask_grads_(model, masks)
    assert bool((model.fc1.weight.detach()[~masks["fc1.weight"]] == 0).all())
    assert bool((model.fc1.weight.grad[~masks["fc1.weight"]] == 0).all())
    assert model.fc1.weight.requires_grad
    with pytest.raises(ValueError, match="masks has names the model lacks"):
        apply_masks_(model, {"nope": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(TypeError, match=r"must be a torch\.bool mask"):
        apply_masks_(model, {"fc1.weight": torch.ones(32, 16)})


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW])
def test_masked_optimizer_state_zeroes_pruned_moments(opt_cls):
    torch.manual_seed(0)
    model = MLP()
    kwargs = {"momentum": 0.9} if opt_cls is torch.optim.SGD else {}
    opt = opt_cls(model.parameters(), lr=0.01, **kwargs)
    model(torch.randn(4, 16)).sum().backward()
    opt.step()
    names = [n for n, _ in model.named_parameters()]
    masks = {"fc2.weight": torch.rand(32, 32) > 0.5}
    before = opt.state_dict()
    snapshot = {k: {kk: vv.clone() for kk, vv in v.items()} for k, v in before["state"].items()}
    sd = masked_optimizer_state(before, masks, names=names)
    idx = names.index("fc2.weight")
    tensors = [
        v for v in sd["state"][idx].values() if isinstance(v, torch.Tensor) and v.shape == (32, 32)
    ]
    assert tensors and all(bool((t[~masks["fc2.weight"]] == 0).all()) for t in tensors)
    assert all(
        bool((t[masks["fc2.weight"]] == snapshot[idx][k][masks["fc2.weight"]]).all())
        for k, t in sd["state"][idx].items()
        if isinstance(t, torch.Tensor) and t.shape == (32, 32)
    )
    for k, v in before["state"].items():  # the input is unchanged
        assert all(torch.equal(vv, snapshot[k][kk]) for kk, vv in v.items())
    opt.load_state_dict(sd)  # it is a valid state dict
    with pytest.raises(ValueError, match="names must list every parameter"):
        masked_optimizer_state(before, masks, names=names[:-1])


def test_pruned_weights_stay_zero_with_adam_when_state_is_masked():
    """With Adam, pruned weights move during step(); apply_masks_ after step keeps them zero."""
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    prune = fprune.pruner(0.5, pattern="4x1", criterion="magnitude")
    names = prunable(model).names
    params = dict(model.named_parameters())
    state = prune.init({n: params[n].detach() for n in names})
    state, masks = prune.step(state, {n: params[n].detach() for n in names})
    for _ in range(3):
        apply_masks_(model, masks)
        opt.zero_grad()
        model(torch.randn(4, 16)).sum().backward()
        opt.step()
        apply_masks_(model, masks)
        assert all(bool((params[n].detach()[~masks[n]] == 0).all()) for n in names)
