"""The small synthetic task the examples train on (shared so they stay short).

Inputs are standard normal vectors in R^32; labels come from a fixed random linear teacher
(8 classes), the same rule for the training and the test split, so a small MLP learns it to
well above chance (1/8) in a few hundred steps.
"""

from __future__ import annotations

import os

import torch


def teacher_labels(x: torch.Tensor) -> torch.Tensor:
    """Labels from a fixed random linear teacher."""
    return (x @ torch.randn(32, 8, generator=torch.Generator().manual_seed(1234))).argmax(dim=1)


def data(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """4096 training and 1024 test examples: ``(x, y, x_test, y_test)``."""
    x, x_test = torch.randn(4096, 32, generator=gen), torch.randn(1024, 32, generator=gen)
    return x, teacher_labels(x), x_test, teacher_labels(x_test)


def mlp() -> torch.nn.Sequential:
    """Linear(32, 128) -> ReLU -> Linear(128, 128) -> ReLU -> Linear(128, 8) (the head)."""
    return torch.nn.Sequential(
        torch.nn.Linear(32, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 8),
    )


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def dense_baseline(steps: int, *, momentum: float) -> float:
    """The test accuracy of the same MLP (same seed) trained dense for ``steps`` SGD steps
    (lr 0.1) on the same batches of 128: the baseline the examples compare against."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, y, x_test, y_test = data(gen)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    for _ in range(steps):
        batch = torch.randint(0, x.shape[0], (128,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        opt.step()
    return accuracy(model, x_test, y_test)


def set_threads() -> int:
    """Use ``FPRUNE_THREADS`` torch threads (default 1): this MLP is too small to split
    across threads, and with one thread a busy neighbour slows it about 1.4x instead of
    about 4x (``docs/getting_started.md``)."""
    threads = int(os.environ.get("FPRUNE_THREADS", "1"))
    torch.set_num_threads(threads)
    return threads
