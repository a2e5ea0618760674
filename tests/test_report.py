"""Reports from weights: sparsity in the pattern's units and the first violation of a pattern."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fprune
from fprune.layout import to_2d
from fprune.report import layer_report, pattern_violation, total_report
from tests import strategies


def _masked_weights(
    pattern: str, sparsity: float, seed: int, shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    w = (
        torch.randn(shape, generator=torch.Generator().manual_seed(seed)) + 10.0
    )  # no accidental zero
    pattern_obj = fprune.parse_pattern(pattern)
    if isinstance(pattern_obj, fprune.NM):
        sparsity = min(sparsity, pattern_obj.max_sparsity)
    mask = fprune.masks({"w": w.abs()}, pattern=pattern, sparsity=sparsity, scope="local")["w"]
    return w * mask, mask


@given(
    pattern=strategies.any_patterns,
    sparsity=strategies.sparsities,
    seed=st.integers(0, 2**16),
    conv=st.booleans(),
    data=st.data(),
)
def test_layer_report_matches_the_masks(pattern, sparsity, seed, conv, data):
    shape = data.draw(strategies.divisible_shape(*strategies._pattern_sides(pattern), conv=conv))
    w, mask = _masked_weights(pattern, sparsity, seed, shape)
    r = layer_report("w", w, pattern=pattern)
    assert r.zeros == int((~mask).sum()) and r.size == w.numel()
    assert r.sparsity == r.zeros / r.size
    assert r.unit_sparsity == float(fprune.layer_sparsity({"w": mask}, pattern=pattern)["w"])
    if ":" in pattern and r.unit_sparsity < fprune.parse_pattern(pattern).max_sparsity:
        assert not r.satisfies  # a dense N:M group is not hardware N:M
    else:
        assert r.satisfies and r.violation is None


@given(
    pattern=strategies.block_patterns,
    seed=st.integers(0, 2**16),
    conv=st.booleans(),
    data=st.data(),
)
def test_pattern_violation_finds_a_broken_block(pattern, seed, conv, data):
    shape = data.draw(strategies.divisible_shape(*strategies._pattern_sides(pattern), conv=conv))
    w, mask = _masked_weights(pattern, 0.5, seed, shape)
    view = to_2d(w)
    bn, bm = fprune.parse_pattern(pattern).block_shape(view.shape)
    if bn * bm == 1 or bool(mask.all()):
        assert pattern_violation(w, pattern=pattern) is None
        return
    # revive one weight of one pruned block: that block, and only it, is now mixed
    pruned = torch.nonzero(~to_2d(mask))
    r, c = pruned[data.draw(st.integers(0, len(pruned) - 1))].tolist()
    index = torch.arange(w.numel()).reshape(w.shape)
    flat = int(to_2d(index)[r, c])
    broken = w.clone().reshape(-1)
    broken[flat] = 1.0
    broken = broken.reshape(w.shape)
    where = pattern_violation(broken, pattern=pattern)
    top = (r // bn * bn, c // bm * bm)
    assert where is not None and int(index[where]) == int(to_2d(index)[top])


@given(
    pattern=strategies.nm_patterns, seed=st.integers(0, 2**16), conv=st.booleans(), data=st.data()
)
def test_pattern_violation_finds_a_short_group(pattern, seed, conv, data):
    shape = data.draw(strategies.divisible_shape(*strategies._pattern_sides(pattern), conv=conv))
    nm = fprune.parse_pattern(pattern)
    w, mask = _masked_weights(pattern, nm.max_sparsity, seed, shape)
    assert pattern_violation(w, pattern=pattern) is None  # every group converted
    pruned = torch.nonzero(~to_2d(mask))
    r, c = pruned[data.draw(st.integers(0, len(pruned) - 1))].tolist()
    index = torch.arange(w.numel()).reshape(w.shape)
    broken = w.clone().reshape(-1)
    broken[int(to_2d(index)[r, c])] = 1.0
    where = pattern_violation(broken.reshape(w.shape), pattern=pattern)
    assert where is not None and int(index[where]) == int(to_2d(index)[r, c // nm.m * nm.m])


def test_golden_report():
    w = torch.tensor([[0.0, -0.0, 1.0, 2.0], [0.0, 3.0, float("nan"), 0.0]])
    r = layer_report("fc.weight", w, pattern="2:4")
    assert (r.zeros, r.sparsity, r.satisfies, r.violation) == (
        4,
        0.5,
        True,
        None,
    )  # -0.0 is zero, NaN is kept
    assert r.unit_sparsity == 0.5
    r = layer_report("fc.weight", w, pattern="1x2")
    assert (r.satisfies, r.violation, r.unit_sparsity) == (False, (1, 0), 0.25)
    r = layer_report("fc.weight", w, pattern="4x4")
    assert r.note is not None and r.satisfies is None and r.unit_sparsity is None
    assert r.as_dict()["shape"] == [2, 4]
    totals = total_report(
        [layer_report("a", w, pattern="1x2"), layer_report("b", torch.zeros(2, 2), pattern="1x2")]
    )
    assert totals == {
        "layers": 2,
        "size": 12,
        "zeros": 8,
        "sparsity": 8 / 12,
        "checked": 2,
        "satisfying": 1,
    }


def test_conv_violation_is_in_the_weights_own_coordinates():
    w = torch.ones(2, 3, 2, 2)  # [O, C, kh, kw]; the view's columns are (kh, kw, C), C innermost
    w[1, 2, 1, 0] = 0.0
    assert pattern_violation(w, pattern="1x3") == (
        1,
        0,
        1,
        0,
    )  # the group of 3 channels at tap (1, 0)
    assert pattern_violation(w, pattern="2x1") == (0, 2, 1, 0)


def test_bad_input_names_the_fix():
    with pytest.raises(ValueError, match="2 or more dims"):
        layer_report("bias", torch.ones(3))
    with pytest.raises(ValueError, match="does not divide"):
        pattern_violation(torch.ones(3, 3), pattern="2x1")
