"""Dynamic sparse training (fprune.dynamic, fprune.regrow): exact counts at every step,
drop and grow sets, RigL against a sort reference, SET as a function of (seed, step),
compile, vmap over seeds, resume, config keys and the training-loop helper."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._dynamo.testing import CompileCounterWithBackend

import fprune
from fprune import regrow, training
from fprune.patterns import NM, parse_pattern
from fprune.random_keys import random_keys
from tests import strategies

FEW = settings(max_examples=25, deadline=None)


def unit_grid(mask: torch.Tensor, pattern: str) -> torch.Tensor:
    return fprune.reduce_masks({"m": mask}, pattern=pattern)["m"]


@st.composite
def runs(draw):
    """A dynamic pruner and the layers it prunes: patterns, growth, distribution, window."""
    nm = draw(st.booleans())
    if nm:
        pattern = draw(st.sampled_from(["2:4", "1:4", "3:4"]))
        sparsity, distribution = parse_pattern(pattern).max_sparsity, "uniform"
    else:
        pattern = draw(st.sampled_from(["1x1", "2x1", "1x2", "2x2"]))
        sparsity = draw(st.sampled_from([0.5, 0.8, 0.9, 0.95]))
        distribution = draw(st.sampled_from(["uniform", "erk"]))
    shapes = draw(st.lists(strategies.divisible_shape(2, 4, conv=True), min_size=1, max_size=3))
    prune = fprune.dynamic(
        sparsity,
        grow=draw(st.sampled_from(["gradient", "random"])),
        pattern=pattern,
        distribution=distribution,
        end_step=draw(st.integers(2, 6)),
        frequency=draw(st.integers(1, 2)),
        drop_fraction=draw(st.sampled_from([0.1, 0.3, 0.5, 1.0])),
        start=draw(st.sampled_from(["random", "magnitude"])),
        seed=draw(st.integers(0, 2**40)),
    )
    return prune, {f"l{i}.weight": s for i, s in enumerate(shapes)}, draw(st.integers(0, 2**31))


@FEW
@given(runs())
def test_every_step_keeps_each_layers_count_and_swaps_equal_sets(run):
    prune, shapes, seed = run
    s, pattern = prune.settings, prune.settings["pattern"]
    gen = torch.Generator().manual_seed(seed)
    params = {n: torch.randn(shape, generator=gen) for n, shape in shapes.items()}
    state = prune.init(params)
    want = {n: int((~unit_grid(m, pattern)).sum()) for n, m in state.masks.items()}
    if ":" not in pattern:
        assert want == fprune.layer_counts(shapes, s["sparsity"], pattern=pattern,
                                           distribution=s["distribution"])  # fmt: skip
    params = fprune.apply_masks(params, state.masks)
    for step in range(s["end_step"] + 2):
        grads = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
        given_params = {n: p.clone() for n, p in params.items()}
        old = state.masks
        state, masks = prune.step(state, params, grads)
        assert all(torch.equal(params[n], given_params[n]) for n in params)  # inputs untouched
        fraction = regrow.fraction_at(torch.tensor(step), start_step=0, end_step=s["end_step"],
                                      drop_fraction=s["drop_fraction"])  # fmt: skip
        for name, mask in masks.items():
            before, after = unit_grid(old[name], pattern), unit_grid(mask, pattern)
            assert int((~after).sum()) == want[name]  # exact at every step
            dropped, grown = before & ~after, ~before & after
            assert int(dropped.sum()) == int(grown.sum())
            units, pruned = after.numel(), want[name]
            room = pruned
            if ":" in pattern:
                nm = parse_pattern(pattern)
                room = units // nm.m * min(nm.n, nm.m - nm.n)
                groups = after.reshape(after.shape[0], -1, nm.m)
                assert bool(((~groups).sum(-1) == nm.n).all())  # every group stays N:M
            expected = 0
            if step % s["frequency"] == 0 and step <= s["end_step"]:
                expected = min(math.floor(float(fraction) * (units - pruned) + 1e-9), room)
            assert int(dropped.sum()) == expected
        new_params = fprune.apply_masks(params, masks)
        for name in masks:  # a grown weight was pruned, so it starts at zero
            assert bool((new_params[name][masks[name] & ~old[name]] == 0).all())
            stay = masks[name] & old[name]  # the step moves no weight it keeps
            assert torch.equal(new_params[name][stay], params[name][stay])
        # the optimizer moves kept weights only
        params = {
            n: p + torch.randn(p.shape, generator=gen) * masks[n] for n, p in new_params.items()
        }


@FEW
@given(st.data())
def test_swap_sets_are_disjoint_equal_and_from_the_right_sides(data):
    n = data.draw(st.integers(2, 40))
    kept = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    scores = lambda: torch.tensor(  # noqa: E731  (few values: many ties)
        data.draw(st.lists(st.sampled_from([0.0, 1.0, 2.0, float("nan")]), min_size=n, max_size=n))
    )
    count = data.draw(st.integers(0, int(min(kept.sum(), (~kept).sum()))))
    drop, grow = regrow.swap({"w": scores()}, {"w": scores()}, {"w": kept},
                             {"w": torch.tensor(count)}, units={"w": n},
                             pruned={"w": int((~kept).sum())})  # fmt: skip
    drop, grow = drop["w"], grow["w"]
    assert int(drop.sum()) == int(grow.sum()) == count
    assert not bool((drop & grow).any())
    assert bool((drop <= kept).all()) and bool((grow <= ~kept).all())


def sort_reference(values: list[float], allowed: list[bool], count: int) -> set[int]:
    """The ``count`` allowed indices with the lowest values, ties by index (Python sort)."""
    order = sorted((v, i) for i, v in enumerate(values) if allowed[i])
    return {i for _, i in order[:count]}


def block_means(t: torch.Tensor, pattern: str) -> list[float]:
    """Each block's mean of ``|t|`` in float64, row-major over the grid."""
    rows, cols = (int(x) for x in pattern.split("x"))
    r, c = t.shape
    blocks = t.double().abs().reshape(r // rows, rows, c // cols, cols)
    return blocks.mean(dim=(1, 3)).reshape(-1).tolist()


@FEW
@given(st.sampled_from(["1x1", "2x1", "1x2"]), st.data())
def test_rigl_drop_and_grow_equal_a_sort_reference(pattern, data):
    """Drop: the lowest mean |w| among kept units; grow: the largest mean |g| among units
    pruned before the update; ties by flat index (values from a small pool force them)."""
    shape = data.draw(strategies.divisible_shape(*(int(x) for x in pattern.split("x"))))
    w = data.draw(strategies.tensors(shape, specials=False, dtype=torch.float32))
    g = data.draw(strategies.tensors(shape, specials=False, dtype=torch.float32))
    w = torch.where(w.abs() > 4, w.sign() * 3.0, w).round()  # |w| in a pool of few values
    g = torch.where(g.abs() > 4, g.sign() * 2.0, g).round()
    prune = fprune.dynamic(0.5, pattern=pattern, end_step=10, frequency=1, drop_fraction=1.0,
                           seed=data.draw(st.integers(0, 99)))  # fmt: skip
    state = prune.init({"w": w})
    kept = unit_grid(state.masks["w"], pattern).reshape(-1).tolist()
    _, masks = prune.step(state, {"w": w}, {"w": g})
    after = unit_grid(masks["w"], pattern).reshape(-1).tolist()
    count = min(sum(kept), len(kept) - sum(kept))  # fraction 1.0 at step 0
    dropped = {i for i, (a, b) in enumerate(zip(kept, after, strict=True)) if a and not b}
    grown = {i for i, (a, b) in enumerate(zip(kept, after, strict=True)) if b and not a}
    assert dropped == sort_reference(block_means(w, pattern), kept, count)
    negated = [-v for v in block_means(g, pattern)]
    assert grown == sort_reference(negated, [not k for k in kept], count)


def nm_reference(w, g, kept, count, n, m):
    """RigL within N:M groups, by Python loops: a group's candidates are its lowest-|w| kept
    weights, as many as it has pruned; the ``count`` lowest candidates go (ties by flat index);
    each group grows its largest-|g| pruned weights, as many as it dropped."""
    w, g, kept = w.reshape(-1).tolist(), g.reshape(-1).tolist(), kept.reshape(-1).tolist()
    candidates = []
    for start in range(0, len(w), m):
        group = range(start, start + m)
        room = sum(not kept[i] for i in group)
        own = sorted((abs(w[i]), i) for i in group if kept[i])[:room]
        candidates += own
    dropped = {i for _, i in sorted(candidates)[:count]}
    grown = set()
    for start in range(0, len(w), m):
        group = range(start, start + m)
        lost = sum(i in dropped for i in group)
        best = sorted((-abs(g[i]), i) for i in group if not kept[i])[:lost]
        grown |= {i for _, i in best}
    return dropped, grown


@FEW
@given(st.sampled_from([(2, 4), (1, 4), (3, 4), (2, 8)]), st.data())
def test_nm_rigl_equals_a_group_reference(nm, data):
    n, m = nm
    shape = (data.draw(st.integers(1, 4)), m * data.draw(st.integers(1, 4)))
    w = data.draw(strategies.tensors(shape, specials=False, dtype=torch.float32)).round()
    g = data.draw(strategies.tensors(shape, specials=False, dtype=torch.float32)).round()
    prune = fprune.dynamic(n / m, pattern=f"{n}:{m}", end_step=4, frequency=1,
                           drop_fraction=data.draw(st.sampled_from([0.3, 1.0])))  # fmt: skip
    state = prune.init({"w": w})
    _, masks = prune.step(state, {"w": w}, {"w": g})
    kept, after = state.masks["w"], masks["w"]
    units = kept.numel()
    count = min(math.floor(prune.settings["drop_fraction"] * units * (m - n) / m + 1e-9),
                units // m * min(n, m - n))  # fmt: skip
    dropped, grown = nm_reference(w, g, kept, count, n, m)
    flat_before, flat_after = kept.reshape(-1), after.reshape(-1)
    assert {int(i) for i in torch.nonzero(flat_before & ~flat_after)} == dropped
    assert {int(i) for i in torch.nonzero(~flat_before & flat_after)} == grown


def test_set_is_a_function_of_seed_and_step():
    params = {"a": torch.randn(16, 16), "b": torch.randn(8, 32)}
    prune = fprune.dynamic(0.8, grow="random", end_step=8, frequency=1, seed=5)
    first, second = prune.init(params), prune.init(params)
    other = prune.init(params, seed=6)
    assert all(torch.equal(first.masks[n], second.masks[n]) for n in params)
    assert not all(torch.equal(first.masks[n], other.masks[n]) for n in params)
    for step in range(4):  # the same draws whatever the gradients (SET ignores them)
        first, m1 = prune.step(first, params)
        second, m2 = prune.step(second, params, {n: torch.randn_like(p) for n, p in params.items()})
        assert all(torch.equal(m1[n], m2[n]) for n in params), step
    a = random_keys(torch.tensor(5), torch.tensor(3), 7, 64)
    assert torch.equal(a, random_keys(torch.tensor(5), torch.tensor(3), 7, 64))
    assert not torch.equal(a, random_keys(torch.tensor(5), torch.tensor(4), 7, 64))
    assert len(set(a.tolist())) == 64 and int(a.min()) >= 0 and int(a.max()) < 2**32


def test_random_keys_are_roughly_uniform():
    keys = random_keys(torch.tensor(0), torch.tensor(0), 1, 1 << 16)
    counts = torch.bincount(keys >> 28, minlength=16).double()  # 16 bins of the top 4 bits
    chi2 = float(((counts - 4096) ** 2 / 4096).sum())
    assert chi2 < 50  # 15 degrees of freedom: p < 1e-5 above 45


def test_a_step_with_non_finite_gradients_changes_nothing_but_the_counter():
    params = {"w": torch.randn(8, 8)}
    prune = fprune.dynamic(0.75, end_step=4, frequency=1)
    state = prune.init(params)
    bad = {"w": torch.randn(8, 8)}
    bad["w"][0, 0] = float("nan")
    new, masks = prune.step(state, params, bad)
    assert torch.equal(masks["w"], state.masks["w"]) and int(new.step) == 1


@pytest.mark.parametrize(("grow", "pattern", "sparsity"), [("gradient", "1x1", 0.8),
                                                           ("random", "2:4", 0.5)])  # fmt: skip
def test_compiled_step_equals_eager_without_recompiling(grow, pattern, sparsity):
    gen = torch.Generator().manual_seed(0)
    params = {"a": torch.randn(16, 32, generator=gen), "b": torch.randn(8, 16, generator=gen)}
    grads = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
    prune = fprune.dynamic(sparsity, grow=grow, pattern=pattern, end_step=6, frequency=2)
    counter = CompileCounterWithBackend("eager")
    torch._dynamo.reset()
    compiled = torch.compile(prune.step, fullgraph=True, backend=counter)
    eager_state = compiled_state = prune.init(params)
    frames = []
    for _ in range(8):  # update and plain steps, the fraction decaying
        eager_state, want = prune.step(eager_state, params, grads)
        compiled_state, got = compiled(compiled_state, params, grads)
        assert all(torch.equal(got[n], want[n]) for n in want)
        frames.append(counter.frame_count)
    assert frames[0] == 1 and set(frames) == {1}


def test_vmap_over_seeds_equals_one_run_per_seed():
    params = {"a": torch.randn(16, 16), "b": torch.randn(8, 32)}
    grads = {n: torch.randn_like(p) for n, p in params.items()}
    for grow in ("random", "gradient"):
        prune = fprune.dynamic(0.8, grow=grow, end_step=6, frequency=2)
        seeds = torch.arange(3)
        states = torch.func.vmap(lambda s, p=prune: p.init(params, seed=s))(seeds)
        step = torch.func.vmap(lambda st, p=prune: p.step(st, params, grads))
        for _ in range(3):
            states, masks = step(states)
        for k in range(3):
            state = prune.init(params, seed=k)
            for _ in range(3):
                state, want = prune.step(state, params, grads)
            assert all(torch.equal(masks[n][k], want[n]) for n in params), (grow, k)


def test_resume_from_a_saved_state_is_bit_exact():
    gen = torch.Generator().manual_seed(1)
    params = {"a": torch.randn(16, 16, generator=gen), "b": torch.randn(8, 32, generator=gen)}
    grads = [{n: torch.randn(p.shape, generator=gen) for n, p in params.items()} for _ in range(8)]
    prune = fprune.dynamic(0.9, distribution="erk", end_step=6, frequency=1, seed=3)
    state = prune.init(params)
    for g in grads[:3]:
        state, _ = prune.step(state, params, g)
    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)
    buffer.seek(0)
    resumed = fprune.PruneState.from_state_dict(torch.load(buffer, weights_only=True))
    assert int(resumed.seed) == 3
    for g in grads[3:]:
        state, want = prune.step(state, params, g)
        resumed, got = prune.step(resumed, params, g)
        assert all(torch.equal(got[n], want[n]) for n in params)


def test_training_helper_zeroes_grown_weights_and_their_adam_moments():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    prune = fprune.dynamic(0.75, end_step=20, frequency=5, drop_fraction=0.5)
    state = training.init(model, prune)
    assert list(state.masks) == ["0.weight"]  # the output layer stays dense
    training.keep_pruned_(model, state.masks)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    weight, x, y = model[0].weight, torch.randn(32, 8), torch.randint(0, 4, (32,))
    grown_total = 0
    for _ in range(12):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        before = state.masks["0.weight"]
        state, masks = training.prune_step_(model, prune, state, optimizer=opt)
        grown = masks["0.weight"] & ~before
        grown_total += int(grown.sum())
        moments = opt.state.get(weight, {})
        assert bool((weight[grown] == 0).all())  # grown weights start at zero ...
        for key in ("exp_avg", "exp_avg_sq"):  # ... with fresh optimizer state
            if key in moments:
                assert bool((moments[key][grown] == 0).all())
        opt.step()
        training.keep_pruned_(model, masks)
        assert int((weight == 0).sum()) >= 96  # 75% of 128 weights stay zero
    assert grown_total > 0


def test_config_keys_build_rigl_and_set_and_round_trip():
    cfg = {"pruning_type": "rigl", "target_sparsity": 0.9, "pattern": "1x1", "end_step": 100,
           "pruning_frequency": 10, "sparsity_distribution": "erk", "drop_fraction": 0.5,
           "seed": 3}  # fmt: skip
    (rigl,) = fprune.from_config(cfg)
    assert rigl.settings["grow"] == "gradient" and rigl.settings["distribution"] == "erk"
    assert (rigl.settings["drop_fraction"], rigl.settings["seed"]) == (0.5, 3)
    (again,) = fprune.from_config(rigl.to_config())
    assert dict(again.settings) == dict(rigl.settings)
    (set_,) = fprune.from_config({**cfg, "pruning_type": "set"})
    assert set_.settings["grow"] == "random" and set_.settings["kind"] == "set"
    with pytest.raises(ValueError, match="only pruning_type 'rigl' or 'set' uses"):
        fprune.from_config({"pruning_type": "magnitude", "drop_fraction": 0.3})
    with pytest.raises(ValueError, match="dense, first_dense and start have no config keys"):
        fprune.dynamic(0.5, end_step=4, dense=("w",)).to_config()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(sparsity=0.5, end_step=0), ValueError, "needs end_step > start_step"),
        (dict(sparsity=0.6, pattern="2:4", end_step=4), ValueError, "sparsity must be N/M"),
        (dict(sparsity=0.5, pattern="2:4", distribution="erk", end_step=4), ValueError, "N/M"),
        (dict(sparsity=0.5, end_step=4, drop_fraction=0.0), ValueError, "drop_fraction"),
        (dict(sparsity=0.5, end_step=4, grow="best"), ValueError, "grow"),
        (dict(sparsity=0.5, end_step=4, distribution="er"), ValueError, "distribution"),
        (dict(sparsity=0.5, end_step=4, dense="fc.weight"), TypeError, "collection of names"),
        (dict(sparsity=0.5, end_step=4, seed=-1), TypeError, "seed"),
        (dict(sparsity=1.0, end_step=4), ValueError, "sparsity"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        fprune.dynamic(kwargs.pop("sparsity"), **kwargs)


def test_bad_calls_raise_clear_errors():
    params = {"w": torch.randn(8, 8)}
    rigl = fprune.dynamic(0.5, end_step=4)
    state = rigl.init(params)
    with pytest.raises(ValueError, match="needs gradients"):
        rigl.step(state, params)
    with pytest.raises(ValueError, match="fixes each layer's count"):
        rigl.init(params, sparsity=0.3)
    with pytest.raises(TypeError, match="seed must be"):
        rigl.init(params, seed=torch.tensor(1.0))
    basic = fprune.pruner(0.5, pattern="1x1", criterion="magnitude")
    with pytest.raises(ValueError, match="made by a pruner with different settings"):
        rigl.step(basic.init(params), params, params)
    with pytest.raises(ValueError, match="state has no seed"):
        rigl.step(dataclasses.replace(state, seed=None), params, params)
    with pytest.raises(ValueError, match="dense names layers that are not given"):
        fprune.dynamic(0.5, end_step=4, distribution="erk", dense=("x",)).init(params)


def test_dense_layers_stay_dense_and_erk_moves_their_share():
    params = {"first": torch.randn(32, 8), "mid": torch.randn(32, 32), "last": torch.randn(8, 32)}
    prune = fprune.dynamic(0.8, distribution="erk", first_dense=True, end_step=4)
    state = prune.init(params)
    assert bool(state.masks["first"].all())
    pruned = sum(int((~m).sum()) for m in state.masks.values())
    assert pruned == math.floor(0.8 * sum(p.numel() for p in params.values()))
    uniform = fprune.dynamic(0.8, dense=("last",), end_step=4).init(params)
    assert bool(uniform.masks["last"].all())
    assert int((~uniform.masks["mid"]).sum()) == math.floor(0.8 * 1024)


def test_nm_groups_keep_n_pruned_under_set():
    params = {"w": torch.randn(8, 16)}
    prune = fprune.dynamic(0.5, pattern="2:4", grow="random", end_step=5, frequency=1)
    state = prune.init(params)
    for _ in range(6):
        state, masks = prune.step(state, params)
        assert bool(((~masks["w"]).reshape(8, 4, 4).sum(-1) == 2).all())
    assert isinstance(parse_pattern(prune.settings["pattern"]), NM)


def test_window_warning_speaks_of_updates_for_dynamic_pruners():
    params = {"w": torch.randn(8, 8)}
    prune = fprune.dynamic(0.5, grow="random", end_step=10, frequency=2)
    state = prune.init(params)
    for _ in range(4):
        state, _ = prune.step(state, params)
    message = training.window_warning(prune, state)
    assert message is not None and "drop-and-grow updates did not finish" in message
    for _ in range(8):
        state, _ = prune.step(state, params)
    assert training.window_warning(prune, state) is None
