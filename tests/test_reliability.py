"""Bad inputs to the pruner and the primitives: a one-line error of the project's form (the
function, the problem, the value, the fix), never a raw torch or Python error."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import fprune

W = {"w": torch.randn(4, 4, generator=torch.Generator().manual_seed(0))}


def _magnitude(**kw):
    return fprune.pruner(0.5, pattern="1x1", criterion="magnitude", **kw)


def _steps(prune, count=3, grads=None):
    state = prune.init(W)
    for _ in range(count):
        state, _ = prune.step(state, W, grads)
    return state


def _state(**changes):
    return dataclasses.replace(_magnitude().init(W), **changes)


CASES = [
    (
        "a schedule returning NaN",
        lambda: _steps(_magnitude(schedule=lambda step, **kw: float("nan"))),
        ValueError,
        r"pruner: the schedule returned NaN at step 0",
    ),
    (
        "a schedule returning a string",
        lambda: _steps(_magnitude(schedule=lambda step: "half")),
        TypeError,
        r"pruner: the schedule returned a str at step 0",
    ),
    (
        "a decay returning NaN",
        lambda: _steps(_magnitude(end_step=4, decay=lambda x, a, b: float("nan"))),
        ValueError,
        r"pruner: the schedule returned NaN at step 1",
    ),
    (
        "a NaN tensor sparsity",
        lambda: fprune.masks(W, pattern="1x1", sparsity=torch.tensor(float("nan")).double()),
        ValueError,
        r"masks: sparsity must be a fraction in \[0, 1\) \(got nan\)",
    ),
    (
        "an inf tensor sparsity",
        lambda: fprune.masks(W, pattern="1x1", sparsity=torch.tensor(float("inf")).double()),
        ValueError,
        r"masks: sparsity must be a fraction in \[0, 1\) \(got inf\)",
    ),
    (
        "end_step = 2**70",
        lambda: _magnitude(end_step=2**70),
        ValueError,
        r"pruner: end_step must be below 2\*\*62",
    ),
    (
        "a parameter named ''",
        lambda: _magnitude().init({"": torch.ones(2, 2)}),
        TypeError,
        r"init: params keys must be non-empty strings",
    ),
    (
        "float masks in a state",
        lambda: _magnitude().step(_state(masks={"w": torch.ones(4, 4)}), W),
        TypeError,
        r"step: state.masks\['w'\] must be a bool mask",
    ),
    (
        "a 0-d fingerprint",
        lambda: _magnitude().step(_state(fingerprint=torch.tensor(1)), W),
        ValueError,
        r"step: state.fingerprint must be an int64 tensor of shape \[2\]",
    ),
    (
        "a NaN target at init",
        lambda: _magnitude().init(W, sparsity=float("nan")),
        ValueError,
        r"init: sparsity must be a fraction",
    ),
    (
        "a missing gradient (no backward yet)",
        lambda: _steps(fprune.pruner(0.5, pattern="1x1", criterion="snip"), 1, {"w": None}),
        TypeError,
        r"step: grads\['w'\] is None .* Call loss.backward\(\) before step",
    ),
    (
        "a state without the layer",
        lambda: _magnitude().step(_state(masks={}), W),
        ValueError,
        r"step: state.masks lacks layers that params has \(got \['w'\]\)",
    ),
    (
        "a pattern ending in '_' in a config",
        lambda: fprune.from_config({"pattern": "4x1_"}),
        ValueError,
        r"from_config: pattern ends in '_'.* \(got '4x1_'\)",
    ),
]


@pytest.mark.parametrize(("what", "call", "error", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_of_the_project_s_form(what, call, error, message):
    with pytest.raises(error, match=message) as info:
        call()
    text = str(info.value)
    assert "\n" not in text and ". " in text, text  # one line: the problem, then the fix


def _grads(seed: int, params):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}


PARAMS = {
    "a": torch.randn(8, 8, generator=torch.Generator().manual_seed(1)),
    "b": torch.randn(8, 4),
}


@pytest.mark.parametrize("criterion", ["snip_momentum", "snip", "gradient"])
@pytest.mark.parametrize("bad_step", [3, 4])  # a step between prune steps, and a prune step
@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")])
def test_a_step_with_non_finite_gradients_changes_nothing_but_the_step(criterion, bad_step, poison):
    """What a mixed-precision loop hands over on an overflow step that GradScaler skips: the
    accumulators, masks and target stay as they were, so the run equals one in which that
    step did nothing; before, one NaN step poisoned snip_momentum's scores for good."""
    prune = fprune.pruner(
        0.5, pattern="4x1", criterion=criterion, start_step=0, end_step=10, frequency=2
    )
    poisoned, skipped = prune.init(PARAMS), prune.init(PARAMS)
    for i in range(14):
        grads = _grads(i, PARAMS)
        if i == bad_step:
            bad = {n: g.clone() for n, g in grads.items()}
            bad["a"][2, 3] = poison
            poisoned, masks = prune.step(poisoned, PARAMS, bad)
            assert all(torch.equal(masks[n], skipped.masks[n]) for n in masks)
            skipped = dataclasses.replace(skipped, step=skipped.step + 1)
            continue
        poisoned, _ = prune.step(poisoned, PARAMS, grads)
        skipped, _ = prune.step(skipped, PARAMS, grads)
    assert int(poisoned.step) == int(skipped.step) == 14
    assert float(poisoned.current_target) == float(skipped.current_target) == 0.5
    for n in PARAMS:
        assert torch.equal(poisoned.masks[n], skipped.masks[n])
        if n in poisoned.aux:
            assert torch.equal(poisoned.aux[n], skipped.aux[n])
            assert torch.isfinite(poisoned.aux[n]).all()


def test_non_finite_gradients_are_skipped_under_compile_too():
    prune = fprune.pruner(0.5, pattern="4x1", criterion="snip_momentum", end_step=4, frequency=2)
    step = torch.compile(prune.step, backend="eager", fullgraph=True)
    state, eager = prune.init(PARAMS), prune.init(PARAMS)
    nan = {n: torch.full_like(p, float("nan")) for n, p in PARAMS.items()}
    for i in range(6):
        grads = nan if i == 2 else _grads(i, PARAMS)
        state, _ = step(state, PARAMS, grads)
        eager, _ = prune.step(eager, PARAMS, grads)
    for n in PARAMS:
        assert torch.equal(state.aux[n], eager.aux[n]) and torch.isfinite(state.aux[n]).all()
        assert torch.equal(state.masks[n], eager.masks[n])
