from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fprune.layout import from_2d, shape_2d, to_2d

shapes = st.lists(st.integers(1, 5), min_size=2, max_size=5).map(tuple)


@given(shapes)
def test_to_2d_round_trip(shape):
    w = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    view = to_2d(w)
    assert tuple(view.shape) == shape_2d(shape) == (shape[0], math.prod(shape[1:]))
    assert torch.equal(from_2d(view, shape), w)


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3))
def test_to_2d_conv_puts_input_channel_innermost(out, channels, kh, kw):
    w = torch.randn(out, channels, kh, kw)
    view = to_2d(w)
    for o in range(out):
        for c in range(channels):
            for i in range(kh):
                for j in range(kw):
                    assert view[o, (i * kw + j) * channels + c] == w[o, c, i, j]


def test_to_2d_linear_is_identity():
    w = torch.randn(3, 4)
    assert to_2d(w) is w


@pytest.mark.parametrize("shape", [(), (5,)])
def test_to_2d_rejects_fewer_than_two_dims(shape):
    with pytest.raises(ValueError, match=r"to_2d: only weights with 2 or more dimensions .*\(got "):
        to_2d(torch.zeros(shape))


def test_from_2d_rejects_mismatched_view():
    with pytest.raises(ValueError, match=r"from_2d: the view does not match"):
        from_2d(torch.zeros(2, 5), (2, 3, 2))
