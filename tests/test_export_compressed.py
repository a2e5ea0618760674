"""fprune.export.compressed: exact round trips, the size formula, N:M packed indices."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fprune
from fprune.export import compress, compressed_masks, compressed_size, decompress
from tests.strategies import bits

DTYPES = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
)
_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@st.composite
def raw_tensors(draw, shape, dtype):
    """Any bit patterns (NaN payloads, -0.0, subnormals, infinities), with runs of +0.0."""
    n = math.prod(shape)
    size = torch.finfo(dtype).bits // 8
    raw = bytearray(draw(st.binary(min_size=n * size, max_size=n * size)))
    zero = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    for i, z in enumerate(zero):
        if z:
            raw[i * size : (i + 1) * size] = bytes(size)
    t = torch.frombuffer(raw, dtype=torch.uint8) if n else torch.zeros(0, dtype=torch.uint8)
    return t.clone().view(dtype).reshape(shape)


shapes = st.one_of(
    st.just(()),
    st.lists(st.integers(0, 5), min_size=1, max_size=4).map(tuple),
)


def _expected(value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, bits(value), torch.zeros((), dtype=bits(value).dtype))


@given(
    data=st.data(), dtype=st.sampled_from(DTYPES), shape=shapes, nm=st.sampled_from([None, "2:4"])
)
def test_every_tensor_round_trips_bit_for_bit_with_keep_negative_zeros(data, dtype, shape, nm):
    value = data.draw(raw_tensors(shape, dtype))
    packed = compress({"w": value}, nm=nm, keep_negative_zeros=True)
    out = decompress(packed)["w"]
    assert out.dtype == dtype and out.shape == value.shape
    assert torch.equal(bits(out), bits(value))  # NaN payloads, -0.0, subnormals: every bit


@given(data=st.data(), dtype=st.sampled_from(DTYPES), shape=shapes, given_mask=st.booleans())
def test_round_trip_is_bit_exact(data, dtype, shape, given_mask):
    value = data.draw(raw_tensors(shape, dtype))
    if given_mask:
        mask = torch.tensor(
            data.draw(st.lists(st.booleans(), min_size=value.numel(), max_size=value.numel())),
            dtype=torch.bool,
        )
        mask = mask.reshape(shape)
    else:
        mask = value.double() != 0  # -0.0 is zero; NaN is not
    packed = compress({"w": value}, {"w": mask} if given_mask else None)
    out = decompress(packed)["w"]
    assert out.dtype == dtype and out.shape == value.shape
    if "w" in packed and not given_mask:  # stored dense as it was: every bit, -0.0 included
        assert torch.equal(bits(out), bits(value))
    else:
        assert torch.equal(bits(out), _expected(value, mask))
    if "w" not in packed:  # stored sparse: the mask comes back too
        assert torch.equal(compressed_masks(packed)["w"], mask)


def _formula(value: torch.Tensor, kept: int) -> int:
    dense = value.numel() * value.element_size()
    sparse = kept * value.element_size() + -(-value.numel() // 8) + 8 * value.ndim
    return min(dense, sparse)


@given(data=st.data(), dtype=st.sampled_from(DTYPES), shape=shapes)
def test_size_follows_the_formula(data, dtype, shape):
    value = data.draw(raw_tensors(shape, dtype))
    kept = int((value.double() != 0).sum())
    packed = compress({"w": value})
    assert compressed_size(packed) == _formula(value, kept)
    assert ("w" in packed) == (_formula(value, kept) == value.numel() * value.element_size())


@st.composite
def nm_cases(draw):
    n, m = draw(st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (4, 8), (2, 8)]))
    conv = draw(st.booleans())
    rows, groups = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    shape = (rows, groups * m, draw(st.integers(1, 2))) if conv else (rows, groups * m)
    dtype = draw(st.sampled_from(DTYPES))
    value = draw(raw_tensors(shape, dtype))
    scores = torch.tensor(
        draw(st.lists(st.floats(0, 1), min_size=value.numel(), max_size=value.numel())),
        dtype=torch.float32,
    )
    mask = fprune.masks({"w": scores.reshape(shape)}, pattern=f"{n}:{m}", sparsity=n / m)["w"]
    return value, mask, n, m


@given(case=nm_cases())
def test_nm_packed_indices_round_trip_and_size(case):
    value, mask, n, m = case
    packed = compress({"w": value}, {"w": mask}, nm=f"{n}:{m}")
    assert set(packed) == {"w::values", "w::index", "w::nm", "w::shape"}
    groups, kept, width = value.numel() // m, m - n, max(1, math.ceil(math.log2(m)))
    assert packed["w::index"].numel() == -(-groups * kept * width // 8)
    expected = kept * groups * value.element_size() + -(-groups * kept * width // 8)
    assert compressed_size(packed) == expected + 8 * value.ndim + 16
    assert torch.equal(bits(decompress(packed)["w"]), _expected(value, mask))
    assert torch.equal(compressed_masks(packed)["w"], mask)


def test_two_four_is_two_values_and_two_2bit_positions_per_group():
    w = torch.tensor([[0.0, 1.0, 0.0, 2.0, 3.0, 0.0, 4.0, 0.0]], dtype=torch.float16)
    packed = compress({"w": w}, nm="2:4")
    assert packed["w::values"].tolist() == [1.0, 2.0, 3.0, 4.0]
    # positions (1, 3) and (0, 2), two bits each, low bit first: 0b11_01 0b10_00 -> 0x8D
    assert packed["w::index"].tolist() == [0b10001101]
    assert packed["w::nm"].tolist() == [2, 4]


def test_bitmask_is_little_endian_within_each_byte():
    w = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0] + [0.0] * 30)
    packed = compress({"b": w})
    assert packed["b::bitmask"].tolist() == [0b00000001, 0b00000010, 0, 0, 0]
    assert packed["b::values"].tolist() == [1.0, 2.0]


def test_nm_falls_back_to_a_bitmask_when_a_group_does_not_fit():
    w = torch.tensor([[1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0, 4.0]] * 4)
    packed = compress({"w": w}, nm="2:4")
    assert "w::bitmask" in packed and "w::index" not in packed
    assert torch.equal(decompress(packed)["w"], w)


def test_targets_of_the_payoff_issue():
    torch.manual_seed(0)
    dense = 512 * 512
    w32 = torch.randn(512, 512)
    m80 = fprune.masks(fprune.magnitude({"w": w32}), pattern="1x1", sparsity=0.8)
    assert compressed_size(compress({"w": w32}, m80)) / (dense * 4) <= 0.24
    w16 = torch.randn(512, 512, dtype=torch.float16)
    m24 = fprune.masks(fprune.magnitude({"w": w16}), pattern="2:4", sparsity=0.5)
    assert compressed_size(compress({"w": w16}, m24, nm="2:4")) / (dense * 2) <= 0.57
    wb = torch.randn(512, 512, dtype=torch.bfloat16)
    m41 = fprune.masks(fprune.magnitude({"w": wb}), pattern="4x1", sparsity=0.9)
    assert compressed_size(compress({"w": wb}, m41)) / (dense * 2) <= 0.17


def test_negative_zero_is_pruned_unless_a_mask_keeps_it():
    w = torch.tensor([-0.0, 1.0, -0.0, 0.0] * 16)  # what w * mask leaves for negative weights
    inferred = decompress(compress({"w": w}))["w"]
    assert torch.equal(bits(inferred), bits(w.abs()))  # value-equal; the zeros come back +0.0
    kept = torch.tensor([True, True, False, False] * 16)
    exact = decompress(compress({"w": w}, {"w": kept}))["w"]
    assert torch.equal(bits(exact), bits(torch.tensor([-0.0, 1.0, 0.0, 0.0] * 16)))
    every_bit = decompress(compress({"w": w}, keep_negative_zeros=True))["w"]
    assert torch.equal(bits(every_bit), bits(w))


def test_non_float_and_complex_tensors_round_trip():
    params = {
        "ids": torch.tensor([[0, 5, 0, 7]] * 8),
        "flag": torch.zeros(64, dtype=torch.bool),
        "z": torch.tensor([1 + 2j, 0, 0, 0]),
    }
    out = decompress(compress(params))
    assert all(torch.equal(out[k], params[k]) for k in params)
    assert list(out) == list(params)


def test_compress_leaves_its_inputs_and_returns_cpu_copies():
    sparse, dense = torch.zeros(8, 8), torch.ones(2, 2)
    sparse[0, 1] = 1.0
    before = {"sparse": sparse.clone(), "dense": dense.clone()}
    packed = compress({"sparse": sparse, "dense": dense})
    packed["sparse::values"].zero_()
    packed["dense"].zero_()
    assert torch.equal(sparse, before["sparse"]) and torch.equal(dense, before["dense"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"params": {"a::b": torch.ones(2)}}, "must not contain '::'"),
        (
            {"params": {"w": torch.ones(2)}, "masks": {"v": torch.ones(2, dtype=torch.bool)}},
            "masks names tensors that params does not hold",
        ),
        (
            {"params": {"w": torch.ones(2)}, "masks": {"w": torch.ones(3, dtype=torch.bool)}},
            "does not match its tensor's shape",
        ),
        ({"params": {"w": torch.ones(2, 4)}, "nm": "4x1"}, "nm must be an N:M pattern"),
        ({"params": {"w": torch.ones(2)}, "masks": {"w": torch.ones(2)}}, "must be a torch.bool"),
    ],
)
def test_compress_errors_name_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        compress(**kwargs)


def test_decompress_refuses_damaged_input():
    packed = compress({"w": torch.tensor([[0.0, 1.0, 0.0, 2.0]] * 4)})
    with pytest.raises(ValueError, match="incomplete or mixed"):
        decompress({k: v for k, v in packed.items() if not k.endswith("::bitmask")})
    with pytest.raises(ValueError, match="inconsistent"):
        decompress({**packed, "w::values": packed["w::values"][:-1]})
    with pytest.raises(ValueError, match="unknown part"):
        decompress({**packed, "w::extra": torch.ones(1)})
    with pytest.raises(ValueError, match="both a dense tensor and parts"):
        decompress({**packed, "w": torch.ones(1)})
