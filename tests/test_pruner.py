"""The pruner: init/step semantics on real training loops, schedules, exact counts, nesting."""

from __future__ import annotations

import math
import subprocess
import sys

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

import fprune
from fprune.layout import to_2d
from tests.models import MLP, ConvNet, train
from tests.strategies import same_bits

CRITERIA = ("magnitude", "gradient", "snip", "snip_momentum")
PATTERNS = ("1x1", "4x1", "channelx1", "1xchannel", "2:4")
SCHEDULES = {
    "oneshot": dict(start_step=2, end_step=2),
    "iterative": dict(start_step=1, end_step=7, frequency=2),
}


def _units(mask: torch.Tensor, pattern: str) -> tuple[int, int]:
    """(pruned units, all units) of one mask; N:M counts groups with N pruned."""
    pat = fprune.parse_pattern(pattern)
    if isinstance(pat, fprune.NM):
        groups = (~to_2d(mask)).reshape(mask.shape[0], -1, pat.m).sum(-1)
        assert bool(((groups == 0) | (groups == pat.n)).all()), (
            "an N:M group is neither dense nor N:M"
        )
        return int((groups == pat.n).sum()), groups.numel()
    grid = fprune.reduce_masks({"m": mask}, pattern=pat)["m"]
    # block constancy: expanding the grid gives the mask back
    assert torch.equal(
        fprune.expand_masks({"m": grid}, pattern=pat, shapes={"m": mask.shape})["m"], mask
    )
    return int((~grid).sum()), grid.numel()


def _count(r: float, n: int) -> int:
    return math.floor(r * n + 1e-9)


@pytest.mark.parametrize("model_cls", [MLP, ConvNet])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("scope", ["global", "local"])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("criterion", CRITERIA)
def test_pruner_matrix(criterion, pattern, scope, schedule, model_cls):
    torch.manual_seed(0)
    model = model_cls()
    names = fprune.nn.prunable(model).names
    sparsity = 0.5 if pattern == "2:4" else 0.7
    window = SCHEDULES[schedule]
    prune = fprune.pruner(
        sparsity, pattern=pattern, criterion=criterion, scope=scope, decay="cube", **window
    )
    expected = (
        fprune.oneshot(sparsity, start_step=window["start_step"])
        if schedule == "oneshot"
        else fprune.iterative(sparsity, decay="cube", **window)
    )
    params = dict(model.named_parameters())
    seen = {"previous": None, "targets": []}

    def check(s, state, masks):
        # the per-step target is the schedule's (its tensor path; the float path agrees to 1 ulp)
        assert float(state.current_target) == float(expected(torch.tensor(s)))
        assert float(state.current_target) == pytest.approx(expected(s), rel=1e-14, abs=1e-15)
        seen["targets"].append(float(state.current_target))
        if seen["previous"] is not None:  # nested: nothing pruned before revives
            assert all(bool((masks[n] <= seen["previous"][n]).all()) for n in names)
        seen["previous"] = masks
        for n in names:  # pruned weights are zero after every optimizer step (momentum 0.9)
            assert bool((params[n].detach()[~masks[n]] == 0).all())

    state = train(model, prune, names, steps=9, on_step=check)
    masks = state.masks
    units = {n: _units(masks[n], pattern) for n in names}
    pat = fprune.parse_pattern(pattern)
    fraction = sparsity * pat.m / pat.n if isinstance(pat, fprune.NM) else sparsity
    if scope == "global":
        total = sum(u for _, u in units.values())
        assert sum(p for p, _ in units.values()) == _count(fraction, total)
    else:
        assert all(p == _count(fraction, u) for p, u in units.values())
    assert float(state.current_target) == sparsity and int(state.step) == 9


@pytest.mark.parametrize("criterion", CRITERIA)
def test_pruner_matches_the_masks_primitive(criterion):
    """A one-shot pruner at step 0 is ``masks(criterion scores)``: the layers compose."""
    torch.manual_seed(0)
    params = {"a": torch.randn(8, 16), "b": torch.randn(16, 8)}
    grads = {n: torch.randn_like(p) for n, p in params.items()}
    prune = fprune.pruner(0.6, pattern="4x1", criterion=criterion)
    _, got = prune.step(prune.init(params), params, grads)
    crit = fprune.criterion(criterion, pattern="4x1")
    scores, _ = crit.update(crit.init(params), params, grads)
    if criterion == "snip_momentum":
        want = fprune.expand_masks(
            fprune.grid_masks(scores, pattern="4x1", sparsity=0.6),
            pattern="4x1",
            shapes={n: p.shape for n, p in params.items()},
        )
    else:
        want = fprune.masks(scores, pattern="4x1", sparsity=0.6)
    assert all(torch.equal(got[n], want[n]) for n in params)


def test_step_folds_grads_before_pruning():
    """snip prunes at step 0 with the gradients it is given (INC cannot)."""
    params = {"w": torch.ones(4, 4)}
    grads = {"w": torch.arange(16.0).reshape(4, 4)}
    prune = fprune.pruner(0.25, pattern="1x1", criterion="snip")
    _, masks = prune.step(prune.init(params), params, grads)
    assert (~masks["w"]).nonzero().tolist() == [[0, 0], [0, 1], [0, 2], [0, 3]]


def test_non_prune_steps_keep_masks_and_accumulate_scores():
    torch.manual_seed(0)
    params = {"w": torch.randn(8, 8)}
    prune = fprune.pruner(0.5, pattern="4x1", start_step=3)
    state = prune.init(params)
    for _ in range(3):
        before = state.aux["w"].clone()
        state, masks = prune.step(state, params, {"w": torch.randn(8, 8)})
        assert bool(masks["w"].all())
        assert not torch.equal(state.aux["w"], before)
    state, masks = prune.step(state, params, {"w": torch.randn(8, 8)})
    assert float(fprune.total_sparsity(masks, pattern="4x1")) == 0.5


@given(
    sparsity=st.sampled_from([0.3, 0.5, 0.75, 0.9]),
    lo=st.sampled_from([0.0, 0.1, 0.3]),
    hi=st.sampled_from([0.9, 0.95, 0.98]),
    seed=st.integers(0, 2**16),
)
def test_pruner_global_bounds_ramp_with_the_schedule(sparsity, lo, hi, seed):
    """Every prune step: total exact, each layer in [min * r / sparsity, max] (in blocks)."""
    g = torch.Generator().manual_seed(seed)
    params = {
        "a": torch.randn(8, 8, generator=g),
        "b": torch.randn(16, 8, generator=g) * 10,
        "c": torch.randn(4, 32, generator=g) * 0.1,
    }
    lo = min(lo, sparsity)
    prune = fprune.pruner(
        sparsity,
        pattern="4x1",
        criterion="magnitude",
        end_step=4,
        min_layer_sparsity=lo,
        max_layer_sparsity=hi,
    )
    state = prune.init(params)
    for _ in range(5):
        state, masks = prune.step(state, params)
        r = float(state.current_target)
        per = {n: _units(m, "4x1") for n, m in masks.items()}
        total = sum(u for _, u in per.values())
        room = sum(_count(hi, u) for _, u in per.values())  # the caps can hold less than K
        assert sum(p for p, _ in per.values()) == min(_count(r, total), room)
        for p, u in per.values():
            assert _count(lo * r / sparsity, u) <= p <= _count(hi, u)


def test_skip_indivisible_leaves_layers_dense():
    params = {"ok": torch.randn(8, 8), "odd": torch.randn(6, 8)}
    with pytest.raises(ValueError, match="does not divide layer 'odd'"):
        fprune.pruner(0.5, pattern="4x1", criterion="magnitude").init(params)
    prune = fprune.pruner(0.5, pattern="4x1", criterion="magnitude", skip_indivisible=True)
    _, masks = prune.step(prune.init(params), params)
    assert bool(masks["odd"].all()) and float(fprune.layer_sparsity(masks)["ok"]) == 0.5


def test_lock_init_sparsity_starts_from_existing_zeros():
    torch.manual_seed(0)
    w = torch.randn(8, 8)
    w[:4, :4] = 0  # 4 of the 16 4x1 blocks
    prune = fprune.pruner(
        0.5,
        pattern="4x1",
        criterion="magnitude",
        start_step=0,
        end_step=2,
        decay="linear",
        lock_init_sparsity=True,
    )
    state = prune.init({"w": w})
    assert float(state.initial_target) == 0.25 and bool((~state.masks["w"][:4, :4]).all())
    targets = []
    for _ in range(3):
        state, masks = prune.step(state, {"w": w})
        targets.append(float(state.current_target))
        assert bool((~masks["w"][:4, :4]).all())  # the existing zeros stay pruned
    assert targets == [0.25, 0.375, 0.5]


def test_low_memory_usage_keeps_bfloat16_accumulators():
    params = {"w": torch.randn(8, 8)}
    state = fprune.pruner(0.5, low_memory_usage=True).init(params)
    assert state.aux["w"].dtype == torch.bfloat16 and state.aux["w"].shape == (2, 8)


def test_custom_criteria():
    params = {"w": torch.arange(1.0, 17.0).reshape(4, 4)}

    def largest_first(params, grads):
        return {n: -p for n, p in params.items()}

    prune = fprune.pruner(0.25, pattern="1x1", criterion=largest_first)
    _, masks = prune.step(prune.init(params), params)  # grads None: the function ignores them
    assert (~masks["w"]).nonzero().tolist() == [[3, 0], [3, 1], [3, 2], [3, 3]]

    counter = fprune.Criterion(
        init=lambda params: {"n": torch.zeros(())},
        update=lambda aux, params, grads: (
            {k: p.abs() for k, p in params.items()},
            {"n": aux["n"] + 1},
        ),
        needs_grads=False,
    )
    prune = fprune.pruner(0.25, pattern="1x1", criterion=counter)
    state = prune.init(params)
    for _ in range(3):
        state, _ = prune.step(state, params)
    assert float(state.aux["n"]) == 3


def test_pruner_is_pure():
    torch.manual_seed(0)
    params = {"w": torch.randn(8, 8)}
    grads = {"w": torch.randn(8, 8)}
    copies = {k: v.clone() for k, v in {**params, "g": grads["w"]}.items()}
    prune = fprune.pruner(0.5)
    state = prune.init(params)
    kept = {k: v.clone() for k, v in state.state_dict().items()}
    new, _ = prune.step(state, params, grads)
    assert torch.equal(params["w"], copies["w"]) and torch.equal(grads["w"], copies["g"])
    assert all(
        torch.equal(v, kept[k]) for k, v in state.state_dict().items()
    )  # old state untouched
    assert int(new.step) == 1 and int(state.step) == 0


def test_pattern_lock_pruner_keeps_structure():
    torch.manual_seed(0)
    w = torch.randn(8, 8)
    w[:, ::2] = 0
    lock = fprune.pattern_lock(pattern="2:4")
    state = lock.init({"w": w})
    for _ in range(3):
        state, masks = lock.step(state, {"w": torch.randn(8, 8)})
        assert torch.equal(masks["w"], w != 0)
    assert int(state.step) == 3


def test_callable_and_registered_schedules():
    params = {"w": torch.randn(8, 8)}
    prune = fprune.pruner(
        0.5, pattern="1x1", criterion="magnitude", end_step=3, schedule=lambda s: 0.1 * s + 0.9
    )  # clamped to the target
    state = prune.init(params)
    state, _ = prune.step(state, params)
    assert float(state.current_target) == 0.5
    prune = fprune.pruner(
        0.5,
        pattern="1x1",
        criterion="magnitude",
        end_step=3,
        schedule=fprune.iterative(0.5, start_step=0, end_step=3, decay="linear"),
    )
    state = prune.init(params)
    targets = []
    for _ in range(4):
        state, _ = prune.step(state, params)
        targets.append(round(float(state.current_target), 6))
    assert targets == [0.0, 0.166667, 0.333333, 0.5]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            dict(sparsity=float("nan")),
            ValueError,
            r"sparsity must be a fraction in \[0, 1\) \(got nan\)",
        ),
        (
            dict(sparsity=float("inf")),
            ValueError,
            r"sparsity must be a fraction in \[0, 1\) \(got inf\)",
        ),
        (dict(sparsity=1.0), ValueError, "sparsity must be a fraction"),
        (dict(sparsity="0.5"), TypeError, "sparsity must be a float"),
        (dict(sparsity=torch.tensor(0.5)), TypeError, "sparsity must be a Python float"),
        (dict(sparsity=0.5, pattern="4y1"), ValueError, "pattern"),
        (
            dict(sparsity=0.6, pattern="2:4"),
            ValueError,
            r"cannot exceed sparsity N/M = 0.5 \(got 0.6\)",
        ),
        (dict(sparsity=0.99), ValueError, "sparsity exceeds max_layer_sparsity"),
        (
            dict(sparsity=0.5, min_layer_sparsity=0.6),
            ValueError,
            "min_layer_sparsity exceeds sparsity",
        ),
        (
            dict(sparsity=0.5, max_layer_sparsity=torch.tensor(0.9)),
            TypeError,
            "layer bounds must be Python floats",
        ),
        (
            dict(sparsity=0.5, criterion="snipp"),
            ValueError,
            "unknown criterion .* Did you mean 'snip'",
        ),
        (
            dict(sparsity=0.5, criterion=3),
            TypeError,
            "criterion must be a name, a Criterion or a function",
        ),
        (dict(sparsity=0.5, scope="layer"), ValueError, "unknown scope"),
        (dict(sparsity=0.5, reduce="median"), ValueError, "unknown reduce"),
        (dict(sparsity=0.5, decay="sqrt", end_step=4), ValueError, "unknown decay"),
        (
            dict(sparsity=0.5, schedule="oneshot", end_step=4),
            ValueError,
            "a oneshot schedule prunes once",
        ),
        (dict(sparsity=0.5, schedule="linear"), ValueError, "unknown scheduler"),
        (dict(sparsity=0.5, schedule=3), TypeError, "schedule must be a name or a callable"),
        (dict(sparsity=0.5, start_step=-1), ValueError, "start_step must be >= 0"),
        (dict(sparsity=0.5, start_step=4, end_step=2), ValueError, "end_step is before start_step"),
        (dict(sparsity=0.5, frequency=0), ValueError, "frequency must be >= 1"),
        (dict(sparsity=0.5, low_memory_usage=1), TypeError, "low_memory_usage must be a bool"),
    ],
)
def test_pruner_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        fprune.pruner(**kwargs)


def test_init_and_step_bad_inputs():
    prune = fprune.pruner(0.5, criterion="magnitude")
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        prune.init({"bias": torch.ones(8)})
    with pytest.raises(TypeError, match="must be a floating tensor"):
        prune.init({"w": torch.ones(8, 8, dtype=torch.int64)})
    with pytest.raises(ValueError, match="params is empty"):
        prune.init({})
    bad = fprune.pruner(
        0.5, pattern="1x1", criterion=lambda p, g: {n: t.sum(0) for n, t in p.items()}
    )
    params = {"w": torch.ones(4, 4)}
    with pytest.raises(ValueError, match="the criterion's score for 'w' has the wrong shape"):
        bad.step(bad.init(params), params)
    snip = fprune.pruner(0.5, pattern="1x1", criterion="snip")
    with pytest.raises(ValueError, match="step: this criterion needs gradients"):
        snip.step(snip.init(params), params)


def test_stateless_criteria_are_evaluated_on_prune_steps_only():
    calls = []

    def counted(params, grads):
        calls.append(sorted(params))
        return {n: p.abs() for n, p in params.items()}

    params = {"w": torch.randn(4, 4), "v": torch.randn(4, 8)}
    prune = fprune.pruner(
        0.5, pattern="1x1", criterion=counted, start_step=2, end_step=6, frequency=2
    )
    state = prune.init(params)
    for _ in range(9):
        state, _ = prune.step(state, params)
    assert (
        calls == [["v", "w"]] * 3
    )  # steps 2, 4 and 6, all layers at once (it may look across them)


@given(
    pattern=st.sampled_from(["1x1", "2x1", "1x2", "channelx1", "1xchannel", "1:2", "2:4"]),
    scope=st.sampled_from(["global", "local"]),
    decay=st.sampled_from(["exp", "cos", "linear", "cube"]),
    start=st.integers(0, 3),
    length=st.integers(0, 6),
    frequency=st.integers(1, 3),
    fraction=st.floats(0.0, 0.95),
    criterion=st.sampled_from(["magnitude", "snip_momentum"]),
    seed=st.integers(0, 2**16),
)
def test_pruner_properties(
    pattern, scope, decay, start, length, frequency, fraction, criterion, seed
):
    """Any window, decay and target: the target is the schedule's at every step, masks change on
    prune steps only and are nested, and the last prune step hits the exact count."""
    pat = fprune.parse_pattern(pattern)
    sparsity = fraction * (pat.max_sparsity if isinstance(pat, fprune.NM) else 1.0)
    g = torch.Generator().manual_seed(seed)
    params = {"a": torch.randn(4, 8, generator=g), "b": torch.randn(8, 4, 2, generator=g)}
    end = start + length
    prune = fprune.pruner(
        sparsity,
        pattern=pattern,
        criterion=criterion,
        scope=scope,
        decay=decay,
        start_step=start,
        end_step=end,
        frequency=frequency,
    )
    schedule = (
        fprune.oneshot(sparsity, start_step=start)
        if length == 0
        else fprune.iterative(
            sparsity, start_step=start, end_step=end, frequency=frequency, decay=decay
        )
    )
    state = prune.init(params)
    previous = state.masks
    for s in range(end + 3):
        grads = {n: torch.randn(p.shape, generator=g) for n, p in params.items()}
        state, masks = prune.step(state, params, grads)
        assert float(state.current_target) == float(schedule(torch.tensor(s)))
        assert all(bool((masks[n] <= previous[n]).all()) for n in params)
        if not fprune.is_prune_step(s, start_step=start, end_step=end, frequency=frequency):
            assert all(torch.equal(masks[n], previous[n]) for n in params)
        previous = masks
    units = {n: _units(masks[n], pattern) for n in params}
    assert float(state.current_target) == sparsity  # the last prune step is exactly on the target
    r = sparsity * pat.m / pat.n if isinstance(pat, fprune.NM) else sparsity
    if scope == "global":  # exact, unless the per-layer caps (default 0.98) cannot hold that many
        cap = sum(_count(0.98, u) for _, u in units.values())
        assert sum(p for p, _ in units.values()) == min(
            _count(r, sum(u for _, u in units.values())), cap
        )
    else:
        assert all(p == _count(r, u) for p, u in units.values())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("pattern", ["4x1", "2:4"])
def test_pruner_in_every_float_dtype(dtype, criterion, pattern):
    """Exact counts in every dtype; 16-bit accumulators are float32 (bfloat16 with
    low_memory_usage)."""
    torch.manual_seed(0)
    params = {"a": torch.randn(8, 16).to(dtype), "b": (torch.randn(16, 8) * 100).to(dtype)}
    for low_memory_usage in (False, True):
        prune = fprune.pruner(
            0.5, pattern=pattern, criterion=criterion, end_step=2, low_memory_usage=low_memory_usage
        )
        state = prune.init(params)
        for _ in range(3):
            grads = {n: torch.randn(p.shape).to(dtype) for n, p in params.items()}
            state, masks = prune.step(state, params, grads)
        units = [_units(masks[n], pattern) for n in params]
        fraction = 1.0 if pattern == "2:4" else 0.5
        assert sum(p for p, _ in units) == _count(fraction, sum(u for _, u in units))
        if criterion == "snip_momentum":
            wide = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
            assert all(
                a.dtype == (torch.bfloat16 if low_memory_usage else wide)
                for a in state.aux.values()
            )


def test_step_takes_parameters_that_require_grad_without_building_graphs():
    """Passing dict(model.named_parameters()) directly: no autograd graph reaches the state."""
    model = torch.nn.Linear(16, 8)
    prune = fprune.pruner(0.5, pattern="4x1", end_step=3)
    params = {"weight": model.weight}
    state = prune.init(params)
    for _ in range(4):
        model(torch.randn(2, 16)).sum().backward()
        state, masks = prune.step(state, params, {"weight": model.weight.grad})
        model.weight.grad = None
    leaves = [*state.masks.values(), *state.aux.values(), state.current_target]
    assert not any(t.requires_grad or t.grad_fn is not None for t in leaves)
    assert float(fprune.total_sparsity(masks, pattern="4x1")) == 0.5


def test_pruner_unpacks_as_init_step_pair():
    init, step = fprune.pruner(0.5, pattern="1x1", criterion="magnitude")
    params = {"w": torch.arange(1.0, 9.0).reshape(2, 4)}
    _, masks = step(init(params), params)
    assert int((~masks["w"]).sum()) == 4


def test_golden_inc_local_4x1_at_0_7():
    """INC's recorded local case: 4x1 at r = 0.7 leaves a 64x64 layer at
    floor(1024 * 0.7) / 1024."""
    params = {"w": torch.randn(64, 64, generator=torch.Generator().manual_seed(3))}
    prune = fprune.pruner(0.7, pattern="4x1", criterion="magnitude", scope="local")
    _, masks = prune.step(prune.init(params), params)
    assert float(fprune.layer_sparsity(masks)["w"]) == 0.69921875 == 716 / 1024


def test_the_step_functions_called_alone_equal_the_pruner():
    """``checked_settings`` gives the settings ``pruner`` binds: ``steps.init`` and
    ``steps.step`` called with them make the pruner's states and masks (fingerprint too)."""
    from fprune import steps
    from fprune.pruner import checked_settings

    kwargs = dict(pattern="4x1", criterion="snip_momentum", start_step=0, end_step=4, scope="local")
    prune, settings = fprune.pruner(0.5, **kwargs), checked_settings(0.5, **kwargs)
    gen = torch.Generator().manual_seed(0)
    params = {"a": torch.randn(8, 8, generator=gen), "b": torch.randn(16, 4, generator=gen)}
    ours, theirs = steps.init(settings, params), prune.init(params)
    for _ in range(5):
        grads = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
        ours, our_masks = steps.step(settings, ours, params, grads)
        theirs, their_masks = prune.step(theirs, params, grads)
        assert same_bits(our_masks, their_masks)
        assert same_bits(ours.state_dict(), theirs.state_dict())
    with pytest.raises(TypeError, match=r"checked_settings: unknown options \(got \['patern'\]\)"):
        checked_settings(0.5, patern="4x1")


def test_the_fingerprint_tells_apart_callables_of_one_name():
    """Two lambdas, or iterative(decay="exp") and iterative(decay="linear") (one closure with
    other cells), make different pruners: a state from one is refused by the other."""
    w = {"w": torch.randn(4, 4)}
    schedules = [
        fprune.iterative(0.5, start_step=0, end_step=4, frequency=1, decay=d)
        for d in ("exp", "linear")
    ]
    scorers = [lambda p, g: {n: t.abs() for n, t in p.items()},
               lambda p, g: {n: t * t for n, t in p.items()}]  # fmt: skip
    pairs = [
        [fprune.pruner(0.5, pattern="1x1", criterion="magnitude", schedule=s) for s in schedules],
        [fprune.pruner(0.5, pattern="1x1", criterion=c, end_step=4) for c in scorers],
    ]
    for first, second in pairs:
        state = first.init(w)
        first.step(state, w, w)  # its own state is fine
        with pytest.raises(ValueError, match="state was made by a pruner with different settings"):
            second.step(state, w, w)


def test_the_fingerprint_is_the_same_in_another_process():
    code = (
        "import fprune, torch\n"
        "s = fprune.iterative(0.5, start_step=0, end_step=4, frequency=1, decay='cos')\n"
        "p = fprune.pruner(0.5, pattern='4x1', criterion='snip_momentum', schedule=s)\n"
        "print(p.init({'w': torch.ones(8, 8)}).fingerprint.tolist())\n"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    s = fprune.iterative(0.5, start_step=0, end_step=4, frequency=1, decay="cos")
    p = fprune.pruner(0.5, pattern="4x1", criterion="snip_momentum", schedule=s)
    assert other.stdout.strip() == str(p.init({"w": torch.ones(8, 8)}).fingerprint.tolist())
