"""Sparsity measured from masks: per layer or over all layers, element-wise or per unit.

Element-wise sparsity is the fraction of pruned weights. With a ``pattern``, sparsity is
counted in the pattern's units, comparable with the ``sparsity`` a mask was asked for:
for :class:`~fprune.patterns.Blocks`, the fraction of blocks pruned entirely; for
:class:`~fprune.patterns.NM`, ``N/M`` times the fraction of groups with at least N pruned
weights. Results are float64 0-d tensors (no device synchronisation); counts are int64.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from fprune import _errors
from fprune.blocks import check_divisible, reduce_masks
from fprune.layout import to_2d
from fprune.patterns import NM, Pattern, parse_pattern

__all__ = ["layer_sparsity", "pruned_units", "total_sparsity", "unit_fraction"]


def pruned_units(
    func: str, masks: Mapping[str, torch.Tensor], pattern: str | Pattern | None
) -> tuple[dict[str, torch.Tensor], dict[str, int], float]:
    """Per layer: pruned units (int64), total units, and the weight of a unit in sparsity."""
    masks = _errors.bool_masks(func, "masks", masks)
    if pattern is None:
        pruned = {n: (~m).sum(dtype=torch.int64) for n, m in masks.items()}
        return pruned, {n: m.numel() for n, m in masks.items()}, 1.0
    pattern = parse_pattern(pattern)
    check_divisible(func, masks, pattern, skip_indivisible=False)
    if isinstance(pattern, NM):
        pruned, totals = {}, {}
        for name, mask in masks.items():
            view = to_2d(mask)
            groups = (~view).reshape(view.shape[0], -1, pattern.m).sum(dim=-1, dtype=torch.int64)
            pruned[name] = (groups >= pattern.n).sum(dtype=torch.int64)
            totals[name] = groups.numel()
        return pruned, totals, pattern.max_sparsity
    grids = reduce_masks(masks, pattern=pattern)
    pruned = {n: (~g).sum(dtype=torch.int64) for n, g in grids.items()}
    return pruned, {n: g.numel() for n, g in grids.items()}, 1.0


def layer_sparsity(
    masks: Mapping[str, torch.Tensor], *, pattern: str | Pattern | None = None
) -> dict[str, torch.Tensor]:
    """Sparsity of each layer, element-wise or (with ``pattern``) in the pattern's units.

    Args:
        masks: bool masks (True = kept) keyed by parameter name.
        pattern: optional pattern; it must divide every mask.

    Returns:
        float64 0-d tensors keyed like ``masks``.

    Example:
        >>> m = {"w": torch.tensor([[False, True], [False, False]])}
        >>> float(layer_sparsity(m)["w"]), float(layer_sparsity(m, pattern="2x1")["w"])
        (0.75, 0.5)
    """
    pruned, totals, unit = pruned_units("layer_sparsity", masks, pattern)
    return {n: pruned[n].to(torch.float64) * unit / max(totals[n], 1) for n in pruned}


def total_sparsity(
    masks: Mapping[str, torch.Tensor], *, pattern: str | Pattern | None = None
) -> torch.Tensor:
    """Sparsity over all layers: pruned units over all units (float64 0-d tensor).

    With ``pattern`` this is the quantity global selection targets, so
    ``total_sparsity(masks(..., sparsity=r), pattern=p)`` is ``floor(r * n + 1e-9) / n`` (in units).

    Example:
        >>> m = {"a": torch.tensor([[False, True]]), "b": torch.tensor([[True, True]])}
        >>> float(total_sparsity(m))
        0.25
    """
    return unit_fraction(*pruned_units("total_sparsity", masks, pattern))


def unit_fraction(
    pruned: Mapping[str, torch.Tensor],
    totals: Mapping[str, int],
    unit: float,
    combine: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``unit * sum(pruned) / sum(totals)``; with ``combine`` (a sum over ranks, say) the two
    counts pass through it first."""
    count = torch.stack(list(pruned.values())).sum()
    total = sum(totals.values())
    if combine is not None:
        both = combine(
            torch.stack([count.to(torch.int64), torch.tensor(total, device=count.device)])
        )
        count, total = both[0], int(both[1])
    return count.to(torch.float64) * unit / max(total, 1)
