from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fprune
from fprune.blocks import block_scores, expand_blocks, expand_masks, reduce_blocks, reduce_masks
from fprune.layout import to_2d
from fprune.patterns import Blocks, parse_pattern
from tests import reference, strategies
from tests.strategies import same_bits

blocks = st.sampled_from([(1, 1), (2, 1), (1, 2), (2, 2), (4, 1), (3, 2)])


@given(blocks.flatmap(lambda b: st.tuples(st.just(b), strategies.divisible_shape(*b))), st.data())
def test_reduce_blocks_matches_loops(block_and_shape, data):
    block, shape = block_and_shape
    x = data.draw(strategies.tensors(shape))
    reduce = data.draw(st.sampled_from(["mean", "sum", "max"]))
    got = reduce_blocks(x, block, reduce=reduce)
    want = reference.reduce_blocks(x, block, reduce)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-6, atol=0)


def test_reduce_blocks_golden():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    assert reduce_blocks(x, (2, 2)).tolist() == [[3.5, 5.5]]
    assert reduce_blocks(x, (2, 2), reduce="sum").tolist() == [[14.0, 22.0]]
    assert reduce_blocks(x, (1, 4), reduce="max").tolist() == [[4.0], [8.0]]


def test_reduce_blocks_widens_16_bit():
    x = torch.full((4, 1), 60000.0, dtype=torch.float16)
    out = reduce_blocks(x, (4, 1), reduce="sum")
    assert out.dtype == torch.float32 and out.item() == 240000.0  # float16 would overflow to inf


@given(blocks, st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_expand_blocks_is_constant_per_block_and_inverts_reduce(block, gr, gc, seed):
    grid = torch.rand(gr, gc, generator=torch.Generator().manual_seed(seed)) < 0.5
    full = expand_blocks(grid, block)
    bn, bm = block
    assert full.shape == (gr * bn, gc * bm)
    tiles = full.reshape(gr, bn, gc, bm)
    assert torch.equal(tiles, grid[:, None, :, None].expand_as(tiles))
    assert torch.equal(reduce_masks({"w": full}, pattern=Blocks(bn, bm))["w"], grid)


@given(strategies.block_patterns, st.data())
def test_expand_masks_round_trips_grid_masks(pattern, data):
    scores = data.draw(strategies.score_dicts(pattern, specials=False))
    grid = block_scores(scores, pattern=pattern)
    gmasks = {n: g > g.median() for n, g in grid.items()}
    full = expand_masks(gmasks, pattern=pattern, shapes={n: s.shape for n, s in scores.items()})
    assert all(full[n].shape == scores[n].shape and full[n].dtype == torch.bool for n in scores)
    assert same_bits(reduce_masks(full, pattern=pattern), gmasks)


def test_block_scores_of_nm_is_the_2d_view():
    s = {"c": torch.randn(2, 4, 3)}
    assert torch.equal(block_scores(s, pattern="2:4")["c"], to_2d(s["c"]))


def test_block_scores_conv_golden():
    # [O=2, C=2, k=1]: view columns are the 2 input channels; "channelx1" = one column.
    s = {"c": torch.tensor([[[1.0], [2.0]], [[3.0], [4.0]]])}
    assert block_scores(s, pattern="channelx1")["c"].tolist() == [[2.0, 3.0]]
    assert block_scores(s, pattern="1xchannel", reduce="sum")["c"].tolist() == [[3.0], [7.0]]


def test_block_scores_is_pure():
    s = {"w": torch.randn(4, 4)}
    before = {k: v.clone() for k, v in s.items()}
    block_scores(s, pattern="2x2")
    assert same_bits(s, before)


def test_grid_shape():
    assert fprune.grid_shape("channelx1", (6, 3, 2)) == (1, 6)
    assert fprune.grid_shape(parse_pattern("1xchannel"), (6, 3, 2)) == (6, 1)


@pytest.mark.parametrize(("bad", "hint"), [("maen", "mean"), ("summ", "sum"), ("median", "mean")])
def test_reduce_unknown_name_suggests_closest(bad, hint):
    with pytest.raises(
        ValueError, match=rf"unknown reduce \(got '{bad}'\)\. Did you mean '{hint}'\?"
    ):
        reduce_blocks(torch.zeros(2, 2), (1, 1), reduce=bad)


def test_block_scores_names_indivisible_layer():
    with pytest.raises(ValueError, match=r"^block_scores: pattern '4x1' does not divide") as info:
        block_scores(
            {"ok.weight": torch.zeros(8, 8), "odd.weight": torch.zeros(6, 3, 3)}, pattern="4x1"
        )
    msg = str(info.value)
    assert (
        "'odd.weight'" in msg
        and "(6, 3, 3)" in msg
        and "'4x1'" in msg
        and "skip_indivisible" in msg
    )


def test_indivisible_layers_lists_sorted_names():
    params = {"b": torch.zeros(6, 8), "a": torch.zeros(2, 6), "c": torch.zeros(8, 8)}
    assert fprune.indivisible_layers(params, pattern="4x1") == ["a", "b"]
    assert fprune.indivisible_layers(params, pattern="2:4") == ["a"]
