"""Prune under ``DistributedDataParallel``: every rank computes the same masks, exchanging nothing.

DDP averages the gradients of all ranks during ``backward``, so after it every rank holds
the same parameters and the same gradients. ``prune.step`` is a pure function of its state,
the parameters and the gradients, so every rank computes the same masks on its own: no
collective runs inside it. This script checks both claims while it trains. It counts the
collectives issued inside ``prune.step`` with ``CommDebugMode`` (it must be 0). At the end it
compares a digest of every rank's masks, state and weights. That comparison is the script's
own check, one small ``all_gather``, and not part of pruning.

Run ``python examples/ddp_prune.py`` (spawns 2 gloo processes on this machine, seconds on 2
cores), ``--ranks 4``, or ``--quick``. With ``--json`` the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import torch
import torch.distributed as dist
from _ranks import (  # spawning gloo ranks, shared by the distributed examples
    arguments,
    join,
    leave,
    spawn,
)
from _task import accuracy, data, mlp  # the synthetic task, shared by the examples
from torch.distributed.tensor.debug import CommDebugMode
from torch.nn.parallel import DistributedDataParallel

import fprune


def _digest(tensors: dict[str, torch.Tensor]) -> int:
    """A 63-bit digest of tensors' bytes, to compare ranks with one small all_gather."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(
            tensors[name].detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
        )
    return int.from_bytes(h.digest()[:8], "little") >> 1


def worker(
    rank: int, world: int, rendezvous: str, out: str, tmp: str, args: argparse.Namespace
) -> None:
    join(rank, world, rendezvous)
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same initial model on every rank (DDP also broadcasts rank 0's)
    x, y, x_test, y_test = data(torch.Generator().manual_seed(0))
    model = mlp()
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    selection = fprune.nn.prunable(model)  # names of the plain module (DDP adds "module.")
    steps = args.steps
    prune = fprune.pruner(
        args.sparsity,
        pattern=args.pattern,
        criterion="snip_momentum",
        scope="global",
        start_step=steps // 4,
        end_step=3 * steps // 4,
        frequency=max(steps // 20, 1),
    )
    params = dict(model.named_parameters())
    state = prune.init({n: params[n].detach() for n in selection.names})
    gen = torch.Generator().manual_seed(1000 + rank)  # every rank its own batches
    with CommDebugMode() as control:  # the counter sees a collective when there is one
        dist.all_reduce(torch.zeros(1))
    collectives = 0
    for _ in range(steps):
        batch = torch.randint(0, x.shape[0], (64,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(
            ddp(x[batch]), y[batch]
        ).backward()  # DDP all-reduces grads
        with CommDebugMode() as comm:
            state, masks = prune.step(
                state,
                {n: params[n].detach() for n in selection.names},
                {n: params[n].grad for n in selection.names},
            )
        collectives += comm.get_total_counts()
        opt.step()
        fprune.nn.apply_masks_(model, masks)
    # The check (not pruning): every rank's masks, pruner state and weights must be identical.
    mine = torch.tensor(
        [
            _digest(state.masks),
            _digest(state.state_dict()),
            _digest({n: p for n, p in params.items()}),
        ]
    )
    everyone = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine)
    if rank == 0:
        result = {
            "ranks": world,
            "collectives_in_prune_step": collectives,
            "collectives_counted_in_control": control.get_total_counts(),
            "masks_equal": all(bool(e[0] == mine[0]) for e in everyone),
            "state_equal": all(bool(e[1] == mine[1]) for e in everyone),
            "weights_equal": all(bool(e[2] == mine[2]) for e in everyone),
            "sparsity": float(fprune.total_sparsity(state.masks, pattern=args.pattern)),
            "accuracy": accuracy(model, x_test, y_test),
        }
        with open(out, "w") as f:
            json.dump(result, f)
    leave()


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = arguments(
        "Prune under DDP: identical masks on every rank, no extra communication.", argv
    )
    result = spawn(worker, args.ranks, args)
    print(
        f"{result['ranks']} ranks (gloo), {args.steps} steps, "
        f"snip_momentum {args.pattern} global to {args.sparsity}:"
    )
    print(
        f"  collectives inside prune.step: {result['collectives_in_prune_step']} "
        f"(the same counter saw {result['collectives_counted_in_control']} for one all_reduce)"
    )
    print(
        f"  masks identical on every rank: {result['masks_equal']}; "
        f"pruner state: {result['state_equal']}; "
        f"weights: {result['weights_equal']}"
    )
    print(f"  sparsity {result['sparsity']:.4f}, test accuracy {result['accuracy']:.4f}")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
