from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fprune
from fprune.layout import to_2d
from fprune.patterns import parse_pattern
from tests import reference, strategies
from tests.strategies import same_bits


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Packed ranking takes 3 groups at a time, so every test crosses chunk boundaries."""
    from fprune import nm

    monkeypatch.setattr(nm, "_CHUNK", 3)


def group_pruned(mask: torch.Tensor, m: int) -> torch.Tensor:
    view = to_2d(mask)
    return (~view).reshape(view.shape[0], -1, m).sum(dim=-1)


@st.composite
def nm_case(draw):
    pattern = parse_pattern(draw(strategies.nm_patterns))
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


@given(nm_case(), st.sampled_from(["global", "local"]), st.sampled_from(["mean", "sum", "max"]), st.data())
def test_nm_masks_equal_sort_reference(case, scope, reduce, data):
    pattern, scores, sparsity = case
    views = {n: to_2d(s) for n, s in scores.items()}
    previous = data.draw(strategies.previous_masks(views))
    got = fprune.grid_masks(
        views, pattern=pattern, sparsity=sparsity, scope=scope, previous=previous, reduce=reduce,
        max_layer_sparsity=1.0,
    )
    want = reference.nm_masks(views, pattern.n, pattern.m, sparsity, scope, previous=previous, reduce=reduce)
    assert same_bits(got, want)


@given(nm_case(), st.lists(st.floats(0, 1), min_size=2, max_size=4))
def test_iterative_nm_nests(case, fractions):
    pattern, scores, _ = case
    previous = None
    for f in sorted(fractions):
        current = fprune.masks(scores, pattern=pattern, sparsity=f * pattern.max_sparsity, previous=previous)
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
    assert fprune.masks(s, pattern="2:4", sparsity=0.5)["w"].tolist() == [[False, False, True, True]]
    s = {"w": torch.tensor([[3.0, 1.0, 2.0, 1.0]])}
    assert fprune.masks(s, pattern="1:4", sparsity=0.25)["w"].tolist() == [[True, False, True, True]]


def test_nm_on_conv_groups_input_channels_at_one_tap():
    # [O=1, C=4, k=2]: tap t holds channels 0..3; 2:4 prunes 2 channels per tap.
    w = torch.tensor([[[1.0, 8.0], [2.0, 7.0], [3.0, 6.0], [4.0, 5.0]]])
    m = fprune.masks({"c": w}, pattern="2:4", sparsity=0.5)["c"]
    assert m[0, :, 0].tolist() == [False, False, True, True]  # tap 0: channels with 1, 2 go
    assert m[0, :, 1].tolist() == [True, True, False, False]  # tap 1: channels with 6, 5 go


@pytest.mark.parametrize(("pattern", "bad"), [("2:4", 0.6), ("1:4", 0.3), ("1:2", 0.51)])
def test_nm_sparsity_above_n_over_m_raises(pattern, bad):
    cap = parse_pattern(pattern).max_sparsity
    with pytest.raises(ValueError, match=rf"masks: pattern '{pattern}' cannot exceed sparsity N/M = {cap} \(got {bad}\)"):
        fprune.masks({"w": torch.rand(4, 8)}, pattern=pattern, sparsity=bad)


def test_nm_reaches_exactly_n_over_m():
    r = 1 - (0.5 ** (1 / 3)) ** 3  # 0.4999999999999999: INC leaves one group dense here
    m = fprune.masks({"w": torch.rand(8, 16)}, pattern="2:4", sparsity=r)["w"]
    assert bool((group_pruned(m, 4) == 2).all())


def test_nm_rejects_indivisible_inputs():
    with pytest.raises(ValueError, match=r"pattern '2:4' does not divide layer 'w' \(got shape \(4, 6\)"):
        fprune.masks({"w": torch.rand(4, 6)}, pattern="2:4", sparsity=0.5)


@given(nm_case(), st.sampled_from(["mean", "sum", "max"]), st.data())
def test_within_groups_pairwise_ranks_equal_the_stable_sort(case, reduce, data):
    """Groups up to ``_PAIRWISE`` are ranked by comparisons; larger ones by a stable sort.
    Both give the same N lowest weights and bit-identical group scores (rank order sums)."""
    from fprune import nm

    pattern, scores, _ = case
    for view in (to_2d(s) for s in scores.values()):
        seed = data.draw(st.one_of(st.none(), st.integers(0, 2**16)))
        pruned = None if seed is None else torch.rand(view.shape, generator=torch.Generator().manual_seed(seed)) < 0.3
        low, score = nm.within_groups(view, pattern, pruned=pruned, reduce=reduce)
        saved = nm._PAIRWISE
        nm._PAIRWISE = 0  # force the sort path
        try:
            want_low, want_score = nm.within_groups(view, pattern, pruned=pruned, reduce=reduce)
        finally:
            nm._PAIRWISE = saved
        assert torch.equal(low, want_low)
        nan = torch.isnan(score)  # NaN ranks first whatever its payload, so only NaN-ness matters
        assert torch.equal(nan, torch.isnan(want_score))
        assert same_bits({"s": score[~nan]}, {"s": want_score[~nan]})
        assert bool((low.sum(dim=-1) == pattern.n).all())  # exactly N per group


@given(nm_case(), st.sampled_from(["global", "local"]), st.data())
def test_nm_masks_at_full_conversion_skip_selection_exactly(case, scope, data):
    """At sparsity N/M every group converts: the eager shortcut equals the general selection."""
    from fprune import nm

    pattern, scores, _ = case
    views = {n: to_2d(s) for n, s in scores.items()}
    previous = data.draw(strategies.previous_masks(views))
    kwargs = dict(pattern=pattern, sparsity=pattern.max_sparsity, scope=scope, min_layer_sparsity=0.0,
                  max_layer_sparsity=1.0, previous=previous, reduce="mean")
    got = nm.nm_masks(views, **kwargs)
    saved = nm._every_group
    nm._every_group = lambda fraction: False
    try:
        want = nm.nm_masks(views, **kwargs)
    finally:
        nm._every_group = saved
    assert same_bits(got, want)
    assert same_bits(got, reference.nm_masks(views, pattern.n, pattern.m, pattern.max_sparsity, scope, previous=previous))


int32_keys = st.one_of(
    st.integers(-3, 3),  # heavy ties
    st.sampled_from([-(2**31), -(2**31) + 1, 2**31 - 1, 0x7F800000, 0]),  # the ends and +inf's bits
    st.integers(-(2**31), 2**31 - 1),
)


@given(st.integers(1, 7), st.data())
def test_packed_ranks_equal_the_pairwise_ranks(n_groups, data):
    """The packed word's byte i is rank_i + 64 - n, for every N below M = 4, any chunking
    and any int32 keys (ties, both ends); its bit 6 per byte answers rank >= n."""
    from fprune import nm

    keys = torch.tensor(data.draw(st.lists(int32_keys, min_size=4 * n_groups, max_size=4 * n_groups)),
                        dtype=torch.int32).reshape(n_groups, 4)
    ranks = torch.stack(nm._ranks(keys[None], inplace=True), dim=-1)[0]
    assert torch.equal(ranks.sort(dim=-1).values, torch.arange(4, dtype=torch.uint8).expand(n_groups, 4))
    for n in range(1, 4):
        word = nm._packed_ranks(keys, n)
        assert word.dtype == torch.int32 and word.shape == (n_groups,)
        assert torch.equal(word.view(torch.uint8).view(n_groups, 4).int() - (64 - n), ranks.int())
        for flip in (False, True):
            got = nm._packed_at_least(word, 4, flip=flip, inplace=False)
            assert torch.equal(got, ranks < n if flip else ranks >= n)


@given(nm_case(), st.sampled_from([None, "mean", "max"]), st.booleans(), st.data())
def test_packed_and_interleaved_rankings_agree(case, reduce, complement, data):
    """Eager groups of 4 are ranked into packed words; other eager groups (and traced ones)
    interleave per-position ranks. Forced onto one path, a 4-group layer gives the same
    masks and bit-identical group scores on the other."""
    from fprune import nm

    pattern, scores, _ = case
    for view in (to_2d(s) for s in scores.values()):
        seed = data.draw(st.one_of(st.none(), st.integers(0, 2**16)))
        pruned = None if seed is None else torch.rand(view.shape, generator=torch.Generator().manual_seed(seed)) < 0.3
        kwargs = dict(pruned=pruned, reduce=reduce, complement=complement)
        low, score = nm.within_groups(view, pattern, **kwargs)
        saved = nm._packs
        nm._packs = lambda keys, m: False
        try:
            want_low, want_score = nm.within_groups(view, pattern, **kwargs)
        finally:
            nm._packs = saved
        assert torch.equal(low, want_low)
        assert (score is None) == (want_score is None) == (reduce is None)
        if score is not None:
            assert same_bits({"s": score}, {"s": want_score})


def _grouped(view: torch.Tensor, m: int) -> torch.Tensor:
    """``view`` as ``[rows, cols / m, m]`` with each group position's scores contiguous (the
    layout the pruner writes a column at a time)."""
    rows, cols = view.shape
    columns = view.reshape(-1, m).t().contiguous()
    grouped = columns.t().view(rows, cols // m, m)
    assert same_bits({"v": grouped.reshape(rows, cols)}, {"v": view})
    assert all(grouped[..., i].is_contiguous() for i in range(m))
    return grouped


@given(nm_case(), st.sampled_from([None, "mean", "sum", "max"]), st.booleans(), st.data())
def test_within_groups_reads_a_grouped_layout_alike(case, reduce, complement, data):
    """Scores handed over grouped, each group position contiguous (packed groups of 4 are
    then compared where they lie), give the same masks and bit-identical group scores as
    the 2-D view, with pruned weights, specials and every dtype."""
    from fprune import nm

    pattern, scores, _ = case
    for view in (to_2d(s) for s in scores.values()):
        seed = data.draw(st.one_of(st.none(), st.integers(0, 2**16)))
        pruned = None if seed is None else torch.rand(view.shape, generator=torch.Generator().manual_seed(seed)) < 0.3
        kwargs = dict(pruned=pruned, reduce=reduce, complement=complement)
        low, score = nm.within_groups(_grouped(view, pattern.m), pattern, **kwargs)
        want_low, want_score = nm.within_groups(view, pattern, **kwargs)
        assert torch.equal(low, want_low) and low.is_contiguous()
        assert (score is None) == (want_score is None) == (reduce is None)
        if score is not None:
            nan = torch.isnan(score)
            assert torch.equal(nan, torch.isnan(want_score))
            assert same_bits({"s": score[~nan]}, {"s": want_score[~nan]})


@given(st.sampled_from(["magnitude", "snip", "gradient"]), st.sampled_from(["global", "local"]),
       st.sampled_from(["2:4", "1:4", "3:4"]), st.sampled_from(strategies.FLOAT_DTYPES), st.data())
def test_pruner_scores_groups_of_four_a_column_at_a_time_alike(criterion, scope, pattern, dtype, data):
    """When every group converts, the pruner's eager step scores each group position of a 2-D
    weight from a strided view into one contiguous column (``nm_masks``'s ``grouped``); the
    masks equal those of the plain 2-D scores, across steps whose earlier masks prune some
    groups already, with specials, ties and every dtype."""
    from fprune import nm

    pat = parse_pattern(pattern)
    shapes = data.draw(st.lists(strategies.divisible_shape(1, 4), min_size=1, max_size=3))
    params = {f"l{i}.weight": data.draw(strategies.tensors(shape, dtype=dtype)) for i, shape in enumerate(shapes)}
    grads = [{n: data.draw(strategies.tensors(p.shape, dtype=dtype)) for n, p in params.items()} for _ in range(3)]
    prune = fprune.pruner(pat.max_sparsity, pattern=pattern, criterion=criterion, scope=scope, start_step=0,
                          end_step=2, max_layer_sparsity=1.0)  # steps 0 and 1 convert some groups, step 2 all
    real, layouts = nm._packed_ranks, []

    def spy(keys, n):
        layouts.append(keys.stride(0) == 1 and keys.shape[0] > 1)
        return real(keys, n)

    columns = plain = prune.init(params)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nm, "_packed_ranks", spy)
        for g in grads:
            columns, got = prune.step(columns, params, g)
            mp.setattr(nm, "by_columns", lambda m, device: False)
            plain, want = prune.step(plain, params, g)
            mp.undo()
            mp.setattr(nm, "_packed_ranks", spy)
            assert same_bits(got, want)
    groups = sum(p.numel() // 4 for p in params.values())
    if groups > len(params):  # a layer of more than one group was ranked where it lies, at the last step
        assert any(layouts)


def test_below_and_at_least_compare_every_rank():
    """By arithmetic on uint8 ranks below 128; and where one bit of the rank answers (n a power
    of two, m <= 2n: 1:2, 2:4, 4:8 ...), the shift the eager ranking uses."""
    from fprune.nm import _at_least, _below, _halves

    ranks = torch.arange(128, dtype=torch.uint8)
    for n in range(1, 128):
        assert torch.equal(_below(ranks, n), ranks < n)
        assert torch.equal(_at_least(ranks, n), ranks >= n)
    for m in range(2, 129):
        for n in range(1, m):
            shift = _halves(n, m)
            assert (shift is not None) == (n & (n - 1) == 0 and m <= 2 * n)
            if shift is not None:
                below_m = ranks[:m]
                assert torch.equal((below_m >> shift).view(torch.bool), below_m >= n)


PAIR_VALUES = st.one_of(
    st.sampled_from([0.0, -0.0]),  # signed zeros often, so two -0.0 are often a group's lowest
    st.sampled_from([float("inf"), -float("inf"), float("nan"), 1e-45, -1e-45, 3e38, -3e38, 1.0, -1.0]),
    st.floats(width=32, allow_nan=False),
)


@given(st.sampled_from(["2:3", "2:4", "2:8"]), st.sampled_from(strategies.FLOAT_DTYPES),
       st.sampled_from(["mean", "sum"]), st.booleans(), st.data())
def test_two_lowest_scores_equal_the_rank_order_picks(pattern, dtype, reduce, complement, data):
    """With N = 2, an eager sum or mean adds the two lowest with -0.0 for the others (no
    selection); it equals the rank-order picks bit for bit, overflow, signed zeros,
    subnormals and infinities included (NaN: only NaN-ness)."""
    from fprune import nm

    pattern = parse_pattern(pattern)
    rows, groups = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    vals = data.draw(st.lists(PAIR_VALUES, min_size=rows * groups * pattern.m, max_size=rows * groups * pattern.m))
    view = torch.tensor(vals, dtype=torch.float64).reshape(rows, -1).to(dtype)
    pruned = data.draw(st.one_of(st.none(), st.lists(st.booleans(), min_size=view.numel(), max_size=view.numel())))
    pruned = None if pruned is None else torch.tensor(pruned).reshape(view.shape)
    kwargs = dict(pruned=pruned, reduce=reduce, complement=complement)
    low, score = nm.within_groups(view, pattern, **kwargs)
    saved = nm._BITS
    nm._BITS = {}  # no dtype qualifies: the general picks
    try:
        want_low, want_score = nm.within_groups(view, pattern, **kwargs)
    finally:
        nm._BITS = saved
    assert torch.equal(low, want_low)
    nan = torch.isnan(score)
    assert torch.equal(nan, torch.isnan(want_score))
    assert same_bits({"s": score[~nan]}, {"s": want_score[~nan]})


def test_two_lowest_mean_golden():
    """Hand-computed: the two lowest of each group (ties to the lower index) averaged; two
    -0.0 average to +0.0, as torch.mean gives; overflow of the pair sum gives inf."""
    from fprune import nm

    view = torch.tensor([[-0.0, -0.0, 1.0, 2.0, 3e38, 3e38, 3e38, 3e38, 5.0, 1.0, 4.0, 2.0]])
    low, score = nm.within_groups(view, parse_pattern("2:4"), pruned=None, reduce="mean")
    assert low.tolist() == [[[True, True, False, False], [True, True, False, False], [False, True, False, True]]]
    assert score.tolist() == [[0.0, float("inf"), 1.5]]
    assert not bool(torch.signbit(score[0, 0]))
