"""Paired before/after timing of ``prune.step`` in two source trees (a refactor's check).

    python benchmarks/compare_trees.py BASE_TREE NEW_TREE [--pairs 3] [--repeats 9]

Each tree is a checkout holding ``fprune/`` (for example ``git worktree add /tmp/base main``).
Its rows are the fprune rows of ``bench_step.py`` (the same workload, the public API only, so
any version of the package runs them), timed round-robin in a fresh process per tree; the
processes alternate, base then new, ``--pairs`` times, so that a slow spell of a shared
machine lands on both trees alike. Per row it prints the median of each tree's per-process
medians, and the paired ratio new / base (the median over pairs of the ratio of the two
processes' medians), and the peak extra memory of a global update (``bench_step.py``'s
measure, in a fresh process per tree). Writes ``benchmarks/results/compare_trees.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import machine, write_json

ROWS = [
    ("global", "1x1", 0.8),
    ("global", "4x1", 0.8),
    ("global", "2:4", 0.5),
    ("local", "1x1", 0.8),
    ("local", "4x1", 0.8),
    ("local", "2:4", 0.5),
    ("global", "2:4", 0.3),
]
NON_PRUNE = "snip_momentum 4x1 non-prune step"
MEMORY = [("1x1", "global"), ("4x1", "global"), ("2:4", "global")]


def child(repeats: int, layers: int) -> None:
    """In a fresh process whose ``fprune`` is the tree's: each row's times, round-robin."""
    import torch
    from _common import gradients, round_robin, workload

    import fprune

    print("fprune from", fprune.__file__, file=sys.stderr)
    torch.set_num_threads(2)
    params = workload(layers)
    grads = gradients(params)
    fns = {}
    for scope, pattern, sparsity in ROWS:
        prune = fprune.pruner(sparsity, pattern=pattern, criterion="magnitude", scope=scope)
        state = prune.init(params)
        fns[f"{scope} {pattern} {sparsity:.0%}"] = (lambda p, s: lambda: p.step(s, params, grads))(
            prune, state
        )
    window = dict(start_step=0, end_step=1000, frequency=100)
    momentum = fprune.pruner(0.8, pattern="4x1", criterion="snip_momentum", **window)
    current = [momentum.step(momentum.init(params), params, grads)[0]]

    def non_prune():
        current[0], masks = momentum.step(current[0], params, grads)
        return masks

    fns[NON_PRUNE] = non_prune
    times = round_robin(fns, repeats=repeats)
    print(json.dumps({name: statistics.median(t) for name, t in times.items()}))


def _run(tree: pathlib.Path, args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="2")
    out = subprocess.run(
        [sys.executable, __file__, *args],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tree,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("base", nargs="?", type=pathlib.Path)
    parser.add_argument("new", nargs="?", type=pathlib.Path)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--layers", type=int, default=72)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return {}
    if args.memory_child:
        import bench_step

        bench_step.memory_child(
            int(args.memory_child[0]), args.memory_child[1], args.memory_child[2]
        )
        return {}
    if args.base is None or args.new is None:
        parser.error("give the two trees to compare: BASE NEW")
    trees = {"base": args.base.resolve(), "new": args.new.resolve()}
    memory = {
        side: {
            f"{scope} {pattern}": _run(tree, ["--memory-child", str(args.layers), pattern, scope])[
                "extra_bytes_per_weight"
            ]
            for pattern, scope in MEMORY
        }
        for side, tree in trees.items()
    }
    runs: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
    for pair in range(args.pairs):
        for side, tree in trees.items():
            runs[side].append(_run(tree, ["--child", str(args.repeats), str(args.layers)]))
        print(f"pair {pair + 1} of {args.pairs} done", file=sys.stderr, flush=True)
    rows = []
    print(f"{'row':38} {'base s':>8} {'new s':>8} {'new/base paired':>16}")
    for name in runs["base"][0]:
        base = statistics.median(r[name] for r in runs["base"])
        new = statistics.median(r[name] for r in runs["new"])
        paired = statistics.median(
            n[name] / b[name] for b, n in zip(runs["base"], runs["new"], strict=True)
        )
        rows.append(dict(name=name, base_s=base, new_s=new, paired_new_over_base=paired))
        print(f"{name:38} {base:8.3f} {new:8.3f} {paired:16.3f}")
    print("peak extra memory of a global magnitude update, bytes per weight (base -> new):")
    for name in memory["base"]:
        print(f"  {name}: {memory['base'][name]:.3f} -> {memory['new'][name]:.3f}")
    payload = dict(
        machine=machine(),
        trees={k: str(v) for k, v in trees.items()},
        pairs=args.pairs,
        repeats=args.repeats,
        rows=rows,
        memory=memory,
        runs=runs,
        command="python benchmarks/compare_trees.py " + " ".join(argv or sys.argv[1:]),
    )
    print("wrote", write_json("compare_trees.json", payload, args.json))
    return payload


if __name__ == "__main__":
    main()
