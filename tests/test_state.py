"""PruneState: pytree, state_dict round trips, resume, and the checks on foreign states."""

from __future__ import annotations

import io

import pytest
import torch
import torch.utils._pytree as pytree
from hypothesis import given
from hypothesis import strategies as st

import fprune
from fprune.state import PruneState
from tests.models import MLP, ConvNet, batches


def _equal_states(a: PruneState, b: PruneState) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa
    )


def _state(pattern="4x1", criterion="snip_momentum", **kw):
    torch.manual_seed(0)
    params = {"a": torch.randn(8, 16), "b": torch.randn(8, 4, 3, 3)}
    prune = fprune.pruner(0.5, pattern=pattern, criterion=criterion, end_step=4, **kw)
    state = prune.init(params)
    for _ in range(3):
        state, _ = prune.step(state, params, {n: torch.randn_like(p) for n, p in params.items()})
    return prune, params, state


def test_state_is_a_pytree_of_tensors():
    _, _, state = _state()
    leaves, spec = pytree.tree_flatten(state)
    assert all(isinstance(x, torch.Tensor) for x in leaves)
    assert _equal_states(pytree.tree_unflatten(leaves, spec), state)
    doubled = pytree.tree_map(lambda t: t.clone(), state)
    assert isinstance(doubled, PruneState) and _equal_states(doubled, state)
    with pytest.raises(dataclasses_error()):
        state.step = torch.tensor(5)  # type: ignore[misc]


def dataclasses_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize("pattern", ["4x1", "1x1", "2:4"])
@pytest.mark.parametrize("low_memory_usage", [False, True])
def test_state_dict_round_trips_through_torch_save(pattern, low_memory_usage):
    prune, params, state = _state(pattern, low_memory_usage=low_memory_usage)
    buf = io.BytesIO()
    torch.save(state.state_dict(), buf)
    buf.seek(0)
    again = PruneState.from_state_dict(torch.load(buf, weights_only=True))
    assert _equal_states(again, state)
    grads = {n: torch.ones_like(p) for n, p in params.items()}
    assert _equal_states(prune.step(again, params, grads)[0], prune.step(state, params, grads)[0])


@pytest.mark.parametrize("pattern", ["4x1", "2:4"])
def test_state_dict_round_trips_through_safetensors(pattern, tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    _, _, state = _state(pattern, low_memory_usage=True)
    safetensors.save_file(state.state_dict(), tmp_path / "state.safetensors")
    again = PruneState.from_state_dict(safetensors.load_file(tmp_path / "state.safetensors"))
    assert _equal_states(again, state)


@pytest.mark.parametrize("model_cls", [MLP, ConvNet])
@given(
    k=st.integers(0, 8),
    criterion=st.sampled_from(["magnitude", "snip", "snip_momentum"]),
    pattern=st.sampled_from(["4x1", "2:4", "channelx1"]),
)
def test_resume_equals_the_uninterrupted_run_bit_for_bit(model_cls, k, criterion, pattern):
    """Save everything at step k (model, optimizer, prune state), load, go on: same bits."""
    steps = 9
    sparsity = 0.5 if pattern == "2:4" else 0.7

    def fresh():
        torch.manual_seed(0)
        model = model_cls()
        names = fprune.nn.prunable(model).names
        prune = fprune.pruner(
            sparsity, pattern=pattern, criterion=criterion, start_step=1, end_step=7, frequency=2
        )
        return model, names, prune, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def run(model, names, prune, opt, state, start, stop):
        params = dict(model.named_parameters())
        data = batches(model)
        for s in range(start, stop):
            x, y = data[s % len(data)]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            state, masks = prune.step(
                state, {n: params[n].detach() for n in names}, {n: params[n].grad for n in names}
            )
            opt.step()
            fprune.nn.apply_masks_(model, masks)
        return state

    model, names, prune, opt = fresh()
    whole = run(
        model,
        names,
        prune,
        opt,
        prune.init({n: p.detach() for n, p in model.named_parameters() if n in names}),
        0,
        steps,
    )
    want = {n: p.detach().clone() for n, p in model.named_parameters()}

    model, names, prune, opt = fresh()
    state = run(
        model,
        names,
        prune,
        opt,
        prune.init({n: p.detach() for n, p in model.named_parameters() if n in names}),
        0,
        k,
    )
    buf = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "prune": state.state_dict()}, buf
    )
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model, names, prune, opt = fresh()  # a new process would rebuild everything the same way
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    state = run(model, names, prune, opt, PruneState.from_state_dict(saved["prune"]), k, steps)
    assert _equal_states(state, whole)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), want[n]), n


def test_step_rejects_a_state_from_another_pruner():
    _, params, state = _state()
    other = fprune.pruner(0.6, end_step=4)  # a different target
    with pytest.raises(ValueError, match="state was made by a pruner with different settings"):
        other.step(state, params, {n: torch.ones_like(p) for n, p in params.items()})


def test_step_rejects_changed_params():
    prune, params, state = _state()
    grads = {n: torch.ones_like(p) for n, p in params.items()}
    with pytest.raises(
        ValueError, match=r"different keys \(got missing \['b'\], unexpected \['c'\]\)"
    ):
        prune.step(state, {"a": params["a"], "c": params["b"]}, grads)
    with pytest.raises(ValueError, match=r"params\['a'\] has a different shape"):
        prune.step(state, {**params, "a": torch.randn(8, 8)}, grads)
    with pytest.raises(ValueError, match="params dtypes differ from those given to init"):
        prune.step(
            state,
            {n: p.double() for n, p in params.items()},
            {n: g.double() for n, g in grads.items()},
        )
    with pytest.raises(ValueError, match=r"grads\['a'\] has a different shape"):
        prune.step(state, params, {**grads, "a": torch.ones(8, 8)})
    with pytest.raises(ValueError, match="this criterion needs gradients"):
        prune.step(state, params, None)
    with pytest.raises(TypeError, match="state must be a PruneState"):
        prune.step(state.state_dict(), params, grads)


def test_from_state_dict_errors():
    _, _, state = _state()
    sd = state.state_dict()
    with pytest.raises(ValueError, match=r"lacks required entries \(got \['fingerprint'\]\)"):
        PruneState.from_state_dict({k: v for k, v in sd.items() if k != "fingerprint"})
    with pytest.raises(ValueError, match="unknown key"):
        PruneState.from_state_dict({**sd, "weights/a": torch.ones(1)})
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor"):
        PruneState.from_state_dict({**sd, "masks/a": [1, 2]})


def _saved(**changes):
    prune = fprune.pruner(0.5, pattern="1x1", criterion="snip_momentum", end_step=4)
    state = prune.init({"w": torch.ones(4, 4)}).state_dict()
    state.update(changes)
    return prune, state


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"current_target": torch.tensor(0.99, dtype=torch.float64)}, "exceeds the final"),
        ({"final_target": torch.tensor(1.5, dtype=torch.float64)}, r"fraction in \[0, 1\]"),
        ({"final_target": torch.tensor(float("nan"), dtype=torch.float64)}, "fraction"),
        ({"step": torch.tensor(2.0)}, "0-d int64"),
        ({"step": torch.tensor([2])}, "0-d int64"),
        ({"step": torch.tensor(-1)}, ">= 0"),
        ({"fingerprint": torch.tensor(3)}, r"int64 tensor of shape \[2\]"),
        ({"current_target": torch.tensor(0.1)}, "0-d float64"),
        ({"masks/w": torch.ones(4, 4)}, "must be a bool mask"),
        ({"aux/w": torch.zeros(4, 4, dtype=torch.int32)}, "float32, float64 or bfloat16"),
        ({"aux/v": torch.zeros(4, 4)}, "has no mask of the same name"),
    ],
)
def test_from_state_dict_refuses_hand_edited_fields(changes, message):
    _, state = _saved(**changes)
    with pytest.raises(ValueError, match=message):
        fprune.PruneState.from_state_dict(state)


def test_float64_accumulators_on_float32_weights_are_refused_at_step():
    prune, state = _saved()
    state["aux/w"] = state["aux/w"].double()
    restored = fprune.PruneState.from_state_dict(state)
    w = {"w": torch.ones(4, 4)}
    with pytest.raises(ValueError, match=r"state.aux\['w'\] is float64 for a torch.float32"):
        prune.step(restored, w, w)
