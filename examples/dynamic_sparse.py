"""Dynamic sparse training on digits: RigL and SET from a random 90% sparse start.

Four ways to spend the same number of training steps on the digits MLP (two hidden layers
pruned, the head dense), each with Adam on the same batches:

* dense: no pruning;
* iterative: dense for the first third, then snip_momentum pruning to 90% (1x1, global) over
  the second third, then fine-tuning (the demo's recipe);
* RigL: sparse from the first step, 90% with the ERK distribution, drop and regrow by
  gradient every half epoch until 75% of training;
* SET: the same, regrowing at random.

The loop is the plain one from docs/training_loops.md: ``fprune.training.prune_step_``
between ``backward()`` and ``optimizer.step()`` zeroes the dropped weights, the gradients and
the Adam moments of every pruned weight, so a grown weight starts from zero with fresh
moments. Run ``python examples/dynamic_sparse.py`` (``--fast`` for a short check); it prints
each method's test accuracy, the mean over seeds, and the final sparsity.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _task import set_threads

import fprune
from fprune import demo, training

SPARSITY, BATCH = 0.9, 64


def _pruner(method: str, steps: int, per_epoch: int) -> fprune.Pruner | None:
    if method == "dense":
        return None
    if method == "iterative":
        return fprune.pruner(SPARSITY, pattern="1x1", criterion="snip_momentum",
                             start_step=steps // 3, end_step=2 * steps // 3,
                             frequency=per_epoch // 2)  # fmt: skip
    return fprune.dynamic(SPARSITY, grow="gradient" if method == "rigl" else "random",
                          distribution="erk", end_step=3 * steps // 4,
                          frequency=per_epoch // 2, drop_fraction=0.3, seed=0)  # fmt: skip


def run(method: str, *, seed: int, epochs: int) -> tuple[float, float]:
    """Train with ``method``; return the test accuracy and the pruned layers' sparsity."""
    x, y, x_test, y_test = demo.digits(seed)
    torch.manual_seed(seed)
    model = demo.mlp()
    per_epoch = -(-len(x) // BATCH)
    steps = epochs * per_epoch
    prune = _pruner(method, steps, per_epoch)
    state = None if prune is None else training.init(model, prune)
    if state is not None:
        training.keep_pruned_(model, state.masks)  # a sparse start is sparse from step 0
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        if step % per_epoch == 0:
            order = torch.randperm(len(x), generator=gen)
        idx = order[(step % per_epoch) * BATCH :][:BATCH]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        if prune is not None and state is not None:
            state, _ = training.prune_step_(model, prune, state, optimizer=opt)
        opt.step()
        if state is not None:
            training.keep_pruned_(model, state.masks)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    sparsity = 0.0 if state is None else float(fprune.total_sparsity(state.masks))
    return accuracy, sparsity


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Print the table; return each method's mean accuracy and final sparsity."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="1 seed, 6 epochs")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=90)
    args = parser.parse_args(argv)
    set_threads()
    seeds = range(1 if args.fast else args.seeds)
    epochs = 6 if args.fast else args.epochs
    print(f"digits MLP, {epochs} epochs, seeds {list(seeds)}, target sparsity {SPARSITY}")
    print(f"{'method':<10} {'accuracy per seed':<28} {'mean':>7} {'sparsity':>9}")
    summary = {}
    for method in ("dense", "iterative", "rigl", "set"):
        results = [run(method, seed=s, epochs=epochs) for s in seeds]
        accs = [a for a, _ in results]
        shown = " ".join(f"{a:.4f}" for a in accs)
        print(f"{method:<10} {shown:<28} {statistics.mean(accs):>7.4f} {results[-1][1]:>9.4f}")
        summary[method] = {"accuracy": statistics.mean(accs), "sparsity": results[-1][1]}
    return summary


if __name__ == "__main__":
    main()
