"""Sparsity reports of weights as data: per layer, in the pattern's units, with pattern checks.

An integration module (the primitives never import it): it reads weights, not masks, so it
can inspect any checkpoint. A weight is pruned where it is exactly zero (``-0.0`` included;
NaN counts as kept). A layer *satisfies* a pattern when its zeros could have come from it:

- blocks (``"4x1"``, ``"channelx1"``, ...): every block is entirely zero or has no zero;
- N:M (``"2:4"``): every group of M consecutive inputs holds at least N zeros (what sparse
  hardware needs; a dense group, as iterative N:M leaves below N/M, does not satisfy it).

A violation is reported as the index, in the weight's own coordinates, of the first element
(in the 2-D view's row-major order) of the first block or group that breaks the pattern.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from fprune import _errors
from fprune.layout import shape_2d, to_2d
from fprune.patterns import NM, Pattern, parse_pattern

__all__ = ["LayerReport", "layer_report", "layer_reports", "pattern_violation", "total_report"]


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """Sparsity of one weight.

    Attributes:
        name: the parameter name.
        shape: the weight's shape.
        dtype: the weight's dtype, e.g. ``"float32"``.
        size: number of elements.
        zeros: number of elements equal to zero.
        sparsity: ``zeros / size``.
        pattern: the pattern checked, as a string, or None.
        unit_sparsity: sparsity in the pattern's units (fraction of all-zero blocks; for N:M,
            ``N/M`` times the fraction of groups with at least N zeros), comparable with the
            ``sparsity`` a pattern was pruned to; None without a pattern or when the pattern
            does not divide the weight.
        satisfies: whether the zeros follow the pattern; None as for ``unit_sparsity``.
        violation: the first index that breaks the pattern, or None.
        note: why the pattern was not checked, or None.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    size: int
    zeros: int
    sparsity: float
    pattern: str | None = None
    unit_sparsity: float | None = None
    satisfies: bool | None = None
    violation: tuple[int, ...] | None = None
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["shape"] = list(self.shape)
        out["violation"] = None if self.violation is None else list(self.violation)
        return out


def _view_index(shape: tuple[int, ...], row: int, col: int) -> tuple[int, ...]:
    """The index in a weight of ``shape`` of element ``(row, col)`` of its 2-D view."""
    if len(shape) == 2:
        return (row, col)
    channels, taps = shape[1], shape[2:]
    tap, channel = divmod(col, channels)
    index = []
    for side in reversed(taps):
        tap, rest = divmod(tap, side)
        index.append(rest)
    return (row, channel, *reversed(index))


def _first(bad: torch.Tensor) -> tuple[int, int] | None:
    """Row-major ``(row, col)`` of the first True of a 2-D bool tensor, or None."""
    flat = bad.reshape(-1)
    if not bool(flat.any()):
        return None
    first = int(flat.to(torch.uint8).argmax())
    return divmod(first, bad.shape[1])


def _check(zero: torch.Tensor, pattern: Pattern) -> tuple[int, int, tuple[int, int] | None]:
    """Pruned units, all units, and the view index of the first violation of a zero map."""
    rows, cols = zero.shape
    if isinstance(pattern, NM):
        count = zero.reshape(rows, cols // pattern.m, pattern.m).sum(dim=-1, dtype=torch.int32)
        bad = _first(count < pattern.n)
        where = None if bad is None else (bad[0], bad[1] * pattern.m)
        return int((count >= pattern.n).sum()), count.numel(), where
    bn, bm = pattern.block_shape((rows, cols))
    count = zero.reshape(rows // bn, bn, cols // bm, bm).sum(dim=(1, 3), dtype=torch.int32)
    bad = _first((count > 0) & (count < bn * bm))
    where = None if bad is None else (bad[0] * bn, bad[1] * bm)
    return int((count == bn * bm).sum()), count.numel(), where


def pattern_violation(weight: torch.Tensor, *, pattern: str | Pattern) -> tuple[int, ...] | None:
    """The first index of ``weight`` whose zeros break ``pattern``, or None if none does.

    Args:
        weight: a tensor with 2 or more dimensions; zeros are its pruned weights.
        pattern: a pattern that divides the weight's 2-D view.

    Raises:
        ValueError: the weight has fewer than 2 dims or the pattern does not divide it.

    Example:
        >>> w = torch.tensor([[0., 0., 1., 2.], [0., 3., 0., 4.]])
        >>> pattern_violation(w, pattern="2:4"), pattern_violation(w, pattern="1x2")
        (None, (1, 0))
    """
    pattern = parse_pattern(pattern)
    _divides("pattern_violation", weight.shape, pattern)
    where = _check(to_2d(weight) == 0, pattern)[2]
    return None if where is None else _view_index(tuple(weight.shape), *where)


def _divides(func: str, shape: torch.Size, pattern: Pattern) -> None:
    if not pattern.divides(shape_2d(shape)):
        raise _errors.value_error(
            func,
            f"pattern {pattern} does not divide the weight's 2-D view",
            _errors.detail(f"shape {tuple(shape)}, 2-D view {shape_2d(shape)}"),
            "Check a pattern whose blocks or groups tile the view.",
        )


def layer_report(
    name: str, weight: torch.Tensor, *, pattern: str | Pattern | None = None
) -> LayerReport:
    """Report the sparsity of one weight and, with ``pattern``, whether its zeros follow it.

    Args:
        name: the parameter name to report under.
        weight: a floating tensor with 2 or more dimensions.
        pattern: optional pattern to check; a pattern that does not divide the weight is
            reported in ``note`` instead of raising.

    Example:
        >>> r = layer_report("fc.weight", torch.tensor([[0., 0.], [1., 0.]]), pattern="2x1")
        >>> r.sparsity, r.unit_sparsity, r.satisfies, r.violation
        (0.75, 0.5, False, (0, 0))
    """
    if not isinstance(weight, torch.Tensor) or weight.ndim < 2:
        got = (
            type(weight).__name__
            if not isinstance(weight, torch.Tensor)
            else _errors.detail(f"shape {tuple(weight.shape)}")
        )
        raise _errors.value_error(
            "layer_report",
            f"{name!r} must be a tensor with 2 or more dims",
            got,
            "Report weights, not biases or scalars.",
        )
    zero = weight == 0
    zeros = int(zero.sum())
    size = weight.numel()
    base = LayerReport(
        name=name,
        shape=tuple(weight.shape),
        dtype=str(weight.dtype).removeprefix("torch."),
        size=size,
        zeros=zeros,
        sparsity=zeros / size if size else 0.0,
    )
    if pattern is None:
        return base
    pattern = parse_pattern(pattern)
    if size == 0:  # no weights, no units: nothing can break the pattern
        return dataclasses.replace(base, pattern=str(pattern), note="no weights")
    if not pattern.divides(shape_2d(weight.shape)):
        return dataclasses.replace(
            base,
            pattern=str(pattern),
            note=f"{pattern} does not divide the 2-D view {shape_2d(weight.shape)}",
        )
    pruned, units, where = _check(to_2d(zero), pattern)
    scale = pattern.max_sparsity if isinstance(pattern, NM) else 1.0
    violation = None if where is None else _view_index(tuple(weight.shape), *where)
    return dataclasses.replace(
        base,
        pattern=str(pattern),
        unit_sparsity=pruned * scale / units if units else 0.0,
        satisfies=violation is None,
        violation=violation,
    )


def total_report(reports: list[LayerReport]) -> dict[str, Any]:
    """Totals over layer reports: weights, zeros, sparsity, and how many layers satisfy the pattern.

    Example:
        >>> w = {"a": torch.zeros(2, 2), "b": torch.ones(2, 2)}
        >>> total_report([layer_report(n, t, pattern="2x1") for n, t in w.items()])["sparsity"]
        0.5
    """
    size = sum(r.size for r in reports)
    zeros = sum(r.zeros for r in reports)
    checked = [r for r in reports if r.satisfies is not None]
    return {
        "layers": len(reports),
        "size": size,
        "zeros": zeros,
        "sparsity": zeros / size if size else 0.0,
        "checked": len(checked),
        "satisfying": sum(bool(r.satisfies) for r in checked),
    }


def layer_reports(
    params: Mapping[str, torch.Tensor], *, pattern: str | Pattern | None = None
) -> list[LayerReport]:
    """:func:`layer_report` for every weight of ``params``, in order."""
    return [layer_report(n, w, pattern=pattern) for n, w in params.items()]
