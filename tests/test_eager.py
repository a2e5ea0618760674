"""The eager accelerator (fprune._eager) gives the math's results bit for bit.

This is the boundary suite: at the dispatch point (fprune.masking and the pruner), every
result with the accelerator on equals the result with it off (``tuned(eager=False)``: the
traceable math) and the sort reference, on the strategies of the math's own tests (heavy
ties, NaN, +-inf, +-0, subnormals, all four float dtypes, bounds, previous masks, N:M,
blocks, conv layouts). The accelerator may decline (then the math runs); it must never be
wrong. Its sizes are shrunk with ``tuned(...)`` so that hypothesis-sized inputs are sampled
with a stride, chunked and grouped as large models are. Below the boundary, its pieces are
checked against direct computations (scans, sorts, ``nonzero``).
"""

from __future__ import annotations

import dataclasses
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fprune
from fprune import _eager, nm, selection
from fprune._eager import compare, keys, order, sample, scoring, settle
from fprune._eager import nm as eager_nm
from fprune._eager.scratch import Scratch
from fprune._tuning import tuned
from fprune.layout import to_2d
from fprune.patterns import parse_pattern
from tests import reference, strategies
from tests.strategies import same_bits

bound_pairs = st.tuples(strategies.sparsities, st.floats(0, 1), st.floats(0, 1)).map(
    lambda t: (t[0], t[0] * t[1], t[0] + (1 - t[0]) * t[2])
)
# sizes that make hypothesis' small layers take every path of a large model's selection
SMALL = dict(
    sample=16, alone_sample=8, local_sample=8, compare_chunk=7, key_group=5, nm_chunk=3, piece=200
)


def _both(fn):
    """``fn()`` with the accelerator on (small sizes) and off (the math)."""
    with tuned(**SMALL):
        got = fn()
    with tuned(eager=False):
        want = fn()
    return got, want


# -- the dispatch point: public functions, accelerator on and off --------------------------


@given(strategies.score_dicts(conv=False), bound_pairs, st.sampled_from([0, 1 << 18]), st.data())
def test_global_selection_equals_the_sort_reference(scores, bounds, union_max, data):
    """Candidates put in order per layer (``union_max=0``) or in one sort. (The math equals
    the same reference on the same strategies: tests/test_selection.py.)"""
    sparsity, lo, hi = bounds
    previous = data.draw(strategies.previous_masks(scores))
    with tuned(**SMALL, union_max=union_max):
        got = fprune.global_masks(
            scores,
            sparsity=sparsity,
            min_layer_sparsity=lo,
            max_layer_sparsity=hi,
            previous=previous,
        )
    assert same_bits(got, reference.global_masks(scores, sparsity, lo, hi, previous))


@given(strategies.score_dicts(conv=False), strategies.sparsities, st.data())
def test_local_selection_equals_the_sort_reference(scores, sparsity, data):
    previous = data.draw(strategies.previous_masks(scores))
    with tuned(**SMALL):
        got = fprune.local_masks(scores, sparsity=sparsity, previous=previous)
    assert same_bits(got, reference.local_masks(scores, sparsity, previous))


@settings(max_examples=100)  # each example selects twice, accelerator and math
@given(
    strategies.any_patterns,
    st.sampled_from(["global", "local"]),
    st.sampled_from(["mean", "sum", "max"]),
    st.data(),
)
def test_masks_equal_the_math_for_every_pattern(pattern, scope, reduce, data):
    """Blocks and N:M, conv layouts, previous masks, bounds."""
    pat = parse_pattern(pattern)
    scores = data.draw(strategies.score_dicts(pattern))
    sparsity = data.draw(st.floats(0, 1)) * (
        pat.max_sparsity if isinstance(pat, fprune.NM) else 0.99
    )
    lo, hi = (
        sparsity * data.draw(st.floats(0, 1)),
        data.draw(st.sampled_from([1.0, max(sparsity, 0.98), max(sparsity, 0.9)])),
    )
    previous = data.draw(strategies.previous_masks(scores))
    kwargs = dict(
        pattern=pattern,
        sparsity=sparsity,
        scope=scope,
        min_layer_sparsity=lo,
        max_layer_sparsity=hi,
        previous=previous,
        reduce=reduce,
    )
    got, want = _both(lambda: fprune.masks(scores, **kwargs))
    assert same_bits(got, want)


@settings(max_examples=100)  # each example selects three times: accelerator, math, reference
@given(
    strategies.nm_patterns,
    st.sampled_from(["global", "local"]),
    st.sampled_from(["mean", "sum", "max"]),
    st.booleans(),
    st.data(),
)
def test_nm_grid_masks_equal_the_math_and_the_sort_reference(pattern, scope, reduce, every, data):
    """``every``: at N/M every group converts (the eager complement, no group selection)."""
    pat = parse_pattern(pattern)
    views = {n: to_2d(s) for n, s in data.draw(strategies.score_dicts(pattern)).items()}
    sparsity = pat.max_sparsity if every else data.draw(st.floats(0, 1)) * pat.max_sparsity
    previous = data.draw(strategies.previous_masks(views))
    kwargs = dict(
        pattern=pattern,
        sparsity=sparsity,
        scope=scope,
        previous=previous,
        reduce=reduce,
        max_layer_sparsity=1.0,
    )
    got, want = _both(lambda: fprune.grid_masks(views, **kwargs))
    assert same_bits(got, want)
    assert same_bits(
        got,
        reference.nm_masks(views, pat.n, pat.m, sparsity, scope, previous=previous, reduce=reduce),
    )


@settings(max_examples=30)
@given(
    st.integers(0, 2**16),
    st.sampled_from(strategies.FLOAT_DTYPES),
    st.floats(0.05, 0.95),
    st.floats(0, 0.9),
    st.floats(0.25, 1),
)
def test_the_eager_selection_answers_on_model_like_scores(seed, dtype, sparsity, lo_frac, hi_frac):
    """On continuous scores the bracket holds: the eager selection answers (and exactly)."""
    lo, hi = sparsity * lo_frac, sparsity + (1 - sparsity) * hi_frac
    gen = torch.Generator().manual_seed(seed)
    scores = {
        f"l{i}.weight": torch.randn(64, 48, generator=gen).abs().to(dtype) * (i + 1)
        for i in range(3)
    }
    with tuned(sample=2048):  # a stride of 4 on these 9216 units
        got = _settle(scores, None, sparsity=sparsity, lo=lo, hi=hi)
    assert got is not None
    assert same_bits(got, reference.global_masks(scores, sparsity, lo, hi))


def test_a_missed_bracket_declines_and_the_math_answers():
    gen = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(64, 64, generator=gen), "b": torch.rand(64, 64, generator=gen)}
    with tuned(z=-50.0):  # a bracket far from the threshold
        assert _settle(scores, None, sparsity=0.5, lo=0.0, hi=1.0) is None
        got = fprune.masks(scores, pattern="1x1", sparsity=0.5, max_layer_sparsity=1.0)
    assert same_bits(got, reference.global_masks(scores, 0.5))


@settings(max_examples=60)  # each example is 6 pruner steps
@given(
    pattern=st.sampled_from(
        ["1x1", "2x1", "1x2", "4x1", "2x2", "channelx1", "1xchannel", "2:4", "1:4", "2:8"]
    ),
    criterion=st.sampled_from(["magnitude", "gradient", "snip", "snip_momentum"]),
    scope=st.sampled_from(["global", "local"]),
    dtype=st.sampled_from(strategies.FLOAT_DTYPES),
    data=st.data(),
)
def test_pruner_steps_equal_the_math(pattern, criterion, scope, dtype, data):
    """Pruner steps with the accelerator on and off, from partly pruned masks, with ties and
    specials, conv layers, every dtype: the same masks and accumulators. With small sizes the
    eager step samples from the weights with strides, scores 2-D block layers in pieces and,
    at N/M, N:M layers a group position at a time."""
    pat = parse_pattern(pattern)
    shapes = data.draw(
        st.lists(
            strategies.divisible_shape(*_sides(pattern), conv=data.draw(st.booleans())),
            min_size=1,
            max_size=3,
        )
    )
    params = {
        f"l{i}.weight": data.draw(strategies.tensors(shape, dtype=dtype))
        for i, shape in enumerate(shapes)
    }
    grads = [
        {n: data.draw(strategies.tensors(p.shape, dtype=dtype)) for n, p in params.items()}
        for _ in range(3)
    ]
    sparsity = pat.max_sparsity if isinstance(pat, fprune.NM) else data.draw(st.floats(0.05, 0.95))
    prune = fprune.pruner(
        sparsity,
        pattern=pattern,
        criterion=criterion,
        scope=scope,
        start_step=0,
        end_step=2,
        max_layer_sparsity=1.0,
    )  # steps 0 and 1 prune some units, step 2 all the target
    fast = slow = prune.init(params)
    for g in grads:
        with tuned(**SMALL):
            fast, got = prune.step(fast, params, g)
        with tuned(eager=False):
            slow, want = prune.step(slow, params, g)
        assert same_bits(got, want)
        assert fast.aux.keys() == slow.aux.keys() and all(
            _same_scores(fast.aux[n], slow.aux[n]) for n in fast.aux
        )


def _sides(pattern: str) -> tuple[int, int]:
    if ":" in pattern:
        return 1, int(pattern.split(":")[1])
    rows, cols = pattern.split("x")
    return (1 if rows == "channel" else int(rows), 1 if cols == "channel" else int(cols))


@given(
    pattern=st.sampled_from(["2x1", "1x2", "4x1", "channelx1", "1xchannel"]),
    scope=st.sampled_from(["global", "local"]),
    sparsity=st.floats(0.05, 0.95),
    kept=st.floats(0.3, 1.0),
    seed=st.integers(0, 2**16),
    strided=st.booleans(),
)
def test_block_steps_from_earlier_masks_equal_the_masks_primitive(
    pattern, scope, sparsity, kept, seed, strided
):
    """An eager block-pattern step from partly pruned masks equals ``masks(|w|, previous=...)``
    within the earlier masks, ties included: the 2-D layers get their weight-shaped masks during
    the pass, the conv layer is expanded afterwards. ``strided``: samples small enough that the
    step samples every few units from the weights, as on a large model."""
    g = torch.Generator().manual_seed(seed)
    params = {
        "a": torch.randint(0, 4, (8, 16), generator=g).float(),  # heavy ties and zeros
        "b": torch.randn(16, 8, generator=g),
        "c": torch.randn(8, 4, 2, 2, generator=g),
    }
    pat = fprune.parse_pattern(pattern)
    grids = {
        n: torch.rand(fprune.grid_shape(pat, p.shape), generator=g) < kept
        for n, p in params.items()
    }
    previous = fprune.expand_masks(
        grids, pattern=pat, shapes={n: p.shape for n, p in params.items()}
    )
    prune = fprune.pruner(sparsity, pattern=pattern, criterion="magnitude", scope=scope)
    state = dataclasses.replace(prune.init(params), masks=previous)
    with tuned(**(dict(sample=8, alone_sample=4, local_sample=4) if strided else {})):
        _, got = prune.step(state, params)
    want = fprune.masks(
        {n: p.abs() for n, p in params.items()},
        pattern=pattern,
        sparsity=sparsity,
        scope=scope,
        previous=previous,
    )
    assert all(torch.equal(got[n], want[n] & previous[n]) for n in params)  # nothing revives


# -- the eager selection's pieces ----------------------------------------------------------


def _settle(scores, previous, **kw):
    """The eager settle selection on flat unit scores (None where it declines)."""
    names = sorted(scores)
    flat = {n: s.reshape(-1) for n, s in scores.items()}
    prev = None if previous is None else {n: m.reshape(-1) for n, m in previous.items()}
    units = sample.Units(flat.__getitem__, (lambda n: None) if prev is None else prev.__getitem__)
    sizes = [scores[n].numel() for n in names]
    if "lo" in kw:
        got = settle.select_global(names, sizes, units, **kw)
    else:
        got = settle.select_local(names, sizes, units, **kw)
    return None if got is None else {n: got[n].reshape(scores[n].shape) for n in scores}


@given(st.integers(0, 300), st.floats(0.0, 1.0), st.integers(0, 9), st.integers(0, 2**16))
def test_candidate_indices_equal_nonzero(size, density, offset, seed):
    """The word-wise candidate scan gives ``nonzero``'s indices, in order, at any length and
    offset."""
    mask = torch.rand(size + offset, generator=torch.Generator().manual_seed(seed)) < density
    view = mask[offset:]
    assert torch.equal(compare.indices(view), view.nonzero().squeeze(1))


@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.sampled_from([1, 2, 3, 4, 8]),
    st.booleans(),
    st.booleans(),
)
def test_grid_sample_takes_its_positions_as_a_copy(rows, cols, stride, transposed, flat):
    """``grid_sample`` takes the units ``sample_positions`` names, in that order, from any
    strided grid (a transposed one, a 1-D one as one row), and returns a copy."""
    t = (
        torch.arange(rows * cols, dtype=torch.float32).reshape(cols, rows).t()
        if transposed
        else (torch.arange(rows * cols, dtype=torch.float32).reshape(rows, cols))
    )
    t = t.reshape(-1) if flat else t
    r, c = (1, rows * cols) if flat else (rows, cols)
    got = sample.grid_sample(t, stride)
    assert torch.equal(got, t.reshape(-1)[sample.sample_positions(r, c, stride, t.device)])
    assert got.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()


@given(st.integers(1, 4), st.integers(1, 4), st.sampled_from([2, 4, 8]))
def test_a_stride_dividing_the_grid_samples_every_column_on_diagonals(groups, per_row, stride):
    """Where the stride divides both sides, each group of ``stride`` rows takes every column
    once (row ``r``: the columns ``c = r mod stride``); the sample has as many units as a
    flat stride would take."""
    rows, cols = groups * stride, per_row * stride
    assert sample.diagonal(rows, cols, stride)
    pos = sample.sample_positions(rows, cols, stride, torch.device("cpu"))
    assert pos.numel() == rows * cols // stride and torch.equal(
        pos, pos.sort().values
    )  # row-major order
    r, c = pos // cols, pos % cols
    assert torch.equal(c % stride, r % stride)
    for g in range(groups):
        taken = c[(r // stride) == g]
        assert torch.equal(taken.sort().values, torch.arange(cols))
    assert not sample.diagonal(rows + 1, cols, stride) and not sample.diagonal(rows, cols, 1)


@given(st.integers(0, 2**40), st.integers(1, 2**20))
def test_sampling_stride_is_the_nearest_power_of_two(units, size):
    """``units / sample`` rounded to a power of two in log scale (1 where the sample covers
    every unit)."""
    stride = sample.stride_for(units, size)
    assert stride >= 1 and stride & (stride - 1) == 0
    ratio = units / size
    if ratio <= 1:
        assert stride == 1
    else:
        assert ratio / 2**0.5 <= stride * (1 + 1e-12) and stride <= ratio * 2**0.5 * (1 + 1e-12)


@given(st.integers(0, 40), st.data())
def test_comparing_through_a_buffer_equals_comparing_into_bool(size, data):
    """Chunk by chunk through a float buffer of the scores' dtype: ``score > hi`` and
    ``lo <= score <= hi`` as bool comparisons give them, with NaN, infinities, signed zeros and
    subnormals, brackets from the scores themselves (ties at both ends) or open below."""
    score = data.draw(strategies.tensors((size,)))
    pool = [*score.tolist(), -0.0, 0.0, 1e-40]
    lo = data.draw(st.sampled_from([*pool, -float("inf")]))
    hi = (
        data.draw(st.sampled_from([v for v in pool if v == v]).filter(lambda v: v >= lo))
        if lo == lo
        else lo
    )
    if not lo <= hi:
        hi = lo = -float("inf")
    chunk = data.draw(st.integers(0, max(size, 1) + 3))  # 0: no buffer, bool comparisons
    buf = (
        torch.full((chunk,), 7.0, dtype=score.dtype) if chunk else None
    )  # stale values must not leak
    sure = torch.zeros(size, dtype=torch.bool)
    inside = torch.ones(size, dtype=torch.bool)
    count = compare.compare_into(sure, inside, score, lo, hi, buf)
    assert torch.equal(sure, score > hi)
    assert count == (None if buf is None else int((score > hi).sum()))
    assert torch.equal(inside, (score >= lo) & (score <= hi))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_the_count_through_a_buffer_is_exact_beyond_16_bit_integers(dtype):
    """5001 sure-kept scores in one chunk: a sum in float16 or bfloat16 would round it."""
    score = torch.ones(5003, dtype=dtype)
    score[:2] = 0.0
    sure, inside = torch.empty(5003, dtype=torch.bool), torch.empty(5003, dtype=torch.bool)
    assert (
        compare.compare_into(sure, inside, score, 0.0, 0.5, torch.empty(8192, dtype=dtype)) == 5001
    )
    assert int(inside.sum()) == 2


def test_all_true_reads_bytes_as_bools():
    assert keys.all_true(torch.ones(5, 3, dtype=torch.bool)) and keys.all_true(
        torch.ones(0, dtype=torch.bool)
    )
    assert not keys.all_true(torch.eye(3, dtype=torch.bool))
    assert keys.all_true(torch.ones(4, 6, dtype=torch.bool).t())  # non-contiguous


@given(
    st.sampled_from(strategies.FLOAT_DTYPES), st.booleans(), st.booleans(), st.booleans(), st.data()
)
def test_eager_rank_keys_equal_the_math(dtype, wide, with_pruned, transposed, data):
    """Every dtype and special value, pruned masks, int64 keys, a transposed layout."""
    scores = data.draw(
        strategies.tensors((3, 5), dtype=dtype, nonnegative=data.draw(st.booleans()))
    )
    scores = scores.t() if transposed else scores
    pruned = (
        torch.rand(scores.shape, generator=torch.Generator().manual_seed(1)) < 0.3
        if with_pruned
        else None
    )
    got = keys.rank_keys(scores, pruned=pruned, wide=wide)
    want = selection.rank_keys(scores, pruned=pruned, wide=wide)
    assert got.dtype == want.dtype and torch.equal(got, want)
    assert got.data_ptr() != scores.data_ptr()  # without share, never the scores' memory


def _scan(layers, base, k, low, high):
    """The smallest key whose bounded count reaches ``k``, by scanning every key value, and
    ``allocate``'s counts there (None, None where none does)."""

    def counts_at(t, right):
        return [
            b + sum(x <= t if right else x < t for x in v)
            for b, v in zip(base, layers, strict=True)
        ]

    def total(t):
        return sum(
            min(max(c, lo), hi) for c, lo, hi in zip(counts_at(t, True), low, high, strict=True)
        )

    t = next((t for t in sorted({x for v in layers for x in v}) if total(t) >= k), None)
    if t is None:
        return None, None
    below = counts_at(t, False)
    at = [c - b for c, b in zip(counts_at(t, True), below, strict=True)]
    tensors = [[torch.tensor(x) for x in xs] for xs in (below, at, low, high)]
    return t, [int(c) for c in selection.allocate(torch.tensor(k), *tensors)]


@st.composite
def _threshold_cases(draw, span=6, loose=False):
    """Per-layer keys in ``[-span, span]``, bases, bounds and a target; with ``loose``, each
    bound may also be absent (0, or every unit), as most layers' are in a model."""
    layers = draw(st.lists(st.lists(st.integers(-span, span), max_size=40), min_size=1, max_size=5))
    base = [draw(st.integers(0, 3)) for _ in layers]
    low = [0 if loose and draw(st.booleans()) else draw(st.integers(0, 3 + len(v))) for v in layers]
    high = [
        max(lo, b + len(v))
        if loose and draw(st.booleans())
        else lo + draw(st.integers(0, 3 + len(v)))
        for b, lo, v in zip(base, low, layers, strict=True)
    ]
    return layers, base, low, high, draw(st.integers(0, sum(high) + 1))


@given(_threshold_cases(), st.sampled_from([1, 2, 3, 1024]))
def test_threshold_search_equals_a_scan_of_every_key(case, exact):
    """The probing search (every round, ties, bounds, bases) returns the smallest key whose
    bounded count reaches k, as a scan over all key values does, or None where none does."""
    layers, base, low, high, k = case
    sorted_keys = [torch.tensor(sorted(v), dtype=torch.int32) for v in layers]
    with tuned(exact=exact):  # small: several probing rounds on these few keys
        assert (
            order.threshold(sorted_keys, base, k, low, high) == _scan(layers, base, k, low, high)[0]
        )


@settings(max_examples=300)
@given(st.one_of(_threshold_cases(), _threshold_cases(span=1000, loose=True)))
def test_sorted_keys_cut_equals_a_scan_of_every_key(case):
    """One sort of every layer's keys (any order in each, ties by index) gives the scan's
    threshold wherever it answers, with ``allocate``'s counts, and its pruned keys are the
    first in pruning order (key, layer, index) of the layers not held at a bound; its
    threshold (falling back to the per-layer search) always equals the scan's."""
    layers, base, low, high, k = case
    union = order.SortedKeys(
        torch.cat([torch.tensor(v, dtype=torch.int32) for v in layers]), [len(v) for v in layers]
    )
    want_t, want_counts = _scan(layers, base, k, low, high)
    assert union.threshold(base, k, low, high) == want_t
    assert [p.tolist() for p in union.per_layer()] == [sorted(v) for v in layers]
    cut = union.cut(base, k, low, high)
    if cut is None:
        return
    assert cut.key == want_t
    assert union.counts(cut, base, low, high) == want_counts
    held = (cut.at_high | cut.at_low).tolist()
    ordered = sorted(
        (x, i, j) for i, v in enumerate(layers) for j, x in enumerate(v) if not held[i]
    )
    need = k - sum(
        hi if h and hi_held else lo if h else b
        for b, lo, hi, h, hi_held in zip(base, low, high, held, cut.at_high.tolist(), strict=True)
    )
    pruned = sorted(sum(len(v) for v in layers[:i]) + j for _, i, j in ordered[:need])
    free = (
        union.order[: cut.end] if cut.free is None else union.order[: cut.end][cut.free[: cut.end]]
    )
    assert sorted(free.tolist()) == pruned


def test_sorted_keys_cut_holds_layers_at_their_bounds():
    """Layers whose counts cross their bounds are held there, and the cut still answers (no
    fall back to the per-layer search): one layer at its cap, one at its floor."""
    layers = [[1, 2, 3, 4, 5, 6, 7, 8], [5, 6, 7, 8, 9, 10, 11, 12], [0, 0, 0, 20, 21, 22, 23, 24]]
    base, low, high, k = [0, 0, 0], [0, 0, 5], [3, 8, 8], 10
    union = order.SortedKeys(
        torch.cat([torch.tensor(v, dtype=torch.int32) for v in layers]), [8, 8, 8]
    )
    cut = union.cut(base, k, low, high)
    assert cut is not None
    assert cut.at_high.tolist() == [True, False, False]
    assert cut.at_low.tolist() == [False, False, True]
    # held: 3 of layer 0, 5 of layer 2; the other 2 are layer 1's lowest: 5 and 6
    assert cut.key == 6
    assert union.counts(cut, base, low, high) == [3, 2, 5]
    assert (cut.key, union.counts(cut, base, low, high)) == _scan(layers, base, k, low, high)


@given(
    st.lists(
        st.one_of(
            st.lists(st.integers(-3, 3), max_size=40),  # heavy ties
            st.lists(st.integers(-(2**31), 2**31 - 1), max_size=40),  # spans too wide to share
            st.integers(-(2**31), 2**31 - 1 - 2**12).flatmap(
                lambda low: st.lists(st.integers(low, low + 2**12), max_size=40)
            ),  # narrow, anywhere
        ),
        max_size=10,
    ),
    st.sampled_from([1, 8, 32, 1 << 15]),
    st.sampled_from([torch.int32, torch.int64]),
    st.data(),
)
def test_candidates_put_in_order_together_equal_sorting_each_layer(layers, group, idx_dtype, data):
    """Candidates of several layers ordered as grouped composites equal a stable sort of each
    layer (key, then index), down to extreme int32 keys and spans too wide to share 31 bits;
    layers of ``radix`` candidates or more (made small here) are sorted alone, to the same."""
    key_dtype = data.draw(
        st.sampled_from([torch.int32, torch.int64])
    )  # int64: each layer sorted alone
    key_list = [torch.tensor(v, dtype=key_dtype) for v in layers]
    idx = [
        torch.tensor(
            sorted(data.draw(st.sets(st.integers(0, 10**6), min_size=len(v), max_size=len(v)))),
            dtype=idx_dtype,
        )
        for v in layers
    ]
    with tuned(order_group=group, radix=data.draw(st.sampled_from([8, 1 << 15]))):
        got_keys, got_idx = list(key_list), list(idx)
        order.order(got_keys, got_idx)
    for k, i, gk, gi in zip(key_list, idx, got_keys, got_idx, strict=True):
        want = torch.sort(k, stable=True)
        assert gk.dtype == key_dtype and gi.dtype == idx_dtype
        assert torch.equal(gk, want.values)
        assert torch.equal(gi, i[want.indices])


@given(st.sampled_from([torch.int32, torch.int64]), st.integers(0, 64), st.data())
def test_padded_sort_equals_a_stable_sort(dtype, n, data):
    """Keys padded to the radix size sort to the same values and indices as a stable sort,
    ties and keys equal to the padding value (the dtype's largest) included."""
    top = torch.iinfo(dtype).max
    values = data.draw(
        st.lists(st.sampled_from([-3, 0, 1, 2, top - 1, top]), min_size=n, max_size=n)
    )
    key_tensor = torch.tensor(values, dtype=dtype)
    with tuned(pad_from=0):  # pad every size
        got_values, got_order = order.sort(key_tensor)
    want = torch.sort(key_tensor, stable=True)
    assert got_values.dtype == dtype
    assert torch.equal(got_values, want.values)
    assert torch.equal(got_order, want.indices)


def _spy_alone():
    """Count the layers the eager selection settles alone (two more passes each)."""
    return mock.patch.object(settle, "alone", wraps=settle.alone)


def test_capped_layers_with_a_small_share_of_the_sample_are_resampled_not_settled_alone():
    """Many layers: each holds a small share of the sample, too small to bracket its own cap.
    A capped layer is then sampled again on its own, and nothing is settled alone; the masks
    are the sort reference's."""
    gen = torch.Generator().manual_seed(0)
    # every fourth layer is scaled down: at 80% globally it sits at its 0.98 cap
    scores = {
        f"l{i:02d}": torch.rand(64, 64, generator=gen) * (0.01 if i % 4 == 0 else 1.0)
        for i in range(40)
    }
    with (
        tuned(sample=4096, alone_sample=4096),
        _spy_alone() as alone,
    ):  # about 100 sample units per layer
        got = _settle(scores, None, sparsity=0.8, lo=0.0, hi=0.98)
    assert got is not None and alone.call_count == 0
    assert same_bits(got, reference.global_masks(scores, 0.8, 0.0, 0.98))


@pytest.mark.parametrize(("scale", "seed"), [(0.7, 0), (0.74, 1), (0.76, 2), (0.77, 3)])
def test_a_cap_just_below_the_bracket_is_settled_in_the_pass_not_alone(scale, seed):
    """A layer scaled so that its 0.98 cap lies near the global 80% bracket's lower end: its
    own bracket reaches into the global one, so its pass runs from its own lower end up, and
    it is not settled alone; the masks are the sort reference's."""
    gen = torch.Generator().manual_seed(seed)
    scores = {f"l{i}": torch.rand(64, 64, generator=gen) for i in range(8)}
    scores["l8"] = torch.rand(64, 64, generator=gen) * scale
    with tuned(sample=4096, alone_sample=4096), _spy_alone() as alone:
        got = _settle(scores, None, sparsity=0.8, lo=0.0, hi=0.98)
    assert got is not None and alone.call_count == 0
    assert same_bits(got, reference.global_masks(scores, 0.8, 0.0, 0.98))


def test_local_selection_settles_every_layer_in_one_pass():
    """Local scope on continuous scores: each layer's own strided sample brackets its count,
    one pass settles every layer (none alone), with and without previous masks."""
    gen = torch.Generator().manual_seed(0)
    scores = {f"l{i}": torch.rand(64, 16 * (i + 1), generator=gen) * (i + 1) for i in range(4)}
    previous = {n: torch.rand(s.shape, generator=gen) < 0.7 for n, s in scores.items()}
    with tuned(local_sample=1024, alone_sample=256), _spy_alone() as alone:  # strides of 4 to 16
        for prev in (None, previous):
            got = _settle(scores, prev, sparsity=0.6)
            assert got is not None
            assert same_bits(got, reference.local_masks(scores, 0.6, prev))
    assert alone.call_count == 0


# -- N:M -------------------------------------------------------------------------------------


@st.composite
def _nm_views(draw):
    pattern = parse_pattern(draw(strategies.nm_patterns))
    views = [to_2d(s) for s in draw(strategies.score_dicts(str(pattern))).values()]
    seed = draw(st.one_of(st.none(), st.integers(0, 2**16)))
    pruned = [
        None
        if seed is None
        else torch.rand(v.shape, generator=torch.Generator().manual_seed(seed)) < 0.3
        for v in views
    ]
    return pattern, views, pruned


def _grouped(view: torch.Tensor, m: int) -> torch.Tensor:
    """``view`` as ``[rows, cols / m, m]`` with each group position's scores contiguous (the
    layout the pruner writes a group position at a time)."""
    rows, cols = view.shape
    grouped = view.reshape(-1, m).t().contiguous().t().view(rows, cols // m, m)
    assert all(grouped[..., i].is_contiguous() for i in range(m))
    return grouped


def _same_scores(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Bit for bit, but NaN only as NaN: every NaN ranks alike, whatever its payload."""
    if a is None or b is None:
        return a is None and b is None
    nan = torch.isnan(a)
    return torch.equal(nan, torch.isnan(b)) and same_bits({"s": a[~nan]}, {"s": b[~nan]})


@given(_nm_views(), st.sampled_from([None, "mean", "sum", "max"]), st.booleans(), st.booleans())
def test_eager_within_groups_equals_the_math(case, reduce, complement, grouped):
    """Packed words (groups of 4), interleaved ranks with shifts, the N = 2 pair sums, the
    sort path (groups of 8), the complement, and a grouped layout: the math's flags and
    bit-identical group scores."""
    pattern, views, pruned = case
    with tuned(nm_chunk=3):  # packed ranking takes 3 groups at a time
        for view, prev in zip(views, pruned, strict=True):
            arg = _grouped(view, pattern.m) if grouped else view
            low, score = eager_nm.within_groups(
                arg, pattern, pruned=prev, reduce=reduce, complement=complement
            )
            want_low, want_score = nm.within_groups(view, pattern, pruned=prev, reduce=reduce)
            assert torch.equal(low, ~want_low if complement else want_low)
            assert _same_scores(score, want_score)


PAIR_VALUES = st.one_of(
    st.sampled_from([0.0, -0.0]),  # signed zeros often, so two -0.0 are often a group's lowest
    st.sampled_from(
        [float("inf"), -float("inf"), float("nan"), 1e-45, -1e-45, 3e38, -3e38, 1.0, -1.0]
    ),
    st.floats(width=32, allow_nan=False),
)


@given(
    st.sampled_from(["2:3", "2:4", "2:8"]),
    st.sampled_from(strategies.FLOAT_DTYPES),
    st.sampled_from(["mean", "sum"]),
    st.data(),
)
def test_two_lowest_scores_equal_the_rank_order_picks(pattern, dtype, reduce, data):
    """With N = 2, an eager sum or mean adds the two lowest with -0.0 for the others (no
    selection); it equals the math's rank-order picks bit for bit, overflow, signed zeros,
    subnormals and infinities included (NaN: only NaN-ness)."""
    pattern = parse_pattern(pattern)
    rows, groups = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    vals = data.draw(
        st.lists(
            PAIR_VALUES, min_size=rows * groups * pattern.m, max_size=rows * groups * pattern.m
        )
    )
    view = torch.tensor(vals, dtype=torch.float64).reshape(rows, -1).to(dtype)
    pruned = data.draw(
        st.one_of(st.none(), st.lists(st.booleans(), min_size=view.numel(), max_size=view.numel()))
    )
    pruned = None if pruned is None else torch.tensor(pruned).reshape(view.shape)
    low, score = eager_nm.within_groups(view, pattern, pruned=pruned, reduce=reduce)
    want_low, want_score = nm.within_groups(view, pattern, pruned=pruned, reduce=reduce)
    assert torch.equal(low, want_low) and _same_scores(score, want_score)


def test_two_lowest_mean_golden():
    """Hand-computed: the two lowest of each group (ties to the lower index) averaged; two
    -0.0 average to +0.0, as torch.mean gives; overflow of the pair sum gives inf."""
    view = torch.tensor([[-0.0, -0.0, 1.0, 2.0, 3e38, 3e38, 3e38, 3e38, 5.0, 1.0, 4.0, 2.0]])
    low, score = eager_nm.within_groups(view, parse_pattern("2:4"), pruned=None, reduce="mean")
    assert low.tolist() == [
        [[True, True, False, False], [True, True, False, False], [False, True, False, True]]
    ]
    assert score.tolist() == [[0.0, float("inf"), 1.5]]
    assert not bool(torch.signbit(score[0, 0]))


int32_keys = st.one_of(
    st.integers(-3, 3),  # heavy ties
    st.sampled_from([-(2**31), -(2**31) + 1, 2**31 - 1, 0x7F800000, 0]),  # the ends and +inf's bits
    st.integers(-(2**31), 2**31 - 1),
)


@given(st.integers(1, 7), st.data())
def test_packed_ranks_equal_the_math_ranks(n_groups, data):
    """The packed word's byte i is rank_i + 64 - n, for every N below M = 4, any chunking and
    any int32 keys (ties, both ends)."""
    key_tensor = torch.tensor(
        data.draw(st.lists(int32_keys, min_size=4 * n_groups, max_size=4 * n_groups)),
        dtype=torch.int32,
    ).reshape(n_groups, 4)
    ranks = torch.stack(nm.ranks(key_tensor[None]), dim=-1)[0]
    assert torch.equal(
        ranks.sort(dim=-1).values, torch.arange(4, dtype=torch.uint8).expand(n_groups, 4)
    )
    assert torch.equal(torch.stack(eager_nm.ranks(key_tensor[None]), dim=-1)[0], ranks)
    with tuned(nm_chunk=data.draw(st.integers(1, 8))):
        for n in range(1, 4):
            word = eager_nm.packed_ranks(key_tensor, n)
            assert word.dtype == torch.int32 and word.shape == (n_groups,)
            assert torch.equal(
                word.view(torch.uint8).view(n_groups, 4).int() - (64 - n), ranks.int()
            )


def test_rank_comparisons_by_arithmetic_answer_every_rank():
    """``rank < n`` and ``rank >= n`` on uint8 ranks below 128, and where one bit of the rank
    answers (n a power of two, m <= 2n: 1:2, 2:4, 4:8 ...), the shift the eager ranking uses."""
    ranks = torch.arange(128, dtype=torch.uint8)
    for n in range(1, 128):
        assert torch.equal(eager_nm.below(ranks, n), ranks < n)
        assert torch.equal(eager_nm.at_least(ranks, n), ranks >= n)
    for m in range(2, 129):
        for n in range(1, m):
            shift = eager_nm.rank_bit(n, m)
            assert (shift is not None) == (n & (n - 1) == 0 and m <= 2 * n)
            if shift is not None:
                assert torch.equal((ranks[:m] >> shift).view(torch.bool), ranks[:m] >= n)


# -- scores ----------------------------------------------------------------------------------


@settings(max_examples=100)  # each example scores a layer and samples it at up to 4 strides
@given(
    pattern=st.sampled_from(["1x1", "2x1", "4x1", "1x2", "2x2", "channelx1", "2:4"]),
    criterion=st.sampled_from(["magnitude", "gradient", "snip"]),
    rows=st.integers(1, 6),
    cols=st.integers(1, 40),
    strides=st.lists(st.sampled_from([1, 2, 3, 4, 5, 8, 16, 32, 64]), min_size=1, max_size=4),
    dtype=st.sampled_from(strategies.FLOAT_DTYPES),
    transposed=st.booleans(),
    data=st.data(),
)
def test_layer_scorer_equals_the_grid_of_the_criterion(
    pattern, criterion, rows, cols, strides, dtype, transposed, data
):
    """A layer scored into reused buffers (and in pieces) is the criterion's grid bit for bit;
    its sample is ``grid_sample`` of that grid (on diagonals where the stride divides both
    sides, else at flat positions, read as a strided view or gathered), bit for bit for 1x1
    (a strided block may be summed in another order: the sample only places the bracket);
    N:M layers grouped a position at a time hold the same scores. ``transposed``:
    non-contiguous gradients."""
    pat = parse_pattern(pattern)
    bn, bm = (1, pat.m) if isinstance(pat, fprune.NM) else pat.block_shape((4, 4))
    w = data.draw(strategies.tensors((rows * bn, cols * bm), dtype=dtype))
    grad = (
        data.draw(strategies.tensors((cols * bm, rows * bn), dtype=dtype)).t()
        if transposed
        else (data.draw(strategies.tensors((rows * bn, cols * bm), dtype=dtype)))
    )
    crit = fprune.criterion(criterion)
    scores = crit.update({}, {"w": w}, {"w": grad})[0]
    want = fprune.block_scores(scores, pattern=pattern)["w"]
    with tuned(piece=data.draw(st.sampled_from([7, 200, 1 << 20]))):
        scorer = scoring.LayerScorer(
            crit.layer_score,
            {"w": w},
            {"w": grad},
            uses_grads=crit.needs_grads,
            pattern=pat,
            reduce="mean",
        )
        assert _same_scores(scorer.grid("w"), want)
        grouped = scorer.grouped("w")
        if grouped is not None:
            assert _same_scores(grouped.reshape(want.shape), want)
        for stride in strides:
            got = scorer.sample("w", stride)
            if got is None:
                assert isinstance(pat, fprune.NM)
                continue
            got, expected = (
                got.float(),
                sample.grid_sample(want, stride).float(),
            )  # 16-bit samples are widened
            if pattern == "1x1":
                assert _same_scores(got, expected)
            else:  # a strided block may sum in another order (the sample only places the bracket)
                torch.testing.assert_close(
                    got,
                    expected,
                    rtol=1e-2 if dtype != torch.float64 else 1e-9,
                    atol=1e-6,
                    equal_nan=True,
                )


@given(
    pattern=st.sampled_from([None, "1x1", "4x1", "2x2", "1xchannel", "2:4"]),
    reduce=st.sampled_from(["mean", "sum", "max"]),
    dtype=st.sampled_from(strategies.FLOAT_DTYPES),
    accumulator=st.sampled_from([None, torch.bfloat16]),
    piece=st.sampled_from([7, 200, 1 << 20]),
    data=st.data(),
)
def test_eager_accumulation_equals_the_criterion_update(
    pattern, reduce, dtype, accumulator, piece, data
):
    """snip_momentum folded into reused buffers, block layers in pieces and in place, equals
    its formula bit for bit over several steps: every dtype, a bfloat16 accumulator, conv
    layers, specials."""
    sides = (1, 1) if pattern is None else _sides(pattern)
    shapes = data.draw(
        st.lists(
            strategies.divisible_shape(*sides, conv=data.draw(st.booleans())),
            min_size=1,
            max_size=3,
        )
    )
    params = {f"l{i}": data.draw(strategies.tensors(s, dtype=dtype)) for i, s in enumerate(shapes)}
    crit = fprune.snip_momentum(pattern=pattern, reduce=reduce, dtype=accumulator)
    fast = slow = crit.init(params)
    for _ in range(3):
        grads = {n: data.draw(strategies.tensors(p.shape, dtype=dtype)) for n, p in params.items()}
        with tuned(piece=piece):
            scores, fast = _eager.accumulate(crit, fast, params, grads)
        want, slow = crit.update(slow, params, grads)
        assert all(
            _same_scores(fast[n], slow[n]) and _same_scores(scores[n], want[n]) for n in params
        )


def test_scratch_hands_out_views_of_one_buffer_per_dtype():
    """Buffers sized for the largest tensor, reused for every smaller request of a dtype."""
    scratch = Scratch([torch.zeros(4, 5), torch.zeros(2, 3)])
    a = scratch.get((4, 5), torch.float32, torch.device("cpu"))
    b = scratch.get((2, 3), torch.float32, torch.device("cpu"))
    assert a.shape == (4, 5) and b.shape == (2, 3) and a.data_ptr() == b.data_ptr()
    c = scratch.get((2, 3), torch.float64, torch.device("cpu"))
    assert c.dtype == torch.float64 and c.data_ptr() != a.data_ptr()
    d = scratch.get((6, 5), torch.float32, torch.device("cpu"))  # larger than any tensor: grows
    assert d.shape == (6, 5)


@given(
    st.sampled_from([(1, 2), (2, 1), (4, 1), (2, 2), (1, 4)]),
    st.sampled_from(["mean", "sum", "max"]),
    st.integers(1, 40),
    st.data(),
)
def test_reduce_scored_in_pieces_equals_reducing_the_whole_score(block, reduce, piece, data):
    """Scored and reduced a few block rows at a time (pieces of any size, the last one short),
    an element-wise score's block grid equals the whole score's, in every dtype (16-bit
    reduced in float32), with specials; and the pieces write only ``out``. NaN: only
    NaN-ness (a 16-bit NaN widens to another payload in a short tensor's scalar conversion
    than in a long one's vectorized one, and every NaN ranks alike)."""
    w = data.draw(strategies.tensors(data.draw(strategies.divisible_shape(*block))))
    want = fprune.reduce_blocks(w.abs(), block, reduce=reduce)
    out = torch.full_like(want, 7.0)
    with tuned(piece=piece):
        got = scoring.reduce_scored(
            fprune.scores.LAYER_SCORES["magnitude"], w, None, block, reduce, Scratch([w]), out
        )
    assert got is out and _same_scores(got, want)


@given(
    st.sampled_from([(1, 2), (2, 1), (4, 1), (2, 2), (1, 4)]),
    st.sampled_from(["mean", "sum", "max"]),
    st.sampled_from(strategies.FLOAT_DTYPES),
    st.data(),
)
def test_reduce_into_a_buffer_equals_reduce_blocks_bit_for_bit(block, reduce, dtype, data):
    view = data.draw(strategies.tensors(data.draw(strategies.divisible_shape(*block)), dtype=dtype))
    want = fprune.reduce_blocks(view, block, reduce=reduce)
    buffer = torch.full(
        (want.numel() + 3,), 7.0, dtype=want.dtype
    )  # stale values, larger than needed
    got = scoring.reduce_into(view, block, reduce, buffer[: want.numel()].view(want.shape))
    assert same_bits({"g": got}, {"g": want})
