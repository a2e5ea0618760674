"""Selection and mask functions under torch.compile(fullgraph=True) equal eager mode."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._dynamo.testing import CompileCounterWithBackend

import fprune
from fprune.patterns import parse_pattern
from tests import strategies
from tests.strategies import same_bits

FEW = settings(max_examples=8)


def compiled(fn, backend="aot_eager"):
    """``fn`` compiled whole; the hypothesis cases use dynamo alone (backend "eager": each
    example has new shapes, so AOT tracing would run again for every one), the fixed cases
    AOT autograd too."""
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend=backend)


def f64(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


@FEW
@given(strategies.any_patterns, st.sampled_from(["global", "local"]), st.floats(0, 1), st.data())
def test_masks_compiled_equal_eager(pattern, scope, fraction, data):
    p = parse_pattern(pattern)
    scores = data.draw(strategies.score_dicts(pattern, max_layers=3))
    previous = data.draw(strategies.previous_masks(scores, density=0.9))
    sparsity = fraction * (p.max_sparsity if ":" in pattern else 0.95)

    def fn(scores, previous, sparsity, lo):
        return fprune.masks(
            scores,
            pattern=pattern,
            sparsity=sparsity,
            scope=scope,
            previous=previous,
            min_layer_sparsity=lo,
            max_layer_sparsity=0.98,
        )

    lo = sparsity / 2
    want = fn(scores, previous, sparsity, lo)
    got = compiled(fn, "eager")(scores, previous, f64(sparsity), f64(lo))
    assert same_bits(got, want)


@FEW
@given(strategies.score_dicts(conv=False, max_layers=3), strategies.sparsities, st.data())
def test_selection_compiled_equal_eager(scores, sparsity, data):
    previous = data.draw(strategies.previous_masks(scores))
    glob = compiled(
        lambda s, p, r: fprune.global_masks(
            s, sparsity=r, previous=p, max_layer_sparsity=f64(0.995)
        ),
        "eager",
    )
    assert same_bits(
        glob(scores, previous, f64(sparsity)),
        fprune.global_masks(scores, sparsity=sparsity, previous=previous, max_layer_sparsity=0.995),
    )
    loc = compiled(lambda s, p, r: fprune.local_masks(s, sparsity=r, previous=p), "eager")
    assert same_bits(
        loc(scores, previous, f64(sparsity)),
        fprune.local_masks(scores, sparsity=sparsity, previous=previous),
    )
    keys = compiled(lambda s: {n: fprune.rank_keys(v) for n, v in s.items()}, "eager")
    assert same_bits(keys(scores), {n: fprune.rank_keys(v) for n, v in scores.items()})


def test_changing_target_does_not_recompile():
    gen = torch.Generator().manual_seed(0)
    scores = {
        "a.weight": torch.rand(8, 8, generator=gen),
        "b.weight": torch.rand(16, 4, generator=gen),
    }
    counter = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    fn = torch.compile(
        lambda s, r: fprune.masks(s, pattern="4x1", sparsity=r), fullgraph=True, backend=counter
    )
    schedule = fprune.iterative(0.9, start_step=0, end_step=20, frequency=2, decay="cos")
    previous, compiled_frames = None, []
    for step in fprune.prune_steps(start_step=0, end_step=20, frequency=2):
        got = fn(scores, schedule(torch.tensor(step)))
        want = fprune.masks(scores, pattern="4x1", sparsity=schedule(step))
        assert same_bits(got, want)
        previous = got
        compiled_frames.append(counter.frame_count)
    # everything is compiled by the first call; 11 different targets add nothing
    assert compiled_frames[0] >= 1 and set(compiled_frames) == {compiled_frames[0]}
    assert sum(len(list(g.graph.nodes)) > 0 for g in counter.graphs) == 1
    assert float(fprune.total_sparsity(previous, pattern="4x1")) == pytest.approx(0.9, abs=1 / 16)


def test_other_primitives_compile():
    gen = torch.Generator().manual_seed(1)
    params = {
        "fc.weight": torch.randn(8, 4, generator=gen),
        "conv.weight": torch.randn(4, 4, 3, 3, generator=gen),
    }
    grads = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
    params["fc.weight"][0, :2] = 0

    def pipeline(params, grads, strength):
        scores = fprune.block_scores(fprune.snip(params, grads), pattern="4x1", reduce="max")
        grid = fprune.grid_masks(scores, pattern="4x1", sparsity=0.5)
        m = fprune.expand_masks(grid, pattern="4x1", shapes={n: p.shape for n, p in params.items()})
        locked = fprune.pattern_lock_masks(params, pattern="1x1")
        shrunk = fprune.group_lasso(params, pattern="4x1", strength=strength)
        return fprune.apply_masks(shrunk, m), locked, fprune.layer_sparsity(m, pattern="4x1")

    want = pipeline(params, grads, torch.tensor(0.05))
    got = compiled(pipeline)(params, grads, torch.tensor(0.05))
    assert same_bits(got[1], want[1])
    assert all(torch.equal(got[2][n], want[2][n]) for n in params)
    for n in params:
        torch.testing.assert_close(got[0][n], want[0][n], rtol=0, atol=0)


@pytest.mark.parametrize("decay", ["exp", "cos", "linear", "cube"])
def test_schedules_compile(decay):
    schedule = fprune.iterative(
        0.8, start_step=3, end_step=23, frequency=4, decay=decay, initial_sparsity=0.1
    )

    def fn(step):
        return schedule(step), fprune.is_prune_step(step, start_step=3, end_step=23, frequency=4)

    compiled_fn = compiled(fn)
    for step in range(30):
        value, prunes = compiled_fn(torch.tensor(step))
        want_value, want_prunes = fn(torch.tensor(step))
        assert torch.equal(value, want_value) and torch.equal(prunes, want_prunes)


@pytest.mark.compile_inductor
@pytest.mark.parametrize(
    ("pattern", "scope"), [("2:4", "local")]
)  # 4x1 global: the step's inductor case
def test_masks_compiled_with_inductor_equal_eager(pattern, scope):
    gen = torch.Generator().manual_seed(2)
    scores = {
        "layers.0.fc1.weight": torch.randn(16, 8, generator=gen).abs(),
        "layers.0.conv.weight": torch.randn(8, 4, 3, 3, generator=gen).abs().to(torch.bfloat16),
    }
    scores["layers.0.fc1.weight"][:4] = 1.0  # ties
    sparsity = 0.4 if ":" in pattern else 0.7

    def fn(scores, r):
        return fprune.masks(
            scores, pattern=pattern, sparsity=r, scope=scope, min_layer_sparsity=0.1
        )

    got = compiled(fn, backend="inductor")(scores, f64(sparsity))
    assert same_bits(got, fn(scores, sparsity))
