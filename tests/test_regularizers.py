from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fprune
from fprune.layout import to_2d
from fprune.patterns import parse_pattern
from tests import strategies
from tests.strategies import same_bits


def block_norms(w: torch.Tensor, pattern: str) -> torch.Tensor:
    view = to_2d(w).double()
    bn, bm = parse_pattern(pattern).block_shape(tuple(view.shape))
    rows, cols = view.shape
    return view.reshape(rows // bn, bn, cols // bm, bm).square().sum(dim=(1, 3)).sqrt()


@given(
    st.sampled_from(["1x1", "4x1", "2x2", "channelx1", "1xchannel"]).flatmap(
        lambda p: st.tuples(
            st.just(p), strategies.score_dicts(p, dtype=torch.float64, specials=False)
        )
    ),
    st.floats(0, 50),
)
def test_proximal_step_shrinks_block_norms_by_strength(case, strength):
    pattern, params = case
    before = {n: p.clone() for n, p in params.items()}
    out = fprune.group_lasso(params, pattern=pattern, strength=strength)
    assert same_bits(params, before)  # pure
    for n, p in params.items():
        assert out[n].shape == p.shape and out[n].dtype == p.dtype
        old, new = block_norms(p, pattern), block_norms(out[n], pattern)
        torch.testing.assert_close(new, (old - strength).clamp(min=0), rtol=1e-9, atol=1e-9)
        # every block keeps its direction: a non-negative multiple of the old block
        assert bool((out[n] * p >= 0).all())
        assert bool((out[n][p == 0] == 0).all())


def test_proximal_1x1_is_soft_thresholding():
    w = {"w": torch.tensor([[3.0, -0.5, 0.2, -2.0]])}
    out = fprune.group_lasso(w, pattern="1x1", strength=0.5)["w"]
    torch.testing.assert_close(out, torch.tensor([[2.5, 0.0, 0.0, -1.5]]))


def test_zero_strength_is_identity_and_tensor_strength_works():
    w = {"w": torch.randn(4, 4, generator=torch.Generator().manual_seed(0))}
    assert torch.equal(fprune.group_lasso(w, pattern="2x2", strength=0.0)["w"], w["w"])
    a = fprune.group_lasso(w, pattern="2x2", strength=0.3)["w"]
    b = fprune.group_lasso(w, pattern="2x2", strength=torch.tensor(0.3))["w"]
    torch.testing.assert_close(a, b)


def test_inc_mode_golden():
    # factor = 1 - t / (||g_b|| + 1e-12): gradient norms 5 and 0.5 with t = 1 -> 0.8 and -1
    # (a sign flip)
    w = {"w": torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)}
    g = {"w": torch.tensor([[3.0, 0.3], [4.0, 0.4]], dtype=torch.float64)}
    out = fprune.group_lasso(w, pattern="2x1", strength=1.0, grads=g, mode="inc")["w"]
    torch.testing.assert_close(out, torch.tensor([[0.8, -1.0], [0.8, -1.0]], dtype=torch.float64))


def test_inc_mode_diverges_where_proximal_does_not():
    gen = torch.Generator().manual_seed(0)
    w = {"w": torch.randn(8, 8, generator=gen)}
    g = {"w": torch.randn(8, 8, generator=gen) * 1e-3}
    inc, prox = dict(w), dict(w)
    for _ in range(5):
        inc = fprune.group_lasso(inc, pattern="1x1", strength=1e-2, grads=g, mode="inc")
        prox = fprune.group_lasso(prox, pattern="1x1", strength=1e-2)
    assert inc["w"].abs().max() > 1e3 * w["w"].abs().max()  # INC's variant blows up
    assert bool((prox["w"].abs() <= w["w"].abs()).all())


def test_half_precision_params():
    w = {"w": torch.full((4, 2), 0.5, dtype=torch.bfloat16)}
    out = fprune.group_lasso(w, pattern="4x1", strength=0.5)["w"]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), torch.full((4, 2), 0.25))  # block norm 1 -> factor 0.5


def test_group_lasso_bad_arguments():
    w = {"w": torch.ones(4, 4)}
    with pytest.raises(
        ValueError, match=r"group_lasso: group lasso needs a block pattern \(got '2:4'\)"
    ):
        fprune.group_lasso(w, pattern="2:4", strength=0.1)
    with pytest.raises(
        ValueError, match=r"group_lasso: strength must be a number >= 0 \(got -0.1\)"
    ):
        fprune.group_lasso(w, pattern="4x1", strength=-0.1)
    with pytest.raises(
        ValueError, match=r"group_lasso: strength must be a number >= 0 \(got nan\)"
    ):
        fprune.group_lasso(w, pattern="4x1", strength=float("nan"))
    with pytest.raises(
        ValueError, match=r"group_lasso: mode='inc' scales by gradient norms and needs grads"
    ):
        fprune.group_lasso(w, pattern="4x1", strength=0.1, mode="inc")
    with pytest.raises(
        ValueError, match=r"group_lasso: unknown mode \(got 'prox'\)\. Did you mean 'proximal'\?"
    ):
        fprune.group_lasso(w, pattern="4x1", strength=0.1, mode="prox")
    with pytest.raises(ValueError, match=r"group_lasso: pattern '4x1' does not divide layer 'w'"):
        fprune.group_lasso({"w": torch.ones(6, 4)}, pattern="4x1", strength=0.1)
    with pytest.raises(TypeError, match=r"group_lasso: params\['w'\] must be a floating tensor"):
        fprune.group_lasso({"w": torch.ones(4, 4, dtype=torch.int8)}, pattern="4x1", strength=0.1)
