from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fprune
from fprune import nm
from fprune.layout import to_2d
from fprune.patterns import parse_pattern
from tests import reference, strategies
from tests.strategies import same_bits


def group_pruned(mask: torch.Tensor, m: int) -> torch.Tensor:
    view = to_2d(mask)
    return (~view).reshape(view.shape[0], -1, m).sum(dim=-1)


@st.composite
def nm_case(draw, patterns=strategies.nm_patterns):
    pattern = parse_pattern(draw(patterns))
    scores = draw(strategies.score_dicts(str(pattern)))
    sparsity = draw(st.floats(0, 1)) * pattern.max_sparsity
    return pattern, scores, sparsity


@given(nm_case(), st.sampled_from(["global", "local"]))
def test_nm_groups_are_dense_or_exactly_n_sparse_with_exact_group_count(case, scope):
    pattern, scores, sparsity = case
    masks = fprune.masks(scores, pattern=pattern, sparsity=sparsity, scope=scope)
    converted = {}
    for name, mask in masks.items():
        per_group = group_pruned(mask, pattern.m)
        assert bool(((per_group == 0) | (per_group == pattern.n)).all())
        converted[name] = int((per_group == pattern.n).sum())
    groups = {n: to_2d(s).numel() // pattern.m for n, s in scores.items()}
    fraction = min(sparsity * pattern.m / pattern.n, 1.0)
    if scope == "local":
        assert converted == {n: reference.count(fraction, g) for n, g in groups.items()}
    else:
        assert sum(converted.values()) == reference.count(fraction, sum(groups.values()))


@pytest.mark.usefixtures("math_only")  # the accelerator: tests/test_eager.py
@given(
    nm_case(),
    st.sampled_from(["global", "local"]),
    st.sampled_from(["mean", "sum", "max"]),
    st.data(),
)
def test_nm_masks_equal_sort_reference(case, scope, reduce, data):
    pattern, scores, sparsity = case
    views = {n: to_2d(s) for n, s in scores.items()}
    previous = data.draw(strategies.previous_masks(views))
    got = fprune.grid_masks(
        views,
        pattern=pattern,
        sparsity=sparsity,
        scope=scope,
        previous=previous,
        reduce=reduce,
        max_layer_sparsity=1.0,
    )
    want = reference.nm_masks(
        views, pattern.n, pattern.m, sparsity, scope, previous=previous, reduce=reduce
    )
    assert same_bits(got, want)


@given(nm_case(), st.lists(st.floats(0, 1), min_size=2, max_size=4))
def test_iterative_nm_nests(case, fractions):
    pattern, scores, _ = case
    previous = None
    for f in sorted(fractions):
        current = fprune.masks(
            scores, pattern=pattern, sparsity=f * pattern.max_sparsity, previous=previous
        )
        if previous is not None:
            assert all(torch.all(~previous[n] <= ~current[n]) for n in scores)
        previous = current


def test_nm_golden():
    s = {"w": torch.tensor([[1.0, 9, 2, 9, 5, 5, 9, 9], [9, 9, 0, 0, 3, 9, 9, 4]])}
    # group scores (mean of the 2 lowest): row 0: 1.5, 5.0; row 1: 0.0, 3.5
    quarter = fprune.masks(s, pattern="2:4", sparsity=0.25)["w"].int().tolist()
    assert quarter == [[0, 1, 0, 1, 1, 1, 1, 1], [1, 1, 0, 0, 1, 1, 1, 1]]
    half = fprune.masks(s, pattern="2:4", sparsity=0.5)["w"].int().tolist()
    assert half == [[0, 1, 0, 1, 0, 0, 1, 1], [1, 1, 0, 0, 0, 1, 1, 0]]


def test_nm_ties_inside_a_group_go_to_the_lower_index():
    s = {"w": torch.ones(1, 4)}
    assert fprune.masks(s, pattern="2:4", sparsity=0.5)["w"].tolist() == [
        [False, False, True, True]
    ]
    s = {"w": torch.tensor([[3.0, 1.0, 2.0, 1.0]])}
    assert fprune.masks(s, pattern="1:4", sparsity=0.25)["w"].tolist() == [
        [True, False, True, True]
    ]


def test_nm_on_conv_groups_input_channels_at_one_tap():
    # [O=1, C=4, k=2]: tap t holds channels 0..3; 2:4 prunes 2 channels per tap.
    w = torch.tensor([[[1.0, 8.0], [2.0, 7.0], [3.0, 6.0], [4.0, 5.0]]])
    m = fprune.masks({"c": w}, pattern="2:4", sparsity=0.5)["c"]
    assert m[0, :, 0].tolist() == [False, False, True, True]  # tap 0: channels with 1, 2 go
    assert m[0, :, 1].tolist() == [True, True, False, False]  # tap 1: channels with 6, 5 go


@pytest.mark.parametrize(("pattern", "bad"), [("2:4", 0.6), ("1:4", 0.3), ("1:2", 0.51)])
def test_nm_sparsity_above_n_over_m_raises(pattern, bad):
    cap = parse_pattern(pattern).max_sparsity
    with pytest.raises(
        ValueError,
        match=rf"masks: pattern '{pattern}' cannot exceed sparsity N/M = {cap} \(got {bad}\)",
    ):
        fprune.masks({"w": torch.rand(4, 8)}, pattern=pattern, sparsity=bad)


def test_nm_reaches_exactly_n_over_m():
    r = 1 - (0.5 ** (1 / 3)) ** 3  # 0.4999999999999999: INC leaves one group dense here
    m = fprune.masks({"w": torch.rand(8, 16)}, pattern="2:4", sparsity=r)["w"]
    assert bool((group_pruned(m, 4) == 2).all())


def test_nm_rejects_indivisible_inputs():
    with pytest.raises(
        ValueError, match=r"pattern '2:4' does not divide layer 'w' \(got shape \(4, 6\)"
    ):
        fprune.masks({"w": torch.rand(4, 6)}, pattern="2:4", sparsity=0.5)


@given(
    st.one_of(nm_case(), nm_case(st.just("3:16"))),
    st.sampled_from(["mean", "sum", "max"]),
    st.data(),
)
def test_within_groups_equal_a_stable_sort_of_each_group(case, reduce, data):
    """Groups up to ``PAIRWISE`` are ranked by comparisons, larger ones by a sort: both give
    each group's N lowest by a stable sort of its rank keys (ties to the lower index), and
    the reduction of their scores taken in that order."""
    pattern, scores, _ = case
    n, m = pattern.n, pattern.m
    for view in (to_2d(s) for s in scores.values()):
        seed = data.draw(st.one_of(st.none(), st.integers(0, 2**16)))
        pruned = (
            None
            if seed is None
            else torch.rand(view.shape, generator=torch.Generator().manual_seed(seed)) < 0.3
        )
        low, score = nm.within_groups(view, pattern, pruned=pruned, reduce=reduce)
        keys = fprune.rank_keys(view, pruned=pruned).reshape(view.shape[0], -1, m)
        first = torch.sort(keys, dim=-1, stable=True).indices[..., :n]
        want_low = torch.zeros_like(keys, dtype=torch.bool).scatter(-1, first, True)
        values = view.reshape(view.shape[0], -1, m).gather(-1, first)
        want_score = nm.group_score(values, reduce)
        assert torch.equal(low, want_low)
        nan = torch.isnan(score)  # NaN ranks first whatever its payload, so only NaN-ness matters
        assert torch.equal(nan, torch.isnan(want_score))
        assert same_bits({"s": score[~nan]}, {"s": want_score[~nan]})
        assert bool((low.sum(dim=-1) == n).all())  # exactly N per group


@given(st.integers(1, 7), st.sampled_from([2, 3, 4, 8]), st.data())
def test_ranks_are_each_position_in_a_stable_sort(n_groups, m, data):
    keys = torch.tensor(
        data.draw(st.lists(st.integers(-3, 3), min_size=m * n_groups, max_size=m * n_groups)),
        dtype=torch.int32,
    ).reshape(1, n_groups, m)
    ranks = torch.stack(nm.ranks(keys), dim=-1)
    order = torch.sort(keys, dim=-1, stable=True).indices
    assert torch.equal(ranks.long(), torch.argsort(order, dim=-1))
