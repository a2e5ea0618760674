"""CUDA runs give the same masks as CPU runs (skipped without a CUDA device)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import fprune
from tests.strategies import FLOAT_DTYPES, same_bits

pytestmark = pytest.mark.cuda


def _scores(dtype):
    gen = torch.Generator().manual_seed(0)
    s = {
        "layers.0.fc.weight": torch.randn(64, 32, generator=gen),
        "layers.0.conv.weight": torch.randn(16, 8, 3, 3, generator=gen),
        "layers.1.fc.weight": torch.randint(0, 4, (32, 64), generator=gen).float(),  # ties
    }
    s["layers.0.fc.weight"][0, :4] = float("nan")
    s["layers.0.fc.weight"][1, :4] = float("inf")
    return {n: v.to(dtype) for n, v in s.items()}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    ("pattern", "sparsity"), [("1x1", 0.8), ("4x1", 0.7), ("channelx1", 0.5), ("2:4", 0.5)]
)
@pytest.mark.parametrize("scope", ["global", "local"])
def test_masks_on_cuda_equal_cpu(dtype, pattern, sparsity, scope):
    cpu = _scores(dtype)
    cuda = {n: v.cuda() for n, v in cpu.items()}
    kw = dict(pattern=pattern, sparsity=sparsity, scope=scope, min_layer_sparsity=0.1)
    want = fprune.masks(cpu, **kw)
    got = fprune.masks(cuda, **kw)
    assert all(m.device.type == "cuda" for m in got.values())
    assert same_bits({n: m.cpu() for n, m in got.items()}, want)
    again = fprune.masks(cuda, **kw, previous=got)
    assert same_bits({n: m.cpu() for n, m in again.items()}, want)


def test_primitives_on_cuda_with_tensor_targets():
    params = {n: v.cuda() for n, v in _scores(torch.float32).items()}
    target = torch.tensor(0.6, dtype=torch.float64, device="cuda")
    m = fprune.masks(fprune.magnitude(params), pattern="4x1", sparsity=target)
    assert float(fprune.total_sparsity(m, pattern="4x1")) == pytest.approx(0.6, abs=1e-3)
    shrunk = fprune.group_lasso(params, pattern="4x1", strength=torch.tensor(0.1, device="cuda"))
    assert all(v.device.type == "cuda" for v in shrunk.values())
    schedule = fprune.iterative(0.8, start_step=0, end_step=8, frequency=2)
    assert float(schedule(torch.tensor(8, device="cuda"))) == 0.8


@pytest.mark.compile_inductor
def test_masks_compiled_on_cuda_equal_eager():
    scores = {n: v.cuda() for n, v in _scores(torch.bfloat16).items()}

    def fn(s, r):
        return fprune.masks(s, pattern="2:4", sparsity=r)

    torch._dynamo.reset()
    target = torch.tensor(0.5, dtype=torch.float64, device="cuda")
    got = torch.compile(fn, fullgraph=True)(scores, target)
    assert same_bits(got, fn(scores, 0.5))


@pytest.mark.parametrize("criterion", ["magnitude", "snip", "snip_momentum"])
@pytest.mark.parametrize("pattern", ["4x1", "2:4", "1xchannel"])
@pytest.mark.parametrize("low_memory_usage", [False, True])
def test_pruner_on_cuda_equals_cpu(criterion, pattern, low_memory_usage):
    """A whole iterative run of the pruner on CUDA params gives the CPU run's masks and state."""
    gen = torch.Generator().manual_seed(0)
    params = {"a": torch.randn(16, 32, generator=gen), "b": torch.randn(8, 4, 3, 3, generator=gen)}
    grads = [{n: torch.randn(p.shape, generator=gen) for n, p in params.items()} for _ in range(6)]
    prune = fprune.pruner(
        0.5,
        pattern=pattern,
        criterion=criterion,
        start_step=1,
        end_step=5,
        frequency=2,
        low_memory_usage=low_memory_usage,
    )

    def run(device):
        p = {n: v.to(device) for n, v in params.items()}
        state = prune.init(p)
        for g in grads:
            state, masks = prune.step(state, p, {n: v.to(device) for n, v in g.items()})
        return state, masks

    cpu_state, cpu_masks = run("cpu")
    cuda_state, cuda_masks = run("cuda")
    assert all(m.device.type == "cuda" for m in cuda_masks.values())
    assert same_bits({n: m.cpu() for n, m in cuda_masks.items()}, cpu_masks)
    assert float(cuda_state.current_target) == float(cpu_state.current_target) == 0.5
    on_device = {n: v.cuda() for n, v in params.items()}
    fprune.nn.apply_masks_(on_device, cuda_masks)  # in place, on the device
    assert all(bool((on_device[n][~cuda_masks[n]] == 0).all()) for n in params)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_step_on_cuda_equals_eager_cpu(backend):
    """torch.compile(prune.step) on CUDA tensors: one compile, masks equal to an eager CPU run."""
    gen = torch.Generator().manual_seed(0)
    params = {"a": torch.randn(16, 32, generator=gen), "b": torch.randn(8, 4, 3, 3, generator=gen)}
    grads = [{n: torch.randn(p.shape, generator=gen) for n, p in params.items()} for _ in range(12)]
    prune = fprune.pruner(
        0.7, pattern="4x1", criterion="snip_momentum", start_step=1, end_step=9, frequency=2
    )
    cpu_state = prune.init(params)
    cuda_params = {n: v.cuda() for n, v in params.items()}
    cuda_state = prune.init(cuda_params)
    counter = CompileCounterWithBackend(backend)
    torch._dynamo.reset()
    compiled = torch.compile(prune.step, fullgraph=True, backend=counter)
    for g in grads:
        cpu_state, cpu_masks = prune.step(cpu_state, params, g)
        cuda_state, cuda_masks = compiled(
            cuda_state, cuda_params, {n: v.cuda() for n, v in g.items()}
        )
        assert same_bits({n: m.cpu() for n, m in cuda_masks.items()}, cpu_masks)
        assert float(cuda_state.current_target) == float(cpu_state.current_target)
    assert counter.frame_count <= 2 and sum(len(g.graph.nodes) > 0 for g in counter.graphs) == 1


def test_vmapped_sweep_on_cuda_equals_cpu():
    """vmap over init's target and over step, on CUDA: the CPU loop's masks per target."""
    gen = torch.Generator().manual_seed(0)
    params = {"a": torch.randn(16, 32, generator=gen), "b": torch.randn(8, 16, generator=gen)}
    grads = [{n: torch.randn(p.shape, generator=gen) for n, p in params.items()} for _ in range(5)]
    prune = fprune.pruner(
        0.8, pattern="4x1", criterion="snip_momentum", start_step=0, end_step=4, frequency=2
    )
    targets = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    cuda_params = {n: v.cuda() for n, v in params.items()}
    state = torch.func.vmap(lambda s: prune.init(cuda_params, sparsity=s))(targets)
    for g in grads:
        state, masks = torch.func.vmap(prune.step, in_dims=(0, None, None))(
            state, cuda_params, {n: v.cuda() for n, v in g.items()}
        )
    for i, target in enumerate(targets.tolist()):
        alone = prune.init(params, sparsity=target)
        for g in grads:
            alone, alone_masks = prune.step(alone, params, g)
        assert same_bits({n: m[i].cpu() for n, m in masks.items()}, alone_masks)


@pytest.mark.parametrize(
    ("grow", "pattern", "sparsity"),
    [("gradient", "1x1", 0.9), ("random", "1x1", 0.9), ("gradient", "4x1", 0.8),
     ("random", "2:4", 0.5)],
)  # fmt: skip
def test_dynamic_steps_on_cuda_equal_cpu(grow, pattern, sparsity):
    """RigL and SET on CUDA (the math, random numbers hashed on the device) equal the CPU
    run (the eager selection) at every step, from the same seed."""
    gen = torch.Generator().manual_seed(0)
    params = {"a": torch.randn(64, 32, generator=gen), "b": torch.randn(32, 64, generator=gen)}
    prune = fprune.dynamic(sparsity, grow=grow, pattern=pattern, distribution="uniform",
                           end_step=6, frequency=2, seed=7)  # fmt: skip
    cpu_state = prune.init(params)
    cuda_params = {n: p.cuda() for n, p in params.items()}
    cuda_state = prune.init(cuda_params)
    for step in range(8):
        grads = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
        cpu_state, want = prune.step(cpu_state, params, grads)
        cuda_grads = {n: g.cuda() for n, g in grads.items()}
        cuda_state, got = prune.step(cuda_state, cuda_params, cuda_grads)
        assert same_bits({n: m.cpu() for n, m in got.items()}, want), step
