"""Coupled channels from Torch-Pruning's dependency graph (``torch_pruning``, the ``export``
extra).

A :class:`Group` is a set of channels that must go together: a Linear's or conv's output rows,
its bias, batch norms and element-wise ops after it, and the input columns of every layer
that reads it (through reshapes, concatenations and residual additions). Each of its
:class:`Item` layers lists its own indices and the group channel each belongs to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

__all__ = [
    "LAYERS",
    "Attention",
    "Group",
    "Item",
    "MissingTorchPruning",
    "attention_modules",
    "channel_side",
    "channel_units",
    "head_sizes",
    "read_groups",
    "torch_pruning",
]

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""The layers whose weights masks prune and whose rows and columns groups index."""

_CROSS_CHANNEL = (nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.EmbeddingBag)


class MissingTorchPruning(ImportError):
    """``torch_pruning`` is needed for slimming and is not installed."""


def torch_pruning() -> Any:
    """Import Torch-Pruning, or raise :class:`MissingTorchPruning` naming the extra."""
    try:
        import torch_pruning as tp
    except ImportError:
        raise MissingTorchPruning(
            "coupled channels need Torch-Pruning: pip install 'fprune[export]' (or torch-pruning)"
        ) from None
    return tp


@dataclasses.dataclass
class Item:
    """One Linear or conv of a group: its weight mask, which side, and its channel indices."""

    name: str
    module: nn.Module
    side: str  # "out" (rows written) or "in" (columns read)
    local: list[int]  # the layer's indices
    root: list[int]  # the group channel each index belongs to


@dataclasses.dataclass
class Group:
    """Coupled channels: removing channel ``c`` removes, in every item, the indices mapped to
    ``c``."""

    root: str  # the name of the layer whose channels the group is indexed by
    dep: Any  # Torch-Pruning's root dependency (its module and pruning function)
    channels: int
    items: list[Item]
    blocked: str | None
    head_size: int | None  # for attention projections: the head size
    head_item: Item | None = None  # the projection whose output indices give the heads


def channel_side(handler: Any) -> str | None:
    """``"out"`` or ``"in"`` for Torch-Pruning's channel pruning functions, else None."""
    name = getattr(handler, "__name__", "")
    return "out" if "out_channels" in name else "in" if "in_channels" in name else None


class Attention(NamedTuple):
    """A Hugging Face attention module and its ``num_attention_heads`` and
    ``attention_head_size``."""

    module: nn.Module
    heads: int
    head_size: int


def attention_modules(model: nn.Module) -> dict[str, Attention]:
    """The attention modules of ``model`` by name: those with int ``num_attention_heads``
    and ``attention_head_size`` attributes (Hugging Face's convention)."""
    found = {}
    for name, module in model.named_modules():
        heads = getattr(module, "num_attention_heads", None)
        size = getattr(module, "attention_head_size", None)
        if isinstance(heads, int) and isinstance(size, int):
            found[name] = Attention(module, heads, size)
    return found


def head_sizes(model: nn.Module) -> dict[nn.Module, int]:
    """Linear layers whose outputs are split into attention heads, with the head size: the
    Linear children of each :func:`attention_modules` module whose width is heads times
    head size."""
    sizes: dict[nn.Module, int] = {}
    for attention in attention_modules(model).values():
        for child in attention.module.children():
            width = attention.heads * attention.head_size
            if isinstance(child, nn.Linear) and child.out_features == width:
                sizes[child] = attention.head_size
    return sizes


def read_groups(graph: Any, model: nn.Module) -> Iterator[Group]:
    """The coupled channel groups of ``model`` in Torch-Pruning's ``graph``, rooted at each
    Linear and conv layer's outputs."""
    names = {m: n for n, m in model.named_modules()}
    heads = head_sizes(model)
    for group in graph.get_all_groups(root_module_types=list(LAYERS)):
        items, blocked, head_size, head_item = [], None, None, None
        for item in group.items:
            module, side = item.dep.target.module, channel_side(item.dep.handler)
            if isinstance(module, _CROSS_CHANNEL):
                blocked = f"the channels pass through {type(module).__name__} {names[module]!r}"
            if isinstance(module, LAYERS) and side is not None:
                if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.groups > 1:
                    blocked = f"grouped conv {names[module]!r}"
                local = [int(i) for i in item.idxs]
                items.append(Item(names[module], module, side, local, list(item.root_idxs)))
                if side == "out" and module in heads:
                    head_size, head_item = heads[module], items[-1]
        dep = group.items[0].dep
        channels = len(group.items[0].idxs)
        root = names[dep.target.module]
        yield Group(root, dep, channels, items, blocked, head_size, head_item)


def channel_units(group: Group) -> torch.Tensor:
    """The unit each channel of ``group`` goes with: itself, or its attention head."""
    if group.head_size is None or group.head_item is None:
        return torch.arange(group.channels)
    item = group.head_item
    unit = torch.empty(group.channels, dtype=torch.long)
    unit[torch.tensor(item.root)] = torch.tensor(item.local) // group.head_size
    return unit
