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
