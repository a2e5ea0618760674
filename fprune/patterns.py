"""Pruning patterns as frozen value objects, parsed from INC's pattern strings.

Every pattern refers to the *2-D view* of a weight (see :mod:`fprune.layout`):

* :class:`Blocks` ``"NxM"``: blocks of N rows (outputs) by M columns (inputs); a block is
  pruned or kept as a whole. ``"1x1"`` is unstructured. ``"channelxM"`` makes the block
  span all rows (whole input columns); ``"Nxchannel"`` spans all columns (whole output rows).
* :class:`NM` ``"N:M"``: in each group of M consecutive inputs, N weights are pruned
  (so the most a layer can reach is N/M). Iterative N:M converts a growing fraction of the
  groups to N:M; the rest stay dense.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from fprune import _errors

__all__ = ["NM", "Blocks", "Pattern", "parse_pattern"]

_CHANNEL = "channel"
_BLOCKS_RE = re.compile(r"(channel|[0-9]+)x(channel|[0-9]+)")  # fullmatch: no "\n" after
_NM_RE = re.compile(r"([0-9]+):([0-9]+)")


def _dim(func: str, arg: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _errors.type_error(
            func, f"{arg} must be an int or None (channel)", value, "Pass a positive int."
        )
    if value < 1:
        raise _errors.value_error(
            func, f"{arg} must be >= 1", value, "Block sides are positive integers."
        )


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Rectangular blocks of ``rows`` x ``cols`` on the 2-D view; ``None`` spans the whole side.

    Example:
        >>> Blocks(4, 1)
        Blocks(rows=4, cols=1)
        >>> str(Blocks(None, 1)), Blocks(4, 1).block_shape((8, 6))
        ('channelx1', (4, 1))
    """

    rows: int | None
    cols: int | None

    def __post_init__(self) -> None:
        _dim("Blocks", "rows", self.rows)
        _dim("Blocks", "cols", self.cols)
        if self.rows is None and self.cols is None:
            raise _errors.value_error(
                "Blocks",
                "at most one side may be 'channel'",
                _errors.detail("rows=None, cols=None"),
                "Use 'channelxM' for whole input columns or 'Nxchannel' for whole output rows.",
            )

    def __str__(self) -> str:
        side = [_CHANNEL if s is None else str(s) for s in (self.rows, self.cols)]
        return "x".join(side)

    def block_shape(self, shape_2d: Sequence[int]) -> tuple[int, int]:
        """The block of this pattern on a 2-D view of ``shape_2d`` (channel sides filled in)."""
        rows, cols = shape_2d
        return (rows if self.rows is None else self.rows, cols if self.cols is None else self.cols)

    def divides(self, shape_2d: Sequence[int]) -> bool:
        """Whether the blocks tile a 2-D view of ``shape_2d`` exactly (an empty view has no
        blocks: nothing to tile)."""
        if 0 in shape_2d:
            return True
        bn, bm = self.block_shape(shape_2d)
        return shape_2d[0] % bn == 0 and shape_2d[1] % bm == 0

    def grid_shape(self, shape_2d: Sequence[int]) -> tuple[int, int]:
        """The number of blocks along each side of the 2-D view (the block grid)."""
        bn, bm = self.block_shape(shape_2d)
        return (shape_2d[0] // bn, shape_2d[1] // bm)


@dataclasses.dataclass(frozen=True)
class NM:
    """``n`` of every ``m`` consecutive inputs are pruned (``"2:4"``: 2 of 4, sparsity 0.5).

    Example:
        >>> NM(2, 4).max_sparsity, str(NM(1, 4))
        (0.5, '1:4')
    """

    n: int
    m: int

    def __post_init__(self) -> None:
        for arg in ("n", "m"):
            value = getattr(self, arg)
            if isinstance(value, bool) or not isinstance(value, int):
                raise _errors.type_error(
                    "NM", f"{arg} must be an int", value, "Pass positive integers n < m."
                )
        if self.n < 1 or self.m <= self.n:
            raise _errors.value_error(
                "NM",
                "N:M needs 1 <= n < m (n is the number pruned per group of m)",
                _errors.detail(f"n={self.n}, m={self.m}"),
                "Use e.g. '2:4' (2 of every 4 pruned).",
            )

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def max_sparsity(self) -> float:
        """The largest sparsity this pattern reaches: every group converted, ``n / m``."""
        return self.n / self.m

    def divides(self, shape_2d: Sequence[int]) -> bool:
        """Whether the groups of ``m`` tile the rows of a 2-D view of ``shape_2d``."""
        return shape_2d[1] % self.m == 0


Pattern = Blocks | NM

_FORMS = "'NxM' (e.g. '4x1'), 'channelxM', 'Nxchannel' or 'N:M' (e.g. '2:4')"


def parse_pattern(pattern: str | Pattern) -> Pattern:
    """Parse an INC pattern string into a :class:`Blocks` or :class:`NM` value.

    Pattern objects pass through unchanged, so any function taking ``pattern`` accepts
    either form. ``str(parse_pattern(s)) == s`` for every canonical string ``s``.

    Args:
        pattern: ``"NxM"``, ``"channelxM"``, ``"Nxchannel"``, ``"N:M"`` or a pattern object.

    Returns:
        The pattern value.

    Raises:
        TypeError: ``pattern`` is neither a string nor a pattern object.
        ValueError: the string is malformed, or a side is 0, or N >= M for N:M.

    Example:
        >>> parse_pattern("4x1"), parse_pattern("2:4")
        (Blocks(rows=4, cols=1), NM(n=2, m=4))
        >>> parse_pattern("channelx1")
        Blocks(rows=None, cols=1)
    """
    if isinstance(pattern, Blocks | NM):
        return pattern
    if not isinstance(pattern, str):
        raise _errors.type_error(
            "parse_pattern",
            "pattern must be a string or a Blocks/NM object",
            pattern,
            f"Use {_FORMS}.",
        )
    if m := _BLOCKS_RE.fullmatch(pattern):
        rows, cols = (None if side == _CHANNEL else int(side) for side in m.groups())
        if rows == 0 or cols == 0:
            raise _errors.value_error(
                "parse_pattern", "block sides must be >= 1", pattern, "Use e.g. '4x1' or '1x1'."
            )
        if rows is None and cols is None:
            raise _errors.value_error(
                "parse_pattern",
                "at most one side may be 'channel'",
                pattern,
                "Use 'channelxM' for whole input columns or 'Nxchannel' for whole output rows.",
            )
        return Blocks(rows, cols)
    if m := _NM_RE.fullmatch(pattern):
        n, m_ = int(m.group(1)), int(m.group(2))
        if n < 1 or m_ <= n:
            raise _errors.value_error(
                "parse_pattern",
                "N:M needs 1 <= N < M (N is the number pruned per group of M)",
                pattern,
                "Use e.g. '2:4' (2 of every 4 pruned).",
            )
        return NM(n, m_)
    raise _errors.value_error("parse_pattern", "malformed pattern", pattern, f"Use {_FORMS}.")
