"""Small models and a training loop shared by the pruner tests."""

from __future__ import annotations

import torch
from torch import nn

import fprune


class MLP(nn.Module):
    """fc1 -> fc2 -> fc3 -> head, the shape of the recorded INC runs' model (sizes vary)."""

    def __init__(self, sizes: tuple[int, ...] = (16, 32, 32, 16), classes: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(sizes[0], sizes[1])
        self.fc2 = nn.Linear(sizes[1], sizes[2])
        self.fc3 = nn.Linear(sizes[2], sizes[3])
        self.head = nn.Linear(sizes[3], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.head(torch.relu(self.fc3(x)))


class ConvNet(nn.Module):
    """Two 3x3 convs (2-D views [8, 36] and [8, 72]), a Linear(8, 8) and a head."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(torch.relu(self.fc(x.mean(dim=(2, 3)))))


def batches(model: nn.Module, n: int = 4, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    shape = (8, 4, 6, 6) if isinstance(model, ConvNet) else (8, model.fc1.in_features)
    return [
        (torch.randn(shape, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(n)
    ]


def train(
    model: nn.Module,
    prune: fprune.Pruner,
    names,
    *,
    steps: int,
    momentum: float = 0.9,
    on_step=None,
):
    """A plain torch.optim loop; ``on_step(s, state, masks)`` sees every step. Returns the state."""
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum)
    data = batches(model)
    state = prune.init({n: params[n].detach() for n in names})
    for s in range(steps):
        x, y = data[s % len(data)]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        state, masks = prune.step(
            state, {n: params[n].detach() for n in names}, {n: params[n].grad for n in names}
        )
        opt.step()
        fprune.nn.apply_masks_(model, masks)
        if on_step is not None:
            on_step(s, state, masks)
    return state
