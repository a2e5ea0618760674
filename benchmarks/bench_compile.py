"""Cost of a non-prune step against a prune step, eager and compiled, and the compile counts.

One command::

    python benchmarks/bench_compile.py     # 12 layers (2 blocks) of the workload, 14.2M weights

For each pruner (snip_momentum 4x1 global, the INC default; magnitude 4x1 global, a stateless
criterion) it times, median of ``--repeats`` calls on the same state, a prune step and a
non-prune step: eager, compiled with ``aot_eager`` and with ``inductor`` (each after one
untimed call that compiles), plus one ``torch.mul(w, g)`` pass over the same weights as a
yardstick. It counts the frames each backend compiles over a 50-step iterative run and
prints a table; the numbers also go to ``benchmarks/results/bench_compile.json``.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch._dynamo.testing import CompileCounterWithBackend

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import gradients, machine, median_seconds, workload, write_json

import fprune

PRUNERS = {
    "snip_momentum 4x1 global": dict(criterion="snip_momentum", pattern="4x1"),
    "magnitude 4x1 global": dict(criterion="magnitude", pattern="4x1"),
}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _count_compiles(prune: fprune.Pruner, params, grads, backend: str) -> tuple[int, int, float]:
    """Frames and non-empty graphs compiled over 50 steps (8 prune steps), and the seconds taken."""
    counter = CompileCounterWithBackend(backend)
    torch._dynamo.reset()
    step = torch.compile(prune.step, fullgraph=True, backend=counter)
    state = prune.init(params)
    start = time.perf_counter()
    for _ in range(50):
        state, _ = step(state, params, grads)
    elapsed = time.perf_counter() - start
    return counter.frame_count, sum(len(g.graph.nodes) > 0 for g in counter.graphs), elapsed


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--layers", type=int, default=12, help="weights of the workload (72 = 84.9M values)"
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backends", default="aot_eager,inductor")
    parser.add_argument(
        "--json", default=None, help="output path (default benchmarks/results/bench_compile.json)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = {n: p.to(args.device) for n, p in workload(args.layers).items()}
    grads = {n: g.to(args.device) for n, g in gradients(params).items()}
    n_weights = sum(p.numel() for p in params.values())

    def timed(fn) -> float:
        def call():
            fn()
            _sync(args.device)

        return median_seconds(call, repeats=args.repeats)[0]

    rows: list[dict[str, object]] = []
    mul = timed(lambda: [torch.mul(params[n], grads[n]) for n in params])
    for label, kw in PRUNERS.items():
        # prune at steps 0, 100, ..., 4900 (50 prune steps: a changing target)
        prune = fprune.pruner(0.8, start_step=0, end_step=4900, frequency=100, **kw)
        at_prune = prune.init(params)  # step 0 prunes
        at_keep, _ = prune.step(at_prune, params, grads)  # step 1 does not
        modes = {"eager": prune.step}
        for backend in filter(None, args.backends.split(",")):
            torch._dynamo.reset()
            modes[backend] = torch.compile(prune.step, fullgraph=True, backend=backend)
        for mode, step in modes.items():
            started = time.perf_counter()
            step(at_prune, params, grads)  # compiles (not timed)
            first_call = time.perf_counter() - started
            prune_s = timed(lambda step=step, state=at_prune: step(state, params, grads))
            keep_s = timed(lambda step=step, state=at_keep: step(state, params, grads))
            row = dict(
                pruner=label,
                mode=mode,
                prune_step_s=prune_s,
                non_prune_step_s=keep_s,
                non_prune_over_prune=keep_s / prune_s,
                non_prune_over_mul=keep_s / mul,
                first_call_s=first_call,
            )
            if mode != "eager":
                frames, graphs, _ = _count_compiles(prune, params, grads, mode)
                row.update(frames_50_steps=frames, graphs_50_steps=graphs)
            rows.append(row)

    print(
        f"{n_weights:,} weights in {len(params)} layers, {args.device}, {args.threads} threads; "
        f"medians of {args.repeats}; one torch.mul(w, g) pass: {mul * 1e3:.1f} ms"
    )
    header = (
        f"{'pruner':26} {'mode':10} {'prune ms':>9} {'non-prune ms':>13} {'ratio':>7} "
        f"{'x mul':>6} {'frames':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        frames = f"{r['frames_50_steps']}/{r['graphs_50_steps']}" if "frames_50_steps" in r else "-"
        print(
            f"{r['pruner']:26} {r['mode']:10} {r['prune_step_s'] * 1e3:9.1f} "
            f"{r['non_prune_step_s'] * 1e3:13.2f} "
            f"{r['non_prune_over_prune']:7.3f} {r['non_prune_over_mul']:6.2f} {frames:>7}"
        )
    print(
        "ratio = non-prune / prune step; x mul = non-prune step / one torch.mul(w, g) pass;\n"
        "frames = frames compiled / non-empty graphs over a 50-step run "
        "(a frame with an empty graph "
        "is Dynamo restarting its analysis, not a recompile)"
    )
    payload = dict(
        machine=machine(),
        weights=n_weights,
        layers=len(params),
        mul_s=mul,
        rows=rows,
        command="python benchmarks/bench_compile.py " + " ".join(argv or sys.argv[1:]),
    )
    print("wrote", write_json("bench_compile.json", payload, args.json))
    return payload


if __name__ == "__main__":
    main()
