"""Hypothesis strategies: FQN-keyed dicts, tensors with forced ties and special values,
shapes divisible by a pattern, sparsities and pattern strings."""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Few distinct values force ties; the specials exercise the ranking order.
SPECIALS = (float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-40, -1e-40, 2.0**-149)
# Specials without subnormals: safe to rescale by powers of two in float32/bfloat16.
NORMAL_SPECIALS = (float("nan"), float("inf"), -float("inf"), 0.0, -0.0)
TIED = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)

names = st.builds(
    lambda prefix, i, leaf: f"{prefix}.{i}.{leaf}.weight",
    st.sampled_from(["layers", "encoder.block", "blocks", "model.h"]),
    st.integers(0, 11),
    st.sampled_from(["fc1", "fc2", "attn.q_proj", "mlp.up", "conv"]),
)

sparsities = st.one_of(
    st.sampled_from([0.0, 0.25, 0.5, 0.8, 0.9, 1 - (0.5 ** (1 / 3)) ** 3]),
    st.floats(0.0, 0.99, allow_nan=False),
)


def values(
    *, specials: bool | tuple[float, ...] = True, ties: bool = True
) -> st.SearchStrategy[float]:
    """Score values: finite floats, plus (optionally) a small pool that forces ties and specials.

    ``specials`` may be a tuple to choose the special values.
    """
    pools = [st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=16)]
    if ties:
        pools.append(st.sampled_from(TIED))
    if specials:
        pools.append(st.sampled_from(SPECIALS if specials is True else specials))
    return st.one_of(*pools)


# Every float16 value in [-1e4, 1e4] (the finite values ``values()`` draws), simplest first:
# by magnitude, then positive before negative, so hypothesis shrinks towards 0.0, 1.0, ...
_FINITE16 = sorted(
    (
        v
        for v in torch.arange(-(2**15), 2**15, dtype=torch.int32)
        .to(torch.int16)
        .view(torch.float16)
        .tolist()
        if math.isfinite(v) and abs(v) <= 1e4
    ),  # every bit pattern once: +0.0 and -0.0 both
    key=lambda v: (abs(v), math.copysign(1.0, v) < 0),
)


def _pools(specials: bool | tuple[float, ...], ties: bool) -> list[tuple[float, ...]]:
    """The pools ``values()`` draws from, the finite float16 values first."""
    pools: list[tuple[float, ...]] = [tuple(_FINITE16)]
    if ties:
        pools.append(TIED)
    if specials:
        pools.append(SPECIALS if specials is True else tuple(specials))
    return pools


@st.composite
def tensors(draw, shape, *, dtype=None, specials=True, ties=True, nonnegative=False):
    """A tensor of ``values()``: each element from one of the pools, chosen alike (as
    ``one_of`` chooses), then a value of that pool. Drawn as one byte string, 3 bytes an
    element (a pool, then a 16-bit index), which is many times faster than drawing each
    element on its own and shrinks the same way (towards the first pool's first values)."""
    dtype = draw(st.sampled_from(FLOAT_DTYPES)) if dtype is None else dtype
    n = math.prod(shape)
    pools = _pools(specials, ties)
    raw = draw(st.binary(min_size=3 * n, max_size=3 * n))
    vals = []
    for i in range(n):
        pool = pools[raw[3 * i] % len(pools)]
        vals.append(pool[int.from_bytes(raw[3 * i + 1 : 3 * i + 3], "little") % len(pool)])
    t = torch.tensor(vals, dtype=torch.float64).reshape(shape).to(dtype)
    return t.abs() if nonnegative else t


def divisible_shape(pattern_rows: int, pattern_cols: int, *, conv: bool = False):
    """2-D (or conv) shapes whose 2-D view is tiled by ``rows x cols`` blocks."""
    if not conv:
        return st.tuples(
            st.integers(1, 4).map(lambda k: k * pattern_rows),
            st.integers(1, 4).map(lambda k: k * pattern_cols),
        )
    # conv [O, C, k]: the view's columns are k * C; make C a multiple of the block width.
    return st.tuples(
        st.integers(1, 3).map(lambda k: k * pattern_rows),
        st.integers(1, 2).map(lambda k: k * pattern_cols),
        st.integers(1, 3),
    )


block_patterns = st.sampled_from(
    ["1x1", "2x1", "1x2", "4x1", "2x2", "channelx1", "1xchannel", "channelx2"]
)
nm_patterns = st.sampled_from(["1:2", "2:4", "1:4", "3:4", "2:8"])
any_patterns = st.one_of(block_patterns, nm_patterns)


def _pattern_sides(pattern: str) -> tuple[int, int]:
    if ":" in pattern:
        return 1, int(pattern.split(":")[1])
    rows, cols = pattern.split("x")
    return (1 if rows == "channel" else int(rows), 1 if cols == "channel" else int(cols))


@st.composite
def score_dicts(
    draw,
    pattern="1x1",
    *,
    min_layers=1,
    max_layers=4,
    dtype=None,
    specials=True,
    nonnegative=False,
    conv=True,
):
    """A dict of FQN-named score tensors that ``pattern`` divides (some conv-shaped)."""
    rows, cols = _pattern_sides(pattern)
    n_layers = draw(st.integers(min_layers, max_layers))
    layer_names = draw(st.lists(names, min_size=n_layers, max_size=n_layers, unique=True))
    out = {}
    for name in layer_names:
        is_conv = conv and draw(st.booleans())
        shape = draw(divisible_shape(rows, cols, conv=is_conv))
        out[name] = draw(tensors(shape, dtype=dtype, specials=specials, nonnegative=nonnegative))
    return out


@st.composite
def previous_masks(draw, scores, *, density=0.8):
    """Random earlier masks (True = kept) shaped like ``scores``, or None."""
    if draw(st.booleans()):
        return None
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(s.shape, generator=gen) < density for n, s in scores.items()}


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bitwise identity of a tensor (NaN-safe comparison for purity checks)."""
    if t.dtype == torch.bool:
        return t
    return t.contiguous().view(
        {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    )


def same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype
        and a[k].shape == b[k].shape
        and torch.equal(bits(a[k]), bits(b[k]))
        for k in a
    )
