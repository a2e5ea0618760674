"""Registries: protocols, names and objects interchangeable, override rules, suggestions."""

from __future__ import annotations

import pytest
import torch

import fprune
from fprune import registry
from fprune.registry import snapshot


@pytest.fixture(autouse=True)
def _restore():
    with snapshot():
        yield


def test_builtins_are_registered():
    assert registry.registered("criterion") == ("gradient", "magnitude", "snip", "snip_momentum")
    assert registry.registered("scheduler") == ("iterative", "oneshot")
    assert registry.registered("reg") == ("group_lasso",)
    assert registry.registered("pruner") == ("basic", "pattern_lock", "rigl", "set")


def test_reregistering_needs_override():
    fprune.register_criterion("mine", fprune.magnitude)
    with pytest.raises(ValueError, match=r"already registered \(got 'mine'\).*override=True"):
        fprune.register_criterion("mine", fprune.snip)
    fprune.register_criterion("mine", fprune.snip, override=True)
    assert fprune.get_criterion("mine") is fprune.snip


def test_snapshot_restores():
    with snapshot():
        fprune.register_reg("tmp", lambda params, **kw: dict(params))
    assert "tmp" not in registry.registered("reg")


@pytest.mark.parametrize("kind", registry.KINDS)
def test_unknown_names_suggest_the_closest(kind):
    get = getattr(fprune, f"get_{kind}")
    name = {
        "criterion": "snip_momentun",
        "pattern": "tensorcore",
        "scheduler": "iterativ",
        "reg": "group_laso",
        "pruner": "basik",
    }[kind]
    if kind == "pattern":
        fprune.register_pattern("tensor_core", fprune.NM(2, 4))
    with pytest.raises(ValueError, match=f"unknown {kind}.*Did you mean"):
        get(name)


def test_protocol_checks_on_register():
    with pytest.raises(TypeError, match="must be callable"):
        fprune.register_scheduler("x", 3)
    with pytest.raises(TypeError, match="must be a Blocks or NM value"):
        fprune.register_pattern("x", "2:4")
    with pytest.raises(ValueError, match="already a pattern string"):
        fprune.register_pattern("2:4", fprune.NM(2, 4))
    with pytest.raises(TypeError, match="must be a Criterion"):
        fprune.register_criterion("x", 1.0)
    with pytest.raises(TypeError, match="name must be a non-empty string"):
        fprune.register_reg("", fprune.group_lasso)


def test_names_and_objects_are_interchangeable():
    torch.manual_seed(0)
    params = {"w": torch.randn(8, 8)}
    grads = {"w": torch.randn(8, 8)}
    fprune.register_pattern("rows4", fprune.Blocks(4, 1))
    fprune.register_criterion("wxg", fprune.snip)

    def run(**kw):
        prune = fprune.pruner(0.5, end_step=0, **kw)
        return prune.step(prune.init(params), params, grads)[1]["w"]

    assert torch.equal(
        run(pattern="rows4", criterion="wxg"),
        run(pattern=fprune.Blocks(4, 1), criterion=fprune.snip),
    )
    assert torch.equal(run(pattern="4x1", criterion="snip"), run(pattern="rows4", criterion="wxg"))


def test_criterion_factory_protocol():
    seen = {}

    def make(*, pattern, reduce, dtype):
        seen.update(pattern=str(pattern), reduce=reduce)
        return fprune.Criterion(
            lambda p: {}, lambda aux, p, g: ({n: t.abs() for n, t in p.items()}, {}), False
        )

    fprune.register_criterion("made", make)
    prune = fprune.pruner(0.5, pattern="2x2", criterion="made", reduce="max")
    params = {"w": torch.randn(4, 4)}
    prune.step(prune.init(params), params)
    assert seen == {"pattern": "2x2", "reduce": "max"}


def test_registered_scheduler_drives_the_pruner():
    def halfway(step, *, initial, sparsity, start_step, end_step, frequency, decay):
        return torch.where(step >= (start_step + end_step) // 2, sparsity, initial)

    fprune.register_scheduler("halfway", halfway)
    prune = fprune.pruner(0.5, pattern="1x1", criterion="magnitude", end_step=4, schedule="halfway")
    params = {"w": torch.randn(4, 4)}
    state, targets = prune.init(params), []
    for _ in range(5):
        state, _ = prune.step(state, params)
        targets.append(float(state.current_target))
    assert targets == [0.0, 0.0, 0.5, 0.5, 0.5]


def test_registered_pruner_from_config():
    def local_magnitude(sparsity, **settings):
        return fprune.pruner(sparsity, **{**settings, "criterion": "magnitude", "scope": "local"})

    fprune.register_pruner("local_magnitude", local_magnitude)
    (p,) = fprune.from_config({"pruning_type": "local_magnitude", "target_sparsity": 0.5})
    assert p.settings["scope"] == "local" and p.settings["criterion"] == "magnitude"


def test_regularize_resolves_a_registered_pattern_name():
    fprune.register_pattern("rows4", fprune.Blocks(4, 1))
    (p,) = fprune.from_config(
        {"pattern": "rows4", "reg_type": "group_lasso", "reg_coeff": 1.0, "end_step": 3}
    )
    params = {"w": torch.randn(8, 8, generator=torch.Generator().manual_seed(0))}
    got = p.regularize(params, step=1, lr=0.5)
    want = fprune.group_lasso(params, pattern="4x1", strength=0.5)
    assert torch.equal(got["w"], want["w"])
