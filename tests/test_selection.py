from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fprune
from fprune.masking import global_masks, local_masks
from fprune.selection import rank_keys
from tests import reference, strategies
from tests.strategies import same_bits

bound_pairs = st.tuples(strategies.sparsities, st.floats(0, 1), st.floats(0, 1)).map(
    # (sparsity, lo, hi) with lo <= sparsity <= hi <= 1
    lambda t: (t[0], t[0] * t[1], t[0] + (1 - t[0]) * t[2])
)


def pruned_count(masks):
    return sum(int((~m).sum()) for m in masks.values())


@given(strategies.score_dicts(conv=False), strategies.sparsities)
def test_local_masks_exact_count(scores, sparsity):
    masks = local_masks(scores, sparsity=sparsity)
    for name, score in scores.items():
        assert masks[name].dtype == torch.bool and masks[name].shape == score.shape
        assert int((~masks[name]).sum()) == reference.count(sparsity, score.numel())


@given(strategies.score_dicts(conv=False), bound_pairs)
def test_global_masks_exact_count_within_bounds(scores, bounds):
    sparsity, lo, hi = bounds
    masks = global_masks(scores, sparsity=sparsity, min_layer_sparsity=lo, max_layer_sparsity=hi)
    high = sum(reference.count(hi, s.numel()) for s in scores.values())
    total = reference.count(sparsity, sum(s.numel() for s in scores.values()))
    assert pruned_count(masks) == min(total, high)
    for name, score in scores.items():
        pruned = int((~masks[name]).sum())
        assert reference.count(lo, score.numel()) <= pruned <= reference.count(hi, score.numel())


@pytest.mark.usefixtures("math_only")  # the accelerator: tests/test_eager.py
@given(strategies.score_dicts(conv=False), bound_pairs, st.data())
def test_global_masks_equal_sort_reference(scores, bounds, data):
    sparsity, lo, hi = bounds
    previous = data.draw(strategies.previous_masks(scores))
    got = global_masks(
        scores, sparsity=sparsity, min_layer_sparsity=lo, max_layer_sparsity=hi, previous=previous
    )
    want = reference.global_masks(scores, sparsity, lo, hi, previous)
    assert same_bits(got, want)


@pytest.mark.usefixtures("math_only")
@given(strategies.score_dicts(conv=False), strategies.sparsities, st.data())
def test_local_masks_equal_sort_reference(scores, sparsity, data):
    previous = data.draw(strategies.previous_masks(scores))
    assert same_bits(
        local_masks(scores, sparsity=sparsity, previous=previous),
        reference.local_masks(scores, sparsity, previous),
    )


@given(strategies.score_dicts(conv=False), st.lists(strategies.sparsities, min_size=2, max_size=4))
def test_masks_nest_as_sparsity_grows(scores, levels):
    levels = sorted(levels)
    for select in (local_masks, global_masks):
        chained = [select(scores, sparsity=levels[0])]
        fresh = [chained[0]]
        for sparsity in levels[1:]:
            chained.append(select(scores, sparsity=sparsity, previous=chained[-1]))
            fresh.append(
                select(scores, sparsity=sparsity)
            )  # no previous: nested by the order alone
        for seq in (chained, fresh):
            for lower, higher in itertools.pairwise(seq):
                assert all(torch.all(~lower[n] <= ~higher[n]) for n in scores)


@given(
    strategies.score_dicts(conv=False, specials=False, dtype=torch.float32),
    strategies.sparsities,
    strategies.sparsities,
    st.integers(0, 2**31 - 1),
)
def test_masks_nest_across_steps_with_new_scores(scores, r1, r2, seed):
    r1, r2 = sorted((r1, r2))
    gen = torch.Generator().manual_seed(seed)
    later = {n: torch.randn(s.shape, generator=gen) for n, s in scores.items()}
    first = global_masks(scores, sparsity=r1)
    second = global_masks(later, sparsity=r2, previous=first)
    assert all(torch.all(~first[n] <= ~second[n]) for n in scores)
    assert pruned_count(second) == reference.count(r2, sum(s.numel() for s in scores.values()))


@given(
    st.sampled_from([torch.bfloat16, torch.float32, torch.float64])
    .flatmap(
        lambda dt: st.fixed_dictionaries(
            {},
            optional={
                n: strategies.tensors((4, 3), dtype=dt, specials=strategies.NORMAL_SPECIALS)
                for n in ("a.weight", "b.weight", "c.weight")
            },
        )
    )
    .filter(bool),
    bound_pairs,
    st.integers(-8, 8),
)
def test_masks_invariant_to_power_of_two_scaling(scores, bounds, exponent):
    sparsity, lo, hi = bounds
    scaled = {n: s * (2.0**exponent) for n, s in scores.items()}
    kw = dict(sparsity=sparsity, min_layer_sparsity=lo, max_layer_sparsity=hi)
    assert same_bits(global_masks(scores, **kw), global_masks(scaled, **kw))
    assert same_bits(local_masks(scores, sparsity=sparsity), local_masks(scaled, sparsity=sparsity))


@given(
    strategies.score_dicts(conv=False, min_layers=2), bound_pairs, st.randoms(use_true_random=False)
)
def test_masks_invariant_to_dict_order(scores, bounds, rnd):
    sparsity, lo, hi = bounds
    names = list(scores)
    rnd.shuffle(names)
    shuffled = {n: scores[n] for n in names}
    kw = dict(sparsity=sparsity, min_layer_sparsity=lo, max_layer_sparsity=hi)
    a, b = global_masks(scores, **kw), global_masks(shuffled, **kw)
    assert list(b) == names  # output follows the caller's order
    assert all(torch.equal(a[n], b[n]) for n in scores)


@given(strategies.score_dicts(conv=False), bound_pairs, st.data())
def test_selection_is_pure(scores, bounds, data):
    sparsity, lo, hi = bounds
    previous = data.draw(strategies.previous_masks(scores))
    before = {n: s.clone() for n, s in scores.items()}
    prev_before = None if previous is None else {n: m.clone() for n, m in previous.items()}
    global_masks(
        scores, sparsity=sparsity, min_layer_sparsity=lo, max_layer_sparsity=hi, previous=previous
    )
    local_masks(scores, sparsity=sparsity, previous=previous)
    assert same_bits(scores, before)
    assert previous is None or same_bits(previous, prev_before)


@given(
    st.lists(strategies.values(), min_size=1, max_size=40),
    st.sampled_from(strategies.FLOAT_DTYPES),
    st.data(),
)
def test_rank_keys_follow_the_canonical_order(vals, dtype, data):
    scores = torch.tensor(vals, dtype=torch.float64).to(dtype)
    pruned = torch.tensor(
        data.draw(st.lists(st.booleans(), min_size=len(vals), max_size=len(vals)))
    )
    keys = rank_keys(scores, pruned=pruned)
    ranks = [
        reference.rank(float(v), bool(p)) for v, p in zip(scores.double(), pruned, strict=True)
    ]
    for i in range(len(vals)):
        for j in range(len(vals)):
            assert (keys[i] < keys[j]) == (ranks[i] < ranks[j])
            assert (keys[i] == keys[j]) == (ranks[i] == ranks[j])


def test_rank_keys_golden_order():
    s = torch.tensor([5.0, float("nan"), -float("inf"), float("inf"), -0.0, 0.0, -3.0])
    pruned = torch.tensor([True, False, False, False, False, False, False])
    order = []
    for k in range(1, 7):
        m = local_masks({"w": s}, sparsity=k / 7, previous={"w": ~pruned})["w"]
        assert int((~m).sum()) == k
        order.append(next(i for i in range(7) if not m[i] and i not in order))
    # pruned, NaN, -inf, -3, -0.0 then 0.0 (a tie: index order); +inf (index 3) is kept last
    assert order == [0, 1, 2, 6, 4, 5] and bool(m[3])
    keys = rank_keys(s)
    assert keys[4] == keys[5]  # -0.0 == +0.0
    assert rank_keys(s.double()).dtype == torch.int64 and keys.dtype == torch.int32


def test_ties_break_by_sorted_name_then_index():
    ones = torch.ones(4)
    m = global_masks({"b.weight": ones, "a.weight": ones.clone()}, sparsity=0.5)
    assert m["a.weight"].tolist() == [False] * 4 and m["b.weight"].tolist() == [True] * 4
    m = global_masks({"b.weight": ones, "a.weight": ones.clone()}, sparsity=0.25)
    assert m["a.weight"].tolist() == [False, False, True, True]
    assert local_masks({"w": torch.ones(2, 3)}, sparsity=0.5)["w"].tolist() == [
        [False, False, False],
        [True, True, True],
    ]


def test_global_max_bound_caps_layers_and_others_absorb():
    # The INC case: target 0.8, max 0.82; two low-score layers cap at floor(0.82 * 50) = 41.
    gen = torch.Generator().manual_seed(0)
    scores = {
        "a.weight": torch.rand(50, generator=gen) * 0.01,
        "b.weight": torch.rand(50, generator=gen) * 0.01,
        "c.weight": 1 + torch.rand(100, generator=gen),
    }
    m = global_masks(scores, sparsity=0.8, max_layer_sparsity=0.82)
    counts = {n: int((~v).sum()) for n, v in m.items()}
    assert counts == {"a.weight": 41, "b.weight": 41, "c.weight": 78}
    # the capped layers keep their 9 highest scores
    for n in ("a.weight", "b.weight"):
        assert torch.equal(m[n], scores[n] >= scores[n].sort().values[41])


def test_global_min_bound_reserves_each_layer_its_minimum():
    scores = {"a.weight": torch.arange(10.0) * 0.01, "c.weight": 10 + torch.arange(10.0)}
    m = global_masks(scores, sparsity=0.5, min_layer_sparsity=0.3)
    assert (~m["a.weight"]).sum() == 7 and m["c.weight"].tolist() == [False] * 3 + [True] * 7
    m = global_masks(scores, sparsity=0.5, min_layer_sparsity=0.5)
    assert (~m["a.weight"]).sum() == 5 and (~m["c.weight"]).sum() == 5


def test_global_max_equal_to_sparsity_caps_every_layer():
    # floor(0.5 * 3) = 1 per layer cannot hold floor(0.5 * 6) = 3: each layer ends at its max.
    scores = {"a.weight": torch.tensor([1.0, 2.0, 3.0]), "b.weight": torch.tensor([4.0, 5.0, 6.0])}
    m = global_masks(scores, sparsity=0.5, max_layer_sparsity=0.5)
    assert m["a.weight"].tolist() == [False, True, True] and m["b.weight"].tolist() == [
        False,
        True,
        True,
    ]


def test_exact_count_survives_float_error():
    r = 1 - (0.5 ** (1 / 3)) ** 3  # 0.4999999999999999
    m = local_masks({"w": torch.rand(4, 8)}, sparsity=r)
    assert int((~m["w"]).sum()) == 16


def test_large_layers_count_in_int64():
    # 2**24 + 3 units: float32 cannot count this; the selection must still be exact.
    n = 2**24 + 3
    scores = {"w": torch.arange(n, dtype=torch.float64).remainder(7).float()}
    m = local_masks(scores, sparsity=0.5)["w"]
    assert int((~m).sum()) == math.floor(0.5 * n)
    assert bool((scores["w"][~m] <= scores["w"][m].min()).all())


def test_global_masks_random_against_reference_many_layers():
    rnd = random.Random(1)
    gen = torch.Generator().manual_seed(1)
    scores = {
        f"layers.{i}.weight": torch.randint(0, 5, (rnd.randint(1, 40),), generator=gen).float()
        for i in range(12)
    }
    for sparsity, lo, hi in [(0.7, 0.2, 0.8), (0.5, 0.0, 0.6), (0.9, 0.9, 0.95)]:
        got = global_masks(scores, sparsity=sparsity, min_layer_sparsity=lo, max_layer_sparsity=hi)
        assert same_bits(got, reference.global_masks(scores, sparsity, lo, hi))


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_sparsity_out_of_range_raises(bad):
    with pytest.raises(
        ValueError, match=r"global_masks: sparsity must be a fraction in \[0, 1\) \(got "
    ):
        global_masks({"w": torch.ones(4)}, sparsity=bad)
    with pytest.raises(ValueError, match=r"local_masks: sparsity must be a fraction"):
        local_masks({"w": torch.ones(4)}, sparsity=bad)


@pytest.mark.parametrize("bad", ["0.5", None, True, torch.tensor([0.5]), torch.tensor(1)])
def test_sparsity_of_wrong_type_raises(bad):
    with pytest.raises(TypeError, match=r"global_masks: sparsity"):
        global_masks({"w": torch.ones(4)}, sparsity=bad)


def test_bounds_must_bracket_sparsity():
    s = {"w": torch.ones(4)}
    with pytest.raises(
        ValueError, match=r"min_layer_sparsity exceeds sparsity \(got min 0.6 > sparsity 0.5\)"
    ):
        global_masks(s, sparsity=0.5, min_layer_sparsity=0.6)
    with pytest.raises(
        ValueError, match=r"sparsity exceeds max_layer_sparsity \(got sparsity 0.9 > max 0.8\)"
    ):
        global_masks(s, sparsity=0.9, max_layer_sparsity=0.8)
    with pytest.raises(ValueError, match=r"max_layer_sparsity must be a fraction in \[0, 1\]"):
        global_masks(s, sparsity=0.5, max_layer_sparsity=1.5)


def test_bad_dicts_raise():
    with pytest.raises(ValueError, match=r"global_masks: scores is empty \(got \{\}\)\. "):
        global_masks({}, sparsity=0.5)
    with pytest.raises(
        TypeError, match=r"scores\['w'\] must be a floating tensor \(got torch.int64\)"
    ):
        global_masks({"w": torch.ones(4, dtype=torch.int64)}, sparsity=0.5)
    with pytest.raises(
        TypeError, match=r"scores\['w'\] must be a floating tensor \(got torch.bool\)"
    ):
        local_masks({"w": torch.ones(4, dtype=torch.bool)}, sparsity=0.5)
    with pytest.raises(TypeError, match=r"scores must be a mapping"):
        global_masks([torch.ones(4)], sparsity=0.5)
    with pytest.raises(TypeError, match=r"previous\['w'\] must be a torch.bool mask"):
        global_masks({"w": torch.ones(4)}, sparsity=0.5, previous={"w": torch.ones(4)})
    with pytest.raises(
        ValueError,
        match=r"previous and scores have different keys "
        r"\(got missing \['w'\], unexpected \['v'\]\)",
    ):
        global_masks(
            {"w": torch.ones(4)}, sparsity=0.5, previous={"v": torch.ones(4, dtype=torch.bool)}
        )
    with pytest.raises(ValueError, match=r"previous\['w'\] has a different shape"):
        global_masks(
            {"w": torch.ones(4)}, sparsity=0.5, previous={"w": torch.ones(3, dtype=torch.bool)}
        )


def test_numpy_scalars_are_numbers():
    np = pytest.importorskip("numpy")
    s = {"w": torch.arange(8.0)}
    assert same_bits(global_masks(s, sparsity=np.float32(0.5)), global_masks(s, sparsity=0.5))
    assert same_bits(local_masks(s, sparsity=np.float64(0.25)), local_masks(s, sparsity=0.25))


def test_tensor_sparsity_equals_float_sparsity():
    gen = torch.Generator().manual_seed(3)
    scores = {"a": torch.randn(6, 5, generator=gen), "b": torch.randn(7, generator=gen)}
    for r in (0.0, 0.3, 0.71, 0.99):
        t = torch.tensor(r, dtype=torch.float64)
        assert same_bits(global_masks(scores, sparsity=t), global_masks(scores, sparsity=r))
        assert same_bits(local_masks(scores, sparsity=t), local_masks(scores, sparsity=r))
        assert same_bits(
            global_masks(
                scores, sparsity=t, max_layer_sparsity=torch.tensor(0.8, dtype=torch.float64)
            ),
            global_masks(scores, sparsity=r, max_layer_sparsity=0.8)
            if r <= 0.8
            else global_masks(
                scores, sparsity=t, max_layer_sparsity=torch.tensor(0.8, dtype=torch.float64)
            ),
        )


@given(strategies.tensors((3, 5), specials=strategies.SPECIALS), st.booleans())
def test_rank_keys_never_share_the_scores_memory(scores, nonnegative):
    """The eager shortcut (scores that already order as their bits) still returns a new tensor."""
    scores = scores.abs() if nonnegative else scores
    before = scores.clone()
    keys = rank_keys(scores)
    keys.fill_(0)
    assert same_bits({"s": scores}, {"s": before})


def test_rank_keys_refuses_what_it_would_order_wrongly():
    """int64 scores would round through float32 (2**24 and 2**24 + 1 would tie)."""
    with pytest.raises(TypeError, match="rank_keys: scores must be a floating tensor"):
        fprune.rank_keys(torch.tensor([2**24, 2**24 + 1]))
    with pytest.raises(TypeError, match="not a dict"):
        fprune.rank_keys({"w": torch.ones(2)})
    with pytest.raises(TypeError, match=r"pruned must be a bool tensor shaped like scores \(2,\)"):
        fprune.rank_keys(torch.ones(2), pruned=torch.ones(3, dtype=torch.bool))
    keys = fprune.rank_keys(torch.tensor([2**24, 2**24 + 1]).double())
    assert keys[0] < keys[1]


def test_a_sparsity_within_1e9_of_one_is_refused_like_one():
    """Counts are floor(s * n + 1e-9): 1 - 1e-10 would prune every unit of a small layer."""
    for value in (1.0, 1 - 1e-10):
        with pytest.raises(ValueError, match=r"sparsity must be a fraction in \[0, 1\)"):
            fprune.masks({"w": torch.ones(4, 4)}, pattern="1x1", sparsity=value, scope="local")
    kept = fprune.masks(
        {"w": torch.arange(16.0).reshape(4, 4)},
        pattern="1x1",
        sparsity=1 - 1e-8,
        scope="local",
        max_layer_sparsity=1.0,
    )["w"]
    assert int(kept.sum()) == 1
