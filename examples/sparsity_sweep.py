"""Train and prune one model to several target sparsities at once, in one vmapped step.

The whole training step is one pure function (``functional_call`` + ``torch.func.grad`` +
SGD with momentum + ``prune.step`` + ``fprune.apply_masks``). ``torch.func.vmap`` runs it
for every target at once: each member has its own copy of the weights, its own optimizer
state and its own ``PruneState``, whose final target is data (``init(params,
sparsity=t)``). ``--compile`` also compiles the vmapped step (one compile for the run).

    python examples/sparsity_sweep.py --targets 0.5,0.7,0.9 --compile

The task is the examples' synthetic one (seconds on 2 cores); ``--quick`` for tests.
"""

from __future__ import annotations

import argparse
import time

import torch
from _task import data, mlp, set_threads  # the synthetic task, shared by the examples
from torch.func import functional_call, grad, vmap

import fprune


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description="A vmapped sweep over target sparsities.")
    parser.add_argument("--targets", default="0.5,0.7,0.9", help="comma-separated final sparsities")
    parser.add_argument("--pattern", default="4x1")
    parser.add_argument("--criterion", default="snip_momentum")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--compile", action="store_true", help="torch.compile the vmapped step")
    parser.add_argument("--quick", action="store_true", help="60 steps, for tests")
    args = parser.parse_args(argv)
    set_threads()
    steps = 60 if args.quick else args.steps
    targets = torch.tensor([float(t) for t in args.targets.split(",")], dtype=torch.float64)
    members = len(targets)

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, y, x_test, y_test = data(gen)
    model = mlp()
    names = fprune.nn.prunable(model).names
    # every member starts from the same dense weights
    params = {n: p.detach().expand(members, *p.shape).clone() for n, p in model.named_parameters()}
    momentum = {n: torch.zeros_like(p) for n, p in params.items()}
    prune = fprune.pruner(
        float(targets.max()),
        pattern=args.pattern,
        criterion=args.criterion,
        start_step=steps // 4,
        end_step=3 * steps // 4,
        frequency=max(steps // 20, 1),
    )
    state = vmap(lambda t, p: prune.init(p, sparsity=t))(targets, {n: params[n] for n in names})
    state = torch.utils._pytree.tree_map(torch.Tensor.contiguous, state)  # no broadcast strides
    lr = 0.05

    def loss_fn(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(functional_call(model, p, (xb,)), yb)

    def train_step(p, mom, st, xb, yb):  # one member: params, momentum, prune state -> new ones
        grads = grad(loss_fn)(p, xb, yb)
        st, masks = prune.step(st, {n: p[n] for n in names}, {n: grads[n] for n in names})
        mom = {n: 0.9 * mom[n] + grads[n] for n in p}
        p = {n: w - lr * mom[n] for n, w in p.items()}
        return fprune.apply_masks(p, masks), mom, st

    step_all = vmap(train_step, in_dims=(0, 0, 0, None, None))  # the batch is shared
    if args.compile:
        step_all = torch.compile(step_all, fullgraph=True, backend="aot_eager")
    started = time.perf_counter()
    for _ in range(steps):
        batch = torch.randint(0, x.shape[0], (128,), generator=gen)
        params, momentum, state = step_all(params, momentum, state, x[batch], y[batch])
    seconds = time.perf_counter() - started

    with torch.no_grad():
        logits = vmap(lambda p: functional_call(model, p, (x_test,)))(params)
    accuracy = (logits.argmax(-1) == y_test).float().mean(-1)
    rows = []
    print(f"{'target':>7} {'sparsity':>9} {'zero weights':>13} {'test accuracy':>14}")
    for i, target in enumerate(targets.tolist()):
        masks = {n: state.masks[n][i] for n in names}
        row = {
            "target": target,
            "sparsity": float(fprune.total_sparsity(masks, pattern=args.pattern)),
            "zero_weights": sum(int((params[n][i] == 0).sum()) for n in names)
            / sum(params[n][i].numel() for n in names),
            "accuracy": float(accuracy[i]),
        }
        rows.append(row)
        print(
            f"{target:7.2f} {row['sparsity']:9.4f} {row['zero_weights']:13.4f} "
            f"{row['accuracy']:14.4f}"
        )
    mode = "compiled vmap, compile time included" if args.compile else "eager vmap"
    print(f"{members} members x {steps} steps in {seconds:.1f} s ({mode})")
    return {"rows": rows, "seconds": seconds}


if __name__ == "__main__":
    main()
