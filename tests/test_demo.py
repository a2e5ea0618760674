"""``fprune demo`` in its fast mode: real digits data, exact sparsity, the plot, the JSON line."""

from __future__ import annotations

import json
import sys

import pytest

from fprune.cli import main

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def test_demo_fast_prints_json_and_writes_the_plot(tmp_path, capsys):
    plot = tmp_path / "demo.png"
    assert main(["demo", "--fast", "--plot", str(plot), "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert 0.0 <= result["sparse_accuracy"] <= 1.0 and 0.0 <= result["dense_accuracy"] <= 1.0
    assert result["dense_accuracy"] > 0.8  # 10 classes: chance is 0.1; two epochs reach ~0.9
    assert result["sparsity"] == 0.9  # 18,432 of 20,480 4x1 blocks: exact
    assert [r["layer"] for r in result["layers"]] == [
        "0.weight",
        "2.weight",
    ]  # the head stays dense
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sparse test accuracy" in out and "2.weight" in out


@pytest.mark.parametrize(
    ("pattern", "sparsity", "scope"), [("2:4", 0.5, "local"), ("1x1", 0.7, "global")]
)
def test_demo_options(tmp_path, capsys, pattern, sparsity, scope):
    argv = [
        "demo",
        "--fast",
        "--plot",
        "none",
        "--json",
        "--pattern",
        pattern,
        "--sparsity",
        str(sparsity),
        "--scope",
        scope,
        "--criterion",
        "magnitude",
        "--seed",
        "3",
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (
        result["sparsity"] == sparsity
        and result["seed"] == 3
        and result["criterion"] == "magnitude"
    )
    if scope == "local":
        assert all(r["sparsity"] == sparsity for r in result["layers"])


def test_demo_bad_option_and_missing_extra(capsys, monkeypatch):
    assert main(["demo", "--fast", "--plot", "none", "--criterion", "snipp"]) == 2
    assert "Did you mean 'snip'" in capsys.readouterr().err
    for name in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):  # as if not installed
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["demo", "--fast", "--plot", "none"]) == 2
    assert "pip install 'fprune[demo]'" in capsys.readouterr().err


def test_demo_default_run_keeps_accuracy_within_two_points(tmp_path, capsys):
    """The README's promise: at 90% sparsity the sparse MLP is within 2 points of dense."""
    assert main(["demo", "--plot", "none", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["sparsity"] == 0.9 and result["pattern_sparsity"] == 0.9
    assert result["dense_accuracy"] > 0.95
    assert result["sparse_accuracy"] >= result["dense_accuracy"] - 0.02


def test_demo_threads_knob(capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["demo", "--fast", "--plot", "none", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        assert main(["demo", "--fast", "--plot", "none", "--threads", "0"]) == 2
        assert "--threads must be at least 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
