"""One RigL / SET mask update on transformer-sized weights, against a top-k peer and AdamW.

One command (about two minutes on 2 cores)::

    OMP_NUM_THREADS=2 python benchmarks/bench_dynamic.py

Workload: the first ``--layers`` (default 24: four blocks, 28,311,552 values) weights of
``_common.workload`` at 90% sparsity (uniform: every layer prunes ``floor(0.9 * n)``), random
``torch.randn_like`` gradients, CPU.

Rows, timed round-robin (each round calls every row once, after one warm-up call each), the
median of ``--repeats`` rounds, with paired ratios (the median over rounds of a row's time
over the AdamW step's, or the peer's, time in the same round):

* fprune: eager ``prune.step`` at an update step (the same state each call), RigL and SET at
  1x1, RigL at 4x1 and 2:4 (sparsity 0.5), and a step between updates;
* peer: RigL's update as PyTorch re-implementations write it, per layer: ``torch.topk`` of
  ``|w|`` keeps the largest kept weights, ``torch.topk`` of ``|g|`` over the rest picks the
  grown ones (the dropped ones included, ties as ``topk`` leaves them);
* scale: one ``AdamW(foreach=True)`` step over the same weights.

Prints a table; writes ``benchmarks/results/bench_dynamic.json``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from _common import gradients, machine, round_robin, workload, write_json

import fprune

SPARSITY, FRACTION = 0.9, 0.3


def _update(prune: fprune.Pruner, params, grads) -> Callable[[], object]:
    state = prune.init(params)
    return lambda: prune.step(state, params, grads)


def _between(prune: fprune.Pruner, params, grads) -> Callable[[], object]:
    state, _ = prune.step(prune.init(params), params, grads)  # step 1: no update
    return lambda: prune.step(state, params, grads)


def _topk_peer(params, grads) -> Callable[[], object]:
    """RigL with ``torch.topk`` per layer (no exact ties, grown from all but the kept)."""
    masks = {n: torch.rand(p.shape) >= SPARSITY for n, p in params.items()}

    def update() -> dict[str, torch.Tensor]:
        out = {}
        for name, mask in masks.items():
            w, g, flat = params[name].abs(), grads[name].abs(), mask.reshape(-1)
            kept = int(flat.sum())
            swap = int(FRACTION * kept)
            keep_scores = torch.where(mask, w, -1.0).reshape(-1)
            keep = torch.zeros_like(flat)
            keep[torch.topk(keep_scores, kept - swap).indices] = True
            grow_scores = torch.where(keep, -1.0, g.reshape(-1))
            keep[torch.topk(grow_scores, swap).indices] = True
            out[name] = keep.reshape(mask.shape)
        return out

    return update


def _adamw(params, grads) -> Callable[[], object]:
    weights = [p.clone().requires_grad_(True) for p in params.values()]
    for w, g in zip(weights, grads.values(), strict=True):
        w.grad = g
    return torch.optim.AdamW(weights, lr=1e-3, foreach=True).step


def rows(params, grads) -> dict[str, Callable[[], object]]:
    window = dict(end_step=100, frequency=10, drop_fraction=FRACTION)
    rigl = fprune.dynamic(SPARSITY, **window)
    return {
        "fprune RigL 1x1 update": _update(rigl, params, grads),
        "fprune SET 1x1 update": _update(
            fprune.dynamic(SPARSITY, grow="random", **window), params, grads
        ),
        "fprune RigL 4x1 update": _update(
            fprune.dynamic(SPARSITY, pattern="4x1", **window), params, grads
        ),
        "fprune RigL 2:4 update": _update(
            fprune.dynamic(0.5, pattern="2:4", **window), params, grads
        ),
        "fprune step between updates": _between(rigl, params, grads),
        "peer: torch.topk RigL 1x1": _topk_peer(params, grads),
        "AdamW(foreach) step": _adamw(params, grads),
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None, help="output path (default results/...)")
    args = parser.parse_args(argv)
    params = workload(args.layers)
    grads = gradients(params)
    times = round_robin(rows(params, grads), repeats=args.repeats)
    adamw, peer = times["AdamW(foreach) step"], times["peer: torch.topk RigL 1x1"]
    paired = lambda t, base: statistics.median(a / b for a, b in zip(t, base, strict=True))  # noqa: E731
    out = []
    print(f"{sum(p.numel() for p in params.values()):,} weights in {len(params)} layers")
    print(f"{'row':<32} {'median s':>9} {'x AdamW':>8} {'paired':>7} {'x peer':>7}")
    for name, t in times.items():
        median, x_adamw, x_peer = statistics.median(t), paired(t, adamw), paired(t, peer)
        print(
            f"{name:<32} {median:>9.4f} {median / statistics.median(adamw):>8.2f} "
            f"{x_adamw:>7.2f} {x_peer:>7.2f}"
        )
        out.append({"row": name, "median_s": median, "times": t, "paired_x_adamw": x_adamw,
                    "paired_x_peer": x_peer})  # fmt: skip
    payload = {"machine": machine(), "layers": args.layers, "rows": out}
    print(f"wrote {write_json('bench_dynamic.json', payload, args.json)}")
    return payload


if __name__ == "__main__":
    main()
