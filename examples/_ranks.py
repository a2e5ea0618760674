"""Spawning gloo ranks on this machine for the distributed examples (shared, so they stay short)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


def join(rank: int, world: int, rendezvous: str) -> None:
    """Join the gloo process group through a rendezvous file (no port to pick: one picked
    free can be taken before rank 0 binds it), failing after 2 minutes rather than hanging."""
    dist.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )


def leave() -> None:
    """Leave the group and end this rank's process at once. Ending it normally would free
    the rank's objects after the group is gone, and gloo's teardown can then block forever
    (seen on this machine: a rank asleep after its work, its parent waiting for it)."""
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(worker: Callable[..., None], ranks: int, *args: Any) -> dict[str, Any]:
    """Run ``worker(rank, ranks, rendezvous, out, tmp, *args)`` on ``ranks`` processes and
    return the JSON object that one of them writes to ``out``."""
    # forkserver where the platform has it: the ranks fork from one process that has imported
    # torch and fprune, instead of each importing them again (a few seconds of CPU a rank)
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    if method == "forkserver":
        mp.set_forkserver_preload(["torch", "torch.distributed", "fprune"])
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        mp.start_processes(
            worker,
            args=(ranks, os.path.join(tmp, "rendezvous"), out, tmp, *args),
            nprocs=ranks,
            start_method=method,
        )
        with open(out) as f:
            return json.load(f)


def arguments(
    description: str, argv: list[str] | None, **more: dict[str, Any]
) -> argparse.Namespace:
    """The distributed examples' options (``--ranks --pattern --sparsity --steps --quick
    --json``, plus ``more``: option name -> ``add_argument`` keywords); ``--quick`` is 40 steps."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--pattern", default="4x1")
    parser.add_argument("--sparsity", type=float, default=0.8)
    for name, kwargs in more.items():
        parser.add_argument(f"--{name}", **kwargs)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--quick", action="store_true", help="40 steps, for tests")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object on the last line"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 40
    return args
