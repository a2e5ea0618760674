"""Sharded pruning on real gloo process groups: the worker behind ``test_distributed.py``.

``python tests/sharded_run.py MODE --ranks W --dir D`` spawns ``W`` processes; rank 0
writes ``D/MODE.json``. Modes:

* ``check``: for each case (pattern, scope, criterion, bounds), a pruner steps ``DTensor``
  params and grads (``Shard(0)``, ``torch.chunk``'s rows) and a single-process pruner steps
  the whole tensors; masks, targets and accumulators must be equal at every step. The
  collectives inside ``prune.step`` are recorded with their payloads. Bad inputs must raise.
* ``save``: the first steps of a run, then every rank saves its state (``torch.save``, and
  ``torch.distributed.checkpoint`` into ``D/dcp``).
* ``resume``: a fresh process group loads the states and finishes the run; an uninterrupted
  run in the same processes must end with the same state. With a different number of ranks
  than ``save`` only the ``torch.distributed.checkpoint`` copy can be loaded (it reshards).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fprune
from fprune._sharded import rows_of

SHAPES = {
    "attn.q": (48, 128),
    "attn.out": (64, 96),
    "mlp.up": (192, 64),
    "mlp.down": (64, 192),
    "conv": (32, 16, 3, 3),
}
CASES = [  # pattern, scope, sparsity, bounds
    ("1x1", "global", 0.8, (0.0, 0.98)),
    ("1x1", "global", 0.7, (0.5, 0.75)),
    ("1x1", "local", 0.8, (0.0, 0.98)),
    ("4x1", "global", 0.8, (0.2, 0.9)),
    ("4x1", "local", 0.6, (0.0, 0.98)),
    ("1x8", "global", 0.6, (0.0, 0.98)),
    ("2:4", "global", 0.5, (0.0, 0.98)),
    ("2:4", "global", 0.3, (0.1, 0.4)),
    ("2:4", "local", 0.4, (0.0, 0.98)),
]
STEPS = 5


def tensors(seed: int) -> dict[str, torch.Tensor]:
    """Whole tensors for a step, the same on every rank; rows of ties and exact zeros."""
    g = torch.Generator().manual_seed(seed)
    out = {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}
    out["attn.q"][5:9] = 0.25  # ties across a shard boundary (2 and 4 ranks)
    out["mlp.up"][:, :4] = 0.0
    return out


def shard(whole: dict[str, torch.Tensor], mesh) -> dict[str, torch.Tensor]:
    """This rank's rows as ``Shard(0)`` DTensors, sliced locally (no collective)."""
    return {n: distribute_tensor(t, mesh, [Shard(0)], src_data_rank=None) for n, t in whole.items()}


def full(tensors_: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t.full_tensor() if isinstance(t, DTensor) else t for n, t in tensors_.items()}


def supported(pattern: str, world: int) -> bool:
    """Whether ``Shard(0)`` over ``world`` ranks keeps every block of ``pattern`` on one rank."""
    rows = int(pattern.split("x")[0]) if "x" in pattern else 1
    return all(rows_of(s[0], world, 0)[1] % rows == 0 for s in SHAPES.values())


def check(mesh) -> dict[str, object]:
    world = mesh.size()
    results, largest, control = [], 0, 0
    weight_bytes = min(torch.Size(s).numel() * 4 for s in SHAPES.values())
    for i, (pattern, scope, sparsity, (lo, hi)) in enumerate(CASES):
        if not supported(pattern, world):
            continue
        # the criteria in turn: each pattern meets both (a shard is scored where it lies)
        for criterion in (("magnitude", "snip_momentum")[i % 2],):
            kw = dict(
                pattern=pattern,
                scope=scope,
                criterion=criterion,
                start_step=1,
                end_step=4,
                min_layer_sparsity=lo,
                max_layer_sparsity=hi,
            )
            single, sharded = fprune.pruner(sparsity, **kw), fprune.pruner(sparsity, **kw)
            s_state, d_state = single.init(tensors(0)), sharded.init(shard(tensors(0), mesh))
            equal = True
            for step in range(STEPS):
                params, grads = tensors(step), tensors(100 + step)
                s_state, s_masks = single.step(s_state, params, grads)
                with fprune.distributed.Traffic() as traffic:
                    d_state, d_masks = sharded.step(
                        d_state, shard(params, mesh), shard(grads, mesh)
                    )
                largest = max(largest, traffic.largest)
                equal &= all(torch.equal(m, s_masks[n]) for n, m in full(d_masks).items())
                equal &= all(tuple(m.placements) == (Shard(0),) for m in d_masks.values())
                equal &= bool(d_state.current_target == s_state.current_target) and bool(
                    d_state.step == s_state.step
                )
                equal &= all(torch.equal(a, s_state.aux[n]) for n, a in full(d_state.aux).items())
            results.append(
                {"case": f"{pattern} {scope} {sparsity} {criterion} [{lo}, {hi}]", "equal": equal}
            )
    # 2^20 units: enough that the selection narrows its search with a gathered sample
    g = torch.Generator().manual_seed(3)
    big = {
        "big.a": torch.randn(1024, 512, generator=g),
        "big.b": torch.randn(512, 1024, generator=g),
    }
    for pattern, scope in (("1x1", "global"), ("1x1", "local"), ("4x1", "global")):
        if not supported(pattern, world):
            continue
        prune = fprune.pruner(
            0.8, pattern=pattern, scope=scope, criterion="magnitude", max_layer_sparsity=0.85
        )
        _, want = prune.step(prune.init(big), big)
        with fprune.distributed.Traffic() as traffic:
            _, got = prune.step(prune.init(shard(big, mesh)), shard(big, mesh))
        results.append(
            {
                "case": f"large {pattern} {scope}",
                "equal": all(torch.equal(m, want[n]) for n, m in full(got).items()),
                "largest": traffic.largest,
            }
        )
    primitives_equal: dict[str, bool] = {}
    scores, previous = tensors(7), {n: t > -1.0 for n, t in tensors(8).items()}
    scores = {n: t.abs() for n, t in scores.items()}
    grids = fprune.block_scores(scores, pattern="1x8")
    calls = {
        "masks 1x8": lambda s, p: fprune.masks(
            s, pattern="1x8", sparsity=0.6, previous=p, min_layer_sparsity=0.3
        ),
        "masks 2:4 local": lambda s, p: fprune.masks(
            s, pattern="2:4", sparsity=0.3, scope="local", previous=p
        ),
        "global_masks": lambda s, p: fprune.global_masks(
            s, sparsity=0.7, max_layer_sparsity=0.8, previous=p
        ),
        "local_masks": lambda s, p: fprune.local_masks(s, sparsity=0.7, previous=p),
    }
    for name, call in calls.items():
        with fprune.distributed.Traffic() as traffic:
            got = call(shard(scores, mesh), shard(previous, mesh))
        largest = max(largest, traffic.largest)
        want = call(scores, previous)
        primitives_equal[name] = all(torch.equal(m, want[n]) for n, m in full(got).items())
    got = fprune.grid_masks(shard(grids, mesh), pattern="1x8", sparsity=0.5)
    want = fprune.grid_masks(grids, pattern="1x8", sparsity=0.5)
    primitives_equal["grid_masks"] = all(torch.equal(m, want[n]) for n, m in full(got).items())
    with fprune.distributed.Traffic() as gathered:  # the control: a weight moving is seen
        shard(tensors(0), mesh)["conv"].full_tensor()
    control = gathered.largest
    return {
        "cases": results,
        "largest_collective_bytes": largest,
        "smallest_weight_bytes": weight_bytes,
        "control_bytes": control,
        "errors": errors(mesh),
        "lock": lock(mesh),
        "primitives_equal": primitives_equal,
        "dynamic": dynamic(mesh),
    }


def dynamic(mesh) -> dict[str, object]:
    """RigL, SET and an ERK-distributed pruner on ``DTensor`` params equal the single-process
    run at every step (random starts and SET's draws use global indices); only counts move."""
    cases = {
        "rigl 1x1 erk": fprune.dynamic(0.8, distribution="erk", end_step=6, frequency=2),
        "set 2x1": fprune.dynamic(0.7, grow="random", pattern="2x1", end_step=6, frequency=2),
        "rigl 2:4 magnitude start": fprune.dynamic(
            0.5, pattern="2:4", start="magnitude", end_step=6, frequency=2
        ),
        "pruner 1x1 erk": fprune.pruner(
            0.8,
            pattern="1x1",
            criterion="magnitude",
            scope="local",
            distribution="erk",
            end_step=4,
        ),
    }
    out: dict[str, object] = {}
    largest = 0
    for name, prune in cases.items():
        if not supported(prune.settings["pattern"], mesh.size()):
            continue
        single, sharded = prune.init(tensors(0)), prune.init(shard(tensors(0), mesh))
        equal = all(torch.equal(m, single.masks[n]) for n, m in full(sharded.masks).items())
        for step in range(STEPS + 2):
            params, grads = tensors(step), tensors(100 + step)
            single, s_masks = prune.step(single, params, grads)
            with fprune.distributed.Traffic() as traffic:
                sharded, d_masks = prune.step(sharded, shard(params, mesh), shard(grads, mesh))
            largest = max(largest, traffic.largest)
            equal &= all(torch.equal(m, s_masks[n]) for n, m in full(d_masks).items())
        out[name] = equal
    out["largest_collective_bytes"] = largest
    return out


def lock(mesh) -> bool:
    """``lock_init_sparsity`` and the pattern-lock pruner read zeros on every rank's rows."""
    whole = tensors(0)
    for name in whole:
        whole[name][::3] = 0.0  # zero rows (so whole 1x8 blocks too)
    ok = True
    for prune in (
        fprune.pruner(
            0.8, pattern="1x8", criterion="magnitude", end_step=2, lock_init_sparsity=True
        ),
        fprune.pattern_lock(pattern="1x8"),
    ):
        single, sharded = prune.init(whole), prune.init(shard(whole, mesh))
        ok &= bool(single.initial_target == sharded.initial_target)
        for _ in range(3):
            single, s_masks = prune.step(single, whole)
            sharded, d_masks = prune.step(sharded, shard(whole, mesh))
            ok &= all(torch.equal(m, s_masks[n]) for n, m in full(d_masks).items())
    return ok


def errors(mesh) -> dict[str, str]:
    """The messages of inputs sharded pruning refuses (empty where a case does not apply)."""
    out = {}
    whole = tensors(0)

    def message(fn) -> str:
        try:
            fn()
        except (TypeError, ValueError) as e:
            return f"{type(e).__name__}: {e}"
        return "no error"

    if mesh.size() > 1:
        out["channel"] = message(
            lambda: fprune.pruner(0.5, pattern="channelx1").init(shard(whole, mesh))
        )
    if not supported("4x1", mesh.size()):
        out["split_block"] = message(
            lambda: fprune.pruner(0.5, pattern="4x1").init(shard(whole, mesh))
        )
    mixed = {**shard(whole, mesh), "attn.q": whole["attn.q"]}
    out["mixed"] = message(lambda: fprune.pruner(0.5, pattern="1x1").init(mixed))
    cols = {
        n: DTensor.from_local(
            t.clone(),
            mesh,
            [Shard(1)],
            run_check=False,
            shape=(t.shape[0], t.shape[1] * mesh.size()),
            stride=(t.shape[1] * mesh.size(), 1),
        )
        for n, t in {"w": whole["attn.q"]}.items()
    }
    out["shard1"] = message(lambda: fprune.pruner(0.5, pattern="1x1").init(cols))
    prune = fprune.pruner(0.5, pattern="1x1", criterion="magnitude")
    plain_state = prune.init(whole)
    out["plain_state"] = message(lambda: prune.step(plain_state, shard(whole, mesh)))
    return out


def run(prune, state, first: int, last: int, mesh):
    for step in range(first, last):
        state, _ = prune.step(state, shard(tensors(step), mesh), shard(tensors(100 + step), mesh))
    return state


def pruner():
    return fprune.pruner(
        0.8,
        pattern="1x4",
        scope="global",
        criterion="snip_momentum",
        start_step=1,
        end_step=7,
        min_layer_sparsity=0.3,
    )


def save(mesh, folder: Path) -> dict[str, object]:
    """Save after 4 steps (per-rank ``torch.save`` files and a ``torch.distributed.checkpoint``),
    then resume from both in this group (a fresh group of any size may resume from the DCP)."""
    prune = pruner()
    state = run(prune, prune.init(shard(tensors(0), mesh)), 0, 4, mesh)
    torch.save(state.state_dict(), folder / f"state-rank{mesh.get_local_rank()}.pt")
    dcp.save(state.state_dict(), checkpoint_id=str(folder / "dcp"))
    dist.barrier()
    return resume(mesh, folder, mesh.size())


def resume(mesh, folder: Path, saved_ranks: int) -> dict[str, object]:
    prune = pruner()
    straight = run(prune, prune.init(shard(tensors(0), mesh)), 0, 9, mesh)
    results = {}
    if saved_ranks == mesh.size():
        loaded = torch.load(folder / f"state-rank{mesh.get_local_rank()}.pt", weights_only=True)
        results["torch.save"] = fprune.PruneState.from_state_dict(loaded)
    template = prune.init(shard(tensors(0), mesh)).state_dict()
    dcp.load(template, checkpoint_id=str(folder / "dcp"))
    results["dcp"] = fprune.PruneState.from_state_dict(template)
    out = {}
    for how, state in results.items():
        ended = run(prune, state, 4, 9, mesh)
        a, b = full(ended.state_dict()), full(straight.state_dict())
        out[how] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    out["step"] = int(straight.step)
    return out


def worker(
    rank: int, world: int, rendezvous: str, mode: str, folder: str, saved_ranks: int
) -> None:
    # a file rendezvous: no port to pick (one picked free can be taken before rank 0 binds it)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    torch.set_num_threads(1)
    try:
        mesh = init_device_mesh("cpu", (world,))
        path = Path(folder)
        if mode == "check":
            result = check(mesh)
        elif mode == "save":
            result = save(mesh, path)
        else:
            result = resume(mesh, path, saved_ranks)
    except Exception:
        result = {"error": traceback.format_exc()}
    everyone: list[object] = [None] * world
    dist.all_gather_object(everyone, json.dumps(result, sort_keys=True))
    if rank == 0:
        (Path(folder) / f"{mode}.json").write_text(
            json.dumps({"ranks": world, "same_on_every_rank": len(set(everyone)) == 1, **result})
        )
    dist.barrier()
    dist.destroy_process_group()
    # End the process at once: freeing this rank's objects after the group is gone can abort
    # or block in gloo's teardown (seen on this machine, once each, after the work was done).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("check", "save", "resume"))
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--saved-ranks", type=int, default=0)
    args = parser.parse_args(argv)
    rendezvous = tempfile.mkdtemp()
    # forkserver: the ranks fork from one process that has imported torch and fprune, instead
    # of each importing them again (a few seconds of CPU a rank)
    mp.set_forkserver_preload(
        ["torch", "torch.distributed.tensor", "torch.distributed.checkpoint", "fprune"]
    )
    try:
        mp.start_processes(
            worker,
            args=(
                args.ranks,
                os.path.join(rendezvous, "store"),
                args.mode,
                args.dir,
                args.saved_ranks,
            ),
            nprocs=args.ranks,
            start_method="forkserver",
        )
    finally:
        shutil.rmtree(rendezvous, ignore_errors=True)


if __name__ == "__main__":
    main()
