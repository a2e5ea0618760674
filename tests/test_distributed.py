"""Pruning under DDP: real gloo process groups on loopback, spawned by the example script."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "ddp_prune.py"

pytest.importorskip("torch.distributed")


@pytest.mark.parametrize(("ranks", "pattern", "sparsity"), [(2, "4x1", 0.8), (4, "2:4", 0.5)])
def test_ddp_ranks_compute_identical_masks_without_collectives(ranks, pattern, sparsity):
    run = subprocess.run(
        [sys.executable, str(EXAMPLE), "--quick", "--json", "--ranks", str(ranks), "--pattern", pattern,
         "--sparsity", str(sparsity)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["ranks"] == ranks
    assert result["collectives_counted_in_control"] >= 1  # the counter does see a collective
    assert result["collectives_in_prune_step"] == 0  # nothing beyond DDP's own gradient all-reduce
    assert result["masks_equal"] and result["state_equal"] and result["weights_equal"]
    assert result["sparsity"] == sparsity
