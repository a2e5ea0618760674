"""Prune an ``nn.Module`` in an ordinary ``torch.optim`` training loop with ``fprune.pruner``.

The loop is the one you already have, plus two lines: ``fprune.training.init`` once (it
prunes what ``fprune.nn.prunable`` selects: the classifier head stays dense), and
``fprune.training.prune_step_`` between ``backward()`` and ``opt.step()``: it runs the
pruner's step and zeroes the pruned weights, their gradients and their momentum in place, so
the optimizer leaves them at zero. The pruner's state is saved with the model and optimizer.
The dense baseline is the same model trained dense for the same steps.

The task is synthetic (labels from a fixed random linear teacher); run
``python examples/custom_loop.py`` (seconds on 2 cores), or ``--quick``.
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
    parser = argparse.ArgumentParser(description="Prune an MLP inside a torch.optim loop.")
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--pattern", default="4x1")
    parser.add_argument("--criterion", default="snip_momentum")
    parser.add_argument("--scope", default="global")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--quick", action="store_true", help="80 steps, for tests")
    args = parser.parse_args(argv)
    set_threads()
    steps = 80 if args.quick else args.steps

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, y, x_test, y_test = data(gen)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    selection = fprune.nn.prunable(model)
    print(f"pruning {', '.join(selection.names)}; classifier head {selection.head!r} left dense")
    start, end = steps // 4, 3 * steps // 4
    prune = fprune.pruner(
        args.sparsity,
        pattern=args.pattern,
        criterion=args.criterion,
        scope=args.scope,
        start_step=start,
        end_step=end,
        frequency=max(steps // 20, 1),
    )
    params = dict(model.named_parameters())
    state = fprune.training.init(model, prune)  # prunes selection.names

    dense_accuracy = float("nan")
    masks = state.masks
    for step in range(steps):
        if step == start:
            dense_accuracy = accuracy(model, x_test, y_test)
        batch = torch.randint(0, x.shape[0], (128,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        # one call: the pruner's step, then the pruned weights, their gradients and their
        # momentum zeroed in place, so opt.step() leaves pruned weights exactly zero
        state, masks = fprune.training.prune_step_(model, prune, state, optimizer=opt)
        opt.step()
        if step % max(steps // 10, 1) == 0 or step == end:
            achieved = float(fprune.total_sparsity(masks, pattern=args.pattern))
            print(
                f"step {step:4d}  target {float(state.current_target):.4f}  "
                f"sparsity {achieved:.4f}  loss {loss.item():.3f}"
            )

    # A checkpoint holds the pruner's state next to the model and the optimizer.
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "prune": state.state_dict(),
    }
    state = fprune.PruneState.from_state_dict(checkpoint["prune"])

    result = {
        "target": args.sparsity,
        "sparsity": float(fprune.total_sparsity(masks, pattern=args.pattern)),
        "zero_weights": sum(int((params[n] == 0).sum()) for n in selection.names)
        / sum(params[n].numel() for n in selection.names),
        "accuracy_at_prune_start": dense_accuracy,  # the same model when pruning started
        "dense_accuracy": dense_baseline(steps, momentum=0.9),  # trained dense, same steps
        "sparse_accuracy": accuracy(model, x_test, y_test),
    }
    print("  ".join(f"{k} {v:.4f}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
