"""The pruner under torch.compile, torch.func.grad and torch.func.vmap: same results as eager.

Compile counts come from a counting backend. With 0-d float64 tensors among its inputs
(the state's targets), Dynamo restarts its analysis once while compiling a frame, and the
counting backend sees that restart as a second frame with an empty graph: one compile
shows as ``frame_count == 2`` with exactly one non-empty graph.
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._dynamo.testing import CompileCounterWithBackend
from torch.func import functional_call, grad, stack_module_state, vmap

import fprune
from tests.models import MLP

CRITERIA = ("magnitude", "gradient", "snip", "snip_momentum")
PATTERNS = ("1x1", "4x1", "channelx1", "1xchannel", "2:4")
SCOPES_SCHEDULES = tuple(itertools.product(("global", "local"), ("iterative", "oneshot")))
# Every criterion with each kind of pattern (a block, a channel, N:M), the two block and two
# channel patterns and the four (scope, schedule) pairs taken in turn: 12 compiles. (The
# eager pruner matrix in test_pruner.py runs every criterion x pattern x scope x schedule.)
KINDS = (("1x1", "4x1"), ("channelx1", "1xchannel"), ("2:4", "2:4"))
MATRIX = [
    (c, KINDS[k][i % 2], *SCOPES_SCHEDULES[(3 * i + k) % len(SCOPES_SCHEDULES)])
    for i, c in enumerate(CRITERIA)
    for k in range(len(KINDS))
]
# Every case is captured whole by dynamo (backend "eager"). AOT autograd (the tracing
# inductor builds on, several times the cost) runs in fewer: the inductor step below
# (snip_momentum 4x1 global iterative), the inductor 2:4 local masks and the aot_eager
# recompile check (4x1) in test_compile.py, and the docs' aot_eager steps
# (compile_and_func.md: a snip_momentum 4x1 step, a functional 2:4 snip step).


def _params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "fc1.weight": torch.randn(16, 32, generator=g),
        "fc2.weight": torch.randn(8, 16, generator=g),
        "conv.weight": torch.randn(8, 4, 3, 3, generator=g),
    }


def _grads(params: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}


def _pruner(criterion, pattern, scope, schedule, **kw) -> fprune.Pruner:
    sparsity = 0.5 if ":" in pattern else 0.7
    end = 45 if schedule == "iterative" else 5
    return fprune.pruner(
        sparsity,
        pattern=pattern,
        criterion=criterion,
        scope=scope,
        start_step=5,
        end_step=end,
        frequency=5,
        decay="cos",
        min_layer_sparsity=0.1,
        **kw,
    )


def _same_state(a: fprune.PruneState, b: fprune.PruneState) -> bool:
    flat_a, flat_b = a.state_dict(), b.state_dict()
    return flat_a.keys() == flat_b.keys() and all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a)


def _nonempty_graphs(counter: CompileCounterWithBackend) -> int:
    return sum(len(g.graph.nodes) > 0 for g in counter.graphs)


# --- torch.compile -------------------------------------------------------------------------


@pytest.mark.parametrize(("criterion", "pattern", "scope", "schedule"), MATRIX)
def test_compiled_step_equals_eager_and_compiles_once(criterion, pattern, scope, schedule):
    """50 steps of prune and non-prune steps, a target that changes 8 times: one compile."""
    params = _params()
    prune = _pruner(criterion, pattern, scope, schedule)
    counter = CompileCounterWithBackend("eager")
    torch._dynamo.reset()
    compiled = torch.compile(prune.step, fullgraph=True, backend=counter)
    gen = torch.Generator().manual_seed(1)
    eager_state = compiled_state = prune.init(params)
    frames, targets = [], set()
    for _ in range(50):
        grads = _grads(params, gen)
        eager_state, eager_masks = prune.step(eager_state, params, grads)
        compiled_state, compiled_masks = compiled(compiled_state, params, grads)
        assert _same_state(eager_state, compiled_state)
        assert all(torch.equal(eager_masks[n], compiled_masks[n]) for n in params)
        frames.append(counter.frame_count)
        targets.add(float(compiled_state.current_target))
    # iterative: 9 prune steps, the first at 0.0, so 9 values; oneshot: 0.0, then the target
    assert len(targets) == (9 if schedule == "iterative" else 2)
    assert frames[-1] <= 2 and set(frames) == {frames[0]}  # all compiled at the first call
    assert _nonempty_graphs(counter) == 1
    assert float(compiled_state.current_target) == prune.settings["sparsity"]


@pytest.mark.compile_inductor
@pytest.mark.parametrize(
    ("criterion", "pattern", "scope"), [("snip_momentum", "4x1", "global")]
)  # 2:4: masks
def test_step_compiled_with_inductor_equals_eager(criterion, pattern, scope):
    params = _params()
    prune = _pruner(criterion, pattern, scope, "iterative")
    counter = CompileCounterWithBackend("inductor")
    torch._dynamo.reset()
    compiled = torch.compile(prune.step, fullgraph=True, backend=counter)
    gen = torch.Generator().manual_seed(1)
    eager_state = compiled_state = prune.init(params)
    for _ in range(22):  # prune steps 5, 10, 15, 20 and the steps between
        grads = _grads(params, gen)
        eager_state, _ = prune.step(eager_state, params, grads)
        compiled_state, _ = compiled(compiled_state, params, grads)
        assert all(torch.equal(eager_state.masks[n], compiled_state.masks[n]) for n in params)
        assert float(eager_state.current_target) == float(compiled_state.current_target)
    # inductor's float rounding may differ from eager in the accumulators, never in the masks
    for n, v in eager_state.aux.items():
        torch.testing.assert_close(compiled_state.aux[n], v)
    assert counter.frame_count <= 2 and _nonempty_graphs(counter) == 1


# Ops that only selection runs: the radix select's histograms and cumulative sums (traced
# path) and the eager selection's candidate extraction and threshold search.
SELECTION_OPS = {"aten::index_add", "aten::cumsum", "aten::nonzero", "aten::searchsorted"}


def _selection_ops(fn) -> set[str]:
    """The aten ops that ``fn()`` runs that only selection runs."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()} & SELECTION_OPS


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_non_prune_steps_do_no_selection_work(mode):
    params = _params()
    prune = _pruner("snip_momentum", "4x1", "global", "iterative")
    step = prune.step
    if mode == "compiled":
        torch._dynamo.reset()
        step = torch.compile(
            prune.step, fullgraph=True, backend="eager"
        )  # the cond runs one branch
    gen = torch.Generator().manual_seed(1)
    state = prune.init(params)
    step(
        state, params, _grads(params, gen)
    )  # compiles now, not while profiling (the result is dropped)
    seen = {}
    for s in range(12):
        grads = _grads(params, gen)
        result = {}

        def call(state=state, grads=grads, result=result):
            result["out"] = step(state, params, grads)

        seen[s] = _selection_ops(call)
        state = result["out"][0]
    # step 5 prunes to the ramp's initial 0.0 (nothing to select, eager skips it); 10 selects
    assert seen[10]  # the check sees selection when it runs
    assert all(seen[s] == set() for s in seen if s not in {5, 10})


# --- torch.func: a whole training step ------------------------------------------------------


def _train_step_fn(
    model: torch.nn.Module, prune: fprune.Pruner, names: tuple[str, ...], lr: float = 0.05
):
    def loss_fn(params, x, y):
        return torch.nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    def train_step(params, momentum, state, x, y):
        grads = grad(loss_fn)(params, x, y)
        state, masks = prune.step(
            state, {n: params[n] for n in names}, {n: grads[n] for n in names}
        )
        momentum = {n: 0.9 * momentum[n] + grads[n] for n in params}
        params = {n: p - lr * momentum[n] for n, p in params.items()}
        return fprune.apply_masks(params, masks), momentum, state

    return train_step


def _data(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 16, generator=g), torch.randint(0, 4, (16,), generator=g))
        for _ in range(n)
    ]


def _run(train_step, params, names, prune, data):
    momentum = {n: torch.zeros_like(p) for n, p in params.items()}
    state = prune.init({n: params[n] for n in names})
    for x, y in data:
        params, momentum, state = train_step(params, momentum, state, x, y)
        pruned = sum(int((params[n][~state.masks[n]] != 0).sum()) for n in names)
        assert pruned == 0  # pruned weights are exactly zero after every step
    return params, state


@pytest.mark.parametrize(("pattern", "criterion", "backend"), [("4x1", "snip_momentum", "eager")])
def test_functional_training_step_compiled_equals_eager(pattern, criterion, backend):
    """functional_call + grad + SGD with momentum + prune.step + apply_masks, as one function,
    captured whole by dynamo (through AOT autograd too: the 2:4 snip step of the doctest in
    docs/compile_and_func.md)."""
    torch.manual_seed(0)
    model = MLP()
    names = fprune.nn.prunable(model).names
    params = {n: p.detach() for n, p in model.named_parameters()}
    prune = fprune.pruner(
        0.5, pattern=pattern, criterion=criterion, start_step=2, end_step=20, frequency=3
    )
    train_step = _train_step_fn(model, prune, names)
    data = _data(24)
    eager_params, eager_state = _run(train_step, params, names, prune, data)
    counter = CompileCounterWithBackend(backend)
    torch._dynamo.reset()
    compiled_params, compiled_state = _run(
        torch.compile(train_step, fullgraph=True, backend=counter), params, names, prune, data
    )
    assert _same_state(eager_state, compiled_state)
    assert all(torch.equal(eager_params[n], compiled_params[n]) for n in params)
    assert counter.frame_count <= 2 and _nonempty_graphs(counter) == 1
    assert float(fprune.total_sparsity(compiled_state.masks, pattern=pattern)) == 0.5


# --- torch.func.vmap ------------------------------------------------------------------------


@settings(max_examples=12)
@given(
    st.sampled_from(CRITERIA),
    st.sampled_from(PATTERNS),
    st.sampled_from(("global", "local")),
    st.integers(0, 2**16),
)
def test_vmapped_ensemble_equals_a_loop(criterion, pattern, scope, seed):
    """stack_module_state of 3 models; vmap(init) and vmap(step) equal each member alone."""
    torch.manual_seed(seed)
    models = [MLP() for _ in range(3)]
    names = fprune.nn.prunable(models[0]).names
    stacked, _ = stack_module_state(models)  # type: ignore[arg-type]
    stacked = {n: stacked[n].detach() for n in names}
    prune = fprune.pruner(
        0.5,
        pattern=pattern,
        criterion=criterion,
        scope=scope,
        start_step=1,
        end_step=5,
        frequency=2,
        min_layer_sparsity=0.2,
    )
    gen = torch.Generator().manual_seed(seed)
    grads = [{n: torch.randn(p.shape, generator=gen) for n, p in stacked.items()} for _ in range(7)]
    with warnings.catch_warnings():  # an op without a batching rule would run member by member
        warnings.filterwarnings("error", message=".*batching rule.*")
        state = vmap(prune.init)(stacked)
        for g in grads:
            state, masks = vmap(prune.step)(state, stacked, g)
    for member in range(3):
        params = {n: p[member] for n, p in stacked.items()}
        alone = prune.init(params)
        for g in grads:
            alone, alone_masks = prune.step(alone, params, {n: t[member] for n, t in g.items()})
        assert all(torch.equal(masks[n][member], alone_masks[n]) for n in names)
        assert float(state.current_target[member]) == float(alone.current_target) == 0.5
        assert all(torch.equal(state.aux[k][member], v) for k, v in alone.aux.items())


@pytest.mark.parametrize(
    ("pattern", "scope", "criterion"),
    [
        ("4x1", "global", "snip_momentum"),
        ("2:4", "local", "snip_momentum"),
        ("1x1", "global", "snip_momentum"),
        ("4x1", "global", "magnitude"),
        ("2:4", "global", "magnitude"),  # batched masks, unbatched scores
    ],
)
def test_vmapped_sparsity_sweep_equals_separate_pruners(pattern, scope, criterion):
    """One vmapped call prunes the same weights to several targets (init's sparsity as data);
    with a stateless criterion the scores are shared while the earlier masks are batched."""
    params = _params()
    targets = [0.1, 0.3, 0.5] if ":" in pattern else [0.2, 0.5, 0.8]
    kw = dict(
        pattern=pattern, criterion=criterion, scope=scope, start_step=0, end_step=6, frequency=2
    )
    prune = fprune.pruner(max(targets), **kw)
    gen = torch.Generator().manual_seed(3)
    grads = [_grads(params, gen) for _ in range(8)]
    with warnings.catch_warnings():  # an op without a batching rule would run member by member
        warnings.filterwarnings("error", message=".*batching rule.*")
        state = vmap(lambda s: prune.init(params, sparsity=s))(
            torch.tensor(targets, dtype=torch.float64)
        )
        for g in grads:
            state, masks = vmap(prune.step, in_dims=(0, None, None))(state, params, g)
    for i, target in enumerate(targets):
        own = fprune.pruner(target, **kw)  # a pruner built for this target
        alone = own.init(params)
        for g in grads:
            alone, alone_masks = own.step(alone, params, g)
        assert all(torch.equal(masks[n][i], alone_masks[n]) for n in params)
        assert float(state.current_target[i]) == float(alone.current_target) == target
        assert float(
            fprune.total_sparsity({n: m[i] for n, m in masks.items()}, pattern=pattern)
        ) == pytest.approx(target, abs=0.02)


def test_init_sparsity_override_equals_a_pruner_built_for_it():
    params = _params()
    gen = torch.Generator().manual_seed(5)
    grads = [_grads(params, gen) for _ in range(6)]
    kw = dict(
        pattern="4x1",
        criterion="snip_momentum",
        start_step=1,
        end_step=5,
        frequency=2,
        min_layer_sparsity=0.2,
    )
    base, own = fprune.pruner(0.9, **kw), fprune.pruner(0.6, **kw)
    for override in (0.6, torch.tensor(0.6, dtype=torch.float64)):
        a, b = base.init(params, sparsity=override), own.init(params)
        for g in grads:
            a, masks_a = base.step(a, params, g)
            b, masks_b = own.step(b, params, g)
            assert all(torch.equal(masks_a[n], masks_b[n]) for n in params)
            assert float(a.current_target) == float(b.current_target)
        assert a.final_target.dtype == torch.float64 and float(a.final_target) == pytest.approx(0.6)
    single = base.init(params, sparsity=torch.tensor(0.6))  # float32 data, widened as it is
    assert single.final_target.dtype == torch.float64 and float(single.final_target) == float(
        torch.tensor(0.6)
    )
    state = base.init(params, sparsity=0.6)
    again = fprune.PruneState.from_state_dict(state.state_dict())
    assert float(again.final_target) == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("kwargs", "value", "error", "message"),
    [
        (
            dict(),
            torch.tensor([0.5, 0.6]),
            TypeError,
            "init: sparsity must be a float or a floating 0-d tensor",
        ),
        (
            dict(),
            torch.tensor(1),
            TypeError,
            "init: sparsity must be a float or a floating 0-d tensor",
        ),
        (dict(), 1.5, ValueError, "init: sparsity"),
        (dict(), "0.5", TypeError, "init: sparsity"),
        (
            dict(max_layer_sparsity=0.8),
            0.9,
            ValueError,
            "init: sparsity exceeds max_layer_sparsity",
        ),
        (
            dict(min_layer_sparsity=0.4),
            0.3,
            ValueError,
            "init: min_layer_sparsity exceeds sparsity",
        ),
        (
            dict(pattern="2:4"),
            torch.tensor(0.6),
            ValueError,
            r"init: pattern '2:4' cannot exceed sparsity",
        ),
    ],
)
def test_init_sparsity_override_rejects_bad_values(kwargs, value, error, message):
    prune = fprune.pruner(0.5, **{"pattern": "4x1", **kwargs})
    with pytest.raises(error, match=message):
        prune.init(_params(), sparsity=value)


def test_pattern_lock_init_rejects_a_target():
    lock = fprune.pattern_lock(pattern="4x1")
    with pytest.raises(ValueError, match="pattern_lock has no target sparsity to override"):
        lock.init(_params(), sparsity=0.5)


def test_state_dict_without_the_final_target_says_how_to_fix_it():
    state = fprune.pruner(0.5).init(_params()).state_dict()
    del state["final_target"]
    with pytest.raises(ValueError, match=r"lacks the final target 'final_target'.*torch.tensor"):
        fprune.PruneState.from_state_dict(state)


def test_vmapped_training_step_keeps_members_apart():
    """vmap over a whole functional training step: an ensemble trains and prunes in one call."""
    torch.manual_seed(0)
    models = [MLP() for _ in range(3)]
    names = fprune.nn.prunable(models[0]).names
    stacked, _ = stack_module_state(models)  # type: ignore[arg-type]
    stacked = {n: p.detach() for n, p in stacked.items()}
    prune = fprune.pruner(
        0.75, pattern="4x1", criterion="snip_momentum", start_step=2, end_step=14, frequency=3
    )
    train_step = _train_step_fn(models[0], prune, names)
    momentum = {n: torch.zeros_like(p) for n, p in stacked.items()}
    state = vmap(prune.init)({n: stacked[n] for n in names})
    params = stacked
    for x, y in _data(16):
        params, momentum, state = vmap(train_step, in_dims=(0, 0, 0, None, None))(
            params, momentum, state, x, y
        )
    for member in range(3):
        masks = {n: state.masks[n][member] for n in names}
        assert float(fprune.total_sparsity(masks, pattern="4x1")) == 0.75
        assert all(int((params[n][member][~masks[n]] != 0).sum()) == 0 for n in names)
    # members were trained from different weights, so they prune different blocks
    assert not torch.equal(state.masks[names[0]][0], state.masks[names[0]][1])


def test_compiled_vmapped_step_equals_eager_vmapped():
    """torch.compile(vmap(step)): the sweep compiles once and equals the eager vmapped run."""
    params = _params()
    prune = fprune.pruner(
        0.8, pattern="4x1", criterion="snip_momentum", start_step=0, end_step=8, frequency=4
    )
    targets = torch.tensor([0.4, 0.6, 0.8], dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    grads = [_grads(params, gen) for _ in range(10)]
    batched_step = vmap(prune.step, in_dims=(0, None, None))
    counter = CompileCounterWithBackend(
        "eager"
    )  # through AOT: examples/sparsity_sweep.py --compile
    torch._dynamo.reset()
    compiled = torch.compile(batched_step, fullgraph=True, backend=counter)
    state = vmap(lambda s: prune.init(params, sparsity=s))(targets)
    # vmap returns the accumulators, which do not depend on the target, broadcast (stride 0);
    # the first step returns dense ones. Made contiguous here, the strides never change, so
    # one compile serves every step (otherwise Dynamo specializes a second time).
    eager_state = compiled_state = torch.utils._pytree.tree_map(torch.Tensor.contiguous, state)
    for g in grads:
        eager_state, _ = batched_step(eager_state, params, g)
        compiled_state, _ = compiled(compiled_state, params, g)
        assert _same_state(eager_state, compiled_state)
    assert compiled_state.current_target.tolist() == targets.tolist()
    assert counter.frame_count <= 2 and _nonempty_graphs(counter) == 1
