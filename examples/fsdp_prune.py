"""Prune under FSDP2: each rank selects on its own shard, exchanging only small counts and samples.

``fully_shard`` turns every parameter into a ``DTensor`` placed ``Shard(0)``: rank ``r``
holds a block of rows. ``prune.init`` and ``prune.step`` take those DTensors as they are.
Each rank scores its own rows, and the exact selection sums small per-layer histograms
(256 counts per layer and radix digit) and tie counts over the ranks. The masks come back
as DTensors with the parameters' placements. This script trains the examples' MLP that way
on real gloo processes, and checks three claims while it trains:

* **traffic**: every collective issued inside ``prune.step`` is recorded with its payload
  (:class:`fprune.distributed.Traffic`); the largest is a few KiB, far below one weight. As a
  control, the same recorder sees one weight's worth of bytes when a weight is gathered on purpose;
* **exactness**: at every prune step the script gathers the full parameters, gradients and
  state (its own check, outside the recorder) and compares the masks with a single-process
  ``prune.step`` on them;
* **resume**: halfway, every rank saves its state with ``torch.save``, loads it back with
  ``weights_only=True``, and trains on from the loaded copy.

Run ``python examples/fsdp_prune.py`` (2 gloo processes on this machine), ``--ranks 4``,
``--pattern 2:4 --sparsity 0.5``, ``--quick``. With ``--json`` the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from _ranks import (  # spawning gloo ranks, shared by the distributed examples
    arguments,
    join,
    leave,
    spawn,
)
from _task import accuracy, data, mlp  # the synthetic task, shared by the examples
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

import fprune


def _full(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gather DTensors into whole tensors (the script's check, never part of pruning)."""
    return {n: t.full_tensor() if isinstance(t, DTensor) else t for n, t in tensors.items()}


def worker(
    rank: int, world: int, rendezvous: str, out: str, tmp: str, args: argparse.Namespace
) -> None:
    join(rank, world, rendezvous)
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    x, y, x_test, y_test = data(torch.Generator().manual_seed(0))
    model = mlp()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)  # every parameter is now a Shard(0) DTensor
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    selection = fprune.nn.prunable(model)
    steps = args.steps
    prune = fprune.pruner(
        args.sparsity,
        pattern=args.pattern,
        criterion="snip_momentum",
        scope=args.scope,
        start_step=steps // 4,
        end_step=3 * steps // 4,
        frequency=max(steps // 20, 1),
    )
    params = dict(model.named_parameters())
    state = prune.init({n: params[n].detach() for n in selection.names})
    with fprune.distributed.Traffic() as control:  # the recorder sees a weight when one moves
        params[selection.names[0]].full_tensor()
    gen = torch.Generator().manual_seed(1000 + rank)  # every rank its own batches
    traffic, prune_steps, exact, resumed = fprune.distributed.Traffic(), 0, True, None
    for s in range(steps):
        batch = torch.randint(0, x.shape[0], (64,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(
            model(x[batch]), y[batch]
        ).backward()  # grads reduce-scattered
        weights = {n: params[n].detach() for n in selection.names}
        grads = {n: params[n].grad for n in selection.names}
        pruning = (
            prune.settings["start_step"] <= s <= prune.settings["end_step"]
            and (s - prune.settings["start_step"]) % prune.settings["frequency"] == 0
        )
        if pruning:  # the check: the single-process step on the gathered inputs
            whole = fprune.PruneState.from_state_dict(_full(state.state_dict()))
            _, expected = prune.step(whole, _full(weights), _full(grads))
        with traffic:
            state, masks = prune.step(state, weights, grads)
        if pruning:
            prune_steps += 1
            exact &= all(torch.equal(m, expected[n]) for n, m in _full(masks).items())
        if s == steps // 2:  # save per rank, load back, train on from the loaded copy
            path = os.path.join(tmp, f"prune-state-rank{rank}.pt")
            torch.save(state.state_dict(), path)
            loaded = fprune.PruneState.from_state_dict(torch.load(path, weights_only=True))
            resumed = all(
                type(v) is type(loaded.state_dict()[k])
                and torch.equal(_full({k: v})[k], _full({k: loaded.state_dict()[k]})[k])
                for k, v in state.state_dict().items()
            )
            state = loaded
        opt.step()
        fprune.nn.apply_masks_(model, masks)
    sparsity = float(fprune.total_sparsity(_full(state.masks), pattern=args.pattern))
    acc = accuracy(model, x_test, y_test)  # every rank runs the forward (FSDP all-gathers)
    if rank == 0:
        weights = sum(params[n].numel() for n in selection.names)
        result = {
            "ranks": world,
            "pattern": args.pattern,
            "scope": args.scope,
            "steps": steps,
            "prune_steps": prune_steps,
            "masks_placements": sorted({str(tuple(m.placements)) for m in state.masks.values()}),
            "masks_equal_single_process": exact,
            "state_resumed_exactly": resumed,
            "collectives_per_prune_step": sum(1 for _ in traffic.calls) / max(prune_steps, 1),
            "bytes_per_prune_step": traffic.bytes / max(prune_steps, 1),
            "largest_collective_bytes": traffic.largest,
            "control_bytes_for_one_weight": control.largest,
            "smallest_weight_bytes": min(
                params[n].numel() * params[n].element_size() for n in selection.names
            ),
            "pruned_weights": weights,
            "sparsity": sparsity,
            "accuracy": acc,
        }
        with open(out, "w") as f:
            json.dump(result, f)
    leave()


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = arguments(
        "Prune under FSDP2: selection on local shards, small counts exchanged.",
        argv,
        scope=dict(default="global", choices=("global", "local")),
    )
    result = spawn(worker, args.ranks, args)
    print(
        f"{result['ranks']} ranks (gloo, FSDP2), {args.steps} steps, snip_momentum {args.pattern} "
        f"{args.scope} to {args.sparsity}:"
    )
    print(
        f"  inside prune.step: {result['collectives_per_prune_step']:.0f} collectives and "
        f"{result['bytes_per_prune_step']:,.0f} bytes per prune step; "
        f"largest {result['largest_collective_bytes']:,} "
        f"bytes (gathering one weight: {result['control_bytes_for_one_weight']:,})"
    )
    print(
        f"  masks equal to the single-process step at all {result['prune_steps']} prune steps: "
        f"{result['masks_equal_single_process']}; "
        f"placements {', '.join(result['masks_placements'])}"
    )
    print(f"  state saved per rank and resumed exactly: {result['state_resumed_exactly']}")
    print(f"  sparsity {result['sparsity']:.4f}, test accuracy {result['accuracy']:.4f}")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
