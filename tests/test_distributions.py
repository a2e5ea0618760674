"""Per-layer sparsity distributions (fprune.layer_counts): exact totals, an independent ERK
reference, dense layers, and the basic pruner's ``distribution`` option."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fprune

FEW = settings(max_examples=60, deadline=None)

shapes = st.lists(
    st.one_of(
        st.tuples(st.integers(1, 64), st.integers(1, 64)),
        st.tuples(st.integers(1, 16), st.integers(1, 8), st.integers(1, 3), st.integers(1, 3)),
    ),
    min_size=1,
    max_size=5,
).map(lambda s: {f"layer{i}.weight": shape for i, shape in enumerate(s)})


def erk_reference(shapes: dict, sparsity: float, dense: set) -> dict[str, float]:
    """RigL's Erdos-Renyi-Kernel densities (Evci et al. 2020, appendix; the public RigL code's
    loop): solve ``eps`` so that the kept weights total ``(1 - s) * N`` with layer densities
    ``eps * sum(shape) / prod(shape)``; a layer above density 1 becomes dense, and again."""
    dense = set(dense)
    while True:
        divisor, rhs, raw = 0.0, 0.0, {}
        for name, shape in shapes.items():
            n = float(np.prod(shape))
            if name in dense:
                rhs -= n * sparsity  # its zeros must be found elsewhere
            else:
                rhs += n * (1 - sparsity)
                raw[name] = np.sum(shape) / np.prod(shape)
                divisor += raw[name] * n
        if not raw:
            return dict.fromkeys(shapes, 1.0)
        eps = rhs / divisor
        over = [n for n, r in raw.items() if r * eps > 1]
        if not over:
            return {n: 1.0 if n in dense else max(raw[n] * eps, 0.0) for n in shapes}
        dense |= set(over)


@FEW
@given(shapes, st.floats(0.0, 0.99), st.data())
def test_erk_counts_are_exact_and_near_the_reference(layer_shapes, sparsity, data):
    dense = set(data.draw(st.lists(st.sampled_from(sorted(layer_shapes)), max_size=2)))
    counts = fprune.layer_counts(layer_shapes, sparsity, distribution="erk", dense=dense)
    sizes = {n: math.prod(s) for n, s in layer_shapes.items()}
    want_total = math.floor(sparsity * sum(sizes.values()) + 1e-9)
    density = erk_reference(layer_shapes, sparsity, dense)
    reachable = sum(sizes[n] for n in sizes if density[n] < 1.0)
    assert sum(counts.values()) == min(want_total, reachable)  # exact unless no room is left
    for name, count in counts.items():
        assert 0 <= count <= sizes[name]
        real = (1.0 - density[name]) * sizes[name]
        assert abs(count - real) < 1.0 + 1e-6, (name, count, real)
        if name in dense:
            assert count == 0


@FEW
@given(shapes, st.floats(0.0, 0.99), st.sampled_from(["1x1", "2x1", "1x2"]))
def test_uniform_counts_floor_each_layer(layer_shapes, sparsity, pattern):
    rows, cols = (int(x) for x in pattern.split("x"))
    layer_shapes = {n: (s[0] * rows, s[1] * cols, *s[2:]) for n, s in layer_shapes.items()}
    counts = fprune.layer_counts(layer_shapes, sparsity, pattern=pattern, first_dense=True)
    for i, (name, shape) in enumerate(layer_shapes.items()):
        units = math.prod(shape) // (rows * cols)
        assert counts[name] == (0 if i == 0 else math.floor(sparsity * units + 1e-9))


def test_golden_erk_counts():
    """By hand: fc1 (100, 64) has 164 / 6400, fc2 (10, 100) 110 / 1000; the scale is
    740 / (164 + 110) = 2.70073, so fc1 keeps 442.9 and fc2 297.1 of 6400 and 1000; the
    total 6660 pruned: 5957 + 702, and the one left over goes to fc2 (fraction .92)."""
    counts = fprune.layer_counts({"fc1": (100, 64), "fc2": (10, 100)}, 0.9, distribution="erk")
    assert counts == {"fc1": 5957, "fc2": 703}
    sparsities = fprune.layer_sparsities({"a": (8, 8), "b": (8, 8)}, 0.25, distribution="erk",
                                         dense=("a",))  # fmt: skip
    assert sparsities == {"a": 0.0, "b": 0.5}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(distribution="er"), "distribution"),
        (dict(pattern="2:4"), "N:M pattern has none"),
        (dict(dense="a"), "collection of names"),
        (dict(dense=("z",)), "not given"),
    ],
)
def test_layer_counts_errors(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        fprune.layer_counts({"a": (4, 4)}, 0.5, **kwargs)


def test_the_basic_pruner_ramps_each_layer_to_its_erk_count():
    gen = torch.Generator().manual_seed(0)
    params = {
        "a": torch.randn(64, 32, generator=gen),
        "b": torch.randn(12, 64, generator=gen),
        "c": torch.randn(32, 4, 3, 3, generator=gen),
    }
    want = fprune.layer_counts({n: p.shape for n, p in params.items()}, 0.9, distribution="erk",
                               pattern="4x1")  # fmt: skip
    prune = fprune.pruner(0.9, pattern="4x1", criterion="magnitude", scope="local",
                          distribution="erk", end_step=4)  # fmt: skip
    state = prune.init(params)
    history = []
    for _ in range(5):
        state, masks = prune.step(state, params)
        grids = fprune.reduce_masks(masks, pattern="4x1")
        history.append({n: int((~g).sum()) for n, g in grids.items()})
    assert history[-1] == want  # exact at the end of the ramp
    assert all(history[i][n] <= history[i + 1][n] for i in range(4) for n in want)  # nested
    assert 0 < history[2]["a"] < want["a"]  # and ramping
    (again,) = fprune.from_config(prune.to_config())
    assert again.settings["distribution"] == "erk"
    with pytest.raises(ValueError, match="global scope does not"):
        fprune.pruner(0.9, pattern="1x1", distribution="erk")
    with pytest.raises(ValueError, match="N:M pattern has none"):
        fprune.pruner(0.5, pattern="2:4", scope="local", distribution="erk")
    with pytest.raises(ValueError, match="fixes each layer's target"):
        prune.init(params, sparsity=0.5)
