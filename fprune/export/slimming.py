"""Physical slimming: remove pruned channels and attention heads from a model.

Which tensors are coupled (a Linear's output rows, its bias, a batch norm, the next layer's
input columns, the query/key/value of one head, ...) is read from Torch-Pruning's dependency
graph (``torch_pruning``, the ``export`` extra), which also performs the surgery. fprune
decides *which* channels may go, so that the slimmed model computes what the masked model
computes:

- a channel whose every consumer (a Linear or conv reading it) has its input columns pruned
  contributes nothing: it goes with everything coupled to it;
- a channel whose every producer (a Linear or conv writing it) has its output rows pruned
  carries a constant (its bias, through activations and batch norms): the constant is
  measured on ``example_inputs`` and folded into each consumer's bias, then the channel goes.
  A consumer that is a padded conv would see the constant only away from its borders, so such
  channels are kept unless the constant is zero;
- channels of an attention projection go only as whole heads, and every layer keeps at
  least one channel;
- a group that runs through a normalisation over channels (LayerNorm, GroupNorm) or an
  embedding keeps its channels (removing one would change the others).

A channel pruned in some of its coupled tensors but not removable by these rules is reported
in :attr:`SlimReport.inconsistent`, never guessed at; :func:`fprune.export.coupled_masks`
prunes coupled channels together so that this does not happen.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from fprune import _errors
from fprune.blockwise import call_model
from fprune.export.groups import (
    LAYERS,
    Group,
    Item,
    MissingTorchPruning,
    attention_modules,
    channel_units,
    head_sizes,
    read_groups,
    torch_pruning,
)
from fprune.nn import apply_masks_

__all__ = ["MissingTorchPruning", "SlimReport", "slim"]

_CONSTANT_TOL = 1e-6


@dataclasses.dataclass(frozen=True)
class SlimReport:
    """What :func:`slim` did.

    Attributes:
        removed: channels removed per group, by the group's first layer
            (``{"encoder.layer.0.intermediate.dense": 768}``).
        folded: per consumer layer, how many removed channels had a constant folded into
            its bias.
        inconsistent: per group, the channels that are pruned in some coupled tensors but
            could not be removed, with the reason.
        error: the largest difference between the slimmed and the masked model's outputs on
            ``example_inputs``, relative to the largest output magnitude.
        parameters: the parameter counts before and after.
    """

    removed: dict[str, int]
    folded: dict[str, int]
    inconsistent: dict[str, str]
    error: float
    parameters: tuple[int, int]


def _dead(item: Item, masks: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """Per index of ``item``: whether its whole row (out) or column (in) is pruned; None
    when the layer's weight has no mask."""
    mask = masks.get(f"{item.name}.weight")
    if mask is None:
        return None
    dim = 0 if item.side == "out" else 1
    other = [d for d in range(mask.ndim) if d != dim]
    kept = mask.any(dim=other) if other else mask
    return ~kept[torch.tensor(item.local, dtype=torch.long)]


def _all_dead(items: list[Item], masks: Mapping[str, torch.Tensor], channels: int) -> torch.Tensor:
    """Per group channel: whether every index of every item that maps to it is dead (False
    when there is no item, or an item has no mask)."""
    if not items:
        return torch.zeros(channels, dtype=torch.bool)
    dead = torch.ones(channels, dtype=torch.bool)
    for item in items:
        item_dead = _dead(item, masks)
        if item_dead is None:
            return torch.zeros(channels, dtype=torch.bool)
        alive = torch.zeros(channels, dtype=torch.bool)
        alive.index_fill_(0, torch.tensor(item.root, dtype=torch.long)[~item_dead], True)
        dead &= ~alive
    return dead


def _any_dead(items: list[Item], masks: Mapping[str, torch.Tensor], channels: int) -> torch.Tensor:
    out = torch.zeros(channels, dtype=torch.bool)
    for item in items:
        item_dead = _dead(item, masks)
        if item_dead is not None and bool(item_dead.any()):
            out.index_fill_(0, torch.tensor(item.root, dtype=torch.long)[item_dead], True)
    return out


def _whole_units(removable: torch.Tensor, group: Group) -> torch.Tensor:
    """Keep a head unless every channel of it is removable."""
    unit = channel_units(group)
    out = removable.clone()
    for u in unit.unique().tolist():
        if not bool(removable[unit == u].all()):
            out[unit == u] = False
    return out


def _keep_one(removable: torch.Tensor, group: Group) -> torch.Tensor:
    """Keep the first unit when every unit is removable: a layer needs at least one channel
    (and keeping a removable channel is always exact)."""
    if not removable.numel() or not bool(removable.all()):
        return removable
    unit = channel_units(group)
    return removable & (unit != unit[0])


_ALL_PRUNED = "every channel is pruned; the first is kept, as a layer needs at least one"


@dataclasses.dataclass
class _Fold:
    """A consumer's inputs to fold: ``parts`` pairs each group (by root) with the consumer's
    item in it; ``local`` lists the consumer's indices to measure, ascending."""

    parts: list[tuple[str, Item]] = dataclasses.field(default_factory=list)
    local: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Plan:
    remove: dict[str, list[int]]  # group root -> channels
    fold: dict[str, _Fold]  # consumer name -> what to fold into it
    inconsistent: dict[str, str]
    groups: dict[str, Group]


def _plan(groups: list[Group], masks: Mapping[str, torch.Tensor]) -> _Plan:
    plan = _Plan({}, {}, {}, {})
    for group in groups:
        plan.groups[group.root] = group
        outs = [i for i in group.items if i.side == "out"]
        ins = [i for i in group.items if i.side == "in"]
        consumer_dead = _all_dead(ins, masks, group.channels)
        producer_dead = _all_dead(outs, masks, group.channels) & bool(ins)
        touched = _any_dead(group.items, masks, group.channels)
        removable = consumer_dead | producer_dead
        if group.blocked:
            removable = torch.zeros_like(removable)
        removable = _whole_units(removable, group)
        left = (touched & ~removable).nonzero().flatten().tolist()
        if left:
            why = group.blocked or (
                "not pruned in all producers or all consumers (or whole heads)"
                if ins
                else "model outputs: no layer reads them"
            )
            plan.inconsistent[group.root] = f"{len(left)} channels, first {left[:5]}: {why}"
        if bool(removable.any()):
            plan.remove[group.root] = removable.nonzero().flatten().tolist()
        fold = set((removable & ~consumer_dead).nonzero().flatten().tolist())
        for item in ins if fold else []:
            entry = plan.fold.setdefault(item.name, _Fold())
            entry.parts.append((group.root, item))
            local = {li for li, r in zip(item.local, item.root, strict=True) if r in fold}
            entry.local = sorted(local.union(entry.local))
    return plan


def _tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor of a model's output (tensors, tuples, lists, dicts, ``ModelOutput``)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        return [t for v in output.values() for t in _tensors(v)]
    if isinstance(output, tuple | list):
        return [t for v in output for t in _tensors(v)]
    return []


def _relative_error(reference: list[torch.Tensor], slimmed: list[torch.Tensor]) -> float:
    shapes = ([tuple(t.shape) for t in reference], [tuple(t.shape) for t in slimmed])
    if shapes[0] != shapes[1]:
        raise RuntimeError(f"slim: the outputs changed shape ({shapes[0]} -> {shapes[1]})")
    scale = max((float(t.double().abs().max()) for t in reference if t.numel()), default=0.0)
    diff = max(
        (
            float((a.double() - b.double()).abs().max())
            for a, b in zip(reference, slimmed, strict=True)
            if a.numel()
        ),
        default=0.0,
    )
    return diff / scale if scale else diff


def _capture(
    model: nn.Module, fold: Mapping[str, _Fold], example_inputs: Any
) -> dict[str, torch.Tensor]:
    """Each folding consumer's inputs at the channels to fold, from every call on
    ``example_inputs``: ``[k, positions]`` in float64."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in fold}
    modules = dict(model.named_modules())

    def hook(name: str, local: list[int]) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            dim = -1 if isinstance(module, nn.Linear) else 1
            x = args[0].detach().index_select(dim, torch.tensor(local, device=args[0].device))
            seen[name].append(x.movedim(dim, 0).reshape(len(local), -1).double().cpu())

        return record

    handles = [
        modules[name].register_forward_pre_hook(hook(name, entry.local))
        for name, entry in fold.items()
    ]
    try:
        with torch.no_grad():
            call_model(model, example_inputs, func="slim")
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(xs, dim=1) for name, xs in seen.items() if xs}


def _padded(conv: nn.Conv1d | nn.Conv2d | nn.Conv3d) -> bool:
    padding = conv.padding
    return padding == "same" or (not isinstance(padding, str) and any(p != 0 for p in padding))


def _foldable(module: nn.Module, constants: torch.Tensor, captured: torch.Tensor) -> torch.Tensor:
    """Per captured channel: constant over every position, and (for a padded conv) zero."""
    deviation = (captured - constants[:, None]).abs().amax(dim=1)
    ok = deviation <= _CONSTANT_TOL * (1.0 + constants.abs())
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and _padded(module):
        ok &= constants == 0
    return ok


def _unfoldable(
    plan: _Plan, captured: Mapping[str, torch.Tensor], modules: Mapping[str, nn.Module]
) -> dict[str, set[int]]:
    """Per group, the channels to keep because a consumer cannot absorb their constant."""
    keep: dict[str, set[int]] = {}
    for name, entry in plan.fold.items():
        values = captured[name]
        ok = _foldable(modules[name], values[:, 0], values)
        bad = {li for li, good in zip(entry.local, ok.tolist(), strict=True) if not good}
        for root, item in entry.parts:
            roots = {r for li, r in zip(item.local, item.root, strict=True) if li in bad}
            keep.setdefault(root, set()).update(roots)
    return keep


def _fold_into_bias(module: nn.Module, local: list[int], constants: torch.Tensor) -> None:
    """Add the output of constant inputs ``local`` (values ``constants``) to ``module``'s bias."""
    weight = module.get_parameter("weight").detach()
    columns = weight.index_select(1, torch.tensor(local, device=weight.device))
    contribution = columns.reshape(weight.shape[0], len(local), -1).double().sum(-1) @ constants
    with torch.no_grad():
        if getattr(module, "bias", None) is None:
            zeros = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
            module.register_parameter("bias", nn.Parameter(zeros))
        bias = module.get_parameter("bias")
        bias.add_(contribution.to(device=bias.device, dtype=bias.dtype))


def _settle(plan: _Plan, keep: Mapping[str, set[int]]) -> None:
    """Drop kept channels from the plan (whole heads again), and the folds they no longer need."""
    for root, channels in keep.items():
        if not channels:
            continue
        group = plan.groups[root]
        removable = torch.zeros(group.channels, dtype=torch.bool)
        removable[plan.remove.get(root, [])] = True
        removable[sorted(channels)] = False
        removable = _whole_units(removable, group)
        plan.remove[root] = removable.nonzero().flatten().tolist()
        kept = len(channels)
        plan.inconsistent[root] = (
            f"{kept} channels kept: a consumer cannot absorb their constant output (it varies, "
            "or a padded conv reads it)"
        )


def _keep_one_each(plan: _Plan) -> None:
    """Once the removable channels are settled, keep a layer's first unit where all would go."""
    for root, channels in plan.remove.items():
        group = plan.groups[root]
        removable = torch.zeros(group.channels, dtype=torch.bool)
        removable[channels] = True
        kept = _keep_one(removable, group)
        if not torch.equal(kept, removable):
            plan.remove[root] = kept.nonzero().flatten().tolist()
            plan.inconsistent.setdefault(root, _ALL_PRUNED)


def _fold(model: nn.Module, plan: _Plan, example_inputs: Any) -> dict[str, int]:
    """Settle which channels go (constants that cannot be folded keep theirs; every layer
    keeps one), then fold the constants of those that go into their readers' biases."""
    modules = dict(model.named_modules())
    captured = _capture(model, plan.fold, example_inputs) if plan.fold else {}
    _settle(plan, _unfoldable(plan, captured, modules))
    _keep_one_each(plan)
    removed = {g: set(cs) for g, cs in plan.remove.items()}
    folded: dict[str, int] = {}
    for name, entry in plan.fold.items():
        values = captured[name][:, 0]
        position = {li: k for k, li in enumerate(entry.local)}
        chosen = sorted(
            {
                li
                for root, item in entry.parts
                for li, r in zip(item.local, item.root, strict=True)
                if li in position and r in removed.get(root, set())
            }
        )
        if chosen:
            _fold_into_bias(modules[name], chosen, values[[position[li] for li in chosen]])
            folded[name] = len(chosen)
    return folded


def _check_masks(model: nn.Module, masks: Any) -> Mapping[str, torch.Tensor]:
    if isinstance(masks, Mapping) and not masks:
        return {}
    masks = _errors.bool_masks("slim", "masks", masks)
    layers = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, LAYERS)}
    for name, mask in masks.items():
        if name not in layers:
            raise _errors.value_error(
                "slim", "masks may only name the weights of Linear and conv layers", name,
                "Pass masks keyed like model.named_parameters(), e.g. 'fc1.weight'.",
            )  # fmt: skip
        shape = tuple(layers[name].weight.shape)
        if tuple(mask.shape) != shape:
            raise _errors.value_error(
                "slim", f"the mask of {name!r} does not match the weight's shape",
                _errors.detail(f"mask {tuple(mask.shape)}, weight {shape}"),
                "Pass masks computed for this model.",
            )  # fmt: skip
    return {n: m.detach().cpu() for n, m in masks.items()}


def _fix_attention(model: nn.Module, heads: Mapping[nn.Module, int]) -> None:
    """Keep Hugging Face attention modules' head counts in step with their projections."""
    for module, _, size in attention_modules(model).values():
        children = [c for c in module.children() if isinstance(c, nn.Linear) and c in heads]
        if children:
            width = children[0].out_features  # plain attributes: set in the instance dict
            vars(module).update(num_attention_heads=width // size, all_head_size=width)


def slim(
    model: nn.Module, masks: Mapping[str, torch.Tensor], example_inputs: Any
) -> tuple[nn.Module, SlimReport]:
    """A copy of ``model`` without the channels and heads that ``masks`` prune.

    Args:
        model: any ``nn.Module`` that Torch-Pruning can trace (it is not changed).
        masks: bool masks (True = kept) for weights of Linear and conv layers, keyed like
            ``model.named_parameters()``. Channels are removed where whole rows or columns
            are pruned, under the rules of this module's docstring.
        example_inputs: a tensor, a tuple of positional arguments or a dict of keyword
            arguments for ``model``: used to trace the graph, measure the constants of
            removed channels, and check the result.

    Returns:
        ``(slimmed, report)``: the slimmed copy (in ``model``'s training mode), which
        computes what ``model`` with ``masks`` applied computes, and a :class:`SlimReport`.

    Raises:
        MissingTorchPruning: ``torch_pruning`` is not installed.
        TypeError, ValueError: bad masks.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> keep = torch.ones(16, 8, dtype=torch.bool)
        >>> keep[:6] = False                      # six hidden units pruned
        >>> small, report = slim(net, {"0.weight": keep}, torch.randn(5, 8))
        >>> small[0].out_features, small[2].in_features, report.error < 1e-6
        (10, 10, True)
    """
    tp = torch_pruning()
    masks = _check_masks(model, masks)
    slimmed = copy.deepcopy(model)
    training = slimmed.training
    slimmed.eval()
    if masks:
        apply_masks_(slimmed, masks)
    with torch.no_grad():
        reference = _tensors(call_model(slimmed, example_inputs, func="slim"))
    before = sum(p.numel() for p in slimmed.parameters())
    heads = head_sizes(slimmed)
    graph = tp.DependencyGraph().build_dependency(slimmed, example_inputs=example_inputs)
    plan = _plan(list(read_groups(graph, slimmed)), masks)
    folded = _fold(slimmed, plan, example_inputs)
    for root, channels in plan.remove.items():
        if channels:
            dep = plan.groups[root].dep
            graph.get_pruning_group(dep.target.module, dep.handler, idxs=channels).prune()
    _fix_attention(slimmed, heads)
    with torch.no_grad():
        error = _relative_error(
            reference, _tensors(call_model(slimmed, example_inputs, func="slim"))
        )
    slimmed.train(training)
    removed = {root: len(cs) for root, cs in plan.remove.items() if cs}
    after = sum(p.numel() for p in slimmed.parameters())
    return slimmed, SlimReport(removed, folded, plan.inconsistent, error, (before, after))
