"""N:M masks: in each group of M consecutive inputs, the N lowest-ranked weights are pruned.

Iterative N:M (as INC does it) converts a growing fraction of the groups: at sparsity ``r``
exactly ``floor(r * M / N * n_groups + 1e-9)`` groups are converted to N:M and the others
stay dense. A group's score is the reduction (mean, sum or max) of the N scores it would
lose; groups are then selected like any other unit (:mod:`fprune.selection`), so the
ranking, tie and nesting rules are the same. Inside a group the N lowest-ranked weights go,
ties to the lower index; a group that already has pruned weights ranks first (it stays
converted) and keeps them pruned.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fprune.blocks import reduce_blocks
from fprune.patterns import NM
from fprune.selection import flat_keys, rank_keys, select


def _group_score(low: torch.Tensor, reduce: str) -> torch.Tensor:
    """Reduce ``[rows, groups, n]`` (each group's n lowest scores) to ``[rows, groups]``."""
    rows, groups, n = low.shape
    return reduce_blocks(low.reshape(rows, groups * n), (1, n), reduce=reduce)


def group_fraction(value: float | torch.Tensor, pattern: NM) -> float | torch.Tensor:
    """The fraction of groups to convert for an element sparsity ``value``: ``value * M / N``, at most 1."""
    if isinstance(value, torch.Tensor):
        return (value.to(torch.float64) * pattern.m / pattern.n).clamp(max=1.0)
    return min(value * pattern.m / pattern.n, 1.0)


def nm_masks(
    views: Mapping[str, torch.Tensor],
    *,
    pattern: NM,
    sparsity: float | torch.Tensor,
    scope: str,
    min_layer_sparsity: float | torch.Tensor,
    max_layer_sparsity: float | torch.Tensor,
    previous: Mapping[str, torch.Tensor] | None,
    reduce: str,
) -> dict[str, torch.Tensor]:
    """Kept masks on the 2-D views of already-validated N:M layers (see module docstring)."""
    n, m = pattern.n, pattern.m
    within, group_scores, kept_groups = {}, {}, {}
    for name, view in views.items():
        rows, cols = view.shape
        pruned = None if previous is None else ~previous[name]
        keys = rank_keys(view, pruned=pruned).reshape(rows, cols // m, m)
        low = torch.sort(keys, dim=-1, stable=True).indices[..., :n]
        within[name] = torch.zeros_like(keys, dtype=torch.bool).scatter(-1, low, True)
        group_scores[name] = _group_score(view.reshape(rows, cols // m, m).gather(-1, low), reduce)
        if pruned is not None:  # a group with any pruned weight was converted: it ranks first
            kept_groups[name] = ~pruned.reshape(rows, cols // m, m).any(dim=-1)
    chosen = select(
        flat_keys(group_scores, kept_groups if previous is not None else None),
        scope=scope,
        sparsity=group_fraction(sparsity, pattern),
        lo=group_fraction(min_layer_sparsity, pattern),
        hi=group_fraction(max_layer_sparsity, pattern),
    )
    out = {}
    for name, view in views.items():
        groups = chosen[name].reshape(within[name].shape[:-1])
        out[name] = ~(groups[..., None] & within[name]).reshape(view.shape)
    return out
