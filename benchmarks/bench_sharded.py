"""What a sharded prune step exchanges, and what it costs, on the performance workload.

The 72 weights of the workload (84,934,656 values) are split ``Shard(0)`` over ``--ranks``
gloo processes on this machine (each slices its rows locally; no collective builds them).
For each case, a one-shot magnitude pruner's mask update runs on the ``DTensor`` shards,
with every collective inside ``prune.step`` recorded (:class:`fprune.distributed.Traffic`).
The same update on the whole weights in one process is timed alongside, as the reference
(every rank runs it, at the same time, each on 1 thread like the sharded run), and the masks
of both are compared (the comparison gathers them, after the timing). Times are medians of
``--repeats`` calls after a warm-up.

Prints a table and writes JSON (``benchmarks/results/sharded.json`` or ``--json``).
``python benchmarks/bench_sharded.py [--ranks 2] [--repeats 3] [--layers 72]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, workload, write_json

import fprune

CASES = [
    ("1x1", "global", 0.8),
    ("4x1", "global", 0.8),
    ("2:4", "global", 0.5),
    ("1x1", "local", 0.8),
    ("4x1", "local", 0.8),
]


def _shard(whole: dict[str, torch.Tensor], mesh) -> dict[str, torch.Tensor]:
    """This rank's rows as ``Shard(0)`` DTensors, sliced locally (no collective)."""
    return {n: distribute_tensor(t, mesh, [Shard(0)], src_data_rank=None) for n, t in whole.items()}


def worker(rank: int, world: int, rendezvous: str, layers: int, repeats: int, out: str) -> None:
    # a file rendezvous: no port to pick (one picked free can be taken before rank 0 binds it)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (world,))
    whole = workload(layers)  # magnitude: no gradients needed
    params = _shard(whole, mesh)
    rows = []
    for pattern, scope, sparsity in CASES:
        prune = fprune.pruner(sparsity, pattern=pattern, scope=scope, criterion="magnitude")
        state = prune.init(params)
        times = []
        for _ in range(repeats + 1):  # the first is the warm-up
            dist.barrier()
            start = time.perf_counter()
            prune.step(state, params)
            times.append(time.perf_counter() - start)
        with fprune.distributed.Traffic() as traffic:  # one more, recorded
            _, masks = prune.step(state, params)
        # the reference: the same update on the whole weights, in this process (each rank)
        single_state, single_times = prune.init(whole), []
        for _ in range(repeats + 1):
            dist.barrier()
            start = time.perf_counter()
            _, expected = prune.step(single_state, whole)
            single_times.append(time.perf_counter() - start)
        equal = all(torch.equal(m.full_tensor(), expected[n]) for n, m in masks.items())
        rows.append(
            {
                "case": f"{pattern} {scope} {sparsity}",
                "collectives": len(traffic.calls),
                "bytes": traffic.bytes,
                "largest": traffic.largest,
                "seconds": statistics.median(times[1:]),
                "single_seconds": statistics.median(single_times[1:]),
                "equal": equal,
            }
        )
    if rank == 0:
        weights = sum(t.numel() for t in whole.values())
        Path(out).write_text(
            json.dumps(
                {
                    "ranks": world,
                    "layers": layers,
                    "weights": weights,
                    "weight_bytes": sum(t.numel() * t.element_size() for t in whole.values()),
                    "smallest_weight_bytes": min(
                        t.numel() * t.element_size() for t in whole.values()
                    ),
                    "rows": rows,
                }
            )
        )
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # at once: freeing objects after the group is gone can block in gloo's teardown


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=72)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        mp.start_processes(
            worker,
            args=(args.ranks, os.path.join(tmp, "rendezvous"), args.layers, args.repeats, out),
            nprocs=args.ranks,
            start_method="spawn",
        )
        result = json.loads(Path(out).read_text())
    result["machine"] = machine()
    print(
        f"{result['weights']:,} weights ({result['weight_bytes']:,} bytes) "
        f"in {result['layers']} layers, "
        f"Shard(0) over {result['ranks']} gloo ranks; one-shot magnitude mask update"
    )
    print(
        f"{'case':<18}{'collectives':>12}{'bytes sent':>14}{'largest':>10}{'of weights':>12}"
        f"{'sharded s':>11}{'1-process s':>13}{'equal':>7}"
    )
    for row in result["rows"]:
        print(
            f"{row['case']:<18}{row['collectives']:>12}{row['bytes']:>14,}{row['largest']:>10,}"
            f"{row['bytes'] / result['weight_bytes']:>12.2e}{row['seconds']:>11.3f}"
            f"{row['single_seconds']:>13.3f}"
            f"{row['equal']!s:>7}"
        )
    path = write_json("sharded.json", result, args.json)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
