"""Coupled-channel masks: score and prune each group of coupled channels together.

A channel's score is the sum of its scores over every tensor it touches (the output rows of
the layers that write it and the input columns of the layers that read it, as Torch-Pruning's
dependency graph couples them): a dependency-group importance. In each group exactly
``floor(sparsity * units + 1e-9)`` units are pruned, lowest score first, ties to the lower
index, NaN lowest; a unit is a channel, or a whole head for attention projections. The masks
prune a chosen channel in every coupled weight, so :func:`fprune.export.slim` removes it
without inconsistencies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fprune import _errors
from fprune.export.groups import LAYERS, Group, channel_units, read_groups, torch_pruning

__all__ = ["channel_scores", "coupled_masks"]


def _reduced(item_scores: torch.Tensor, side: str) -> torch.Tensor:
    """Per row (``"out"``) or column (``"in"``): the sum of the scores (float64)."""
    dim = 0 if side == "out" else 1
    other = [d for d in range(item_scores.ndim) if d != dim]
    return item_scores.double().sum(dim=other)


def channel_scores(group: Group, scores: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """The float64 score of each channel of ``group``: the sum over its items that have a
    score; None when no item has one."""
    total = torch.zeros(group.channels, dtype=torch.float64)
    scored = False
    for item in group.items:
        score = scores.get(f"{item.name}.weight")
        if score is None:
            continue
        scored = True
        per_index = _reduced(score.detach().cpu(), item.side)[torch.tensor(item.local)]
        total.index_add_(0, torch.tensor(item.root), per_index)
    return total if scored else None


def _pruned_channels(score: torch.Tensor, unit: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool per channel: in one of the ``floor(sparsity * units)`` lowest-scored units."""
    count = int(unit.max()) + 1 if unit.numel() else 0
    unit_score = torch.zeros(count, dtype=torch.float64).index_add_(0, unit, score)
    unit_score = torch.where(unit_score.isnan(), -math.inf, unit_score)
    k = math.floor(sparsity * count + 1e-9)
    chosen = torch.argsort(unit_score, stable=True)[:k]
    pruned_units = torch.zeros(count, dtype=torch.bool)
    pruned_units[chosen] = True
    return pruned_units[unit]


def _apply(group: Group, pruned: torch.Tensor, masks: dict[str, torch.Tensor]) -> None:
    for item in group.items:
        name = f"{item.name}.weight"
        shape = item.module.get_parameter("weight").shape
        mask = masks.setdefault(name, torch.ones(shape, dtype=torch.bool))
        local = torch.tensor(item.local)[pruned[torch.tensor(item.root)]]
        if item.side == "out":
            mask[local] = False
        else:
            mask[:, local] = False


def coupled_masks(
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    example_inputs: Any,
    *,
    sparsity: float,
    head_sparsity: float | None = None,
) -> dict[str, torch.Tensor]:
    """Masks that prune whole coupled channels (and heads), consistently in every tensor.

    Args:
        model: the model (not changed); traced by Torch-Pruning on ``example_inputs``.
        scores: weight-shaped scores (higher = more important) for some Linear and conv
            weights, keyed like ``model.named_parameters()``, e.g.
            ``fprune.magnitude(params)``. Groups with no scored weight stay dense.
        example_inputs: a tensor, a tuple of arguments or a dict of keyword arguments.
        sparsity: the fraction of channels to prune in each group, in [0, 1).
        head_sparsity: the fraction of heads to prune in attention groups (default
            ``sparsity``).

    Returns:
        Bool masks (True = kept) for every weight a pruned channel touches.

    Raises:
        MissingTorchPruning: ``torch_pruning`` is not installed.
        TypeError, ValueError: bad scores or fractions.

    Groups that pass through a normalisation over channels (LayerNorm, GroupNorm), an
    embedding or a grouped conv, and groups that no layer reads (a model output), stay dense.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> scores = {n: p.detach().abs() for n, p in net.named_parameters() if "weight" in n}
        >>> masks = coupled_masks(net, scores, torch.randn(2, 8), sparsity=0.25)
        >>> int((~masks["0.weight"].any(1)).sum()), int((~masks["2.weight"].any(0)).sum())
        (4, 4)
    """
    _errors.tensor_dict("coupled_masks", "scores", scores)
    weights = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, LAYERS)}
    for name, score in scores.items():
        if name not in weights or score.shape != weights[name].get_parameter("weight").shape:
            raise _errors.value_error(
                "coupled_masks", "scores must be shaped like weights of Linear or conv layers",
                _errors.detail(f"{name!r} of shape {tuple(score.shape)}"),
                "Key scores like model.named_parameters(), e.g. fprune.magnitude(weights).",
            )  # fmt: skip
    sparsity = float(_errors.fraction("coupled_masks", "sparsity", sparsity))
    heads = sparsity if head_sparsity is None else head_sparsity
    heads = float(_errors.fraction("coupled_masks", "head_sparsity", heads))
    tp = torch_pruning()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    masks: dict[str, torch.Tensor] = {}
    for group in read_groups(graph, model):
        readers = any(i.side == "in" for i in group.items)
        score = channel_scores(group, scores)
        if group.blocked or not readers or score is None:
            continue
        fraction = heads if group.head_size is not None else sparsity
        pruned = _pruned_channels(score, channel_units(group), fraction)
        if bool(pruned.any()):
            _apply(group, pruned, masks)
    return masks
