"""Dynamic sparse training's mask update: drop the weakest kept units, grow as many pruned ones.

One update of a layer that keeps ``k`` of its units and prunes ``p``:

* the number swapped is ``c = min(floor(f * k + 1e-9), p)``, with the update fraction
  ``f = drop_fraction * (1 + cos(pi * t / T)) / 2`` (RigL's cosine decay, :func:`fraction_at`);
* the ``c`` kept units of lowest magnitude are dropped (in the selection order of
  :mod:`fprune.selection`: NaN first; ties by flat index);
* the ``c`` units that were pruned *before* the update of highest grow score are grown
  (gradient magnitude for RigL; random scores from :mod:`fprune.random_keys` for SET; ties
  by flat index).

So the drop and grow sets are disjoint and of equal size, and every layer keeps exactly its
count. A unit just dropped is not a candidate for growth in the same update.

N:M patterns (:func:`swap_nm`) swap within groups, so every group keeps its count: a group may
drop at most as many weights as it has pruned (its lowest-magnitude kept ones are the
candidates), and grows the same number of its own pruned weights. The layer's ``c`` is drawn
from the candidates of all groups, lowest first.

Block patterns select with :func:`fprune.masking.select_grids` (the library's exact
selection: the eager accelerator on the CPU, else the math); N:M patterns rank within groups
first, then select the layer's candidates the same way. Everything
runs under ``torch.compile`` and ``vmap``; a sharded step passes the ranks' collectives,
which exchange counts only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from fprune._sharded import select as sharded
from fprune.masking import select_grids
from fprune.nm import ranks
from fprune.patterns import NM, Blocks
from fprune.selection import EPS, rank_keys

__all__ = [
    "fraction_at",
    "gradient_keys",
    "magnitude_keys",
    "select_local",
    "swap",
    "swap_count",
    "swap_nm",
]

_Tensors = Mapping[str, torch.Tensor]


_UNITS = Blocks(1, 1)  # the grids hold one score per unit


def _never(keys: torch.Tensor) -> int:
    """A key no selection reaches: the dtype's largest (no score or random key is it)."""
    return torch.iinfo(keys.dtype).max


def fraction_at(
    step: torch.Tensor, *, start_step: int, end_step: int, drop_fraction: float
) -> torch.Tensor:
    """The update fraction at ``step``: ``drop_fraction * (1 + cos(pi * t / T)) / 2`` with
    ``t = step - start_step`` clamped to ``[0, T]``, ``T = end_step - start_step`` (float64).

    Example:
        >>> [round(float(fraction_at(torch.tensor(s), start_step=0, end_step=10,
        ...                          drop_fraction=0.3)), 4) for s in (0, 5, 10)]
        [0.3, 0.15, 0.0]
    """
    t = (step.to(torch.float64) - start_step).clamp(0, end_step - start_step)
    return drop_fraction * (1 + torch.cos(math.pi * t / (end_step - start_step))) / 2


def swap_count(fraction: torch.Tensor, kept: int, pruned: int) -> torch.Tensor:
    """``min(floor(fraction * kept + 1e-9), pruned)`` as an int64 0-d tensor.

    Example:
        >>> int(swap_count(torch.tensor(0.3, dtype=torch.float64), 10, 90))
        3
        >>> int(swap_count(torch.tensor(0.3, dtype=torch.float64), 90, 10))
        10
    """
    count = torch.floor(fraction.to(torch.float64) * kept + EPS).to(torch.int64)
    return count.clamp(0, pruned)


def magnitude_keys(scores: torch.Tensor) -> torch.Tensor:
    """Drop keys: ``|w|``-like scores in ascending order (NaN first, then lowest)."""
    return rank_keys(scores)


def gradient_keys(scores: torch.Tensor) -> torch.Tensor:
    """Grow keys: ``|g|``-like scores in descending order (largest first)."""
    return rank_keys(-scores)


def select_local(
    scores: _Tensors, previous: _Tensors, sparsity: torch.Tensor, comm: sharded.Comm | None = None
) -> dict[str, torch.Tensor]:
    """Kept grid masks of one local-scope selection of ``sparsity`` (units pruned in
    ``previous`` rank first; ties by index): :func:`fprune.masking.select_grids`, the eager
    accelerator where it applies, else the math; with ``comm``, of this rank's shards."""
    return select_grids(
        scores, pattern=_UNITS, sparsity=sparsity, scope="local", lo=0.0, hi=1.0,
        previous=previous, reduce="mean", comm=comm,
    )  # fmt: skip


def swap(
    drop_scores: _Tensors,
    grow_scores: _Tensors,
    kept: _Tensors,
    counts: Mapping[str, torch.Tensor],
    *,
    units: Mapping[str, int],
    pruned: Mapping[str, int],
    comm: sharded.Comm | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The units to drop and to grow (bool, grid-shaped) of each layer: the ``counts[n]`` kept
    units of lowest ``drop_scores``, and as many units pruned in ``kept`` of highest
    ``grow_scores`` (ties by flat index both).

    Each is one exact selection nested in a mask: selecting ``pruned + c`` units with the
    pruned ones first takes them all and then the ``c`` lowest kept ones; selecting
    ``kept + c`` of ``-grow_scores`` with the kept ones first takes the ``c`` best pruned ones.
    ``units`` and ``pruned`` count all ranks' units of a sharded layer (``comm``).

    Example:
        >>> kept = {"w": torch.tensor([True, True, False, False])}
        >>> drop, grow = swap({"w": torch.tensor([5.0, 1.0, 0.0, 0.0])},
        ...                   {"w": torch.tensor([0.0, 0.0, 2.0, 7.0])}, kept,
        ...                   {"w": torch.tensor(1)}, units={"w": 4}, pruned={"w": 2})
        >>> drop["w"].tolist(), grow["w"].tolist()
        ([False, True, False, False], [False, False, False, True])
    """
    drops, grows = {}, {}
    for name, mask in kept.items():
        n, count = units[name], counts[name].to(torch.float64)
        dropped = select_local({name: drop_scores[name]}, {name: mask},
                               (pruned[name] + count) / n, comm)[name]  # fmt: skip
        grown = select_local({name: -grow_scores[name]}, {name: ~mask},
                             (n - pruned[name] + count) / n, comm)[name]  # fmt: skip
        drops[name], grows[name] = mask & ~dropped, ~mask & ~grown
    return drops, grows


def _kept_only(keys: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """1-D keys where ``kept``, the unreachable key elsewhere."""
    return torch.where(kept, keys.reshape(kept.shape), _never(keys))


def _pruned_only(keys: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """1-D keys where not ``kept``, the unreachable key elsewhere."""
    return torch.where(kept, _never(keys), keys.reshape(kept.shape))


def _group_ranks(keys: torch.Tensor) -> torch.Tensor:
    """Each entry's rank within its group (the last dim), ties to the lower index."""
    return torch.stack(ranks(keys), dim=-1).to(torch.int64)


def swap_nm(
    magnitudes: _Tensors,
    growth: _Tensors,
    kept: _Tensors,
    counts: Mapping[str, torch.Tensor],
    *,
    pattern: NM,
    units: Mapping[str, int],
    comm: sharded.Comm | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """:func:`swap` within N:M groups of 2-D ``[rows, cols]`` grids (see the module docstring):
    the candidates are, in each group, its lowest-magnitude kept weights, as many as it has
    pruned; the layer's ``c`` lowest candidates go; each group grows its highest-scored pruned
    weights, as many as it dropped.

    Example:
        >>> kept = {"w": torch.tensor([[True, False, True, False, True, True, False, False]])}
        >>> drop, grow = swap_nm({"w": torch.tensor([[3., 0., 1., 0., 9., 8., 0., 0.]])},
        ...                      {"w": torch.tensor([[0., 4., 0., 2., 0., 0., 1., 0.]])},
        ...                      kept, {"w": torch.tensor(1)}, pattern=NM(2, 4), units={"w": 8})
        >>> drop["w"].int().tolist(), grow["w"].int().tolist()
        ([[0, 0, 1, 0, 0, 0, 0, 0]], [[0, 1, 0, 0, 0, 0, 0, 0]])
    """
    drops, grows = {}, {}
    for name, mask in kept.items():
        rows, cols = mask.shape
        k = mask.reshape(rows, cols // pattern.m, pattern.m)
        keys = _kept_only(magnitude_keys(magnitudes[name]), k)
        room = (~k).sum(-1, keepdim=True)  # a group drops at most what it can grow back
        eligible = (k & (_group_ranks(keys) < room)).reshape(mask.shape)
        n_eligible = eligible.sum(dtype=torch.int64)
        if comm is not None:
            n_eligible = comm.sum(n_eligible)
        n = units[name]
        fraction = (n - n_eligible + counts[name]).to(torch.float64) / n
        chosen = select_local({name: magnitudes[name]}, {name: eligible}, fraction, comm)[name]
        drop = (eligible & ~chosen).reshape(k.shape)
        grow_keys = _pruned_only(gradient_keys(growth[name]), k)
        grow = ~k & (_group_ranks(grow_keys) < drop.sum(-1, keepdim=True))
        drops[name], grows[name] = drop.reshape(mask.shape), grow.reshape(mask.shape)
    return drops, grows
