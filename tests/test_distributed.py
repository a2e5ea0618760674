"""Pruning under DDP and with sharded (DTensor) parameters: real gloo process groups on
loopback, spawned by the example scripts and by ``tests/sharded_run.py``."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DDP_EXAMPLE = ROOT / "examples" / "ddp_prune.py"
FSDP_EXAMPLE = ROOT / "examples" / "fsdp_prune.py"
WORKER = ROOT / "tests" / "sharded_run.py"

pytest.importorskip("torch.distributed")


def _last_json(args: list[str]) -> dict:
    run = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _worker(tmp_path: pathlib.Path, mode: str, ranks: int, *extra: str) -> dict:
    run = subprocess.run(
        [sys.executable, str(WORKER), mode, "--ranks", str(ranks), "--dir", str(tmp_path), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / f"{mode}.json").read_text())
    assert "error" not in result, result.get("error")
    assert result["ranks"] == ranks and result["same_on_every_rank"]
    return result


@pytest.mark.parametrize(
    ("ranks", "pattern", "sparsity"), [(2, "4x1", 0.8)]
)  # DDP: every rank selects alone
def test_ddp_ranks_compute_identical_masks_without_collectives(ranks, pattern, sparsity):
    result = _last_json(
        [
            str(DDP_EXAMPLE),
            "--quick",
            "--json",
            "--ranks",
            str(ranks),
            "--pattern",
            pattern,
            "--sparsity",
            str(sparsity),
        ]
    )
    assert result["ranks"] == ranks
    assert result["collectives_counted_in_control"] >= 1  # the counter does see a collective
    assert result["collectives_in_prune_step"] == 0  # nothing beyond DDP's own gradient all-reduce
    assert result["masks_equal"] and result["state_equal"] and result["weights_equal"]
    assert result["sparsity"] == sparsity


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_sharded_masks_equal_the_single_process_ones(tmp_path, ranks):
    """Every pattern and scope, with and without bounds, magnitude and snip_momentum in turn,
    over five steps: masks, targets and accumulators equal the single-process run's; only
    small per-layer counts move (3 ranks split rows unevenly; 1 rank holds whole layers).
    Four ranks: the resumed run of the state test."""
    result = _worker(tmp_path, "check", ranks)
    cases = result["cases"]
    assert cases and all(c["equal"] for c in cases), [c["case"] for c in cases if not c["equal"]]
    large = [c for c in cases if c["case"].startswith("large")]
    assert len(large) == (2 if ranks == 3 else 3)
    # the largest payload is the sample's gather: 2^14 int32 keys over all ranks (each rank's
    # part padded to the longest), counted as the input plus the ranks' outputs; 8 MiB of weights
    assert all(c["largest"] <= 4 * (ranks + 1) * ((1 << 14) // ranks + 64) for c in large)
    cases = [c for c in cases if not c["case"].startswith("large")]
    patterns = {c["case"].split()[0] for c in cases}
    assert {"1x1", "1x8", "2:4"} <= patterns and ("4x1" in patterns) == (ranks != 3)
    assert {c["case"].split()[1] for c in cases} == {"global", "local"}
    # 5 layers x 256 counts x 8 bytes is the largest payload: a radix digit's histograms
    assert 0 < result["largest_collective_bytes"] <= 5 * 256 * 8 < result["smallest_weight_bytes"]
    if ranks > 1:  # the recorder sees a weight move (one rank has nothing to gather)
        assert result["control_bytes"] >= result["smallest_weight_bytes"]
    assert result["lock"]
    dynamic = result["dynamic"]  # RigL, SET and ERK on DTensors: equal, and counts only move
    assert len(dynamic) == (4 if ranks != 3 else 3) + 1, dynamic
    assert all(v for k, v in dynamic.items() if k != "largest_collective_bytes"), dynamic
    assert dynamic["largest_collective_bytes"] <= 5 * 256 * 8
    primitives = result[
        "primitives_equal"
    ]  # masks, grid_masks, global_masks, local_masks on DTensors
    assert len(primitives) == 5 and all(primitives.values()), primitives
    errors = result["errors"]
    assert errors["mixed"].startswith("TypeError: init: DTensor and plain tensors are mixed")
    assert errors["plain_state"].startswith("TypeError: step: DTensor and plain tensors are mixed")
    assert errors["shard1"].startswith("ValueError: init: params['w'] is not placed Shard(0)")
    if ranks > 1:  # one rank holds whole columns
        assert errors["channel"].startswith(
            "ValueError: init: a shard boundary cuts the 'channelx1' blocks"
        )
    if ranks == 3:  # 64 rows in shards of 22: a 4x1 block would straddle two ranks
        assert errors["split_block"].startswith(
            "ValueError: init: a shard boundary cuts the '4x1' blocks"
        )


def test_sharded_state_saves_per_rank_and_resumes_exactly(tmp_path):
    """Saved after 4 of 9 steps by 2 ranks: per-rank ``torch.save`` files and a
    ``torch.distributed.checkpoint`` resumed by those ranks, and the checkpoint by a fresh
    process group of 4 ranks."""
    same = _worker(tmp_path, "save", 2)
    assert same["torch.save"] and same["dcp"] and same["step"] == 9
    more = _worker(tmp_path, "resume", 4, "--saved-ranks", "2")
    assert more["dcp"] and "torch.save" not in more


@pytest.mark.parametrize(
    ("ranks", "pattern", "sparsity"), [(3, "2:4", 0.5)]
)  # 4x1: the sharded check
def test_fsdp2_example_prunes_shards_exactly(ranks, pattern, sparsity):
    result = _last_json(
        [
            str(FSDP_EXAMPLE),
            "--quick",
            "--json",
            "--ranks",
            str(ranks),
            "--pattern",
            pattern,
            "--sparsity",
            str(sparsity),
        ]
    )
    assert result["ranks"] == ranks and result["prune_steps"] > 0
    assert result["masks_equal_single_process"] and result["state_resumed_exactly"]
    assert result["masks_placements"] == ["(Shard(dim=0),)"]
    assert (
        0
        < result["largest_collective_bytes"]
        < result["smallest_weight_bytes"]
        <= result["control_bytes_for_one_weight"]
    )
    assert result["sparsity"] == sparsity
