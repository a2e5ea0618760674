from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fprune
from fprune.blocks import block_scores
from tests import strategies
from tests.strategies import same_bits


@st.composite
def params_and_grads(draw, pattern="1x1"):
    params = draw(strategies.score_dicts(pattern, specials=False))
    grads = {
        n: draw(strategies.tensors(tuple(p.shape), dtype=p.dtype, specials=False))
        for n, p in params.items()
    }
    return params, grads


@given(params_and_grads())
def test_stateless_scores_follow_their_formulas_and_are_pure(pg):
    params, grads = pg
    before_p, before_g = (
        {n: p.clone() for n, p in params.items()},
        {n: g.clone() for n, g in grads.items()},
    )
    assert same_bits(fprune.magnitude(params), {n: p.abs() for n, p in params.items()})
    assert same_bits(fprune.magnitude(params, grads), fprune.magnitude(params))
    assert same_bits(fprune.gradient(params, grads), {n: g.abs() for n, g in grads.items()})
    assert same_bits(
        fprune.snip(params, grads), {n: (p * grads[n]).abs() for n, p in params.items()}
    )
    assert same_bits(params, before_p) and same_bits(grads, before_g)


@given(params_and_grads(), st.integers(1, 5))
def test_snip_momentum_accumulates_elementwise(pg, steps):
    params, grads = pg
    params = {n: p.double() for n, p in params.items()}
    grads = {n: g.double() for n, g in grads.items()}
    crit = fprune.snip_momentum()
    aux = crit.init(params)
    assert all(bool((a == 0).all()) and a.shape == params[n].shape for n, a in aux.items())
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for k in range(steps):
        g = {n: v * (k + 1) for n, v in grads.items()}
        scores, aux = crit.update(aux, params, g)
        expected = {n: 0.9 * expected[n] + (params[n] * g[n]).abs() for n in params}
        assert same_bits(scores, aux)
    for n in params:
        torch.testing.assert_close(scores[n], expected[n], rtol=1e-12, atol=0)


def _sprinkled(shape, dtype, seed, specials):
    """Normal values at random scales (every mantissa bit in play), with specials in place."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 10.0 ** torch.randint(
        -3, 4, shape, generator=gen
    )
    flat = x.reshape(-1)
    for i, v in specials:
        flat[i % flat.numel()] = v
    return x.to(dtype)


@given(
    st.sampled_from([None, "4x1", "1x2"]),
    st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    st.sampled_from([0.9, 0.0, 1.0, 0.37]),
    st.integers(0, 2**16),
    st.lists(st.tuples(st.integers(0, 10**4), st.sampled_from(strategies.SPECIALS)), max_size=6),
)
def test_snip_momentum_rounds_the_decay_and_the_sum_apart(
    pattern, acc_dtype, momentum, seed, specials
):
    """``S <- momentum * S + R(|w * g|)`` bit for bit with the two operations rounded apart
    (as INC's ``0.9 * S + score``), not fused into one rounding, in each accumulator dtype,
    with infinities, NaN and signed zeros placed anywhere in the weights and accumulators."""
    shape = (64, 48)  # past the vectorized loops' widths, so their arithmetic is what is checked
    params = {"w": _sprinkled(shape, torch.float32, seed, specials)}
    grads = {"w": _sprinkled(shape, torch.float32, seed + 1, specials[::2])}
    crit = fprune.snip_momentum(pattern=pattern, momentum=momentum, dtype=acc_dtype)
    acc_shape = tuple(crit.init(params)["w"].shape)
    aux = {"w": _sprinkled(acc_shape, acc_dtype, seed + 2, specials[1::2])}
    before = aux["w"].clone()
    scores, new = crit.update(aux, params, grads)
    prod = (params["w"] * grads["w"]).abs()
    term = prod if pattern is None else block_scores({"w": prod}, pattern=pattern)["w"]
    decayed = momentum * before.to(torch.float32)  # rounded on its own
    assert same_bits(new, {"w": (decayed + term).to(acc_dtype)}) and same_bits(scores, new)
    assert same_bits(aux, {"w": before})  # pure: the old accumulator is untouched


@given(
    st.sampled_from(["4x1", "2x2", "channelx1", "1xchannel"]).flatmap(
        lambda p: st.tuples(st.just(p), params_and_grads(p))
    ),
    st.sampled_from(["mean", "sum"]),
)
def test_block_snip_momentum_equals_reducing_the_elementwise_accumulator(case, reduce):
    pattern, (params, grads) = case
    params = {n: p.double() for n, p in params.items()}
    grads = {n: g.double() for n, g in grads.items()}
    on_grid, elementwise = (
        fprune.snip_momentum(pattern=pattern, reduce=reduce),
        fprune.snip_momentum(),
    )
    aux_g, aux_e = on_grid.init(params), elementwise.init(params)
    assert {n: tuple(a.shape) for n, a in aux_g.items()} == {
        n: fprune.grid_shape(pattern, p.shape) for n, p in params.items()
    }
    for k in range(3):
        g = {n: v + k for n, v in grads.items()}
        s_g, aux_g = on_grid.update(aux_g, params, g)
        s_e, aux_e = elementwise.update(aux_e, params, g)
    reduced = block_scores(s_e, pattern=pattern, reduce=reduce)
    for n in params:  # reduction is linear: equal up to rounding
        torch.testing.assert_close(s_g[n], reduced[n], rtol=1e-9, atol=1e-9)


def test_snip_momentum_accumulator_dtypes():
    p16 = {"w": torch.ones(4, 4, dtype=torch.float16)}
    assert fprune.snip_momentum().init(p16)["w"].dtype == torch.float32
    low = fprune.snip_momentum(pattern="4x1", dtype=torch.bfloat16)
    aux = low.init({"w": torch.ones(8, 4)})
    assert aux["w"].dtype == torch.bfloat16 and aux["w"].shape == (2, 4)
    scores, aux = low.update(aux, {"w": torch.ones(8, 4)}, {"w": torch.full((8, 4), 2.0)})
    assert scores["w"].dtype == torch.bfloat16 and bool((scores["w"] == 2).all())


def test_snip_momentum_computes_half_products_in_float32():
    p = {"w": torch.full((4, 1), 300.0, dtype=torch.float16)}  # 300 * 300 overflows float16
    crit = fprune.snip_momentum()
    scores, _ = crit.update(crit.init(p), p, p)
    assert scores["w"].dtype == torch.float32 and bool((scores["w"] == 90000.0).all())
    crit = fprune.snip_momentum(pattern="4x1", reduce="sum")
    scores, _ = crit.update(crit.init(p), p, p)
    assert scores["w"].tolist() == [[360000.0]]


def test_criterion_resolves_builtin_names():
    p, g = {"w": torch.tensor([[-2.0, 1.0]])}, {"w": torch.tensor([[0.5, -3.0]])}
    for name, fn in [
        ("magnitude", fprune.magnitude),
        ("gradient", fprune.gradient),
        ("snip", fprune.snip),
    ]:
        crit = fprune.criterion(name)
        assert crit.needs_grads == (name != "magnitude")
        aux = crit.init(p)
        scores, aux = crit.update(aux, p, g)
        assert aux == {} and same_bits(scores, fn(p, g))
    crit = fprune.criterion("snip_momentum", pattern="1x2")
    scores, _ = crit.update(crit.init(p), p, g)
    assert scores["w"].tolist() == [[2.0]]  # mean of |w * g| = (1 + 3) / 2


def test_custom_criterion_pair_defaults_to_needing_grads():
    crit = fprune.Criterion(lambda p: {}, lambda aux, p, g: (fprune.snip(p, g), aux))
    assert crit.needs_grads
    p, g = {"w": torch.ones(2, 2)}, {"w": torch.full((2, 2), 3.0)}
    scores, aux = crit.update(crit.init(p), p, g)
    assert aux == {} and scores["w"].tolist() == [[3.0, 3.0], [3.0, 3.0]]


@pytest.mark.parametrize(
    ("bad", "hint"),
    [("magnitdue", "magnitude"), ("snip_momentm", "snip_momentum"), ("grad", "gradient")],
)
def test_unknown_criterion_suggests_closest(bad, hint):
    with pytest.raises(
        ValueError, match=rf"criterion: unknown criterion \(got '{bad}'\)\. Did you mean '{hint}'\?"
    ):
        fprune.criterion(bad)


def test_criteria_needing_grads_reject_none():
    p = {"w": torch.ones(2, 2)}
    for fn in (fprune.gradient, fprune.snip):
        with pytest.raises(
            ValueError,
            match=rf"{fn.__name__}: this criterion needs gradients \(got None\)\. Pass grads",
        ):
            fn(p, None)
    crit = fprune.snip_momentum()
    with pytest.raises(ValueError, match=r"snip_momentum: this criterion needs gradients"):
        crit.update(crit.init(p), p, None)


def test_scores_reject_mismatched_grads_and_integer_weights():
    p = {"w": torch.ones(2, 2)}
    with pytest.raises(
        ValueError,
        match=r"snip: grads and params have different keys "
        r"\(got missing \['w'\], unexpected \['v'\]\)",
    ):
        fprune.snip(p, {"v": torch.ones(2, 2)})
    with pytest.raises(
        ValueError,
        match=r"gradient: grads\['w'\] has a different shape from params\['w'\] "
        r"\(got \(2,\) vs \(2, 2\)\)",
    ):
        fprune.gradient(p, {"w": torch.ones(2)})
    with pytest.raises(
        TypeError, match=r"magnitude: params\['w'\] must be a floating tensor \(got torch.int64\)"
    ):
        fprune.magnitude({"w": torch.ones(2, 2, dtype=torch.int64)})
    with pytest.raises(
        TypeError, match=r"snip: params\['w'\] must be a floating tensor \(got torch.bool\)"
    ):
        fprune.snip({"w": torch.ones(2, 2, dtype=torch.bool)}, p)
    with pytest.raises(ValueError, match=r"magnitude: params is empty"):
        fprune.magnitude({})
    with pytest.raises(ValueError, match=r"snip_momentum: pattern '4x1' does not divide layer 'w'"):
        fprune.snip_momentum(pattern="4x1").init({"w": torch.ones(2, 2)})
    with pytest.raises(
        ValueError, match=r"snip_momentum: momentum must be a number in \[0, 1\] \(got 1.5\)"
    ):
        fprune.snip_momentum(momentum=1.5)
