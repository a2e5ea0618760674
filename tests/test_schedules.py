from __future__ import annotations

import itertools
import json
import math
import pathlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fprune.schedules import DECAYS, is_prune_step, iterative, oneshot, prune_steps
from tests import reference

RUNS = pathlib.Path(__file__).resolve().parent / "data" / "inc_runs"

windows = st.tuples(st.integers(0, 20), st.integers(0, 40), st.integers(1, 7)).map(
    lambda t: (t[0], t[0] + t[1], t[2])
)


def test_exp_golden_inc_values():
    s = iterative(0.8, start_step=0, end_step=8, frequency=2, decay="exp")
    values = [s(k) for k in range(0, 9, 2)]
    assert [round(v, 4) for v in values] == [0.0, 0.3313, 0.5528, 0.7009, 0.8]
    assert values[-1] == 0.8  # exactly, not 0.7999...


@pytest.mark.parametrize(
    ("decay", "expected"),
    [
        ("linear", [0.0, 0.2, 0.4, 0.6, 0.8]),
        ("cube", [0.0, 0.8 / 64, 0.8 / 8, 0.8 * 27 / 64, 0.8]),
        (
            "cos",
            [
                0.0,
                0.8 * (1 - math.cos(math.pi / 8)),
                0.8 * (1 - math.cos(math.pi / 4)),
                0.8 * (1 - math.cos(3 * math.pi / 8)),
                0.8,
            ],
        ),
    ],
)
def test_other_decays_golden(decay, expected):
    s = iterative(0.8, start_step=0, end_step=8, frequency=2, decay=decay)
    assert [s(k) for k in range(0, 9, 2)] == pytest.approx(expected, abs=1e-15)


@given(windows, st.floats(0, 0.99), st.floats(0, 1), st.sampled_from(DECAYS))
def test_iterative_is_monotone_piecewise_constant_and_exact_at_the_end(
    window, target, init_frac, decay
):
    start, end, freq = window
    initial = target * init_frac
    s = iterative(
        target,
        start_step=start,
        end_step=end,
        frequency=freq,
        decay=decay,
        initial_sparsity=initial,
    )
    steps = prune_steps(start_step=start, end_step=end, frequency=freq)
    values = [s(k) for k in range(end + freq + 3)]
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert all(0.0 <= v <= target for v in values)
    assert (
        s(steps[-1]) == target and values[-1] == target
    )  # exactly at the last prune step and after
    assert all(values[k] == initial for k in range(start))
    if len(steps) > 1:
        assert s(steps[0]) == initial  # INC's t = 0: the first prune step is at the initial ratio
    for k in range(start, end + 1):  # constant between prune steps
        if not is_prune_step(k, start_step=start, end_step=end, frequency=freq):
            assert values[k] == values[k - 1]


def test_single_prune_step_goes_straight_to_target():
    # end - start < frequency: INC's T = 0 -> T := 1 rule
    s = iterative(0.6, start_step=3, end_step=4, frequency=5)
    assert [s(k) for k in range(2, 6)] == [0.0, 0.6, 0.6, 0.6]
    s = iterative(0.6, start_step=3, end_step=3)
    assert s(3) == 0.6


def test_oneshot():
    s = oneshot(0.7, start_step=2)
    assert [s(k) for k in range(5)] == [0.0, 0.0, 0.7, 0.7, 0.7]


@given(windows, st.floats(0, 0.99), st.sampled_from(DECAYS))
def test_tensor_steps_equal_python_steps(window, target, decay):
    start, end, freq = window
    s = iterative(
        target,
        start_step=start,
        end_step=end,
        frequency=freq,
        decay=decay,
        initial_sparsity=target / 3,
    )
    for k in range(end + freq + 2):
        t = s(torch.tensor(k))
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.ndim == 0
        assert float(t) == pytest.approx(s(k), abs=1e-15)
        assert bool(
            is_prune_step(torch.tensor(k), start_step=start, end_step=end, frequency=freq)
        ) == (is_prune_step(k, start_step=start, end_step=end, frequency=freq))
    assert float(s(torch.tensor(end))) == s(end)
    o = oneshot(target, start_step=start)
    assert [float(o(torch.tensor(k))) for k in range(start + 2)] == [o(k) for k in range(start + 2)]


@given(windows)
def test_prune_steps_agree_with_is_prune_step(window):
    start, end, freq = window
    listed = list(prune_steps(start_step=start, end_step=end, frequency=freq))
    assert listed == [
        k
        for k in range(end + 5)
        if is_prune_step(k, start_step=start, end_step=end, frequency=freq)
    ]
    assert listed[0] == start and listed[-1] <= end < listed[-1] + freq


def test_custom_decay_callable():
    s = iterative(0.5, start_step=0, end_step=2, decay=lambda x, i, a: i + (a - i) * math.sqrt(x))
    assert [s(k) for k in range(3)] == [0.0, 0.5 * math.sqrt(0.5), 0.5]


@pytest.mark.parametrize(
    ("run", "blocks"),
    [
        ("mlp_4x1_mag_global_exp", 8192),
        ("mlp_4x1_snipm_global_cube", 8192),
        ("mlp_2in4_mag_global_linear", 8192),
    ],
)
def test_schedule_and_counts_reproduce_inc_traces(run, blocks):
    """INC's recorded per-step zero fractions follow from the schedule and the exact counts.

    The three MLP layers hold 8192 4x1 blocks, or 8192 groups of 4 for 2:4. The magnitude
    runs prune at the start of INC's step s; the snip_momentum run is replayed with its
    window shifted one step earlier (fprune folds the step's gradients in first).
    """
    info = json.loads((RUNS / f"{run}.json").read_text())
    cfg = info["config"]
    shift = 1 if cfg["pruning_type"] == "snip_momentum" else 0
    s = iterative(
        cfg["target"],
        start_step=cfg["start"] - shift,
        end_step=cfg["end"] - shift,
        frequency=cfg["freq"],
        decay=cfg["decay"],
    )
    weights = 4 * blocks
    trace = []
    for step in range(info["training"]["steps"]):
        r = s(step - shift)  # fprune prunes one step earlier than INC under gradient criteria
        if cfg["pattern"] == "2:4":
            zeros = 2 * reference.count(min(r * 2, 1.0), blocks)
        else:
            zeros = 4 * reference.count(r, blocks)
        trace.append(round(zeros / weights, 6))
    assert trace == info["trace_weight_zero_fraction_after_each_step"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(decay="sqrt"), ValueError, r"iterative: unknown decay \(got 'sqrt'\)\. Did you mean"),
        (dict(decay="expo"), ValueError, r"Did you mean 'exp'\?"),
        (
            dict(start_step=5, end_step=2),
            ValueError,
            r"iterative: end_step is before start_step \(got start_step=5, end_step=2\)",
        ),
        (dict(frequency=0), ValueError, r"iterative: frequency must be >= 1 \(got 0\)"),
        (dict(start_step=-1), ValueError, r"iterative: start_step must be >= 0 \(got -1\)"),
        (dict(start_step=1.5), TypeError, r"iterative: start_step must be an int \(got 1.5\)"),
        (
            dict(sparsity=1.0),
            ValueError,
            r"iterative: sparsity must be a fraction in \[0, 1\) \(got 1.0\)",
        ),
        (dict(sparsity=float("nan")), ValueError, r"iterative: sparsity must be a fraction"),
        (
            dict(initial_sparsity=0.9),
            ValueError,
            r"iterative: initial_sparsity exceeds sparsity \(got 0.9 > 0.5\)",
        ),
    ],
)
def test_iterative_bad_arguments(kwargs, error, message):
    args = dict(sparsity=0.5, start_step=0, end_step=10) | kwargs
    with pytest.raises(error, match=message):
        iterative(args.pop("sparsity"), **args)


def test_numpy_integers_and_floats_are_accepted():
    np = pytest.importorskip("numpy")
    a = iterative(
        np.float64(0.8), start_step=np.int64(0), end_step=np.int64(8), frequency=np.int32(2)
    )
    b = iterative(0.8, start_step=0, end_step=8, frequency=2)
    assert [a(k) for k in range(10)] == [b(k) for k in range(10)]


def test_oneshot_bad_arguments():
    with pytest.raises(
        ValueError, match=r"oneshot: sparsity must be a fraction in \[0, 1\) \(got -0.5\)"
    ):
        oneshot(-0.5)
    with pytest.raises(TypeError, match=r"oneshot: sparsity must be a Python float"):
        oneshot(torch.tensor(0.5))
