"""Strided samples of the layers' unit scores, and the bracket they place around the
threshold (private to the accelerator).

A sample only places the bracket; exact counts then verify it (:mod:`fprune._eager.settle`),
so any sample is safe, and a good one makes the candidates few.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Protocol

import torch

from fprune import _tuning
from fprune._eager.keys import all_true
from fprune._eager.order import SortedKeys, threshold

__all__ = [
    "Placer",
    "SampledLayers",
    "Units",
    "bracket",
    "diagonal",
    "diagonal_view",
    "grid_sample",
    "key_to_score",
    "sample_positions",
    "stride_for",
]


class Placer(Protocol):
    """Where a layer's units lie in its weight, for a caller that wants weight-shaped masks.

    A covered layer's unit mask is spread to a fresh weight-shaped mask once its chosen
    candidates are set in it, and dropped, one layer at a time: setting a chosen unit costs
    one flat index, not a block of them, and the weight-shaped masks are allocated in the
    same order and sizes on every step (which lets the allocator reuse a previous step's).
    """

    def covers(self, name: str) -> bool:
        """Whether this layer's masks are to be weight-shaped (else its flat unit mask)."""
        ...

    def spread(self, name: str, units: torch.Tensor) -> torch.Tensor:
        """A fresh weight-shaped mask: every weight takes its unit's value (``units`` is flat)."""
        ...


@dataclasses.dataclass(frozen=True)
class Units:
    """Where a selection reads each layer's units from, by name.

    Attributes:
        scores: the layer's unit scores (its grid, any shape; read flat).
        previous: its previous kept units (grid-shaped like its scores), or None (all kept).
        sample: ``sample(name, stride)``: its unit scores at the units
            ``grid_sample(grid, stride)`` takes, computed without scoring the whole layer,
            or None where it cannot (then ``scores`` runs).
        placer: hands back weight-shaped masks for the layers it covers.
    """

    scores: Callable[[str], torch.Tensor]
    previous: Callable[[str], torch.Tensor | None]
    sample: Callable[[str, int], torch.Tensor | None] | None = None
    placer: Placer | None = None

    def place(self, name: str, units: torch.Tensor) -> torch.Tensor:
        """A layer's result: its weight-shaped mask where the placer covers it, else ``units``."""
        return (
            self.placer.spread(name, units)
            if self.placer is not None and self.placer.covers(name)
            else units
        )

    def kept(self, name: str) -> torch.Tensor:
        """The previous kept mask of a layer known to have pruned units."""
        prev = self.previous(name)
        if prev is None:  # not reachable: callers ask only for layers with pruned units
            raise RuntimeError(f"fprune internal error: no previous mask for {name!r}")
        return prev


def stride_for(units: int, sample: int) -> int:
    """The sampling stride for about ``sample`` of ``units`` units: ``units / sample`` rounded
    to the nearest power of two (in log scale), so that it divides the widths of most weights:
    a block layer's sampled units are then every ``stride``-th column of every block row, which
    a sampler reads as one strided view instead of gathering them."""
    ratio = units / sample
    return 1 if ratio <= 1 else 1 << round(math.log2(ratio))


def diagonal(rows: int, cols: int, stride: int) -> bool:
    """Whether a ``[rows, cols]`` grid is sampled on diagonals (:func:`grid_sample`): the stride
    divides both sides."""
    return stride > 1 and rows % stride == 0 and cols % stride == 0


def diagonal_view(t: torch.Tensor, block: tuple[int, int], stride: int) -> torch.Tensor:
    """The blocks :func:`grid_sample` takes from the ``block`` grid of a 2-D tensor (any
    strides; the stride divides both sides of the grid), as a view shaped ``[groups, stride,
    bn, units per row, bm]``: stacked, its rows are the sampled blocks' rows in grid order
    (block row ``r`` takes the block columns ``c = r (mod stride)``)."""
    (bn, bm), (sr, sc) = block, t.stride()
    rows, cols = t.shape
    size = (rows // (bn * stride), stride, bn, cols // (bm * stride), bm)
    strides = (stride * bn * sr, bn * sr + bm * sc, sr, stride * bm * sc, sc)
    return t.as_strided(size, strides, t.storage_offset())


def grid_sample(grid: torch.Tensor, stride: int) -> torch.Tensor:
    """Every ``stride``-th unit of a grid-shaped tensor (2-D; any other shape is one row), as a
    fresh 1-D tensor: the sample's units, in row-major order.

    A flat stride that divides the width takes the same columns in every row, which is no
    sample of a weight whose columns differ in scale (input features, a conv's kernel
    positions). So where the stride divides both sides, row ``r`` takes the columns ``c``
    with ``c = r (mod stride)``: each group of ``stride`` rows takes every column once, with
    the same number of units as the flat stride, read as one strided view. Otherwise the
    flat positions ``0, stride, 2 * stride, ...`` are taken.
    """
    grid = grid if grid.ndim == 2 else grid.reshape(1, -1)
    rows, cols = grid.shape
    if diagonal(rows, cols, stride):
        view = diagonal_view(grid, (1, 1), stride)
        return view.clone(memory_format=torch.contiguous_format).reshape(-1)  # a copy, never a view
    return grid.reshape(-1)[::stride].clone()  # a copy: a view would keep the whole layer alive


def sample_positions(rows: int, cols: int, stride: int, device: torch.device) -> torch.Tensor:
    """The flat positions of the units :func:`grid_sample` takes from a ``[rows, cols]`` grid,
    in its order (int64)."""
    if not diagonal(rows, cols, stride):
        return torch.arange(0, rows * cols, stride, device=device)
    group = torch.arange(0, rows, stride, device=device)[:, None, None]
    offset = torch.arange(stride, device=device)[None, :, None]
    column = torch.arange(0, cols, stride, device=device)[None, None, :]
    return ((group + offset) * cols + offset + column).reshape(-1)


def key_to_score(key: int, wide: bool) -> float | None:
    """The score whose rank key is ``key``; None for the pruned and NaN classes."""
    itype, ftype = (torch.int64, torch.float64) if wide else (torch.int32, torch.float32)
    if key <= torch.iinfo(itype).min + 1:
        return None
    bits = key ^ (torch.iinfo(itype).max if key < 0 else 0)  # the key map is its own inverse
    return float(torch.tensor(bits, dtype=itype).view(ftype))


def bracket(
    keys: SortedKeys | list[torch.Tensor],
    fraction: float,
    low: list[int],
    high: list[int],
    sizes: list[int],
    wide: bool,
) -> tuple[float, float] | None:
    """Scores ``a <= b`` that bracket the threshold at ``fraction`` of the units (from the
    sample's rank keys: all layers' in :class:`SortedKeys`, or sorted per layer), with the
    per-layer bounds scaled to the sample; None if the threshold is among NaN scores.

    The ends are the sample quantiles ``z`` standard deviations (of the sample quantile)
    either side of the target, so a random sample misses rarely (a miss is verified and
    costs the general path, or a layer settled alone) while the bracket stays narrow.
    """
    m = keys.sizes if isinstance(keys, SortedKeys) else [s.numel() for s in keys]
    total_m = sum(m)
    if total_m == 0:
        return None
    z = _tuning.current().z
    lo_s = [math.floor(lo * k / n) for lo, k, n in zip(low, m, sizes, strict=True)]
    hi_s = [min(math.ceil(hi * k / n), k) for hi, k, n in zip(high, m, sizes, strict=True)]
    spread = z * math.sqrt(total_m * fraction * (1 - fraction)) + z
    zeros = [0] * len(m)
    ends: list[float | None] = []
    for k in (total_m * fraction - spread, total_m * fraction + spread):
        k = min(max(int(k), 1), sum(hi_s))
        if k >= total_m:
            tau = None
        elif isinstance(keys, SortedKeys):
            tau = keys.threshold(zeros, k, lo_s, hi_s)
        else:
            tau = threshold(keys, zeros, k, lo_s, hi_s)
        ends.append(math.inf if tau is None else key_to_score(tau, wide))
    a, b = ends
    if b is None:  # the threshold is among NaN scores: leave it to the general path
        return None
    a = -math.inf if a is None else a  # open below: every non-NaN score up to b is a candidate
    return (a, b) if a <= b else None


class SampledLayers:
    """Each layer's sample and what it shows of the layer's previous mask (its first read)."""

    def __init__(self, units: Units) -> None:
        self.units = units
        self.all_kept: dict[str, bool] = {}
        self.pruned_before: dict[str, int] = {}
        self.device = torch.device("cpu")

    def first(self, name: str, size: int, stride: int) -> torch.Tensor:
        """The layer's sample (see :meth:`take`), noting whether its previous mask keeps every
        unit and how many it prunes."""
        prev = self.units.previous(name)
        self.all_kept[name] = prev is None or all_true(prev)
        kept = None if prev is None or self.all_kept[name] else prev
        self.pruned_before[name] = 0 if kept is None else size - int(torch.count_nonzero(kept))
        sample = self.take(name, stride, kept)
        self.device = sample.device
        return sample

    def take(self, name: str, stride: int, kept: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's unit scores at the units :func:`grid_sample` takes, less its pruned units
        (``kept``: its previous kept mask, grid-shaped as its scores, if already at hand)."""
        sample = None if self.units.sample is None else self.units.sample(name, stride)
        if sample is None:
            sample = grid_sample(self.units.scores(name), stride)
        if not self.all_kept[name]:
            kept = self.units.kept(name) if kept is None else kept
            sample = sample[grid_sample(kept, stride)]  # pruned units rank below any bracket
        return sample.float() if sample.dtype in (torch.float16, torch.bfloat16) else sample
