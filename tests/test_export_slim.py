"""fprune.export.slim and coupled_masks: slimming equals masking; coupled masks are consistent."""

from __future__ import annotations

import copy
import itertools
import math
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

pytest.importorskip("torch_pruning")

import fprune
from fprune.export import MissingTorchPruning, coupled_masks, slim

ACTIVATIONS = (nn.ReLU, nn.GELU, nn.Tanh, nn.Identity)


def _masked_output(model: nn.Module, masks, inputs) -> torch.Tensor:
    """The reference: a copy of the model with the masks applied by hand."""
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if name in masks:
                param.mul_(masks[name])
        return reference(inputs)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp(min=1e-30))


@st.composite
def mlps(draw):
    """A random MLP with random biases, and masks that prune whole rows or whole columns."""
    widths = draw(st.lists(st.integers(2, 9), min_size=3, max_size=5))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1], bias=draw(st.booleans())))
        if i < len(widths) - 2:
            layers.append(draw(st.sampled_from(ACTIVATIONS))())
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-1, 1)
    masks = {}
    for i, layer in enumerate(model):
        if not isinstance(layer, nn.Linear) or not draw(st.booleans()):
            continue
        mask = torch.ones(layer.weight.shape, dtype=torch.bool)
        rows = draw(st.lists(st.booleans(), min_size=mask.shape[0], max_size=mask.shape[0]))
        cols = draw(st.lists(st.booleans(), min_size=mask.shape[1], max_size=mask.shape[1]))
        mask[torch.tensor(rows)] = False
        mask[:, torch.tensor(cols)] = False
        masks[f"{i}.weight"] = mask
    return model, masks, widths


def _expected_widths(model: nn.Sequential, masks, widths):
    """Hidden unit j after Linear k goes when its row there, or its column in the next
    Linear, is wholly pruned (computed from the masks, without the dependency graph)."""
    linear = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    out = [widths[0]]
    for a, b in itertools.pairwise(linear):
        rows = masks.get(f"{a}.weight")
        cols = masks.get(f"{b}.weight")
        dead = torch.zeros(model[a].out_features, dtype=torch.bool)
        if rows is not None:
            dead |= ~rows.any(1)
        if cols is not None:
            dead |= ~cols.any(0)
        out.append(max(1, int((~dead).sum())))  # a layer keeps at least one channel
    return [*out, widths[-1]]


@settings(max_examples=25)
@given(case=mlps())
def test_slimming_random_mlps_equals_masking(case):
    model, masks, widths = case
    x = torch.randn(7, widths[0])
    slimmed, report = slim(model, masks, x)
    with torch.no_grad():
        assert _relative(_masked_output(model, masks, x), slimmed(x)) <= 1e-5
    linear = [m for m in slimmed if isinstance(m, nn.Linear)]
    assert [linear[0].in_features] + [m.out_features for m in linear] == _expected_widths(
        model, masks, widths
    )
    assert report.error <= 1e-5
    last = str(len(model) - 1)  # the output layer's pruned rows stay: they are model outputs
    for root, why in report.inconsistent.items():
        assert ("model outputs" in why and root == last) or "needs at least one" in why


def _conv_net(padding: int) -> nn.Sequential:
    torch.manual_seed(0)
    size = 8 if padding else 4
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=padding), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=padding), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * size * size, 5),
    )  # fmt: skip
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    return net.eval()


def test_conv_net_with_batch_norm_rows_pruned_folds_the_constants():
    net, x = _conv_net(padding=0), torch.randn(4, 3, 8, 8)
    k0 = torch.ones(8, 3, 3, 3, dtype=torch.bool)
    k0[[1, 4, 6]] = False
    k3 = torch.ones(6, 8, 3, 3, dtype=torch.bool)
    k3[[0, 5]] = False
    masks = {"0.weight": k0, "3.weight": k3}
    slimmed, report = slim(net, masks, x)
    assert (slimmed[0].out_channels, slimmed[1].num_features, slimmed[3].in_channels) == (5, 5, 5)
    assert (slimmed[3].out_channels, slimmed[7].in_features) == (4, 4 * 16)
    assert report.folded == {"3": 3, "7": 2 * 16}
    with torch.no_grad():
        assert _relative(_masked_output(net, masks, x), slimmed(x)) <= 1e-5


@settings(max_examples=15)
@given(
    channels=st.lists(st.integers(2, 6), min_size=2, max_size=2),
    padding=st.sampled_from([0, 1]),
    rows=st.lists(st.booleans(), min_size=12, max_size=12),
    cols=st.lists(st.booleans(), min_size=12, max_size=12),
    seed=st.integers(0, 1000),
)
def test_slimming_random_conv_nets_with_batch_norm_equals_masking(
    channels, padding, rows, cols, seed
):
    torch.manual_seed(seed)
    c1, c2 = channels
    size = 6 if padding else 2
    net = nn.Sequential(
        nn.Conv2d(3, c1, 3, padding=padding), nn.BatchNorm2d(c1), nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=padding), nn.BatchNorm2d(c2), nn.ReLU(),
        nn.Flatten(), nn.Linear(c2 * size * size, 4),
    )  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-1, 1)
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    net.eval()
    k0 = torch.ones(c1, 3, 3, 3, dtype=torch.bool)
    k0[torch.tensor(rows[:c1])] = False
    k3 = torch.ones(c2, c1, 3, 3, dtype=torch.bool)
    k3[torch.tensor(rows[6 : 6 + c2])] = False
    k3[:, torch.tensor(cols[:c1])] = False
    masks = {"0.weight": k0, "3.weight": k3}
    x = torch.randn(2, 3, 6, 6)
    slimmed, report = slim(net, masks, x)
    with torch.no_grad():
        assert _relative(_masked_output(net, masks, x), slimmed(x)) <= 1e-5
    unread = ~k3.any(0).flatten(1).any(1)  # conv 0's channels that conv 3 never reads
    assert slimmed[0].out_channels <= max(1, c1 - int(unread.sum()))
    assert report.error <= 1e-5


def test_padded_conv_keeps_channels_whose_constant_it_cannot_absorb():
    net, x = _conv_net(padding=1), torch.randn(2, 3, 8, 8)
    k0 = torch.ones(8, 3, 3, 3, dtype=torch.bool)
    k0[[1, 4, 6]] = False
    with torch.no_grad():
        net[1].bias[[1, 4, 6]] = torch.tensor([5.0, 5.0, -5.0])  # 6's constant dies in the ReLU
    slimmed, report = slim(net, {"0.weight": k0}, x)
    with torch.no_grad():
        conv, bn = net[0], net[1]
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        constant = torch.relu((conv.bias - bn.running_mean) * scale + bn.bias)
    nonzero = int((constant[[1, 4, 6]] != 0).sum())
    assert nonzero == 2
    assert slimmed[0].out_channels == 8 - (3 - nonzero)
    assert "kept" in report.inconsistent["0"]
    with torch.no_grad():
        assert _relative(_masked_output(net, {"0.weight": k0}, x), slimmed(x)) <= 1e-5


def test_coupled_masks_on_a_padded_conv_net_slim_exactly():
    net, x = _conv_net(padding=1), torch.randn(2, 3, 8, 8)
    scores = fprune.magnitude({n: p.detach() for n, p in net.named_parameters() if p.ndim > 1})
    masks = coupled_masks(net, scores, x, sparsity=0.5)
    slimmed, report = slim(net, masks, x)
    assert (slimmed[0].out_channels, slimmed[3].out_channels) == (4, 3)
    assert report.inconsistent == {}
    with torch.no_grad():
        assert _relative(_masked_output(net, masks, x), slimmed(x)) <= 1e-5


@settings(max_examples=20)
@given(
    widths=st.lists(st.integers(2, 8), min_size=3, max_size=3),
    sparsity=st.sampled_from([0.0, 0.25, 0.5, 0.75]),
    seed=st.integers(0, 1000),
    ties=st.booleans(),
)
def test_coupled_masks_equal_a_sort_of_summed_scores(widths, sparsity, seed, ties):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(widths[0], widths[1]), nn.ReLU(), nn.Linear(widths[1], widths[2]))
    scores = {
        "0.weight": torch.rand(widths[1], widths[0]),
        "2.weight": torch.rand(widths[2], widths[1]),
    }
    if ties:
        scores = {n: (s * 2).round() for n, s in scores.items()}
    masks = coupled_masks(net, scores, torch.randn(2, widths[0]), sparsity=sparsity)
    total = scores["0.weight"].double().sum(1) + scores["2.weight"].double().sum(0)
    k = math.floor(sparsity * widths[1] + 1e-9)
    order = sorted(range(widths[1]), key=lambda j: (float(total[j]), j))
    pruned = torch.zeros(widths[1], dtype=torch.bool)
    pruned[order[:k]] = True
    if k == 0:
        assert masks == {}
        return
    assert torch.equal(~masks["0.weight"].any(1), pruned)
    assert torch.equal(~masks["2.weight"].any(0), pruned)
    assert bool(masks["0.weight"][~pruned].all()) and bool(masks["2.weight"][:, ~pruned].all())


def test_a_channel_pruned_for_one_reader_of_two_is_reported_not_removed():
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3), nn.Linear(6, 3)

        def forward(self, x):
            h = torch.relu(self.up(x))
            return self.a(h) + self.b(h)

    net, x = Branches(), torch.randn(5, 4)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[:, 2] = False
    slimmed, report = slim(net, {"a.weight": mask}, x)
    assert slimmed.up.out_features == 6
    assert "1 channels, first [2]" in report.inconsistent["up"]
    with torch.no_grad():
        assert _relative(_masked_output(net, {"a.weight": mask}, x), slimmed(x)) <= 1e-6


def test_channels_through_a_layer_norm_are_kept_and_reported():
    net = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3))
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[0] = False
    slimmed, report = slim(net, {"0.weight": mask}, torch.randn(3, 4))
    assert slimmed[0].out_features == 6
    assert "LayerNorm" in report.inconsistent["0"]


def test_the_input_model_is_not_changed_and_the_training_mode_is_kept():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 3)).train()
    before = copy.deepcopy(net.state_dict())
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[:3] = False
    slimmed, _ = slim(net, {"0.weight": mask}, torch.randn(3, 4))
    assert slimmed.training and slimmed[0].out_features == 3
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize(
    ("masks", "match"),
    [
        ({"0.bias": torch.ones(6, dtype=torch.bool)}, "only name the weights of Linear"),
        ({"0.weight": torch.ones(6, 5, dtype=torch.bool)}, "does not match the weight's shape"),
        ({"0.weight": torch.ones(6, 4)}, "must be a torch.bool"),
    ],
)
def test_bad_masks_are_refused(masks, match):
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with pytest.raises((ValueError, TypeError), match=match):
        slim(net, masks, torch.randn(2, 4))


@pytest.mark.parametrize(
    "scores",
    [{"0.bias": torch.ones(6)}, {"0.weight": torch.ones(6, 5)}, {"x.weight": torch.ones(2, 2)}],
)
def test_coupled_masks_refuses_scores_that_are_not_layer_weights(scores):
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with pytest.raises(ValueError, match="shaped like weights of Linear or conv layers"):
        coupled_masks(net, scores, torch.randn(2, 4), sparsity=0.5)


def test_without_torch_pruning_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with pytest.raises(MissingTorchPruning, match=r"fprune\[export\]"):
        slim(net, {"0.weight": torch.ones(6, 4, dtype=torch.bool)}, torch.randn(2, 4))
