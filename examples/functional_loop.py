"""Prune in a purely functional training step: ``functional_call`` + ``torch.func.grad``.

Parameters live in a ``dict[str, Tensor]``; one pure function computes the loss, the
gradients come from ``torch.func.grad``, SGD is a dict comprehension, and
``prune.step`` / ``fprune.apply_masks`` return new dicts. No module is mutated after
construction, nothing is updated in place.

The task is synthetic (labels from a fixed random linear teacher); run
``python examples/functional_loop.py`` (seconds on 2 cores), or ``--quick``.
"""

from __future__ import annotations

import argparse

import torch
from _task import (
    data,
    dense_baseline,
    mlp,
    set_threads,
)  # the synthetic task, shared by the examples
from torch.func import functional_call, grad

import fprune


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="Prune inside a torch.func training step.")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--pattern", default="2:4")
    parser.add_argument("--criterion", default="snip_momentum")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--quick", action="store_true", help="80 steps, for tests")
    args = parser.parse_args(argv)
    set_threads()
    steps = 80 if args.quick else args.steps

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, y, x_test, y_test = data(gen)
    model = mlp()
    params = {n: p.detach() for n, p in model.named_parameters()}
    pruned = fprune.nn.prunable(model).names

    def loss_fn(
        params: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor
    ) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(functional_call(model, params, (xb,)), yb)

    def evaluate(params: dict[str, torch.Tensor]) -> float:
        with torch.no_grad():
            return float(
                (functional_call(model, params, (x_test,)).argmax(1) == y_test).float().mean()
            )

    grad_fn = grad(loss_fn)
    prune = fprune.pruner(
        args.sparsity,
        pattern=args.pattern,
        criterion=args.criterion,
        start_step=steps // 4,
        end_step=3 * steps // 4,
        frequency=max(steps // 20, 1),
    )
    state = prune.init({n: params[n] for n in pruned})
    lr = 0.1

    def train_step(params, state, xb, yb):  # one pure step: params, state -> params, state
        grads = grad_fn(params, xb, yb)
        state, masks = prune.step(
            state, {n: params[n] for n in pruned}, {n: grads[n] for n in pruned}
        )
        params = {n: p - lr * grads[n] for n, p in params.items()}
        return fprune.apply_masks(params, masks), state, masks

    dense_accuracy = float("nan")
    masks = state.masks
    for step in range(steps):
        if step == steps // 4:
            dense_accuracy = evaluate(params)
        batch = torch.randint(0, x.shape[0], (128,), generator=gen)
        params, state, masks = train_step(params, state, x[batch], y[batch])
        if step % max(steps // 10, 1) == 0:
            achieved = float(fprune.total_sparsity(masks, pattern=args.pattern))
            print(
                f"step {step:4d}  target {float(state.current_target):.4f}  sparsity {achieved:.4f}"
            )

    result = {
        "target": args.sparsity,
        "sparsity": float(fprune.total_sparsity(masks, pattern=args.pattern)),
        "zero_weights": sum(int((params[n] == 0).sum()) for n in pruned)
        / sum(params[n].numel() for n in pruned),
        "accuracy_at_prune_start": dense_accuracy,  # the same model when pruning started
        "dense_accuracy": dense_baseline(steps, momentum=0.0),  # trained dense, same steps
        "sparse_accuracy": evaluate(params),
    }
    print("  ".join(f"{k} {v:.4f}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
