"""``fprune demo``: train an MLP on scikit-learn's digits, dense and then pruned, and plot it.

The digits set is real data (1,797 8x8 handwritten digits from UCI) that ships inside
scikit-learn, so the demo runs offline. A 64-256-256-10 MLP is trained dense, then trained on
while fprune prunes its two hidden layers (the classifier head stays dense, as INC does),
iteratively over the first half of the pruning phase, then fine-tuned at the final masks.
Needs the ``demo`` extra: ``pip install "fprune[demo]"`` (scikit-learn, matplotlib, tqdm).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

import fprune

__all__ = ["MissingExtra", "digits", "mlp", "plot", "run", "train"]

_DENSE_EPOCHS, _PRUNE_EPOCHS, _BATCH = 30, 60, 64


class MissingExtra(RuntimeError):
    """A package of the ``demo`` extra is not installed; the message says how to install it."""


def _missing(package: str) -> MissingExtra:
    return MissingExtra(
        f"the demo needs {package}; install the demo extra: pip install 'fprune[demo]' "
        "(from a clone: pip install -e '.[demo]')"
    )


def digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits split 80/20, stratified; pixels scaled to [0, 1]."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise _missing("scikit-learn") from None
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=seed, stratify=y
    )
    as_x = lambda a: torch.as_tensor(a, dtype=torch.float32) / 16.0  # noqa: E731
    as_y = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
    return as_x(x_train), as_y(y_train), as_x(x_test), as_y(y_test)


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = int((model(x).argmax(dim=1) == y).sum())
    acc = correct / len(y)
    model.train()
    return acc


def train(
    *,
    pattern: str = "4x1",
    criterion: str = "snip_momentum",
    sparsity: float = 0.9,
    scope: str = "global",
    seed: int = 0,
    fast: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Train dense, then prune while training; return accuracies, sparsities and the curve.

    Returns:
        A JSON-ready dict: ``dense_accuracy``, ``sparse_accuracy`` (test fractions in
        [0, 1]), ``sparsity`` (element-wise, over the pruned layers), ``pattern_sparsity``
        (in the pattern's units), ``layers`` (per-layer rows), ``history`` (``step``,
        ``accuracy``, ``sparsity`` lists), the settings and ``seconds``.

    Raises:
        ValueError: a bad pattern, criterion, sparsity or scope (fprune's messages).
    """
    start = time.perf_counter()
    x, y, x_test, y_test = digits(seed)
    torch.manual_seed(seed)
    model = mlp()
    selection = fprune.nn.prunable(model)  # the two hidden layers; the head '4' stays dense
    per_epoch = -(-len(x) // _BATCH)
    dense_steps = (2 if fast else _DENSE_EPOCHS) * per_epoch
    prune_steps = (4 if fast else _PRUNE_EPOCHS) * per_epoch
    prune = _pruner(sparsity, pattern, criterion, scope, prune_steps, per_epoch)
    params = dict(model.named_parameters())
    weights = lambda: {n: params[n].detach() for n in selection.names}  # noqa: E731
    state = prune.init(weights())
    gen = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {"step": [], "accuracy": [], "sparsity": []}
    masks: dict[str, torch.Tensor] | None = None

    def record(step: int) -> None:
        history["step"].append(step)
        history["accuracy"].append(_accuracy(model, x_test, y_test))
        history["sparsity"].append(0.0 if masks is None else float(fprune.total_sparsity(masks)))

    bar = _bar(dense_steps + prune_steps, progress)
    order = torch.randperm(len(x), generator=gen)
    dense_accuracy = 0.0
    for phase, steps, lr in (("dense", dense_steps, 2e-3), ("prune", prune_steps, 1e-3)):
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for step in range(steps):
            if step % per_epoch == 0 and (phase, step) != ("dense", 0):
                order = torch.randperm(len(x), generator=gen)
            idx = order[(step % per_epoch) * _BATCH :][:_BATCH]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            if phase == "prune":
                grads = {n: params[n].grad for n in selection.names}
                state, masks = prune.step(state, weights(), grads)
                fprune.nn.mask_grads_(model, masks)
            opt.step()
            if masks is not None:
                fprune.nn.apply_masks_(model, masks)  # Adam's moments cannot revive a pruned weight
            done = step + 1 + (dense_steps if phase == "prune" else 0)
            if done % per_epoch == 0 or done == dense_steps + prune_steps:
                record(done)
            bar.update(1)
        if phase == "dense":
            dense_accuracy = _accuracy(model, x_test, y_test)
    bar.close()
    assert masks is not None  # the pruning phase always runs at least one step
    return {
        "dense_accuracy": dense_accuracy,
        "sparse_accuracy": _accuracy(model, x_test, y_test),
        **_sparsities(masks, pattern),
        **dict(target=sparsity, pattern=pattern, criterion=criterion, scope=scope, seed=seed),
        "head": selection.head,
        "dense_steps": dense_steps,
        "prune_steps": prune_steps,
        "history": history,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _pruner(
    sparsity: float, pattern: str, criterion: str, scope: str, prune_steps: int, per_epoch: int
) -> fprune.Pruner:
    """The demo's pruner: it ramps over the first half of the pruning phase, twice an epoch."""
    return fprune.pruner(
        sparsity,
        pattern=pattern,
        criterion=criterion,
        scope=scope,
        start_step=0,
        end_step=prune_steps // 2,
        frequency=max(per_epoch // 2, 1),
    )


def mlp() -> torch.nn.Sequential:
    """The digits MLP: two hidden layers of 256 (pruned) and a dense head."""
    return torch.nn.Sequential(
        torch.nn.Linear(64, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )


def _sparsities(masks: dict[str, torch.Tensor], pattern: str) -> dict[str, Any]:
    """The result's sparsities: element-wise and in the pattern's units, overall and per layer."""
    layers = [
        {
            "layer": n,
            "shape": list(masks[n].shape),
            "sparsity": float(s),
            "pattern_sparsity": float(fprune.layer_sparsity({n: masks[n]}, pattern=pattern)[n]),
        }
        for n, s in fprune.layer_sparsity(masks).items()
    ]
    return {
        "sparsity": float(fprune.total_sparsity(masks)),
        "pattern_sparsity": float(fprune.total_sparsity(masks, pattern=pattern)),
        "layers": layers,
    }


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, show: bool) -> Any:
    if not show:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise _missing("tqdm") from None
    return tqdm(
        total=total, desc="training", unit="step", file=sys.stderr, disable=None, leave=False
    )


def plot(result: dict[str, Any], path: str) -> None:
    """Write a PNG of test accuracy and sparsity over the training steps."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise _missing("matplotlib") from None
    h = result["history"]
    fig, acc_ax = plt.subplots(figsize=(7, 4), dpi=120)
    acc_ax.plot(h["step"], h["accuracy"], color="tab:blue", label="test accuracy")
    acc_ax.set_xlabel("training step")
    acc_ax.set_ylabel("test accuracy", color="tab:blue")
    acc_ax.set_ylim(min(0.8, min(h["accuracy"])), 1.0)
    sp_ax = acc_ax.twinx()
    sp_ax.plot(h["step"], h["sparsity"], color="tab:red", label="sparsity")
    sp_ax.set_ylabel("sparsity of the pruned layers", color="tab:red")
    sp_ax.set_ylim(0.0, 1.0)
    acc_ax.axvline(result["dense_steps"], color="gray", linestyle=":", linewidth=1)
    acc_ax.set_title(
        f"digits MLP: {result['criterion']} {result['pattern']} {result['scope']} "
        f"to {result['target']:g}; "
        f"dense {result['dense_accuracy']:.3f}, sparse {result['sparse_accuracy']:.3f}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """The ``fprune demo`` command (see ``fprune demo --help``)."""
    if not isinstance(args.threads, int) or args.threads < 1:
        raise ValueError(f"fprune demo: --threads must be at least 1 (got {args.threads}).")
    torch.set_num_threads(args.threads)
    result = train(
        pattern=args.pattern,
        criterion=args.criterion,
        sparsity=args.sparsity,
        scope=args.scope,
        seed=args.seed,
        fast=args.fast,
        progress=True,
    )
    if args.plot != "none":
        plot(result, args.plot)
    print(
        f"digits ({args.scope} {args.criterion} {args.pattern} to {args.sparsity:g}), "
        f"seed {args.seed}:"
    )
    print(
        f"  dense test accuracy  {result['dense_accuracy']:.4f}   "
        f"after {result['dense_steps']} steps"
    )
    print(
        f"  sparse test accuracy {result['sparse_accuracy']:.4f}   "
        f"after {result['prune_steps']} more steps"
    )
    print(
        f"  sparsity {result['sparsity']:.4f} of the hidden layers' weights "
        f"(head {result['head']!r} stays dense)"
    )
    print()
    width = max(len(r["layer"]) for r in result["layers"])
    print(f"  {'layer'.ljust(width)}  shape      sparsity  {args.pattern} units")
    for r in result["layers"]:
        shape = "x".join(map(str, r["shape"]))
        print(
            f"  {r['layer'].ljust(width)}  {shape.ljust(9)}  "
            f"{r['sparsity']:.4f}    {r['pattern_sparsity']:.4f}"
        )
    if args.plot != "none":
        print(f"\nplot: {args.plot}")
    print(f"took {result['seconds']:.1f} s")
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "history"}))
    return 0
