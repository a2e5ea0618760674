"""Sparsity schedules: plain ``step -> sparsity`` callables, and which steps prune.

Prune steps are ``start_step <= s <= end_step`` with ``(s - start_step) % frequency == 0``.
A schedule returns the target in force at step ``s``: the value computed at the last prune
step at or before ``s`` (the initial sparsity before ``start_step``, the final target after
the window).

The iterative schedule follows INC 3.x: with ``T`` = (number of prune steps) - 1 and
``t`` the index of the prune step (0, 1, ..., T), ``x = t / T`` and, for initial sparsity
``i`` and target ``a``:

* ``exp``:    ``1 - (1 - i) * ((1 - a) / (1 - i)) ** x`` (density shrinks by a constant factor)
* ``cos``:    ``i + (a - i) * (1 - cos(x * pi / 2))``
* ``linear``: ``i + (a - i) * x``
* ``cube``:   ``i + (a - i) * x ** 3``

clamped into ``[i, a]``; the first prune step returns exactly ``i`` and the last exactly ``a``
(the formulas give them only up to rounding). A window with one prune step (``T = 0``) goes
straight to the target, as does :func:`oneshot`. Steps may be Python ints
or int64 0-d tensors (then the result is a float64 0-d tensor, with no Python branching on
its value, for ``torch.compile``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from fprune import _errors

__all__ = [
    "DECAYS",
    "Decay",
    "Schedule",
    "Step",
    "check_window",
    "decay_curve",
    "is_prune_step",
    "iterative",
    "oneshot",
    "prune_steps",
    "ramp",
]

Step = int | torch.Tensor
Schedule = Callable[[Step], float | torch.Tensor]
Decay = Callable[
    [float | torch.Tensor, float | torch.Tensor, float | torch.Tensor], float | torch.Tensor
]


def _cos(x: float | torch.Tensor) -> float | torch.Tensor:
    return torch.cos(x) if isinstance(x, torch.Tensor) else math.cos(x)


def _exp(x, i, a):  # type: ignore[no-untyped-def]
    return 1.0 - (1.0 - i) * ((1.0 - a) / (1.0 - i)) ** x


def _cosine(x, i, a):  # type: ignore[no-untyped-def]
    return i + (a - i) * (1.0 - _cos(x * (math.pi / 2)))


def _linear(x, i, a):  # type: ignore[no-untyped-def]
    return i + (a - i) * x


def _cube(x, i, a):  # type: ignore[no-untyped-def]
    return i + (a - i) * x**3


_DECAY_FNS: dict[str, Decay] = {"exp": _exp, "cos": _cosine, "linear": _linear, "cube": _cube}
DECAYS = tuple(_DECAY_FNS)


def check_window(
    func: str, start_step: object, end_step: object, frequency: object
) -> tuple[int, int, int]:
    """Validate a prune window: ``0 <= start_step <= end_step`` and ``frequency >= 1``, as ints."""
    start = _errors.positive_int(func, "start_step", start_step, minimum=0)
    end = _errors.positive_int(func, "end_step", end_step, minimum=0)
    freq = _errors.positive_int(func, "frequency", frequency, minimum=1)
    if end >= 2**62:  # steps are int64 tensors; the schedule does arithmetic on them
        raise _errors.value_error(
            func, "end_step must be below 2**62", end, "Pass a step count a run can reach."
        )
    if end < start:
        raise _errors.value_error(
            func,
            "end_step is before start_step",
            _errors.detail(f"start_step={start}, end_step={end}"),
            "Set end_step >= start_step (equal for one-shot pruning).",
        )
    return start, end, freq


def prune_steps(*, start_step: int, end_step: int, frequency: int = 1) -> range:
    """The steps that prune: ``range(start_step, end_step + 1, frequency)``.

    Example:
        >>> list(prune_steps(start_step=2, end_step=9, frequency=3))
        [2, 5, 8]
    """
    start, end, freq = check_window("prune_steps", start_step, end_step, frequency)
    return range(start, end + 1, freq)


def is_prune_step(
    step: Step, *, start_step: int, end_step: int, frequency: int = 1
) -> bool | torch.Tensor:
    """Whether ``step`` prunes: ``start <= step <= end`` and ``(step - start) % frequency == 0``.

    Example:
        >>> [is_prune_step(s, start_step=0, end_step=4, frequency=2) for s in range(6)]
        [True, False, True, False, True, False]
    """
    start, end, freq = check_window("is_prune_step", start_step, end_step, frequency)
    inside = (
        (step >= start) & (step <= end) if isinstance(step, torch.Tensor) else start <= step <= end
    )
    return inside & ((step - start) % freq == 0)


def oneshot(sparsity: float, *, start_step: int = 0) -> Schedule:
    """Zero before ``start_step``, then ``sparsity`` at once.

    Example:
        >>> s = oneshot(0.5, start_step=3)
        >>> [s(k) for k in range(2, 5)]
        [0.0, 0.5, 0.5]
    """
    target = _errors.fraction("oneshot", "sparsity", sparsity)
    if isinstance(target, torch.Tensor):
        raise _errors.type_error(
            "oneshot", "sparsity must be a Python float", target, "Pass e.g. 0.8."
        )
    start = _errors.positive_int("oneshot", "start_step", start_step, minimum=0)

    def schedule(step: Step) -> float | torch.Tensor:
        if isinstance(step, torch.Tensor):
            return (step >= start).to(torch.float64) * target
        return target if step >= start else 0.0

    return schedule


def iterative(
    sparsity: float,
    *,
    start_step: int,
    end_step: int,
    frequency: int = 1,
    decay: str | Decay = "exp",
    initial_sparsity: float = 0.0,
) -> Schedule:
    """INC's iterative schedule from ``initial_sparsity`` to ``sparsity`` (see module docs).

    Args:
        sparsity: final target, in [0, 1).
        start_step, end_step, frequency: the prune window (``end_step >= start_step``).
        decay: ``"exp"``, ``"cos"``, ``"linear"``, ``"cube"`` or a callable
            ``decay(x, initial, final) -> sparsity`` for ``x`` in [0, 1].
        initial_sparsity: the sparsity before the first prune step (INC's init ratio, for
            pruning that starts from existing zeros), ``<= sparsity``.

    Returns:
        ``schedule(step) -> sparsity``.

    Example:
        >>> s = iterative(0.8, start_step=0, end_step=8, frequency=2, decay="exp")
        >>> [round(s(k), 4) for k in range(0, 9, 2)]
        [0.0, 0.3313, 0.5528, 0.7009, 0.8]
    """
    func = "iterative"
    target = _errors.fraction(func, "sparsity", sparsity)
    initial = _errors.fraction(func, "initial_sparsity", initial_sparsity)
    if isinstance(target, torch.Tensor) or isinstance(initial, torch.Tensor):
        raise _errors.type_error(
            func, "sparsities must be Python floats", sparsity, "Pass e.g. 0.8."
        )
    if initial > target:
        raise _errors.value_error(
            func,
            "initial_sparsity exceeds sparsity",
            _errors.detail(f"{initial} > {target}"),
            "The schedule only increases sparsity; lower initial_sparsity.",
        )
    start, end, freq = check_window(func, start_step, end_step, frequency)
    curve = decay_curve(func, decay)
    last = (end - start) // freq  # T: the index of the last prune step

    def value(t: int) -> float:
        if t >= last:  # the last prune step (or the only one) is exactly on the target
            return target
        if t == 0:  # the first of several prune steps is exactly at the initial sparsity
            return initial
        point = float(curve(t / last, initial, target))
        if math.isnan(point):  # max() would silently keep the initial sparsity
            raise _errors.value_error(
                func, f"the decay returned NaN at prune step {t}", point, "Check the decay."
            )
        return min(target, max(initial, point))

    def schedule(step: Step) -> float | torch.Tensor:
        if isinstance(step, torch.Tensor):
            return ramp(
                step,
                start=start,
                end=end,
                frequency=freq,
                curve=curve,
                initial=torch.tensor(initial, dtype=torch.float64),
                target=target,
            )
        if step < start:
            return initial
        return value((step - start) // freq)

    return schedule


def decay_curve(func: str, decay: object) -> Decay:
    """The decay callable for a name in :data:`DECAYS`, or ``decay`` itself if callable."""
    if callable(decay):
        return decay  # type: ignore[return-value]
    return _DECAY_FNS[_errors.choice(func, "decay", decay, DECAYS)]


def ramp(
    step: torch.Tensor,
    *,
    start: int,
    end: int,
    frequency: int,
    curve: Decay,
    initial: torch.Tensor,
    target: float | torch.Tensor,
) -> torch.Tensor:
    """The iterative schedule as tensor math (float64 0-d), with the initial sparsity as data.

    No Python branch reads a tensor, so it runs under ``torch.compile`` and ``vmap``. An
    ``initial`` above ``target`` holds at ``initial`` (nothing is left to prune). ``target``
    may be a float64 0-d tensor (a final target that is data, e.g. swept by ``vmap``).
    """
    last = (end - start) // frequency
    initial = initial.to(torch.float64)
    goal = torch.maximum(
        initial, torch.as_tensor(target, dtype=torch.float64, device=initial.device)
    )
    t = torch.div(step - start, frequency, rounding_mode="floor").clamp(0, max(last, 0))
    value = torch.as_tensor(
        curve(t.to(torch.float64) / max(last, 1), initial, target), dtype=torch.float64
    )
    value = torch.maximum(torch.minimum(value, goal), initial)
    value = torch.where(t == 0, initial, value)
    value = torch.where(t >= last, goal, value)
    value = torch.where(initial >= target, initial, value)  # also guards exp's 0/0 at initial 1
    return torch.where(step < start, initial, value)
