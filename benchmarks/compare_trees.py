"""Paired before/after timing of ``prune.step`` in two source trees (a refactor's check).

    python benchmarks/compare_trees.py BASE_TREE NEW_TREE [--pairs 3] [--repeats 9] [--one-process]

Each tree is a checkout holding ``fprune/`` (for example ``git worktree add /tmp/base main``).
Its rows are the fprune rows of ``bench_step.py`` (the same workload, the public API only, so
any version of the package runs them). Per row it prints each tree's median time and the
paired ratio new / base, and the peak extra memory of a global update (``bench_step.py``'s
measure, in a fresh process per tree). Writes ``benchmarks/results/compare_trees.json``.

By default each tree runs in a fresh process, the processes alternating base then new
``--pairs`` times, and the paired ratio is the median over pairs of the two processes'
medians. With ``--one-process`` the base package is copied under another name
(``fprune_base``) and both run in one process, every round calling each row of both
versions back to back: the paired ratio is then the median over rounds of the ratio within
a round, which a process's own speed (its memory layout, the machine's load) cannot move;
and the two versions' masks are compared (``masks equal``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import machine, write_json
from bench_step import FPRUNE_ROWS as ROWS  # imports only the public fprune: any version
from bench_step import memory_child

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
    fns[NON_PRUNE] = _non_prune(fprune, params, grads)
    times = round_robin(fns, repeats=repeats)
    print(json.dumps({name: statistics.median(t) for name, t in times.items()}))


def _non_prune(package, params, grads):
    """A non-prune step of a snip_momentum 4x1 pruner, going on from the state it returns."""
    window = dict(start_step=0, end_step=1000, frequency=100)
    momentum = package.pruner(0.8, pattern="4x1", criterion="snip_momentum", **window)
    current = [momentum.step(momentum.init(params), params, grads)[0]]

    def run():
        current[0], masks = momentum.step(current[0], params, grads)
        return masks

    return run


def one_process_child(repeats: int, layers: int, base_dir: str) -> None:
    """Both versions in this process: ``fprune_base`` (from ``base_dir``) and ``fprune``; each
    round calls every row of both, base then new."""
    import torch
    from _common import gradients, workload

    sys.path.insert(0, base_dir)
    import fprune_base

    import fprune

    torch.set_num_threads(2)
    params = workload(layers)
    grads = gradients(params)
    rows: dict[str, dict[str, object]] = {}
    for side, package in (("base", fprune_base), ("new", fprune)):
        for scope, pattern, sparsity in ROWS:
            prune = package.pruner(sparsity, pattern=pattern, criterion="magnitude", scope=scope)
            state = prune.init(params)
            rows.setdefault(f"{scope} {pattern} {sparsity:.0%}", {})[side] = (
                lambda p, s: lambda: p.step(s, params, grads)
            )(prune, state)
        rows.setdefault(NON_PRUNE, {})[side] = _non_prune(package, params, grads)
    times: dict[str, object] = {name: {"base": [], "new": []} for name in rows}
    equal = {}
    for name, side_fns in rows.items():  # one warm-up call each; the two versions' masks compared
        base, new = (_masks_of(side_fns[side]()) for side in ("base", "new"))  # type: ignore[operator]
        equal[name] = base.keys() == new.keys() and all(torch.equal(base[n], new[n]) for n in base)
    for _ in range(repeats):
        for name, side_fns in rows.items():
            for side in ("base", "new"):
                start = time.perf_counter()
                side_fns[side]()  # type: ignore[operator]
                times[name][side].append(time.perf_counter() - start)  # type: ignore[index]
    print(json.dumps({"times": times, "masks_equal": equal}))


def _masks_of(result):
    """The masks of a row's call: ``step``'s ``(state, masks)``, or the masks alone."""
    return result[1] if isinstance(result, tuple) else result


def _copy_renamed(tree: pathlib.Path, into: pathlib.Path) -> None:
    """``tree/fprune`` copied to ``into/fprune_base`` with every reference to the package
    renamed, so that it imports beside the other version."""
    shutil.copytree(tree / "fprune", into / "fprune_base")
    for path in (into / "fprune_base").rglob("*.py"):
        path.write_text(re.sub(r"\bfprune\b", "fprune_base", path.read_text()))


def _one_process(base: pathlib.Path, new: pathlib.Path, repeats: int, layers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        _copy_renamed(base, pathlib.Path(tmp))
        got = _run(new, ["--one-process-child", str(repeats), str(layers), tmp])
    out, equal = got["times"], got["masks_equal"]
    rows = []
    for name, sides in out.items():
        paired = statistics.median(n / b for b, n in zip(sides["base"], sides["new"], strict=True))
        base_s, new_s = statistics.median(sides["base"]), statistics.median(sides["new"])
        rows.append(
            dict(
                name=name,
                base_s=base_s,
                new_s=new_s,
                paired_new_over_base=paired,
                masks_equal=equal[name],
            )
        )
    return {"rows": rows, "times": out}


def _alternated(trees: dict, pairs: int, repeats: int, layers: int) -> tuple[list[dict], dict]:
    """Each tree in fresh processes, alternating; paired over the pairs of processes."""
    runs: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
    for pair in range(pairs):
        for side, tree in trees.items():
            runs[side].append(_run(tree, ["--child", str(repeats), str(layers)]))
        print(f"pair {pair + 1} of {pairs} done", file=sys.stderr, flush=True)
    rows = []
    for name in runs["base"][0]:
        base = statistics.median(r[name] for r in runs["base"])
        new = statistics.median(r[name] for r in runs["new"])
        paired = statistics.median(
            n[name] / b[name] for b, n in zip(runs["base"], runs["new"], strict=True)
        )
        rows.append(dict(name=name, base_s=base, new_s=new, paired_new_over_base=paired))
    return rows, runs


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
    parser.add_argument("--one-process", action="store_true", help="both versions in one process")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-process-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return {}
    if args.one_process_child:
        repeats, layers, base_dir = args.one_process_child
        one_process_child(int(repeats), int(layers), base_dir)
        return {}
    if args.memory_child:
        memory_child(int(args.memory_child[0]), args.memory_child[1], args.memory_child[2])
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
    if args.one_process:
        got = _one_process(trees["base"], trees["new"], args.repeats, args.layers)
        rows, runs = got["rows"], got["times"]
    else:
        rows, runs = _alternated(trees, args.pairs, args.repeats, args.layers)
    print(f"{'row':38} {'base s':>8} {'new s':>8} {'new/base paired':>16} {'masks equal':>12}")
    for row in rows:
        print(
            f"{row['name']:38} {row['base_s']:8.3f} {row['new_s']:8.3f} "
            f"{row['paired_new_over_base']:16.3f} {row.get('masks_equal', '-')!s:>12}"
        )
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
