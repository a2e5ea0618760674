"""Sharded selection (each rank a block of rows, small counts exchanged) equals the sort
reference on the whole layers: threads play the ranks (see ``tests/threaded.py``)."""

from __future__ import annotations

import contextlib
import itertools
from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fprune import _radix, _sharded
from fprune._sharded import select as sharded
from fprune._tuning import tuned
from fprune.masking import select_grids
from fprune.patterns import parse_pattern
from fprune.selection import flat_keys, rank_keys, select
from tests import reference, strategies
from tests.strategies import same_bits
from tests.threaded import run_ranks

bound_pairs = st.tuples(strategies.sparsities, st.floats(0, 1), st.floats(0, 1)).map(
    lambda t: (t[0], t[0] * t[1], t[0] + (1 - t[0]) * t[2])
)


@st.composite
def row_splits(draw, scores, world):
    """Per layer, ``world`` contiguous row ranges covering its rows (any sizes, empty too)."""
    out = {}
    for name, s in scores.items():
        cuts = sorted(
            draw(st.lists(st.integers(0, s.shape[0]), min_size=world - 1, max_size=world - 1))
        )
        edges = [0, *cuts, s.shape[0]]
        out[name] = list(itertools.pairwise(edges))
    return out


def _run_sharded(scores, previous, splits, world, **kw):
    """Run the sharded selection on ``world`` thread ranks; each layer's rows back in order."""

    def rank(comm, r):
        mine = {n: s[splits[n][r][0] : splits[n][r][1]] for n, s in scores.items()}
        prev = (
            None
            if previous is None
            else {n: p[splits[n][r][0] : splits[n][r][1]] for n, p in previous.items()}
        )
        got = sharded.select(flat_keys(mine, prev), comm=comm, **{"lo": 0.0, "hi": 1.0, **kw})
        return {n: ~got[n].reshape(mine[n].shape) for n in mine}

    parts, calls = run_ranks(world, rank)
    return {n: torch.cat([p[n] for p in parts]) for n in scores}, calls


def small_samples():
    """Sample small layers too, so the bracket (and its misses) run on hypothesis' sizes."""
    return tuned(
        shard_sample=8, shard_layer_sample=4, shard_density=1, shard_z=1.0
    )  # a narrow bracket: misses


@given(
    strategies.score_dicts(conv=False),
    bound_pairs,
    st.integers(1, 4),
    st.sampled_from(["global", "local"]),
    st.booleans(),
    st.data(),
)
def test_sharded_selection_equals_the_sort_reference(scores, bounds, world, scope, bracketed, data):
    """With ``bracketed``, even small layers are narrowed by a sample first (a narrow bracket
    that often misses, so both outcomes run); without, the search runs on all keys."""
    sparsity, lo, hi = bounds
    previous = data.draw(strategies.previous_masks(scores))
    splits = data.draw(row_splits(scores, world))
    with small_samples() if bracketed else contextlib.nullcontext():
        got, _ = _run_sharded(
            scores, previous, splits, world, scope=scope, sparsity=sparsity, lo=lo, hi=hi
        )
    if scope == "global":
        want = reference.global_masks(scores, sparsity, lo, hi, previous)
    else:
        want = reference.local_masks(scores, sparsity, previous)
    assert same_bits(got, want)


@given(strategies.score_dicts(conv=False), strategies.sparsities, st.integers(2, 4), st.data())
def test_sharded_nm_selection_equals_the_single_process_one(scores, sparsity, world, data):
    """N:M below N/M: groups never cross rows, so only the group selection is sharded."""
    pattern = parse_pattern("1:2")
    scores = {n: s for n, s in scores.items() if s.shape[1] % 2 == 0}
    if not scores:
        return
    splits = data.draw(row_splits(scores, world))
    fraction = sparsity * 0.5
    scope = data.draw(st.sampled_from(["global", "local"]))
    kwargs = dict(
        pattern=pattern,
        sparsity=fraction,
        scope=scope,
        lo=0.0,
        hi=1.0,
        previous=None,
        reduce="mean",
    )
    want = select_grids(scores, **kwargs)

    def rank(comm, r):
        mine = {n: s[splits[n][r][0] : splits[n][r][1]] for n, s in scores.items()}
        return select_grids(mine, **kwargs, comm=comm)

    parts, _ = run_ranks(world, rank)
    assert same_bits({n: torch.cat([p[n] for p in parts]) for n in scores}, want)


def test_sharded_selection_exchanges_a_fixed_number_of_small_collectives():
    """Unbounded int32 keys: layer sizes, four radix digits, tie offsets; the largest payload
    is ``layers x 256`` counts whatever the layer sizes."""
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.randn(64, 32, generator=g), "b": torch.randn(48, 16, generator=g)}
    splits = {n: [(0, s.shape[0] // 2), (s.shape[0] // 2, s.shape[0])] for n, s in scores.items()}
    got, calls = _run_sharded(scores, None, splits, 2, scope="global", sparsity=0.7)
    want = reference.global_masks(scores, 0.7, 0.0, 1.0, None)
    assert same_bits(got, want)
    assert calls == 1 + 4 + 1  # too few units to sample: the search runs on all keys
    sizes = []

    class Recorder:
        def __init__(self, comm):
            self.comm = comm

        def sum(self, t):
            sizes.append(t.numel())
            return self.comm.sum(t)

        def before(self, t):
            sizes.append(t.numel())
            return self.comm.before(t)

    run_ranks(
        2,
        lambda comm, r: sharded.select(
            flat_keys({n: s[splits[n][r][0] : splits[n][r][1]] for n, s in scores.items()}, None),
            comm=Recorder(comm),
            scope="global",
            sparsity=0.7,
            lo=0.0,
            hi=1.0,
        ),
    )
    assert max(sizes) == 2 * 256  # two layers' histograms of one radix digit


def test_rows_of_is_torch_chunk():
    for rows in range(0, 12):
        for world in range(1, 6):
            chunks = torch.arange(rows).chunk(world) if rows else ()
            for r in range(world):
                start, stop = _sharded.rows_of(rows, world, r)
                want = chunks[r].tolist() if r < len(chunks) else []
                assert list(range(start, stop)) == want


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_sharded_selection_ranks_every_dtype_like_rank_keys(dtype):
    scores = {
        "w": torch.tensor(
            [[0.0, -0.0, 1.0], [float("nan"), -float("inf"), 1.0], [2.0, 1.0, -1.0]], dtype=dtype
        )
    }
    splits = {"w": [(0, 1), (1, 3)]}
    got, _ = _run_sharded(scores, None, splits, 2, scope="local", sparsity=0.6)
    order = torch.argsort(rank_keys(scores["w"].reshape(-1)), stable=True)
    want = torch.ones(9, dtype=torch.bool)
    want[order[:5]] = False
    assert torch.equal(got["w"].reshape(-1), want)


def test_the_bracket_narrows_the_search_on_large_layers():
    """2^20 units: the sample bracket holds the threshold, so the radix digits count a few
    percent of the keys (one sample of 2^14 in global scope, 2^10 per layer in local);
    the result equals the single-process selection."""
    g = torch.Generator().manual_seed(0)
    scores = {
        "a": torch.randn(1024, 512, generator=g).abs(),
        "b": torch.randn(512, 1024, generator=g).abs(),
    }
    splits = {n: [(0, 300), (300, s.shape[0])] for n, s in scores.items()}
    counted = []
    search = _radix.search

    def spy(keys, *args, **kw):
        if kw.get("combine") is not None:
            counted.append(sum(k.numel() for k in keys))
        return search(keys, *args, **kw)

    with mock.patch.object(_radix, "search", spy):  # counts the keys each search reads
        for scope in ("global", "local"):
            counted.clear()
            got, _ = _run_sharded(
                scores, None, splits, 2, scope=scope, sparsity=0.8, lo=0.0, hi=1.0
            )
            pruned = select(
                flat_keys(scores, None), scope=scope, sparsity=0.8
            )  # one process, tested elsewhere
            assert same_bits(got, {n: ~p.reshape(scores[n].shape) for n, p in pruned.items()})
            assert counted and max(counted) < 0.1 * sum(
                s.numel() for s in scores.values()
            )  # keys counted
