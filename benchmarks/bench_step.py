"""One global (and local) mask update on a BERT-base-sized workload, against named peers.

One command (about 10 minutes on 2 cores)::

    python benchmarks/bench_step.py

Workload: 12 blocks of Linear(768, 768) x 4 + Linear(768, 3072) + Linear(3072, 768), default
init after ``torch.manual_seed(0)``: 72 weights, 84,934,656 values; gradients
``torch.randn_like`` after ``torch.manual_seed(1)``; CPU, 2 threads.

Rows, each the median (and minimum) of ``--repeats`` (at least 5) calls in this one run, timed
round-robin (each round calls every row once, after one warm-up call each), so that the shared
machine's slow spells fall on all rows alike. Ratios are printed two ways: of the medians, and
paired (the median over rounds of the ratio within one round, steadier under drifting load);
with each row's minor page faults a call (fresh pages the allocator had returned to the
system, which move several rows' times by tens of ms):

* fprune: eager ``prune.step`` calls that update the masks (a one-shot pruner at step 0, the
  same state each call, after one warm-up call), magnitude criterion, global and local, at
  1x1 80%, 4x1 80%, 2:4 50%; global 2:4 at 30% (a step of an iterative N:M schedule, where
  only some groups convert: each group is scored and the groups are selected, which 50%
  skips); and a non-prune step of a snip_momentum 4x1 pruner;
* peers: ``torch.cat`` + ``torch.kthvalue`` (1x1 80%, then the masks),
  ``torch.nn.utils.prune.global_unstructured`` (L1, 80%), ``torch.ao.pruning``'s
  ``WeightNormSparsifier.step`` (local 1x1 80%), an ``AdamW(foreach=True)`` step, one
  ``torch.mul(w, g)`` pass, one clone of all weights;
* a floor: the passes a global 4x1 update at 80% makes when its threshold is known
  beforehand (read the previous masks, score, compare, spread to fresh masks), without
  the selection that finds it.

Also: the peak extra memory of a global magnitude update beyond what ``init`` holds, in
bytes per weight (``ru_maxrss`` in a fresh subprocess), and a scaling run (global 1x1 and
4x1) at about 1/10, 1x and 4x the workload (of ``--layers``). Each size runs in a fresh
process, timed round-robin with a ``torch.mul(w, g, out=...)`` pass over the same weights
(outputs allocated once), so that a slow spell does not pass for growth, and counting the
minor page faults of each call; once with the C allocator as the environment sets it, and
once with glibc told to keep freed memory (``GLIBC_TUNABLES``, see ``KEEP_FREED``), so that
growth from the work is told apart from pages faulted in when the allocator returned the
previous step's masks to the system. Prints tables; writes
``benchmarks/results/bench_step.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
from typing import Any

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import gradients, machine, round_robin, workload, write_json

import fprune

FPRUNE_ROWS = [
    ("global", "1x1", 0.8),
    ("global", "4x1", 0.8),
    ("global", "2:4", 0.5),
    ("local", "1x1", 0.8),
    ("local", "4x1", 0.8),
    ("local", "2:4", 0.5),
    (
        "global",
        "2:4",
        0.3,
    ),  # an iterative N:M step: 60% of the groups convert, chosen by their scores
]


def _fprune_update(params, grads, scope, pattern, sparsity):
    prune = fprune.pruner(sparsity, pattern=pattern, criterion="magnitude", scope=scope)
    state = prune.init(params)
    return lambda: prune.step(state, params, grads)


NON_PRUNE_SCHEDULE = dict(start_step=0, end_step=1000, frequency=100)  # steps 1 to 99 do not prune
MAX_REPEATS = 98  # the non-prune row's warm-up call is step 1 and its timed calls steps 2 to 99


def _non_prune_snip_momentum(params, grads, *, advance: bool):
    """A non-prune step of a snip_momentum 4x1 pruner (the accumulators fold in a new term,
    the masks stay). With ``advance`` each call goes on from the state the previous call
    returned, as a training loop does (``state, masks = prune.step(state, ...)``): the previous
    accumulators are freed once the new ones exist, and the next call's reuse their memory.
    Without it every call starts from the same state and its result is dropped, which no
    training loop does: the allocator may then return the new accumulators to the system
    after each call and fault their pages in again on the next."""
    prune = fprune.pruner(0.8, pattern="4x1", criterion="snip_momentum", **NON_PRUNE_SCHEDULE)
    first, _ = prune.step(prune.init(params), params, grads)  # now at step 1: not a prune step
    current = [first]

    def run():
        state = current[0]
        if fprune.schedules.is_prune_step(int(state.step), **NON_PRUNE_SCHEDULE):
            raise RuntimeError(
                f"the non-prune row reached prune step {int(state.step)}: "
                f"use at most --repeats {MAX_REPEATS}"
            )
        new, masks = prune.step(state, params, grads)
        if advance:
            current[0] = new
        return masks

    return run


def _cat_kthvalue(params, grads):
    def run():
        scores = torch.cat([p.abs().reshape(-1) for p in params.values()])
        k = int(0.8 * scores.numel())
        threshold = scores.kthvalue(k).values
        return {n: p.abs() > threshold for n, p in params.items()}

    return run


def _modules(params):
    mods = {}
    for n, p in params.items():
        lin = torch.nn.Linear(p.shape[1], p.shape[0], bias=False)
        with torch.no_grad():
            lin.weight.copy_(p)
        mods[n] = lin
    return mods


def _torch_prune(params, grads):
    import torch.nn.utils.prune as tprune

    mods = _modules(params)

    def run():
        tprune.global_unstructured(
            [(m, "weight") for m in mods.values()], pruning_method=tprune.L1Unstructured, amount=0.8
        )
        for m in mods.values():  # back to plain weights for the next call (not timed separately)
            tprune.remove(m, "weight")

    return run


def _torch_ao(params, grads):
    from torch.ao.pruning import WeightNormSparsifier

    mods = torch.nn.ModuleDict({n.replace(".", "_"): m for n, m in _modules(params).items()})
    sparsifier = WeightNormSparsifier(
        sparsity_level=0.8, sparse_block_shape=(1, 1), zeros_per_block=1
    )
    sparsifier.prepare(mods, [{"tensor_fqn": f"{k}.weight"} for k in mods])
    return sparsifier.step


def _adamw(params, grads):
    weights = [p.clone().requires_grad_(True) for p in params.values()]
    for w, g in zip(weights, grads.values(), strict=True):
        w.grad = g
    opt = torch.optim.AdamW(weights, lr=1e-3, foreach=True)
    return opt.step


def _mul(params, grads):
    return lambda: [torch.mul(params[n], grads[n]) for n in params]


def _mul_into(params, grads):
    """``torch.mul(w, g, out=...)`` into outputs allocated once: a memory-bound pass whose time
    is linear in the weights (a fresh output per call adds page faults that grow faster)."""
    outs = {n: torch.empty_like(p) for n, p in params.items()}
    return lambda: [torch.mul(params[n], grads[n], out=outs[n]) for n in params]


def _faults(fn, sink: list[int]):
    """``fn``, appending the minor page faults of each call to ``sink`` (the warm-up call too)."""

    def run():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        out = fn()
        sink.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return out

    return run


def _clone(params, grads):
    return lambda: [p.clone() for p in params.values()]


def _passes_4x1(params, grads):
    """The passes any eager global 4x1 update at 80% makes, with the threshold known beforehand
    (no sample, no candidates, no per-layer caps): read the previous masks, score each layer
    (``abs`` into one reused buffer, its 4x1 means into another, a few block rows at a time as
    the update does), compare with the threshold, spread to a fresh weight-shaped bool mask.
    A floor for the update, not the same masks."""
    from fprune._eager.keys import all_true  # the accelerator's own pieces
    from fprune._eager.scoring import reduce_scored
    from fprune._eager.scratch import Scratch

    previous = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    largest = max(p.numel() for p in params.values())
    scratch, grid = Scratch(params.values()), torch.empty(largest // 4)
    magnitude = fprune.scores.LAYER_SCORES["magnitude"]  # the pruner's own score of one layer
    means = torch.cat(
        [p.abs().view(p.shape[0] // 4, 4, -1).mean(1).reshape(-1) for p in params.values()]
    )
    threshold = float(torch.kthvalue(means, int(0.8 * means.numel())).values)
    del means

    def run():
        masks = {}
        for name, w in params.items():
            all_true(previous[name])
            rows, cols = w.shape
            block = reduce_scored(
                magnitude,
                w,
                None,
                (4, 1),
                "mean",
                scratch,
                grid[: w.numel() // 4].view(rows // 4, cols),
            )
            kept = torch.gt(block, threshold)
            masks[name] = kept[:, None, :].expand(rows // 4, 4, cols).reshape(rows, cols)
        return masks

    return run


PEERS = {
    "cat + kthvalue, global 1x1 80%": _cat_kthvalue,
    "torch.nn.utils.prune.global_unstructured (L1 80%)": _torch_prune,
    "torch.ao.pruning WeightNormSparsifier.step (local 80%)": _torch_ao,
    "AdamW(foreach) step": _adamw,
    "one torch.mul(w, g) pass": _mul,
    "clone all weights": _clone,
    "4x1 80% passes, threshold known (no selection)": _passes_4x1,
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def memory_child(layers: int, pattern: str, scope: str) -> None:
    """In a fresh process: bytes per weight of peak RSS added by one update beyond init.

    The peak is reset just before the step (``/proc/self/clear_refs``, Linux 4.0+), so an
    earlier, higher peak (imports, building the workload) cannot hide the step's. The child
    is started before the parent builds its workload: Linux carries the parent's RSS at fork
    into the child's ``ru_maxrss`` (not into ``VmHWM``, which is recorded too).
    """
    torch.set_num_threads(2)
    params = workload(layers)
    sparsity = 0.5 if ":" in pattern else 0.8
    prune = fprune.pruner(sparsity, pattern=pattern, criterion="magnitude", scope=scope)
    state = prune.init(params)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS to the current RSS
    before = _rss_bytes()
    _, masks = prune.step(state, params)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    weights = sum(p.numel() for p in params.values())
    print(
        json.dumps(
            dict(
                pattern=pattern,
                scope=scope,
                weights=weights,
                rss_before=before,
                peak=peak,
                vm_hwm=hwm,
                extra_bytes_per_weight=(peak - before) / weights,
                masks_bytes_per_weight=sum(m.numel() * m.element_size() for m in masks.values())
                / weights,
            )
        )
    )


def _memory(layers: int, pattern: str, scope: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(layers), pattern, scope],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# glibc keeps freed memory (no trimming, no mmap below 32 MiB): no call faults in fresh pages
KEEP_FREED = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296"
ALLOCATORS = {"as set": None, "glibc keeping freed memory": KEEP_FREED}
SCALING_PATTERNS = ("1x1", "4x1")


def scaling_child(layers: int, repeats: int) -> None:
    """In a fresh process: global 1x1 and 4x1 updates at 80% on ``workload(layers)``, round-robin
    with a ``torch.mul(w, g, out=...)`` pass; each call's time and minor page faults."""
    torch.set_num_threads(2)
    params = workload(layers)
    grads = gradients(params)
    fns = {
        pattern: _fprune_update(params, grads, "global", pattern, 0.8)
        for pattern in SCALING_PATTERNS
    }
    fns["mul"] = _mul_into(params, grads)
    faults: dict[str, list[int]] = {name: [] for name in fns}
    times = round_robin(
        {name: _faults(fn, faults[name]) for name, fn in fns.items()}, repeats=repeats
    )
    weights = sum(p.numel() for p in params.values())
    print(
        json.dumps(
            dict(weights=weights, times_s=times, minor_faults={k: v[1:] for k, v in faults.items()})
        )
    )


def _scaling(layers: int, repeats: int, tunables: str | None) -> dict[str, Any]:
    env = dict(os.environ)
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run(
        [sys.executable, __file__, "--scaling-child", str(layers), str(repeats)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--layers", type=int, default=72, help="weights in the workload (72 = the full one)"
    )
    parser.add_argument(
        "--skip-peers", default="", help="comma-separated peer name prefixes to skip"
    )
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument(
        "--allocator",
        choices=("both", *ALLOCATORS),
        default="both",
        help="the C allocator settings the scaling run measures under",
    )
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--memory-child", nargs=3, metavar=("LAYERS", "PATTERN", "SCOPE"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--scaling-child", nargs=2, type=int, metavar=("LAYERS", "REPEATS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if not 5 <= args.repeats <= MAX_REPEATS:
        parser.error(
            f"--repeats must be between 5 and {MAX_REPEATS} (each row's median of at least 5 "
            f"calls; the non-prune row reaches its pruner's next prune step after "
            f"{MAX_REPEATS}), got {args.repeats}"
        )
    if args.memory_child:
        memory_child(int(args.memory_child[0]), args.memory_child[1], args.memory_child[2])
        return {}
    if args.scaling_child:
        scaling_child(*args.scaling_child)
        return {}
    torch.set_num_threads(2)
    # first, while this process is small (see memory_child)
    memory = [_memory(args.layers, p, "global") for p in ("1x1", "4x1", "2:4")]
    params = workload(args.layers)
    grads = gradients(params)
    weights = sum(p.numel() for p in params.values())
    print(f"workload: {weights:,} weights in {len(params)} layers", flush=True)
    calls = {
        f"fprune {scope} {pattern} {sparsity:.0%}": _fprune_update(
            params, grads, scope, pattern, sparsity
        )
        for scope, pattern, sparsity in FPRUNE_ROWS
    }
    calls["fprune snip_momentum 4x1 non-prune step"] = _non_prune_snip_momentum(
        params, grads, advance=True
    )
    calls["fprune snip_momentum 4x1 non-prune step, same state"] = _non_prune_snip_momentum(
        params, grads, advance=False
    )
    skip = [s for s in args.skip_peers.split(",") if s]
    calls.update(
        {
            name: make(params, grads)
            for name, make in PEERS.items()
            if not any(name.startswith(s) for s in skip)
        }
    )
    faults: dict[str, list[int]] = {name: [] for name in calls}  # the warm-up call's first
    times = round_robin(
        {name: _faults(fn, faults[name]) for name, fn in calls.items()}, repeats=args.repeats
    )  # every row once per round
    adamw_t, mul_t = times.get("AdamW(foreach) step"), times.get("one torch.mul(w, g) pass")

    def paired(t: list[float], ref: list[float] | None) -> float | None:
        """The median over rounds of this row's time over the reference's in the same round."""
        return (
            None if ref is None else statistics.median(a / b for a, b in zip(t, ref, strict=True))
        )

    rows: list[dict[str, object]] = [
        dict(
            name=name,
            median_s=statistics.median(t),
            min_s=min(t),
            times_s=t,
            paired_x_adamw=paired(t, adamw_t),
            paired_x_mul=paired(t, mul_t),
            minor_faults=faults[name][1:],
        )
        for name, t in times.items()
    ]
    by_name = {r["name"]: r["median_s"] for r in rows}
    adamw, mul = by_name.get("AdamW(foreach) step"), by_name.get("one torch.mul(w, g) pass")

    def ratio(value: object, width: int) -> str:
        return f"{value:{width}.2f}" if isinstance(value, float) else f"{'-':>{width}}"

    print(f"\n{weights:,} weights, CPU, 2 threads, {args.repeats} rounds (each row once per round)")
    print(
        "x AdamW, x mul: ratios of the medians; paired: the median over rounds of the ratio "
        "within a round;"
        " faults: minor page faults a call (median)"
    )
    print(
        f"{'':58} {'median s':>9} {'min s':>7} {'x AdamW':>8} {'paired':>7} {'x mul':>7} "
        f"{'paired':>7} {'faults':>7}"
    )
    for r in rows:
        median = float(r["median_s"])  # type: ignore[arg-type]
        print(
            f"{r['name']:58} {median:9.3f} {float(r['min_s']):7.3f} "  # type: ignore[arg-type]
            f"{ratio(median / adamw if adamw else None, 8)} {ratio(r['paired_x_adamw'], 7)} "
            f"{ratio(median / mul if mul else None, 7)} {ratio(r['paired_x_mul'], 7)} "
            f"{statistics.median(r['minor_faults']):7,.0f}"
        )  # type: ignore[arg-type]
    kth = times.get("cat + kthvalue, global 1x1 80%")
    if kth:
        one = times["fprune global 1x1 80%"]
        print(
            "cat + kthvalue / fprune global 1x1: "
            f"{statistics.median(kth) / statistics.median(one):.1f}x "
            f"(paired: {paired(kth, one):.1f}x)"
        )

    print(
        "\npeak extra memory of a global magnitude update beyond init (ru_maxrss, fresh process):"
    )
    for m in memory:
        print(
            f"  {m['pattern']}: {m['extra_bytes_per_weight']:.3f} bytes/weight "
            f"(of which the new masks: {m['masks_bytes_per_weight']:.3f})"
        )

    del (
        calls
    )  # the rows' states (AdamW's moments, the peers' modules) are freed before the children run
    scaling: list[dict[str, Any]] = []
    if not args.no_scaling:
        repeats = max(5, min(args.repeats, 9))
        sizes = (
            max(1, args.layers // 10),
            args.layers,
            4 * args.layers,
        )  # 7, 72, 288 for the workload
        print(
            f"\nscaling (each size in a fresh process, {repeats} rounds round-robin with "
            "torch.mul(w, g, out=...)"
            " over the same weights into outputs allocated once; x mul paired; medians):"
        )
        chosen = {k: v for k, v in ALLOCATORS.items() if args.allocator in ("both", k)}
        for allocator, tunables in chosen.items():
            print(
                f"  C allocator {allocator}"
                + (f" (GLIBC_TUNABLES={tunables})" if tunables else "")
                + ":"
            )
            for layers in sizes:
                child = _scaling(layers, repeats, tunables)
                n, at, faults = child["weights"], child["times_s"], child["minor_faults"]
                for pattern in SCALING_PATTERNS:
                    median = statistics.median(at[pattern])
                    x_mul = paired(at[pattern], at["mul"])
                    minflt = statistics.median(faults[pattern])
                    scaling.append(
                        dict(
                            allocator=allocator,
                            layers=layers,
                            weights=n,
                            pattern=pattern,
                            median_s=median,
                            ns_per_weight=median / n * 1e9,
                            paired_x_mul=x_mul,
                            times_s=at[pattern],
                            mul_times_s=at["mul"],
                            minor_faults=faults[pattern],
                        )
                    )
                    print(
                        f"    {n:>11,} weights, global {pattern} 80%: {median:.3f} s, "
                        f"{median / n * 1e9:.2f} ns/weight,"
                        f" {x_mul:.2f}x mul, {minflt:,.0f} page faults a call",
                        flush=True,
                    )
                print(
                    f"    {n:>11,} weights, the mul pass: {statistics.median(at['mul']):.3f} s",
                    flush=True,
                )
            for pattern in SCALING_PATTERNS:
                one, four = (
                    next(
                        r
                        for r in scaling
                        if r["allocator"] == allocator
                        and r["layers"] == k
                        and r["pattern"] == pattern
                    )
                    for k in sizes[1:]
                )
                growth = four["median_s"] / one["median_s"]
                mul_growth = statistics.median(four["mul_times_s"]) / statistics.median(
                    one["mul_times_s"]
                )
                print(
                    f"    {pattern}, 1x -> 4x the weights: time {growth:.2f}x "
                    f"(linear: 4x; the mul pass {mul_growth:.2f}x), "
                    f"x mul {one['paired_x_mul']:.2f} -> {four['paired_x_mul']:.2f}"
                )

    payload = dict(
        machine=machine(),
        weights=weights,
        rows=rows,
        memory=memory,
        scaling=scaling,
        command="python benchmarks/bench_step.py " + " ".join(argv or sys.argv[1:]),
    )
    print("wrote", write_json("bench_step.json", payload, args.json))
    return payload


if __name__ == "__main__":
    main()
