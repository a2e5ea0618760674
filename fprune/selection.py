"""Exact selection of the lowest-ranked units, per layer (local) or across layers (global).

A *unit* is one entry of a grid of scores (a block, a group or a weight). Selection prunes
exactly ``floor(sparsity * n_units + 1e-9)`` units, lowest ranked first, in one total order:

1. units already pruned in ``previous`` (so masks are nested: none revives unless the
   count asked for is below the number already pruned, when exactly that count of them
   stays pruned);
2. NaN scores;
3. ``-inf``;
4. finite scores, ascending (``-0.0`` equals ``+0.0``);
5. ``+inf``;

and ties by sorted parameter name, then by flat (row-major) index in the grid. The order is
encoded in integer keys (:func:`rank_keys`), and the threshold is found by an exact radix
select over those keys (:mod:`fprune._radix`), without sorting or concatenating layers.

Everything here is tensor math with no Python branch on a tensor value, so it runs under
``torch.compile``, ``vmap`` and on any device. The public entry points with checks, and
the dispatch to faster eager code, are in :mod:`fprune.masking`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from fprune import _errors, _radix

__all__ = [
    "EPS",
    "allocate",
    "check_bounds",
    "count_bounds",
    "flat_keys",
    "lowest",
    "rank_keys",
    "select",
    "select_global",
    "select_local",
    "take",
    "unit_count",
]

EPS = 1e-9  # counts are floor(fraction * n + EPS): float error must not lose a unit


def rank_keys(
    scores: torch.Tensor, *, pruned: torch.Tensor | None = None, wide: bool = False
) -> torch.Tensor:
    """Map scores to integers whose order is the selection order (lowest pruned first).

    A float's bits, read as a signed integer, order like the float for non-negative values;
    negative values order backwards, so their magnitude bits are flipped:
    ``key = bits ^ ((bits >> (w - 1)) & INT_MAX)``. ``-0.0`` is first made ``+0.0``, NaN
    becomes ``INT_MIN + 1`` and an already-pruned unit ``INT_MIN``.

    float16, bfloat16 and float32 scores give int32 keys (through float32, exactly); float64
    scores, or ``wide=True``, give int64 keys. Equal keys are tied.

    Args:
        scores: floating tensor of any shape.
        pruned: optional bool tensor of the same shape, True where a unit is already pruned.
        wide: compute int64 keys through float64 (needed to compare with float64 keys).

    Returns:
        Integer tensor shaped like ``scores``.

    Example:
        >>> k = rank_keys(torch.tensor([1.0, float("nan"), -float("inf"), -0.0, 0.0, 2.0]))
        >>> torch.argsort(k, stable=True).tolist()
        [1, 2, 3, 4, 0, 5]
    """
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        got = _errors.detail(str(scores.dtype)) if isinstance(scores, torch.Tensor) else scores
        raise _errors.type_error(
            "rank_keys",
            "scores must be a floating tensor (one layer's, not a dict)",
            got,
            "Pass one tensor; convert integers with .double() (exact up to 2**53).",
        )
    if pruned is not None and (
        not isinstance(pruned, torch.Tensor)
        or pruned.dtype != torch.bool
        or pruned.shape != scores.shape
    ):
        got = (
            _errors.detail(f"{pruned.dtype} tensor of shape {tuple(pruned.shape)}")
            if isinstance(pruned, torch.Tensor)
            else pruned
        )
        raise _errors.type_error(
            "rank_keys",
            f"pruned must be a bool tensor shaped like scores {tuple(scores.shape)}",
            got,
            "Pass ~mask of this layer, or None.",
        )
    if wide or scores.dtype == torch.float64:
        x, itype, width = scores.double(), torch.int64, 64
    else:
        x, itype, width = scores.float(), torch.int32, 32
    lowest_key = torch.iinfo(itype).min
    x = torch.where(x == 0, 0.0, x)  # -0.0 -> +0.0
    bits = x.view(itype)
    keys = bits ^ ((bits >> (width - 1)) & torch.iinfo(itype).max)
    keys = torch.where(torch.isnan(x), lowest_key + 1, keys)
    if pruned is not None:
        keys = torch.where(pruned, lowest_key, keys)
    return keys


def flat_keys(
    scores: Mapping[str, torch.Tensor], previous: Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """1-D rank keys of every layer (pruned first where ``previous`` is False), all int64 if
    any score is float64, so that every layer's keys compare with every other's."""
    wide = any(s.dtype == torch.float64 for s in scores.values())
    return {
        n: rank_keys(s, pruned=None if previous is None else ~previous[n], wide=wide).reshape(-1)
        for n, s in scores.items()
    }


def unit_count(sparsity: float | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """``floor(sparsity * n + 1e-9)`` clamped to ``[0, n]``, as a 0-d int64 tensor (float64
    math).

    Example:
        >>> int(unit_count(0.3, 10, torch.device("cpu")))   # 0.3 * 10 is 2.9999999999999996
        3
    """
    if isinstance(sparsity, torch.Tensor):
        exact = torch.floor(sparsity.to(device=device, dtype=torch.float64) * n + EPS)
        return exact.to(torch.int64).clamp(0, n)
    return torch.tensor(min(max(math.floor(sparsity * n + EPS), 0), n), device=device)


def take(
    keys: torch.Tensor, tau: torch.Tensor, below: torch.Tensor, count: torch.Tensor
) -> torch.Tensor:
    """The ``count`` smallest of 1-D ``keys`` (True = taken), given the threshold ``tau`` and
    ``below = #(keys < tau)`` with ``below <= count <= below + #(keys == tau)``: every key
    below ``tau``, then the ties at ``tau`` by index.

    Example:
        >>> keys = torch.tensor([5, 1, 5, 9, 5])
        >>> take(keys, torch.tensor(5), torch.tensor(1), torch.tensor(3)).tolist()
        [True, True, True, False, False]
    """
    tied = keys == tau
    return (keys < tau) | (tied & (torch.cumsum(tied, 0) <= count - below))


def lowest(keys: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """True at the ``count`` smallest entries of a 1-D key tensor, ties by index.

    Example:
        >>> lowest(torch.tensor([3, 1, 2, 1]), torch.tensor(2)).tolist()
        [False, True, False, True]
    """
    tau, below, _ = _radix.kth_key([keys], count)
    return take(keys, tau, below[0], count)


def select_local(
    keys: Mapping[str, torch.Tensor], sparsity: float | torch.Tensor
) -> dict[str, torch.Tensor]:
    """Pruned units (True) of each 1-D key tensor: ``floor(sparsity * n + 1e-9)`` per layer.

    No validation: ``sparsity`` may be any fraction in [0, 1] (N:M passes 1.0).
    """
    return {n: lowest(k, unit_count(sparsity, k.numel(), k.device)) for n, k in keys.items()}


def count_bounds(
    sizes: list[int],
    sparsity: float | torch.Tensor,
    lo: float | torch.Tensor,
    hi: float | torch.Tensor,
    device: torch.device,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, bool]:
    """A global selection's per-layer count bounds ``(low, high)``, its total (clamped to what
    they allow), and whether the bounds can bind at all."""
    low = [unit_count(lo, n, device) for n in sizes]
    high = [unit_count(hi, n, device) for n in sizes]
    total = unit_count(sparsity, sum(sizes), device)
    total = torch.minimum(torch.maximum(total, torch.stack(low).sum()), torch.stack(high).sum())
    free = isinstance(lo, float) and lo == 0.0 and isinstance(hi, float) and hi >= 1.0
    return low, high, total, not free


def allocate(
    total: torch.Tensor,
    below: list[torch.Tensor],
    at: list[torch.Tensor],
    low: list[torch.Tensor],
    high: list[torch.Tensor],
) -> list[torch.Tensor]:
    """Per-layer counts at the global threshold: each layer's count below it, clamped to its
    bounds, then the ties at it (clamped too) filled in layer order until ``total``.

    Example:
        >>> t = lambda *v: [torch.tensor(x) for x in v]   # below, at, low, high per layer
        >>> [int(c) for c in allocate(torch.tensor(5), t(1, 2), t(3, 3), t(0, 0), t(4, 4))]
        [3, 2]
    """
    base = [b.clamp(lo, hi) for b, lo, hi in zip(below, low, high, strict=True)]
    room = [
        (b + a).clamp(lo, hi) - s
        for b, a, lo, hi, s in zip(below, at, low, high, base, strict=True)
    ]
    need = total - torch.stack(base).sum()
    counts, used = [], torch.zeros_like(need)
    for start, extra in zip(base, room, strict=True):
        counts.append(start + (need - used).clamp(min=0).minimum(extra))
        used = used + extra
    return counts


def select_global(
    keys: Mapping[str, torch.Tensor],
    sparsity: float | torch.Tensor,
    lo: float | torch.Tensor = 0.0,
    hi: float | torch.Tensor = 1.0,
) -> dict[str, torch.Tensor]:
    """Pruned units (True) across 1-D key tensors of one dtype (see
    :func:`fprune.masking.global_masks`).

    One radix search finds the global threshold under the per-layer bounds; each layer then
    takes its allocated count of its lowest keys (a layer a bound moved off the global
    threshold has its own). No validation: the fractions may be anything in [0, 1].
    """
    names = sorted(keys)  # ties between layers go by sorted name
    ordered = [keys[n] for n in names]
    sizes = [k.numel() for k in ordered]
    low, high, total, bounded = count_bounds(sizes, sparsity, lo, hi, ordered[0].device)
    bounds = (low, high) if bounded else (None, None)
    _, below, at = _radix.kth_key(ordered, total, *bounds)
    counts = allocate(total, below, at, low, high)
    chosen = {n: lowest(k, c) for n, k, c in zip(names, ordered, counts, strict=True)}
    return {n: chosen[n] for n in keys}


def select(
    keys: Mapping[str, torch.Tensor],
    *,
    scope: str,
    sparsity: float | torch.Tensor,
    lo: float | torch.Tensor = 0.0,
    hi: float | torch.Tensor = 1.0,
) -> dict[str, torch.Tensor]:
    """Pruned units (True) of 1-D keys in ``"local"`` or ``"global"`` scope (no validation)."""
    if scope == "local":
        return select_local(keys, sparsity)
    return select_global(keys, sparsity, lo, hi)


def check_bounds(
    func: str, sparsity: float | torch.Tensor, lo: object, hi: object
) -> tuple[float | torch.Tensor, float | torch.Tensor]:
    """Validate per-layer bounds: ``0 <= min <= sparsity <= max <= 1`` where they are numbers."""
    lo = _errors.fraction(func, "min_layer_sparsity", lo)
    hi = _errors.fraction(func, "max_layer_sparsity", hi, allow_one=True)
    if isinstance(sparsity, float) and isinstance(lo, float) and lo > sparsity:
        raise _errors.value_error(
            func,
            "min_layer_sparsity exceeds sparsity",
            _errors.detail(f"min {lo} > sparsity {sparsity}"),
            "Lower min_layer_sparsity to at most the target sparsity.",
        )
    if isinstance(sparsity, float) and isinstance(hi, float) and sparsity > hi:
        raise _errors.value_error(
            func,
            "sparsity exceeds max_layer_sparsity",
            _errors.detail(f"sparsity {sparsity} > max {hi}"),
            "Raise max_layer_sparsity or lower the target sparsity.",
        )
    return lo, hi
