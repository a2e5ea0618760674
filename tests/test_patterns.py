from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fprune
from fprune.patterns import NM, Blocks, parse_pattern

side = st.one_of(st.none(), st.integers(1, 64))
block_values = (
    st.tuples(side, side).filter(lambda rc: rc != (None, None)).map(lambda rc: Blocks(*rc))
)
nm_values = st.integers(1, 15).flatmap(lambda n: st.integers(n + 1, 16).map(lambda m: NM(n, m)))


@given(st.one_of(block_values, nm_values))
def test_parse_pattern_round_trip(pattern):
    text = str(pattern)
    assert parse_pattern(text) == pattern
    assert str(parse_pattern(text)) == text
    assert parse_pattern(pattern) is pattern


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1x1", Blocks(1, 1)),
        ("4x1", Blocks(4, 1)),
        ("2x8", Blocks(2, 8)),
        ("channelx1", Blocks(None, 1)),
        ("1xchannel", Blocks(1, None)),
        ("2:4", NM(2, 4)),
        ("1:8", NM(1, 8)),
    ],
)
def test_parse_pattern_golden(text, expected):
    assert parse_pattern(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "4y1",
        "0x1",
        "1x0",
        "4:2",
        "2:2",
        "0:4",
        "x4",
        "4x",
        "",
        "channelxchannel",
        "4x1x1",
        "-1x1",
        " 4x1",
        "4X1",
        "2/4",
        "a:b",
        "1.5x1",
    ],
)
def test_parse_pattern_rejects_malformed(text):
    with pytest.raises(ValueError, match=r"^parse_pattern: .*\(got '.*'\)\. .+") as info:
        parse_pattern(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("value", [4, 4.0, None, ("4", "1")])
def test_parse_pattern_rejects_non_strings(value):
    with pytest.raises(TypeError, match="parse_pattern: pattern must be a string"):
        parse_pattern(value)


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: Blocks(0, 1), ValueError),
        (lambda: Blocks(None, None), ValueError),
        (lambda: Blocks(True, 1), TypeError),
        (lambda: Blocks(2.0, 1), TypeError),
        (lambda: NM(4, 2), ValueError),
        (lambda: NM(0, 4), ValueError),
        (lambda: NM(2, 2), ValueError),
        (lambda: NM(True, 4), TypeError),
    ],
)
def test_pattern_objects_validate(make, error):
    with pytest.raises(error, match=r"^(Blocks|NM): "):
        make()


def test_patterns_are_frozen_and_hashable():
    p = Blocks(4, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.rows = 2  # type: ignore[misc]
    assert len({Blocks(4, 1), parse_pattern("4x1"), NM(2, 4), parse_pattern("2:4")}) == 2


def test_block_shape_fills_channel_sides():
    assert Blocks(None, 2).block_shape((12, 6)) == (12, 2)
    assert Blocks(3, None).block_shape((12, 6)) == (3, 6)
    assert Blocks(4, 1).grid_shape((12, 6)) == (3, 6)
    assert Blocks(None, 1).divides((7, 5))
    assert not Blocks(4, 1).divides((6, 4))
    assert NM(2, 4).divides((3, 8)) and not NM(2, 4).divides((8, 6))
    assert NM(1, 4).max_sparsity == 0.25


def test_malformed_message_lists_forms():
    with pytest.raises(ValueError, match=re.escape("'N:M' (e.g. '2:4')")):
        parse_pattern("4y1")


@pytest.mark.parametrize("text", ["4x1\n", " 4x1", "2:4\n", "4x1 "])
def test_patterns_with_whitespace_are_malformed(text):
    with pytest.raises(ValueError, match="malformed pattern"):
        fprune.parse_pattern(text)
