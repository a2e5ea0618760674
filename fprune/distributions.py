"""Per-layer sparsity distributions: how many units each layer prunes for a given total.

* ``"uniform"``: every sparse layer prunes ``floor(sparsity * units + 1e-9)`` of its units
  (a dense layer's share is not moved to the others).
* ``"erk"`` (Erdos-Renyi-Kernel, Evci et al. 2020, as in RigL and jaxpruner): a layer of shape
  ``(d_1, ..., d_k)`` keeps a density proportional to ``sum(d) / prod(d)``, scaled so that the
  pruned units of all layers, dense ones included, total ``floor(sparsity * units + 1e-9)``.
  A layer whose density would exceed 1 is made dense and the scale is solved again. The real
  per-layer counts are rounded down, and the units left over go, one each, to the layers with
  the largest fractional parts (ties by sorted name): the total is exact.

Counts are Python ints computed from shapes alone, so a pruner can hold them as static
configuration. A *unit* is a block of the pattern; ERK's shape term uses the weight's shape.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

from fprune import _errors
from fprune.layout import shape_2d
from fprune.patterns import NM, Blocks, Pattern, parse_pattern
from fprune.selection import EPS

__all__ = ["DISTRIBUTIONS", "block_pattern", "layer_counts", "layer_sparsities"]

DISTRIBUTIONS = ("uniform", "erk")

_Shapes = Mapping[str, Sequence[int]]


def _units(shape: Sequence[int], pattern: Blocks) -> int:
    rows, cols = pattern.grid_shape(shape_2d(shape))
    return rows * cols


def block_pattern(func: str, pattern: str | Pattern) -> Blocks:
    """``pattern`` parsed, which must be a block pattern (a distribution counts blocks)."""
    pat = parse_pattern(pattern)
    if isinstance(pat, NM):
        raise _errors.value_error(
            func,
            "a sparsity distribution counts blocks, and an N:M pattern has none",
            str(pat),
            "Use a block pattern such as '1x1' or '4x1'; under N:M every layer takes N/M.",
        )
    return pat


def _dense_names(func: str, shapes: _Shapes, dense: Collection[str], first_dense: bool) -> set[str]:
    if isinstance(dense, str):
        raise _errors.type_error(
            func, "dense must be a collection of names", dense, f"Pass e.g. ({dense!r},)."
        )
    unknown = sorted(set(dense) - set(shapes))
    if unknown:
        raise _errors.value_error(
            func, "dense names layers that are not given", unknown, f"Valid: {sorted(shapes)}."
        )
    if not isinstance(first_dense, bool):
        raise _errors.type_error(func, "first_dense must be a bool", first_dense, "Pass a bool.")
    first = list(shapes)[:1] if first_dense else []
    return set(dense) | set(first)


def _erk_densities(shapes: _Shapes, sparsity: float, dense: set[str]) -> dict[str, float]:
    """Each layer's ERK density (1.0 for dense ones), over all given layers' elements."""
    dense = set(dense)
    while True:
        raw = {n: sum(s) / math.prod(s) for n, s in shapes.items() if n not in dense}
        if not raw:
            return dict.fromkeys(shapes, 1.0)
        sizes = {n: math.prod(s) for n, s in shapes.items()}
        zeros_left = sparsity * sum(sizes.values())  # dense layers' zeros go to the others
        kept = sum(sizes[n] for n in raw) - zeros_left
        scale = max(kept, 0.0) / sum(raw[n] * sizes[n] for n in raw)
        over = [n for n, r in raw.items() if r * scale > 1.0]
        if not over:
            return {n: 1.0 if n in dense else raw[n] * scale for n in shapes}
        dense |= set(over)


def _rounded(real: Mapping[str, float], units: Mapping[str, int], total: int) -> dict[str, int]:
    """Integer counts near ``real`` that sum to ``total`` (largest remainders get the rest)."""
    counts = {n: min(units[n], max(0, math.floor(r + EPS))) for n, r in real.items()}
    rest = total - sum(counts.values())
    order = sorted(real, key=lambda n: (-(real[n] - math.floor(real[n] + EPS)), n))
    for name in order:
        if rest <= 0:
            break
        if counts[name] < units[name] and real[name] > counts[name]:
            counts[name] += 1
            rest -= 1
    return counts


def layer_counts(
    shapes: _Shapes,
    sparsity: float,
    *,
    distribution: str = "uniform",
    pattern: str | Pattern = "1x1",
    dense: Collection[str] = (),
    first_dense: bool = False,
) -> dict[str, int]:
    """The number of units each layer prunes (see the module docstring).

    Args:
        shapes: weight shapes keyed by parameter name, in model order.
        sparsity: the target in [0, 1).
        distribution: ``"uniform"`` or ``"erk"``.
        pattern: the block pattern whose blocks are the units (not N:M).
        dense: names of layers kept dense.
        first_dense: keep the first layer of ``shapes`` dense too.

    Example:
        >>> shapes = {"fc1": (100, 64), "fc2": (10, 100)}
        >>> layer_counts(shapes, 0.9, distribution="uniform")
        {'fc1': 5760, 'fc2': 900}
        >>> counts = layer_counts(shapes, 0.9, distribution="erk")
        >>> counts, sum(counts.values()) == int(0.9 * (6400 + 1000))
        ({'fc1': 5957, 'fc2': 703}, True)
    """
    func = "layer_counts"
    distribution = _errors.choice(func, "distribution", distribution, DISTRIBUTIONS)
    sparsity = float(_errors.fraction(func, "sparsity", sparsity))
    pat = block_pattern(func, pattern)
    shapes = {n: tuple(int(d) for d in s) for n, s in shapes.items()}
    units = {n: _units(s, pat) for n, s in shapes.items()}
    dense_set = _dense_names(func, shapes, dense, first_dense)
    if distribution == "uniform":
        return {
            n: 0 if n in dense_set else min(u, math.floor(sparsity * u + EPS))
            for n, u in units.items()
        }
    density = _erk_densities(shapes, sparsity, dense_set)
    real = {n: (1.0 - density[n]) * units[n] for n in shapes}
    total = math.floor(sparsity * sum(units.values()) + EPS)
    return _rounded(real, units, total)


def layer_sparsities(
    shapes: _Shapes,
    sparsity: float,
    *,
    distribution: str = "uniform",
    pattern: str | Pattern = "1x1",
    dense: Collection[str] = (),
    first_dense: bool = False,
) -> dict[str, float]:
    """:func:`layer_counts` as fractions of each layer's units (``count / units``).

    Example:
        >>> layer_sparsities({"a": (8, 8), "b": (8, 8)}, 0.25, dense=("a",), distribution="erk")
        {'a': 0.0, 'b': 0.5}
    """
    counts = layer_counts(
        shapes,
        sparsity,
        distribution=distribution,
        pattern=pattern,
        dense=dense,
        first_dense=first_dense,
    )
    pat = block_pattern("layer_sparsities", pattern)
    return {n: c / max(_units(shapes[n], pat), 1) for n, c in counts.items()}
