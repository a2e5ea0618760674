from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fprune
from fprune.blocks import block_scores, expand_masks, reduce_masks
from fprune.layout import to_2d
from fprune.patterns import parse_pattern
from tests import reference, strategies
from tests.strategies import same_bits

bound_triples = st.tuples(strategies.sparsities, st.floats(0, 1), st.floats(0, 1)).map(
    lambda t: (t[0], t[0] * t[1], t[0] + (1 - t[0]) * t[2])
)


@st.composite
def block_case(draw, nonnegative=False):
    pattern = draw(strategies.block_patterns)
    scores = draw(strategies.score_dicts(pattern, nonnegative=nonnegative))
    return parse_pattern(pattern), scores


@given(
    block_case(),
    bound_triples,
    st.sampled_from(["global", "local"]),
    st.sampled_from(["mean", "sum", "max"]),
)
def test_masks_are_block_constant_with_exact_block_counts(case, bounds, scope, reduce):
    pattern, scores = case
    sparsity, lo, hi = bounds
    masks = fprune.masks(
        scores,
        pattern=pattern,
        sparsity=sparsity,
        scope=scope,
        reduce=reduce,
        min_layer_sparsity=lo,
        max_layer_sparsity=hi,
    )
    shapes = {n: s.shape for n, s in scores.items()}
    grids = reduce_masks(masks, pattern=pattern)
    assert same_bits(expand_masks(grids, pattern=pattern, shapes=shapes), masks)  # block constant
    pruned = {n: int((~g).sum()) for n, g in grids.items()}
    if scope == "local":
        assert pruned == {n: reference.count(sparsity, g.numel()) for n, g in grids.items()}
    else:
        total = reference.count(sparsity, sum(g.numel() for g in grids.values()))
        assert sum(pruned.values()) == min(
            total, sum(reference.count(hi, g.numel()) for g in grids.values())
        )


@given(block_case(), bound_triples, st.sampled_from(["mean", "sum", "max"]), st.data())
def test_masks_equal_reference_on_block_scores(case, bounds, reduce, data):
    pattern, scores = case
    sparsity, lo, hi = bounds
    previous = data.draw(strategies.previous_masks(scores, density=0.9))
    got = fprune.masks(
        scores,
        pattern=pattern,
        sparsity=sparsity,
        reduce=reduce,
        previous=previous,
        min_layer_sparsity=lo,
        max_layer_sparsity=hi,
    )
    grid = {
        n: reference.reduce_blocks(to_2d(s), pattern.block_shape(tuple(to_2d(s).shape)), reduce)
        for n, s in scores.items()
    }
    prev = None if previous is None else reduce_masks(previous, pattern=pattern)
    want = reference.global_masks(grid, sparsity, lo, hi, prev)
    assert same_bits(
        got, expand_masks(want, pattern=pattern, shapes={n: s.shape for n, s in scores.items()})
    )


@given(st.sampled_from(["channelx1", "channelx2", "1xchannel", "2xchannel"]), st.data())
def test_channel_patterns_prune_whole_columns_or_rows(pattern, data):
    scores = data.draw(strategies.score_dicts(pattern))
    masks = fprune.masks(
        scores, pattern=pattern, sparsity=data.draw(strategies.sparsities), max_layer_sparsity=1.0
    )
    for mask in masks.values():
        view = to_2d(mask)
        lines = view.T if pattern.startswith("channel") else view  # columns or rows
        assert bool((lines.all(dim=1) | ~lines.any(dim=1)).all())


@given(
    block_case(nonnegative=True),
    st.lists(strategies.sparsities, min_size=2, max_size=3),
    st.integers(0, 2**31 - 1),
)
def test_block_masks_nest_across_steps(case, levels, seed):
    pattern, scores = case
    gen = torch.Generator().manual_seed(seed)
    previous = None
    for sparsity in sorted(levels):
        current = fprune.masks(
            scores, pattern=pattern, sparsity=sparsity, previous=previous, max_layer_sparsity=1.0
        )
        if previous is not None:
            assert all(torch.all(~previous[n] <= ~current[n]) for n in scores)
        previous = current
        scores = {n: torch.rand(s.shape, generator=gen).to(s.dtype) for n, s in scores.items()}


@given(block_case(), bound_triples, st.randoms(use_true_random=False))
def test_masks_are_pure_and_order_invariant(case, bounds, rnd):
    pattern, scores = case
    sparsity, lo, hi = bounds
    before = {n: s.clone() for n, s in scores.items()}
    kw = dict(pattern=pattern, sparsity=sparsity, min_layer_sparsity=lo, max_layer_sparsity=hi)
    a = fprune.masks(scores, **kw)
    names = list(scores)
    rnd.shuffle(names)
    b = fprune.masks({n: scores[n] for n in names}, **kw)
    assert same_bits(scores, before)
    assert list(b) == names and all(torch.equal(a[n], b[n]) for n in names)


@given(
    st.sampled_from(["1x1", "2x1", "4x1", "channelx1", "2:4"]).flatmap(
        lambda p: st.tuples(
            st.just(p),
            strategies.score_dicts(p, dtype=torch.float32, specials=strategies.NORMAL_SPECIALS),
        )
    ),
    strategies.sparsities,
    st.integers(-8, 8),
)
def test_masks_invariant_to_power_of_two_scaling(case, sparsity, exponent):
    pattern, scores = case
    sparsity = min(sparsity, parse_pattern(pattern).max_sparsity) if ":" in pattern else sparsity
    scaled = {n: s * 2.0**exponent for n, s in scores.items()}
    kw = dict(pattern=pattern, sparsity=sparsity, max_layer_sparsity=1.0)
    assert same_bits(fprune.masks(scores, **kw), fprune.masks(scaled, **kw))


def test_grid_masks_equal_masks_on_reduced_scores():
    gen = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(8, 4, generator=gen), "b": torch.rand(4, 2, 3, generator=gen)}
    grid = block_scores(scores, pattern="2x2")
    from_grid = fprune.grid_masks(grid, pattern="2x2", sparsity=0.6)
    full = fprune.masks(scores, pattern="2x2", sparsity=0.6)
    assert same_bits(
        expand_masks(from_grid, pattern="2x2", shapes={n: s.shape for n, s in scores.items()}), full
    )
    with pytest.raises(
        ValueError, match=r"grid_masks: grid_scores\['b'\] must be 2-D \(got \(4, 2, 3\)\)"
    ):
        fprune.grid_masks(scores, pattern="2x2", sparsity=0.5)


def test_masks_golden_4x1_global():
    w = torch.tensor([[1.0, 8], [2, 7], [3, 6], [4, 5], [9, 0.1], [9, 0.2], [9, 0.3], [9, 0.4]])
    # 4x1 block means: [[2.5, 6.5], [9.0, 0.25]]; 50% prunes the two lowest blocks
    m = fprune.masks({"w": w}, pattern="4x1", sparsity=0.5)["w"]
    assert m.int().tolist() == [[0, 1]] * 4 + [[1, 0]] * 4


def test_skip_indivisible_leaves_layers_dense_and_uncounted():
    gen = torch.Generator().manual_seed(0)
    scores = {"ok": torch.rand(8, 8, generator=gen), "odd": torch.rand(6, 5, generator=gen)}
    with pytest.raises(
        ValueError,
        match=r"pattern '4x1' does not divide layer 'odd' "
        r"\(got shape \(6, 5\), 2-D view \(6, 5\)\)",
    ):
        fprune.masks(scores, pattern="4x1", sparsity=0.5)
    m = fprune.masks(scores, pattern="4x1", sparsity=0.5, skip_indivisible=True)
    assert bool(m["odd"].all()) and int((~m["ok"]).sum()) == 32
    prev = {"ok": torch.ones(8, 8, dtype=torch.bool), "odd": torch.rand(6, 5, generator=gen) > 0.5}
    m = fprune.masks(scores, pattern="4x1", sparsity=0.5, skip_indivisible=True, previous=prev)
    assert torch.equal(m["odd"], prev["odd"])  # nothing lost: a skipped layer keeps its mask
    assert fprune.indivisible_layers(scores, pattern="4x1") == ["odd"]


def test_masks_bad_arguments():
    s = {"w": torch.rand(4, 4)}
    with pytest.raises(
        ValueError, match=r"masks: unknown scope \(got 'globl'\)\. Did you mean 'global'\?"
    ):
        fprune.masks(s, pattern="4x1", sparsity=0.5, scope="globl")
    with pytest.raises(ValueError, match=r"masks: unknown reduce \(got 'avg'\)"):
        fprune.masks(s, pattern="4x1", sparsity=0.5, reduce="avg")
    with pytest.raises(
        ValueError, match=r"masks: layer 'b' has fewer than 2 dimensions \(got \(4,\)\)"
    ):
        fprune.masks({"w": torch.rand(4, 4), "b": torch.rand(4)}, pattern="1x1", sparsity=0.5)
    with pytest.raises(ValueError, match=r"parse_pattern: malformed pattern \(got '4y1'\)"):
        fprune.masks(s, pattern="4y1", sparsity=0.5)
    with pytest.raises(
        ValueError, match=r"masks: sparsity must be a fraction in \[0, 1\) \(got 1.0\)"
    ):
        fprune.masks(s, pattern="4x1", sparsity=1.0)
    with pytest.raises(
        ValueError,
        match=r"masks: sparsity exceeds max_layer_sparsity \(got sparsity 0.99 > max 0.98\)",
    ):
        fprune.masks(s, pattern="1x1", sparsity=0.99)
    with pytest.raises(ValueError, match=r"masks: min_layer_sparsity exceeds sparsity"):
        fprune.masks(s, pattern="1x1", sparsity=0.5, min_layer_sparsity=0.7)
    with pytest.raises(
        TypeError, match=r"masks: scores\['w'\] must be a floating tensor \(got torch.int32\)"
    ):
        fprune.masks({"w": torch.ones(4, 4, dtype=torch.int32)}, pattern="1x1", sparsity=0.5)
    with pytest.raises(ValueError, match=r"masks: scores is empty"):
        fprune.masks({}, pattern="1x1", sparsity=0.5)


@given(strategies.any_patterns, st.data())
def test_pattern_lock_keeps_exactly_the_nonzero_structure(pattern, data):
    params = data.draw(strategies.score_dicts(pattern, specials=False))
    zeroed = {
        n: torch.where(torch.rand(p.shape) < 0.6, torch.zeros_like(p), p) for n, p in params.items()
    }
    before = {n: p.clone() for n, p in zeroed.items()}
    locked = fprune.pattern_lock_masks(zeroed, pattern=pattern)
    assert same_bits(zeroed, before)
    # nothing non-zero is pruned
    applied = fprune.apply_masks(zeroed, locked)
    assert all(torch.equal(applied[n], zeroed[n]) for n in zeroed)
    # and every kept block (or, for N:M, weight) holds a non-zero: the lock is minimal
    grids_kept = reduce_masks(locked, pattern=pattern)
    grids_nonzero = reduce_masks({n: p != 0 for n, p in zeroed.items()}, pattern=pattern)
    assert same_bits(grids_kept, grids_nonzero)


def test_pattern_lock_golden():
    # INC sums signed weights and locks this 4x1 block as pruned; fprune keeps it.
    w = {"w": torch.tensor([[0.5], [-0.5], [0.25], [-0.25], [0.0], [0.0], [0.0], [0.0]])}
    assert (
        fprune.pattern_lock_masks(w, pattern="4x1")["w"].flatten().tolist()
        == [True] * 4 + [False] * 4
    )
    # INC wipes a 2:4-sparse layer under an N:M lock; fprune keeps it at exactly 50%.
    dense = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    sparse = fprune.apply_masks(
        {"w": dense}, fprune.masks({"w": dense.abs()}, pattern="2:4", sparsity=0.5)
    )
    locked = fprune.pattern_lock_masks(sparse, pattern="2:4")
    assert float(fprune.total_sparsity(locked)) == 0.5
    assert torch.equal(locked["w"], sparse["w"] != 0)
    nan = {"w": torch.tensor([[float("nan")], [0.0]])}
    assert fprune.pattern_lock_masks(nan, pattern="1x1")["w"].flatten().tolist() == [True, False]


def test_pattern_lock_skip_indivisible():
    p = {"w": torch.zeros(6, 4)}
    with pytest.raises(
        ValueError, match=r"pattern_lock_masks: pattern '4x1' does not divide layer 'w'"
    ):
        fprune.pattern_lock_masks(p, pattern="4x1")
    assert bool(fprune.pattern_lock_masks(p, pattern="4x1", skip_indivisible=True)["w"].all())


def test_apply_masks_zeroes_pruned_entries_and_passes_others_through():
    bias = torch.tensor([1.0])
    params = {"w": torch.tensor([float("nan"), float("inf"), -0.0, 2.0]), "b": bias}
    out = fprune.apply_masks(params, {"w": torch.tensor([False, False, False, True])})
    assert out["w"].tolist() == [0.0, 0.0, 0.0, 2.0]
    assert not torch.signbit(out["w"][:3]).any()  # exactly +0.0
    assert out["b"] is bias
    assert torch.isnan(params["w"][0])  # input untouched


def test_apply_masks_keeps_gradients_for_kept_weights():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    out = fprune.apply_masks({"w": w}, {"w": torch.tensor([True, False])})
    out["w"].sum().backward()
    assert w.grad.tolist() == [1.0, 0.0]


def test_apply_masks_bad_arguments():
    p = {"w": torch.ones(2)}
    with pytest.raises(
        ValueError, match=r"apply_masks: masks has names that params lacks \(got \['v'\]\)"
    ):
        fprune.apply_masks(p, {"v": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(
        ValueError,
        match=r"apply_masks: masks\['w'\] has a different shape from params\['w'\] "
        r"\(got \(3,\) vs \(2,\)\)",
    ):
        fprune.apply_masks(p, {"w": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(
        TypeError,
        match=r"apply_masks: masks\['w'\] must be a torch.bool mask \(got torch.float32\)",
    ):
        fprune.apply_masks(p, {"w": torch.ones(2)})


def test_previous_masks_nest_and_a_lower_sparsity_revives_only_the_surplus():
    """As documented: at a sparsity of at least the previous masks' none revives; at a lower
    one the count is still exact, and every unit pruned is one pruned before."""
    scores = {"w": torch.randn(8, 8, generator=torch.Generator().manual_seed(0))}
    half = fprune.masks(scores, pattern="1x1", sparsity=0.5, scope="local")
    more = fprune.masks(scores, pattern="1x1", sparsity=0.75, scope="local", previous=half)
    assert not (more["w"] & ~half["w"]).any()  # nothing revives
    fewer = fprune.masks(scores, pattern="1x1", sparsity=0.25, scope="local", previous=half)
    assert int((~fewer["w"]).sum()) == 16
    assert not (~fewer["w"] & half["w"]).any()  # only units pruned before stay pruned


ZERO_SIZE = [(0, 8), (8, 0), (0, 0), (4, 0, 3, 3)]


@pytest.mark.parametrize("pattern", ["1x1", "4x1", "2:4", "channelx1", "1xchannel"])
@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("shape", ZERO_SIZE)
def test_a_layer_with_a_zero_size_dimension_gets_an_empty_mask(pattern, scope, shape):
    """No units, nothing to prune: an empty bool mask, and the other layers as without it."""
    other = torch.randn(8, 8, generator=torch.Generator().manual_seed(0)).abs()
    got = fprune.masks(
        {"a": other, "z": torch.zeros(shape)}, pattern=pattern, sparsity=0.5, scope=scope
    )
    assert got["z"].shape == shape and got["z"].dtype == torch.bool
    alone = fprune.masks({"a": other}, pattern=pattern, sparsity=0.5, scope=scope)
    assert torch.equal(got["a"], alone["a"])


@pytest.mark.parametrize("criterion", ["magnitude", "gradient", "snip", "snip_momentum"])
@pytest.mark.parametrize("pattern", ["1x1", "4x1", "2:4", "channelx1"])
def test_the_pruner_steps_over_zero_size_layers(criterion, pattern):
    prune = fprune.pruner(0.5, pattern=pattern, criterion=criterion, end_step=2)
    params = {"a": torch.randn(8, 8), "z": torch.zeros(0, 8), "y": torch.zeros(4, 0, 3, 3)}
    state = prune.init(params)
    for _ in range(3):
        state, got = prune.step(state, params, params)
    assert got["z"].shape == (0, 8) and got["y"].shape == (4, 0, 3, 3)
    assert fprune.total_sparsity(got) == 0.5
