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

from collections.abc import Callable, Mapping

import torch

from fprune.blocks import reduce_blocks
from fprune.patterns import NM
from fprune.selection import flat_keys, rank_keys, select

__all__ = [
    "PAIRWISE",
    "Chooser",
    "group_fraction",
    "group_score",
    "nm_masks",
    "ranks",
    "within_groups",
]

PAIRWISE = 8  # groups of up to this many weights are ranked by comparisons; larger ones by a sort

# ``choose(keys, *, scope, sparsity, lo, hi) -> pruned``: selects groups from their rank keys
Chooser = Callable[..., dict[str, torch.Tensor]]


def group_fraction(value: float | torch.Tensor, pattern: NM) -> float | torch.Tensor:
    """The fraction of groups to convert for an element sparsity ``value``: ``value * M / N``,
    at most 1.

    Example:
        >>> group_fraction(0.25, NM(2, 4))
        0.5
    """
    if isinstance(value, torch.Tensor):
        return (value.to(torch.float64) * pattern.m / pattern.n).clamp(max=1.0)
    return min(value * pattern.m / pattern.n, 1.0)


def group_score(low_values: torch.Tensor, reduce: str) -> torch.Tensor:
    """Reduce ``[rows, groups, n]`` (each group's n lowest scores, in rank order) to
    ``[rows, groups]``."""
    rows, groups, n = low_values.shape
    return reduce_blocks(low_values.reshape(rows, groups * n), (1, n), reduce=reduce)


def ranks(keys: torch.Tensor) -> list[torch.Tensor]:
    """Each weight's position within its group in the stable ascending order of ``keys``
    ``[rows, groups, m]``: one uint8 ``[rows, groups]`` per position in the group.

    ``rank_i = #{j < i: k_j <= k_i} + #{j > i: k_j < k_i}``, from the ``m(m-1)/2`` comparisons
    ``first_ij = k_i <= k_j`` (``i`` before ``j``, ties to the lower index):
    ``rank_i = (m - 1 - i) + sum_{j < i} first_ji - sum_{j > i} first_ij``.

    Example:
        >>> [r.tolist() for r in ranks(torch.tensor([[[3, 1, 3, 0]]]))]
        [[[2]], [[1]], [[3]], [[0]]]
    """
    m = keys.shape[-1]
    cols = keys.unbind(-1)
    out = [torch.full_like(cols[0], m - 1 - i, dtype=torch.uint8) for i in range(m)]
    for i in range(m):
        for j in range(i + 1, m):
            first = (cols[i] <= cols[j]).to(torch.uint8)
            out[i] = out[i] - first
            out[j] = out[j] + first
    return out


def within_groups(
    view: torch.Tensor, pattern: NM, *, pruned: torch.Tensor | None, reduce: str | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The N lowest-ranked weights of every group, and each group's score.

    Args:
        view: ``[rows, cols]`` scores, ``cols`` divisible by M.
        pattern: the N:M pattern.
        pruned: bool ``[rows, cols]``, True where a weight is already pruned (ranks first).
        reduce: the group-score reduction of the N lowest scores (taken in rank order), or
            None to skip the group scores.

    Returns:
        ``(low, score)``: bool ``[rows, cols / M, M]``, True for the N weights a converted
        group loses (ties to the lower index); ``[rows, cols / M]`` scores, or None.

    Example:
        >>> low, score = within_groups(torch.tensor([[4., 1., 3., 1.]]), NM(2, 4), pruned=None,
        ...                            reduce="sum")
        >>> low.int().tolist(), score.tolist()
        ([[[0, 1, 0, 1]]], [[2.0]])
    """
    n, m = pattern.n, pattern.m
    rows, cols = view.shape
    keys = rank_keys(view, pruned=pruned).reshape(rows, cols // m, m)
    values = view.reshape(rows, cols // m, m)
    if m > PAIRWISE:
        order = torch.sort(keys, dim=-1, stable=True).indices[..., :n]
        low = torch.zeros_like(keys, dtype=torch.bool).scatter(-1, order, True)
        score = None if reduce is None else group_score(values.gather(-1, order), reduce)
        return low, score
    rank = ranks(keys)
    low = torch.stack([r < n for r in rank], dim=-1)
    if reduce is None:
        return low, None
    cols_v = values.unbind(-1)
    lowest = []
    for k in range(n):  # the value at rank k, picked (not summed), so it is bit for bit the same
        picked = cols_v[m - 1]
        for i in range(m - 2, -1, -1):
            picked = torch.where(rank[i] == k, cols_v[i], picked)
        lowest.append(picked)
    return low, group_score(torch.stack(lowest, dim=-1), reduce)


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
    choose: Chooser = select,
) -> dict[str, torch.Tensor]:
    """Kept masks on the 2-D views of already-validated N:M layers (see module docstring).

    Each layer's groups are ranked within (:func:`within_groups`); unless every group
    converts, the groups are then selected by their scores with ``choose`` (the plain
    :func:`fprune.selection.select`, or a sharded one), and a chosen group loses its N
    lowest weights: ``kept = ~(low & chosen)``. A layer missing from ``previous`` keeps
    everything.

    Example:
        >>> v = {"w": torch.tensor([[4., 1., 3., 2.], [9., 8., 7., 6.]])}
        >>> m = nm_masks(v, pattern=NM(2, 4), sparsity=0.25, scope="local", min_layer_sparsity=0.0,
        ...              max_layer_sparsity=1.0, previous=None, reduce="mean")
        >>> m["w"].int().tolist()
        [[1, 0, 1, 0], [1, 1, 1, 1]]
    """
    m = pattern.m
    fraction = group_fraction(sparsity, pattern)
    every = not isinstance(fraction, torch.Tensor) and fraction >= 1.0  # no group selection
    low, group_scores, kept_groups = {}, {}, {}
    for name, view in views.items():
        rows, cols = view.shape
        prev = None if previous is None else previous.get(name)
        pruned = None if prev is None else ~prev
        low[name], score = within_groups(
            view, pattern, pruned=pruned, reduce=None if every else reduce
        )
        if score is not None:
            group_scores[name] = score
            # a group with a pruned weight was converted: it ranks first
            kept_groups[name] = (
                None if pruned is None else ~pruned.reshape(rows, cols // m, m).any(-1)
            )
    if every:
        return {name: ~low[name].reshape(views[name].shape) for name in low}
    kept = None
    if any(k is not None for k in kept_groups.values()):
        kept = {
            n: torch.ones_like(group_scores[n], dtype=torch.bool) if k is None else k
            for n, k in kept_groups.items()
        }
    lo, hi = (
        group_fraction(min_layer_sparsity, pattern),
        group_fraction(max_layer_sparsity, pattern),
    )
    chosen = choose(flat_keys(group_scores, kept), scope=scope, sparsity=fraction, lo=lo, hi=hi)
    return {
        name: ~(low[name] & chosen[name].reshape(low[name].shape[:-1])[..., None]).reshape(
            views[name].shape
        )
        for name in low
    }
