"""Slow, obviously-correct references: Python sorting on explicit rank tuples.

They share no code with fprune's selection (no bit tricks, no radix select): each unit gets
the tuple (class, value, layer name, flat index) spelled out in DESIGN section 4, and
Python's sort does the rest.
"""

from __future__ import annotations

import math

import torch

EPS = 1e-9


def count(sparsity: float, n: int) -> int:
    return min(max(math.floor(sparsity * n + EPS), 0), n)


def rank(value: float, pruned: bool) -> tuple[int, float]:
    """Lowest first: already pruned, NaN, -inf, finite ascending (-0.0 == 0.0), +inf."""
    if pruned:
        return (0, 0.0)
    if math.isnan(value):
        return (1, 0.0)
    if value == -math.inf:
        return (2, 0.0)
    if value == math.inf:
        return (4, 0.0)
    return (3, value + 0.0)


def _flat(score: torch.Tensor, kept: torch.Tensor | None) -> list[tuple[tuple[int, float], int]]:
    vals = score.double().reshape(-1).tolist()
    pruned = [False] * len(vals) if kept is None else (~kept).reshape(-1).tolist()
    return [(rank(v, p), i) for i, (v, p) in enumerate(zip(vals, pruned, strict=True))]


def _masks_from(
    chosen: dict[str, set[int]], scores: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    out = {}
    for name, score in scores.items():
        mask = torch.ones(score.numel(), dtype=torch.bool)
        for i in chosen[name]:
            mask[i] = False
        out[name] = mask.reshape(score.shape)
    return out


def local_masks(scores, sparsity, previous=None):
    chosen = {}
    for name, score in scores.items():
        units = sorted(_flat(score, None if previous is None else previous[name]))
        chosen[name] = {i for _, i in units[: count(sparsity, score.numel())]}
    return _masks_from(chosen, scores)


def global_masks(scores, sparsity, lo=0.0, hi=1.0, previous=None):
    """Each layer takes its minimum first; the lowest-ranked allowed units fill the rest."""
    names = sorted(scores)
    low = {n: count(lo, scores[n].numel()) for n in names}
    high = {n: count(hi, scores[n].numel()) for n in names}
    total = count(sparsity, sum(s.numel() for s in scores.values()))
    total = max(min(total, sum(high.values())), sum(low.values()))
    chosen: dict[str, set[int]] = {}
    optional = []
    for layer, name in enumerate(names):
        units = sorted(_flat(scores[name], None if previous is None else previous[name]))
        chosen[name] = {i for _, i in units[: low[name]]}
        optional += [(key, layer, i, name) for key, i in units[low[name] : high[name]]]
    optional.sort()
    for _, _, i, name in optional[: total - sum(low.values())]:
        chosen[name].add(i)
    return _masks_from(chosen, scores)


def reduce_blocks(view: torch.Tensor, block: tuple[int, int], reduce: str) -> torch.Tensor:
    rows, cols = view.shape
    bn, bm = block
    wide = view.float() if view.dtype in (torch.float16, torch.bfloat16) else view
    out = torch.empty(rows // bn, cols // bm, dtype=wide.dtype)
    for i in range(rows // bn):
        for j in range(cols // bm):
            tile = wide[i * bn : (i + 1) * bn, j * bm : (j + 1) * bm].reshape(-1)
            if reduce == "max":
                out[i, j] = tile.max() if not torch.isnan(tile).any() else float("nan")
            else:
                out[i, j] = tile.sum() / (tile.numel() if reduce == "mean" else 1)
    return out


def nm_masks(views, n, m, sparsity, scope="global", lo=0.0, hi=1.0, previous=None, reduce="mean"):
    """N:M by explicit per-group sorting; groups selected with the global/local reference."""
    group_scores, lowest = {}, {}
    prev_groups = None if previous is None else {}
    for name, view in views.items():
        rows, cols = view.shape
        kept = None if previous is None else previous[name]
        gs = torch.empty(
            rows, cols // m, dtype=torch.float64 if view.dtype == torch.float64 else torch.float32
        )
        low = {}
        for r in range(rows):
            for g in range(cols // m):
                idx = range(g * m, (g + 1) * m)
                ranked = sorted(
                    (rank(float(view[r, c]), kept is not None and not bool(kept[r, c])), c)
                    for c in idx
                )
                pick = [c for _, c in ranked[:n]]
                low[(r, g)] = pick
                vals = view[r, pick].to(gs.dtype)
                gs[r, g] = (
                    vals.mean()
                    if reduce == "mean"
                    else vals.sum()
                    if reduce == "sum"
                    else (vals.max() if not torch.isnan(vals).any() else float("nan"))
                )
        group_scores[name], lowest[name] = gs, low
        if prev_groups is not None:
            assert kept is not None
            prev_groups[name] = ~(~kept).reshape(rows, cols // m, m).any(dim=-1)
    fraction = min(sparsity * m / n, 1.0)
    if scope == "local":
        groups = local_masks(group_scores, fraction, prev_groups)
    else:
        groups = global_masks(
            group_scores, fraction, min(lo * m / n, 1.0), min(hi * m / n, 1.0), prev_groups
        )
    out = {}
    for name, view in views.items():
        mask = torch.ones(view.shape, dtype=torch.bool)
        for (r, g), pick in lowest[name].items():
            if not groups[name][r, g]:
                for c in pick:
                    mask[r, c] = False
        out[name] = mask
    return out
