from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fprune
from fprune.patterns import parse_pattern
from tests import reference, strategies


@given(
    st.dictionaries(
        strategies.names, st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=4
    ),
    st.integers(0, 2**31 - 1),
)
def test_element_sparsity_counts_zeros(shapes, seed):
    gen = torch.Generator().manual_seed(seed)
    masks = {n: torch.rand(s, generator=gen) < 0.5 for n, s in shapes.items()}
    per_layer = fprune.layer_sparsity(masks)
    for n, m in masks.items():
        assert per_layer[n].dtype == torch.float64
        assert float(per_layer[n]) == (~m).sum().item() / m.numel()
    total = sum(int((~m).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert float(fprune.total_sparsity(masks)) == total


@given(strategies.any_patterns, st.data())
def test_unit_sparsity_matches_the_requested_count(pattern, data):
    p = parse_pattern(pattern)
    scores = data.draw(strategies.score_dicts(pattern))
    cap = p.max_sparsity if ":" in pattern else 0.98
    sparsity = data.draw(st.floats(0, 1)) * cap
    masks = fprune.masks(scores, pattern=pattern, sparsity=sparsity, scope="local")
    for name, value in fprune.layer_sparsity(masks, pattern=pattern).items():
        if ":" in pattern:
            groups = scores[name].numel() // p.m
            want = reference.count(min(sparsity * p.m / p.n, 1.0), groups) / groups * p.max_sparsity
        else:
            n_blocks = fprune.block_scores({name: scores[name]}, pattern=pattern)[name].numel()
            want = reference.count(sparsity, n_blocks) / n_blocks
        assert float(value) == pytest.approx(want, abs=1e-12)


def test_sparsity_golden():
    m = {"w": torch.tensor([[False, True, False, False], [False, False, True, True]])}
    assert float(fprune.layer_sparsity(m)["w"]) == 5 / 8
    assert (
        float(fprune.layer_sparsity(m, pattern="2x1")["w"]) == 1 / 4
    )  # only column 0 is all-pruned
    assert float(fprune.layer_sparsity(m, pattern="1x2")["w"]) == 2 / 4
    # 2:4: row 0 has 3 pruned (>= 2, converted), row 1 has 2 (converted): 2/2 groups * 0.5
    assert float(fprune.layer_sparsity(m, pattern="2:4")["w"]) == 0.5
    # 1:4 counts the converted groups: both are, so 0.25, although 5/8 of the weights are zero
    assert float(fprune.total_sparsity(m, pattern="1:4")) == 0.25


def test_sparsity_bad_arguments():
    with pytest.raises(TypeError, match=r"layer_sparsity: masks\['w'\] must be a torch.bool mask"):
        fprune.layer_sparsity({"w": torch.ones(2, 2)})
    with pytest.raises(
        ValueError, match=r"total_sparsity: pattern '4x1' does not divide layer 'w'"
    ):
        fprune.total_sparsity({"w": torch.ones(2, 2, dtype=torch.bool)}, pattern="4x1")
