"""Shared pieces of the benchmarks: the workload, a median timer, the machine description."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable

import torch

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


SHAPES = [(768, 768)] * 4 + [(3072, 768), (768, 3072)]  # (out, in) of each block's weights
NAMES = ["q", "k", "v", "o", "up", "down"]


def workload(layers: int = 72, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """The first ``layers`` weights of 12 transformer-sized blocks, each Linear(768, 768) x 4,
    Linear(768, 3072), Linear(3072, 768), default init after ``torch.manual_seed(seed)``.
    72 layers (12 blocks) = 84,934,656 values."""
    torch.manual_seed(seed)
    params = {}
    for i in range(layers):
        out_f, in_f = SHAPES[i % 6]
        params[f"block{i // 6}.{NAMES[i % 6]}.weight"] = torch.nn.Linear(
            in_f, out_f, bias=False
        ).weight.detach()
    return params


def gradients(params: dict[str, torch.Tensor], *, seed: int = 1) -> dict[str, torch.Tensor]:
    """``torch.randn_like`` gradients after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return {n: torch.randn_like(p) for n, p in params.items()}


def median_seconds(
    fn: Callable[[], object], *, repeats: int, warmup: int = 1
) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def round_robin(
    fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall times of ``repeats`` calls of each function, taken in rounds that call every
    function once (after ``warmup`` untimed calls each): a slow spell of a shared machine then
    lands on every row alike, instead of on whichever rows it happens to overlap."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def machine() -> dict[str, object]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write_json(name: str, payload: dict[str, object], path: str | None) -> pathlib.Path:
    out = pathlib.Path(path) if path else RESULTS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    return out
