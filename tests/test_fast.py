"""The eager sample-and-settle selection (fprune._fast) equals the sort reference.

It may decline (return None) when its bracket misses; it must never be wrong. The sample is
shrunk here so that hypothesis-sized inputs are sampled with a stride, as large models are,
and the bracket, its verification and the bounded water-filling all run.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fprune
from fprune import _fast
from fprune.selection import _allocate
from tests import reference, strategies
from tests.strategies import same_bits

bound_pairs = st.tuples(strategies.sparsities, st.floats(0, 1), st.floats(0, 1)).map(
    lambda t: (t[0], t[0] * t[1], t[0] + (1 - t[0]) * t[2])
)


@pytest.fixture(autouse=True)
def small_sample(monkeypatch):
    monkeypatch.setattr(_fast, "_SAMPLE", 16)
    monkeypatch.setattr(_fast, "_ALONE_SAMPLE", 8)  # a layer on its own, and the least in local scope
    monkeypatch.setattr(_fast, "_LOCAL_SAMPLE", 8)
    monkeypatch.setattr(_fast, "_COMPARE_CHUNK", 7)  # the passes compare across chunk boundaries
    monkeypatch.setattr(_fast, "_KEY_GROUP", 5)  # candidates keyed in several groups of layers


def _run(scores, previous, **kw):
    names = sorted(scores)
    sizes = [scores[n].numel() for n in names]
    flat = {n: s.reshape(-1) for n, s in scores.items()}
    prev = None if previous is None else {n: m.reshape(-1) for n, m in previous.items()}
    produce = flat.__getitem__
    kept_of = (lambda n: None) if prev is None else prev.__getitem__
    if "lo" in kw:
        got = _fast.select_global(names, sizes, produce, kept_of, **kw)
    else:
        got = _fast.select_local(names, sizes, produce, kept_of, **kw)
    return None if got is None else {n: got[n].reshape(scores[n].shape) for n in scores}


@pytest.mark.parametrize("union_max", [0, 1 << 18])  # the candidates put in order per layer, or in one sort
@given(strategies.score_dicts(conv=False), bound_pairs, st.data())
def test_eager_global_selection_equals_sort_reference(union_max, scores, bounds, data):
    """Heavy ties, NaN, infinities, subnormals, signed zeros, every dtype, previous masks, bounds."""
    sparsity, lo, hi = bounds
    previous = data.draw(strategies.previous_masks(scores))
    with mock.patch.object(_fast, "_UNION_MAX", union_max):
        got = _run(scores, previous, sparsity=sparsity, lo=lo, hi=hi)
    if got is not None:
        assert same_bits(got, reference.global_masks(scores, sparsity, lo, hi, previous))


@given(strategies.score_dicts(conv=False), strategies.sparsities, st.data())
def test_eager_local_selection_equals_sort_reference(scores, sparsity, data):
    previous = data.draw(strategies.previous_masks(scores))
    got = _run(scores, previous, sparsity=sparsity)
    assert got is not None  # local selection always settles (alone, or by the general path)
    assert same_bits(got, reference.local_masks(scores, sparsity, previous))


@settings(max_examples=30)
@given(st.integers(0, 2**16), st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
       st.floats(0.05, 0.95), st.floats(0, 0.9), st.floats(0.25, 1))
def test_eager_selection_takes_the_fast_path_on_model_like_scores(seed, dtype, sparsity, lo_frac, hi_frac):
    """On continuous scores the bracket holds: the fast path answers (and exactly). (With a
    bound at or just above the target, layers sit at their bound and it may decline.)"""
    lo, hi = sparsity * lo_frac, sparsity + (1 - sparsity) * hi_frac
    _fast._SAMPLE = 2048  # a stride of 4 on these 9216 units (restored by the fixture)
    gen = torch.Generator().manual_seed(seed)
    scores = {f"l{i}.weight": torch.randn(64, 48, generator=gen).abs().to(dtype) * (i + 1) for i in range(3)}
    got = _run(scores, None, sparsity=sparsity, lo=lo, hi=hi)
    assert got is not None
    assert same_bits(got, reference.global_masks(scores, sparsity, lo, hi))


def test_a_missed_bracket_declines_instead_of_guessing(monkeypatch):
    monkeypatch.setattr(_fast, "_Z", -50.0)  # a bracket far from the threshold
    gen = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(64, 64, generator=gen), "b": torch.rand(64, 64, generator=gen)}
    assert _run(scores, None, sparsity=0.5, lo=0.0, hi=1.0) is None
    # the public functions then take the general path and stay exact
    got = fprune.masks(scores, pattern="1x1", sparsity=0.5, max_layer_sparsity=1.0)
    assert same_bits(got, reference.global_masks(scores, 0.5))


def test_pruner_eager_steps_equal_the_traced_selection():
    """The pruner's eager prune steps (fast path, one layer's scores at a time) give the masks
    of the general path (what torch.compile runs), for stateless and accumulated criteria."""
    gen = torch.Generator().manual_seed(0)
    params = {f"l{i}.weight": torch.randn(96, 64, generator=gen) * (i + 1) for i in range(4)}
    grads = [{n: torch.randn(p.shape, generator=gen) for n, p in params.items()} for _ in range(7)]
    cases = [(c, p, 0.9) for c in ("magnitude", "snip", "snip_momentum") for p in ("4x1", "1x1")]  # 1x1: strided sample
    cases += [(c, p, r) for c in ("magnitude", "snip", "snip_momentum") for p, r in (("2:4", 0.5), ("1:4", 0.2), ("2:8", 0.25))]
    for criterion, pattern, sparsity in cases:  # N:M: ranked layer by layer, and at N/M no group selection
        torch._dynamo.reset()  # each pruner is a new closure of the same code: keep under the recompile limit
        prune = fprune.pruner(sparsity, pattern=pattern, criterion=criterion, start_step=0, end_step=6, frequency=2,
                              min_layer_sparsity=0.3 * sparsity, max_layer_sparsity=0.95)
        step = torch.compile(prune.step, fullgraph=True, backend="eager")
        eager = traced = prune.init(params)
        for g in grads:
            eager, eager_masks = prune.step(eager, params, g)
            traced, traced_masks = step(traced, params, g)
            assert same_bits(eager_masks, traced_masks)


def test_pruner_scores_block_layers_in_pieces_alike(monkeypatch):
    """The eager step scores a 2-D block layer a few block rows at a time (each piece reduced
    while in cache); pieces of a few hundred weights give the masks and accumulators of one
    piece a layer, for stateless criteria and snip_momentum, global and local."""
    from fprune import blocks

    gen = torch.Generator().manual_seed(1)
    params = {f"l{i}.weight": torch.randn(48, 32, generator=gen) * (i + 1) for i in range(3)}
    params["l3.weight"] = torch.randn(40, 64, generator=gen).round()  # ties
    grads = [{n: torch.randn(p.shape, generator=gen) for n, p in params.items()} for _ in range(4)]
    for criterion in ("magnitude", "snip", "gradient", "snip_momentum"):
        for pattern in ("4x1", "2x2", "1x4", "channelx1"):
            for scope in ("global", "local"):
                prune = fprune.pruner(0.7, pattern=pattern, criterion=criterion, scope=scope, start_step=0,
                                      end_step=3, frequency=1)
                whole = pieces = prune.init(params)
                for g in grads:
                    monkeypatch.setattr(blocks, "PIECE", 1 << 40)
                    whole, want = prune.step(whole, params, g)
                    monkeypatch.setattr(blocks, "PIECE", 200)  # 6 to 13 pieces a layer
                    pieces, got = prune.step(pieces, params, g)
                    assert same_bits(got, want) and same_bits(pieces.aux, whole.aux)


@given(st.integers(0, 300), st.floats(0.0, 1.0), st.integers(0, 9), st.integers(0, 2**16))
def test_indices_equal_nonzero(size, density, offset, seed):
    """The word-wise candidate scan gives ``nonzero``'s indices, in order, at any length and offset."""
    from fprune._fast import _indices

    mask = torch.rand(size + offset, generator=torch.Generator().manual_seed(seed)) < density
    view = mask[offset:]
    assert torch.equal(_indices(view), view.nonzero().squeeze(1))


@given(st.integers(1, 12), st.integers(1, 12), st.sampled_from([1, 2, 3, 4, 8]), st.booleans(), st.booleans())
def test_grid_sample_takes_its_positions_as_a_copy(rows, cols, stride, transposed, flat):
    """``grid_sample`` takes the units ``sample_positions`` names, in that order, from any
    strided grid (a transposed one, a 1-D one as one row), and returns a copy."""
    from fprune._fast import grid_sample, sample_positions

    t = torch.arange(rows * cols, dtype=torch.float32).reshape(cols, rows).t() if transposed else (
        torch.arange(rows * cols, dtype=torch.float32).reshape(rows, cols))
    t = t.reshape(-1) if flat else t
    r, c = (1, rows * cols) if flat else (rows, cols)
    got = grid_sample(t, stride)
    assert torch.equal(got, t.reshape(-1)[sample_positions(r, c, stride, t.device)])
    assert got.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()


@given(st.integers(1, 4), st.integers(1, 4), st.sampled_from([2, 4, 8]))
def test_a_stride_dividing_the_grid_samples_every_column_on_diagonals(groups, per_row, stride):
    """Where the stride divides both sides, each group of ``stride`` rows takes every column
    once (row ``r``: the columns ``c = r mod stride``), not the same columns in every row; the
    sample has as many units as a flat stride would take."""
    from fprune._fast import diagonal, sample_positions

    rows, cols = groups * stride, per_row * stride
    assert diagonal(rows, cols, stride)
    pos = sample_positions(rows, cols, stride, torch.device("cpu"))
    assert pos.numel() == rows * cols // stride and torch.equal(pos, pos.sort().values)  # row-major order
    r, c = pos // cols, pos % cols
    assert torch.equal(c % stride, r % stride)
    for g in range(groups):
        taken = c[(r // stride) == g]
        assert torch.equal(taken.sort().values, torch.arange(cols))
    assert not diagonal(rows + 1, cols, stride) and not diagonal(rows, cols, 1)


@given(st.integers(0, 40), st.data())
def test_comparing_through_a_buffer_equals_comparing_into_bool(size, data):
    """Chunk by chunk through a float buffer of the scores' dtype: ``score > hi`` and
    ``lo <= score <= hi`` as bool comparisons give them, with NaN, infinities, signed zeros and
    subnormals, brackets from the scores themselves (ties at both ends) or open below."""
    from fprune._fast import _compare_into

    score = data.draw(strategies.tensors((size,)))
    pool = [*score.tolist(), -0.0, 0.0, 1e-40]
    lo = data.draw(st.sampled_from([*pool, -float("inf")]))
    hi = data.draw(st.sampled_from([v for v in pool if v == v]).filter(lambda v: v >= lo)) if lo == lo else lo
    if not lo <= hi:
        hi = lo = -float("inf")
    chunk = data.draw(st.integers(0, max(size, 1) + 3))  # 0: no buffer, bool comparisons
    buf = torch.full((chunk,), 7.0, dtype=score.dtype) if chunk else None  # stale values must not leak
    sure = torch.zeros(size, dtype=torch.bool)
    inside = torch.ones(size, dtype=torch.bool)
    count = _compare_into(sure, inside, score, lo, hi, buf)
    assert torch.equal(sure, score > hi)
    assert count == (None if buf is None else int((score > hi).sum()))
    assert torch.equal(inside, (score >= lo) & (score <= hi))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_the_count_through_a_buffer_is_exact_beyond_16_bit_integers(dtype):
    """5001 sure-kept scores in one chunk: a sum in float16 or bfloat16 would round it."""
    from fprune._fast import _compare_into

    score = torch.ones(5003, dtype=dtype)
    score[:2] = 0.0
    sure, inside = torch.empty(5003, dtype=torch.bool), torch.empty(5003, dtype=torch.bool)
    assert _compare_into(sure, inside, score, 0.0, 0.5, torch.empty(8192, dtype=dtype)) == 5001
    assert int(inside.sum()) == 2


def test_all_true_reads_bytes_as_bools():
    from fprune._fast import all_true

    assert all_true(torch.ones(5, 3, dtype=torch.bool)) and all_true(torch.ones(0, dtype=torch.bool))
    assert not all_true(torch.eye(3, dtype=torch.bool))
    assert all_true(torch.ones(4, 6, dtype=torch.bool).t())  # non-contiguous


def _scan(layers, base, k, low, high):
    """The smallest key whose bounded count reaches ``k``, by scanning every key value, and
    ``_allocate``'s counts there (None, None where none does)."""

    def counts_at(t, right):
        return [b + sum(x <= t if right else x < t for x in v) for b, v in zip(base, layers, strict=True)]

    def total(t):
        return sum(min(max(c, lo), hi) for c, lo, hi in zip(counts_at(t, True), low, high, strict=True))

    t = next((t for t in sorted({x for v in layers for x in v}) if total(t) >= k), None)
    if t is None:
        return None, None
    below = counts_at(t, False)
    at = [c - b for c, b in zip(counts_at(t, True), below, strict=True)]
    tensors = [[torch.tensor(x) for x in xs] for xs in (below, at, low, high)]
    return t, [int(c) for c in _allocate(torch.tensor(k), *tensors)]


@st.composite
def _threshold_cases(draw, span=6, loose=False):
    """Per-layer keys in ``[-span, span]``, bases, bounds and a target; with ``loose``, each
    bound may also be absent (0, or every unit), as most layers' are in a model."""
    layers = draw(st.lists(st.lists(st.integers(-span, span), max_size=40), min_size=1, max_size=5))
    base = [draw(st.integers(0, 3)) for _ in layers]
    low = [0 if loose and draw(st.booleans()) else draw(st.integers(0, 3 + len(v))) for v in layers]
    high = [max(lo, b + len(v)) if loose and draw(st.booleans()) else lo + draw(st.integers(0, 3 + len(v)))
            for b, lo, v in zip(base, low, layers, strict=True)]
    return layers, base, low, high, draw(st.integers(0, sum(high) + 1))


@given(_threshold_cases(), st.sampled_from([1, 2, 3, 1024]))
def test_threshold_search_equals_a_scan_of_every_key(case, exact):
    """The probing search (every round, ties, bounds, bases) returns the smallest key whose
    bounded count reaches k, as a scan over all key values does, or None where none does."""
    layers, base, low, high, k = case
    keys = [torch.tensor(sorted(v), dtype=torch.int32) for v in layers]
    with mock.patch.object(_fast, "_EXACT", exact):  # small: several probing rounds on these few keys
        assert _fast._threshold(keys, base, k, low, high) == _scan(layers, base, k, low, high)[0]


@settings(max_examples=300)
@given(st.one_of(_threshold_cases(), _threshold_cases(span=1000, loose=True)))
def test_union_cut_equals_a_scan_of_every_key(case):
    """One sort of every layer's keys (any order in each, ties by index) gives the scan's
    threshold wherever it answers, with ``_allocate``'s counts, and its pruned keys are the
    first in pruning order (key, layer, index) of the layers not held at a bound; the union's
    threshold (falling back to the per-layer search) always equals the scan's."""
    layers, base, low, high, k = case
    keys = [torch.tensor(v, dtype=torch.int32) for v in layers]
    union = _fast._Union(torch.cat(keys), [len(v) for v in layers])
    want_t, want_counts = _scan(layers, base, k, low, high)
    assert union.threshold(base, k, low, high) == want_t
    assert [p.tolist() for p in union.per_layer()] == [sorted(v) for v in layers]
    cut = union.cut(base, k, low, high)
    if cut is None:
        return
    assert cut.key == want_t
    assert union.counts(cut, base, low, high) == want_counts
    held = (cut.at_high | cut.at_low).tolist()
    order = sorted((x, i, j) for i, v in enumerate(layers) for j, x in enumerate(v) if not held[i])
    need = k - sum(hi if h and hi_held else lo if h else b
                   for b, lo, hi, h, hi_held in zip(base, low, high, held, cut.at_high.tolist(), strict=True))
    pruned = sorted(sum(len(v) for v in layers[:i]) + j for _, i, j in order[:need])
    free = union.order[: cut.end] if cut.free is None else union.order[: cut.end][cut.free[: cut.end]]
    assert sorted(free.tolist()) == pruned


def test_union_cut_holds_layers_at_their_bounds():
    """Layers whose counts cross their bounds are held there, and the cut still answers (no
    fall back to the per-layer search): one layer at its cap, one at its floor."""
    layers = [[1, 2, 3, 4, 5, 6, 7, 8], [5, 6, 7, 8, 9, 10, 11, 12], [0, 0, 0, 20, 21, 22, 23, 24]]
    base, low, high, k = [0, 0, 0], [0, 0, 5], [3, 8, 8], 10
    keys = [torch.tensor(v, dtype=torch.int32) for v in layers]
    union = _fast._Union(torch.cat(keys), [8, 8, 8])
    cut = union.cut(base, k, low, high)
    assert cut is not None
    assert cut.at_high.tolist() == [True, False, False]
    assert cut.at_low.tolist() == [False, False, True]
    # held: 3 of layer 0, 5 of layer 2; the other 2 are layer 1's lowest: 5 and 6
    assert cut.key == 6
    assert union.counts(cut, base, low, high) == [3, 2, 5]
    assert (cut.key, union.counts(cut, base, low, high)) == _scan(layers, base, k, low, high)


@settings(deadline=None)
@given(
    st.lists(
        st.one_of(
            st.lists(st.integers(-3, 3), max_size=40),  # heavy ties
            st.lists(st.integers(-(2**31), 2**31 - 1), max_size=40),  # spans too wide to share
            st.integers(-(2**31), 2**31 - 1 - 2**12).flatmap(
                lambda low: st.lists(st.integers(low, low + 2**12), max_size=40)),  # narrow, anywhere
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
    layers of ``_RADIX`` candidates or more (made small here) are sorted alone, to the same."""
    key_dtype = data.draw(st.sampled_from([torch.int32, torch.int64]))  # int64: each layer sorted alone
    keys = [torch.tensor(v, dtype=key_dtype) for v in layers]
    idx = [torch.tensor(sorted(data.draw(st.sets(st.integers(0, 10**6), min_size=len(v), max_size=len(v)))),
                        dtype=idx_dtype) for v in layers]
    radix = data.draw(st.sampled_from([8, 1 << 15]))
    with mock.patch.multiple(_fast, _ORDER_GROUP=group, _RADIX=radix):
        got_keys, got_idx = list(keys), list(idx)
        _fast._order(got_keys, got_idx)
    for k, i, gk, gi in zip(keys, idx, got_keys, got_idx, strict=True):
        want = torch.sort(k, stable=True)
        assert gk.dtype == key_dtype and gi.dtype == idx_dtype
        assert torch.equal(gk, want.values)
        assert torch.equal(gi, i[want.indices])


def test_capped_layers_with_a_small_share_of_the_sample_are_resampled_not_settled_alone(monkeypatch):
    """Many layers: each holds a small share of the sample, too small to bracket its own cap.
    A capped layer is then sampled again on its own, and nothing is settled alone (two more
    passes over the layer); the masks are the sort reference's."""
    monkeypatch.setattr(_fast, "_SAMPLE", 4096)  # about 100 sample units per layer here
    monkeypatch.setattr(_fast, "_ALONE_SAMPLE", 4096)  # a layer on its own: all of its 4096 units
    calls = []
    alone = _fast._alone
    monkeypatch.setattr(_fast, "_alone", lambda *a, **k: calls.append(a[0]) or alone(*a, **k))
    gen = torch.Generator().manual_seed(0)
    # every fourth layer is scaled down: at 80% globally it sits at its 0.98 cap
    scores = {f"l{i:02d}": torch.rand(64, 64, generator=gen) * (0.01 if i % 4 == 0 else 1.0) for i in range(40)}
    got = _run(scores, None, sparsity=0.8, lo=0.0, hi=0.98)
    assert got is not None
    assert calls == []
    assert same_bits(got, reference.global_masks(scores, 0.8, 0.0, 0.98))


@pytest.mark.parametrize("scale", [0.7, 0.72, 0.74, 0.75, 0.76, 0.77])
@pytest.mark.parametrize("seed", range(4))
def test_a_cap_just_below_the_bracket_is_settled_in_the_pass_not_alone(monkeypatch, scale, seed):
    """A layer scaled so that its 0.98 cap lies near the global 80% bracket's lower end: its own
    bracket reaches into the global one, so its pass runs from its own lower end up, and it is
    not settled alone (as 4 of these 24 cases were when its cap fell below its candidates);
    the masks are the sort reference's."""
    monkeypatch.setattr(_fast, "_SAMPLE", 4096)
    monkeypatch.setattr(_fast, "_ALONE_SAMPLE", 4096)
    calls = []
    alone = _fast._alone
    monkeypatch.setattr(_fast, "_alone", lambda *a, **k: calls.append(a[0]) or alone(*a, **k))
    gen = torch.Generator().manual_seed(seed)
    scores = {f"l{i}": torch.rand(64, 64, generator=gen) for i in range(8)}
    scores["l8"] = torch.rand(64, 64, generator=gen) * scale
    got = _run(scores, None, sparsity=0.8, lo=0.0, hi=0.98)
    assert got is not None
    assert calls == []
    assert same_bits(got, reference.global_masks(scores, 0.8, 0.0, 0.98))


@given(st.sampled_from([torch.int32, torch.int64]), st.integers(0, 64), st.data())
def test_padded_sort_equals_a_stable_sort(dtype, n, data):
    """Keys padded to the radix size sort to the same values and indices as a stable sort,
    ties and keys equal to the padding value (the dtype's largest) included."""
    top = torch.iinfo(dtype).max
    values = data.draw(st.lists(st.sampled_from([-3, 0, 1, 2, top - 1, top]), min_size=n, max_size=n))
    keys = torch.tensor(values, dtype=dtype)
    _fast._PAD_FROM = 0  # pad every size
    try:
        got_values, got_order = _fast._sort(keys)
    finally:
        _fast._PAD_FROM = 5 << 10
    want = torch.sort(keys, stable=True)
    assert got_values.dtype == dtype
    assert torch.equal(got_values, want.values)
    assert torch.equal(got_order, want.indices)


def test_local_selection_settles_every_layer_in_one_pass(monkeypatch):
    """Local scope on continuous scores: each layer's own strided sample brackets its count,
    one pass settles every layer (none is settled alone), and the masks are the sort
    reference's, with and without previous masks."""
    monkeypatch.setattr(_fast, "_LOCAL_SAMPLE", 1024)
    monkeypatch.setattr(_fast, "_ALONE_SAMPLE", 256)  # strides of 4 to 16 on these layers
    calls = []
    alone = _fast._alone
    monkeypatch.setattr(_fast, "_alone", lambda *a, **k: calls.append(a[0]) or alone(*a, **k))
    gen = torch.Generator().manual_seed(0)
    scores = {f"l{i}": torch.rand(64, 16 * (i + 1), generator=gen) * (i + 1) for i in range(4)}
    previous = {n: torch.rand(s.shape, generator=gen) < 0.7 for n, s in scores.items()}
    for prev in (None, previous):
        got = _run(scores, prev, sparsity=0.6)
        assert got is not None
        assert same_bits(got, reference.local_masks(scores, 0.6, prev))
    assert calls == []


@given(st.integers(0, 2**40), st.integers(1, 2**20))
def test_sampling_stride_is_the_nearest_power_of_two(units, sample):
    """``units / sample`` rounded to a power of two in log scale (1 where the sample covers every unit)."""
    stride = _fast._stride(units, sample)
    assert stride >= 1 and stride & (stride - 1) == 0
    ratio = units / sample
    if ratio <= 1:
        assert stride == 1
    else:
        assert ratio / 2**0.5 <= stride * (1 + 1e-12) and stride <= ratio * 2**0.5 * (1 + 1e-12)
