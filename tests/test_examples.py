"""The examples run (in their quick mode) and reach what they print."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("pattern", "sparsity"), [("4x1", 0.75), ("2:4", 0.5)])
def test_primitives_example(pattern, sparsity, capsys):
    result = load("primitives").main(["--quick", "--pattern", pattern, "--sparsity", str(sparsity)])
    assert result["block_sparsity"] == sparsity
    assert result["zero_weights"] == pytest.approx(sparsity, abs=1e-12)  # the masks stay applied
    assert result["sparse_accuracy"] > 0.5  # 8 classes: chance is 0.125
    assert "target" in capsys.readouterr().out
