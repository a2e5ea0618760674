"""fprune.export.to_sparse and sparsify_linears_: sparse layouts compute what masking does."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fprune
from fprune.export import sparsify_linears_, to_sparse


@settings(max_examples=30)
@given(
    rows=st.integers(1, 4),
    cols=st.integers(1, 4),
    sparsity=st.sampled_from([0.0, 0.5, 0.9, 0.95]),
    layout=st.sampled_from(["csr", "bsr"]),
    seed=st.integers(0, 1000),
)
def test_sparse_weights_multiply_like_the_masked_dense(rows, cols, sparsity, layout, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows * 16, cols * 16, generator=g)
    masks = fprune.masks(fprune.magnitude({"w": w}), pattern="4x1", sparsity=sparsity)
    sparse = to_sparse({"w": w}, masks, layout=layout, blocksize=(16, 16))["w"]
    assert sparse.layout == {"csr": torch.sparse_csr, "bsr": torch.sparse_bsr}[layout]
    masked = w * masks["w"]
    assert torch.equal(sparse.to_dense(), masked)
    x = torch.randn(3, 5, cols * 16, generator=g)
    assert torch.allclose(
        torch.nn.functional.linear(x, sparse), torch.nn.functional.linear(x, masked), atol=1e-5
    )


def test_bsr_drops_all_zero_blocks():
    w = torch.zeros(32, 32)
    w[:16, 16:] = 1.0
    sparse = to_sparse({"w": w}, layout="bsr", blocksize=(16, 16))["w"]
    assert sparse.values().shape == (1, 16, 16)


def test_sparsify_linears_swaps_only_the_masked_layers_and_keeps_outputs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    params = {n: p.detach() for n, p in net.named_parameters() if n == "0.weight"}
    masks = fprune.masks(fprune.magnitude(params), pattern="1x1", sparsity=0.9)
    x = torch.randn(4, 32)
    fprune.nn.apply_masks_(net, masks)
    with torch.no_grad():
        expected = net(x)
    assert sparsify_linears_(net, masks) == ["0"]
    assert net[0].weight.layout == torch.sparse_csr and net[2].weight.layout == torch.strided
    assert not net[0].weight.requires_grad
    with torch.no_grad():  # not inference_mode: see fprune.export.sparse_layouts
        assert torch.allclose(net(x), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: to_sparse({"w": torch.ones(4, 4)}, layout="coo"), "layout"),
        (lambda: to_sparse({"w": torch.ones(4, 4, 3)}), "is not a 2-D weight"),
        (lambda: to_sparse({"w": torch.ones(4, 6)}, layout="bsr", blocksize=(4, 4)), "tile"),
        (lambda: to_sparse({"w": torch.ones(4, 4)}, layout="bsr", blocksize=(0, 4)), "positive"),
        (lambda: to_sparse({"w": torch.ones(4, 4)}, layout="semi_structured"), "CUDA only"),
        (lambda: to_sparse({"w": torch.ones(8, 8)}, layout="bsr", blocksize=(4, 1)), "square"),
        (
            lambda: to_sparse({"w": torch.ones(4, 4)}, {"v": torch.ones(4, 4, dtype=torch.bool)}),
            "masks names tensors",
        ),
        (lambda: sparsify_linears_(nn.Linear(2, 2), names=["x"]), "must name Linear modules"),
    ],
)
def test_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.cuda
def test_semi_structured_two_four_on_cuda_equals_the_masked_dense():
    torch.manual_seed(0)
    w = torch.randn(128, 128, dtype=torch.float16, device="cuda")
    masks = fprune.masks(fprune.magnitude({"w": w}), pattern="2:4", sparsity=0.5)
    sparse = to_sparse({"w": w}, masks, layout="semi_structured")["w"]
    x = torch.randn(64, 128, dtype=torch.float16, device="cuda")
    expected = torch.nn.functional.linear(x, w * masks["w"])
    got = torch.nn.functional.linear(x, sparse)
    assert torch.allclose(got, expected, atol=1e-2, rtol=1e-2)


@pytest.mark.cuda
def test_semi_structured_refuses_a_weight_that_is_not_two_four():
    w = torch.randn(128, 128, dtype=torch.float16, device="cuda")
    with pytest.raises(ValueError, match="does not follow 2:4"):
        to_sparse({"w": w}, layout="semi_structured")
