"""A training loop built from fprune's primitives: snip_momentum, 4x1 blocks, global scope.

Trains a small MLP on a synthetic task (labels from a fixed random linear teacher) and prunes
its hidden layers iteratively to the target while training goes on:

* every step, the criterion folds this step's gradients into a block-reduced accumulator;
* on prune steps, ``grid_masks`` selects blocks at the schedule's target, with the previous
  masks ranked first (so masks are nested and pruned blocks never revive);
* after every optimizer step, the masks are applied again.

Run ``python examples/primitives.py`` (a few seconds on 2 cores), or with ``--quick``.
"""

from __future__ import annotations

import argparse

import torch
from _task import (
    accuracy,
    data,
    dense_baseline,
    mlp,
    set_threads,
)  # the synthetic task, shared by the examples

import fprune


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="Prune an MLP with fprune's primitives.")
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--pattern", default="4x1")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--quick", action="store_true", help="60 steps, for tests")
    args = parser.parse_args(argv)
    set_threads()
    steps = 60 if args.quick else args.steps

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, y, x_test, y_test = data(gen)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    # Prune the hidden weights; the classifier head stays dense (as INC does).
    weights = {n: p for n, p in model.named_parameters() if n in ("0.weight", "2.weight")}
    shapes = {n: w.shape for n, w in weights.items()}

    start, end, freq = steps // 4, 3 * steps // 4, max(steps // 20, 1)
    schedule = fprune.iterative(
        args.sparsity, start_step=start, end_step=end, frequency=freq, decay="exp"
    )
    criterion = fprune.snip_momentum(pattern=args.pattern)
    aux = criterion.init({n: w.detach() for n, w in weights.items()})
    grid = None
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}

    dense_accuracy = float("nan")
    for step in range(steps):
        if step == start:
            dense_accuracy = accuracy(model, x_test, y_test)
        batch = torch.randint(0, x.shape[0], (128,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        params = {n: w.detach() for n, w in weights.items()}
        scores, aux = criterion.update(aux, params, {n: w.grad for n, w in weights.items()})
        if fprune.is_prune_step(step, start_step=start, end_step=end, frequency=freq):
            grid = fprune.grid_masks(
                scores, pattern=args.pattern, sparsity=schedule(step), previous=grid
            )
            masks = fprune.expand_masks(grid, pattern=args.pattern, shapes=shapes)
            achieved = float(fprune.total_sparsity(masks, pattern=args.pattern))
            print(
                f"step {step:4d}  target {schedule(step):.4f}  "
                f"block sparsity {achieved:.4f}  loss {loss.item():.3f}"
            )
        opt.step()
        with torch.no_grad():  # keep pruned weights at zero after every update
            for n, w in fprune.apply_masks(
                {n: w.detach() for n, w in weights.items()}, masks
            ).items():
                weights[n].copy_(w)

    result = {
        "target": args.sparsity,
        "block_sparsity": float(fprune.total_sparsity(masks, pattern=args.pattern)),
        "zero_weights": float(sum(int((w == 0).sum()) for w in weights.values()))
        / sum(w.numel() for w in weights.values()),
        "accuracy_at_prune_start": dense_accuracy,  # the same model when pruning started
        "dense_accuracy": dense_baseline(steps, momentum=0.9),  # trained dense, same steps
        "sparse_accuracy": accuracy(model, x_test, y_test),
    }
    print("  ".join(f"{k} {v:.4f}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
