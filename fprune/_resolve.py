"""Names and objects -> the callables the pruner runs (criteria, patterns, schedulers).

Also registers the built-ins, so importing :mod:`fprune` fills the registries.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import types
from collections.abc import Callable, Iterable
from typing import Any

import torch

from fprune import _errors, registry
from fprune.patterns import Blocks, Pattern, parse_pattern
from fprune.regularizers import group_lasso
from fprune.schedules import Decay, ramp
from fprune.scores import Criterion, snip_momentum, stateless
from fprune.scores import criterion as builtin_criterion

__all__ = ["criterion", "describe", "is_factory", "pattern"]


def is_factory(obj: object) -> bool:
    """A callable whose parameters are all keyword-only (the factory protocols)."""
    try:
        params = inspect.signature(obj).parameters.values()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    kinds = {p.kind for p in params}
    return bool(kinds) and kinds <= {inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD}


def describe(obj: object, depth: int = 0) -> str:
    """A process-independent description of a setting, for the fingerprint.

    A function is described by its name, a digest of its code, its defaults and what its
    closure holds, so two lambdas, or ``iterative(decay="exp")`` and
    ``iterative(decay="linear")`` (one closure, other cells), differ.
    """
    if isinstance(obj, Criterion):
        return f"Criterion({describe(obj.init)},{describe(obj.update)},{obj.needs_grads})"
    if isinstance(obj, functools.partial):
        return f"partial({describe(obj.func, depth)},{_values(obj.args, depth)},{obj.keywords})"
    if inspect.isfunction(obj):
        return _function(obj, depth)
    if callable(obj) and not isinstance(obj, type):
        module = getattr(obj, "__module__", None) or type(obj).__module__
        name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
        return f"{module}.{name}"
    if isinstance(obj, torch.Tensor):
        return f"Tensor({obj.dtype},{tuple(obj.shape)})"
    if isinstance(obj, (tuple, list)):
        return _values(obj, depth)
    if isinstance(obj, dict):
        return _values(sorted(obj.items(), key=lambda item: repr(item)), depth)
    text = repr(obj)
    # a default repr holds an address, which differs between processes: the type instead
    return type(obj).__qualname__ if " at 0x" in text else text


def _code(code: types.CodeType) -> str:
    """A digest of a code object: its bytecode, names and constants (nested code included)."""
    consts = [_code(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts]
    text = f"{code.co_code.hex()}|{code.co_names}|{code.co_varnames}|{consts}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _values(values: Iterable[object], depth: int) -> str:
    return "(" + ",".join(describe(v, depth + 1) for v in values) + ")"


def _function(fn: types.FunctionType, depth: int) -> str:
    name = f"{fn.__module__}.{fn.__qualname__}"
    if depth > 4:  # deep closures: the name is enough
        return name
    cells = []
    for cell in fn.__closure__ or ():
        try:
            cells.append(cell.cell_contents)
        except ValueError:  # an empty cell
            cells.append(None)
    defaults = _values(fn.__defaults__ or (), depth)
    keywords = _values(sorted((fn.__kwdefaults__ or {}).items()), depth)
    return f"{name}[{_code(fn.__code__)}]{defaults}{keywords}{_values(cells, depth)}"


def criterion(
    spec: object, *, pattern: Pattern, reduce: str, dtype: torch.dtype | None
) -> Criterion:
    """Resolve a criterion name, :class:`Criterion`, factory or scoring function."""
    if isinstance(spec, str):
        spec = registry.get_criterion(spec)
    if isinstance(spec, Criterion):
        return spec
    if not callable(spec):
        raise _errors.type_error(
            "pruner",
            "criterion must be a name, a Criterion or a function",
            type(spec).__name__,
            "Pass e.g. 'snip_momentum', or f(params, grads) -> scores.",
        )
    if is_factory(spec):
        made = spec(pattern=pattern, reduce=reduce, dtype=dtype)
        if not isinstance(made, Criterion):
            raise _errors.type_error(
                "pruner",
                "a criterion factory must return a Criterion",
                type(made).__name__,
                "Return fprune.Criterion(init, update).",
            )
        return made
    needs = getattr(
        spec, "needs_grads", False
    )  # a plain function gets grads as given, None included
    return stateless(spec, bool(needs))  # type: ignore[arg-type]


def pattern(spec: object) -> Pattern:
    """Resolve a pattern string, registered name or pattern object."""
    if isinstance(spec, str):
        try:
            return parse_pattern(spec)
        except ValueError:
            if spec in registry.registered("pattern"):
                return registry.get_pattern(spec)
            raise
    return parse_pattern(spec)  # type: ignore[arg-type]


def _oneshot(
    step: torch.Tensor,
    *,
    initial: torch.Tensor,
    sparsity: torch.Tensor,
    start_step: int,
    end_step: int,
    frequency: int,
    decay: Decay,
) -> torch.Tensor:
    """Straight to the target at ``start_step``."""
    goal = torch.maximum(initial.to(torch.float64), sparsity.to(torch.float64))
    return torch.where(step >= start_step, goal, initial.to(torch.float64))


def _iterative(
    step: torch.Tensor,
    *,
    initial: torch.Tensor,
    sparsity: torch.Tensor,
    start_step: int,
    end_step: int,
    frequency: int,
    decay: Decay,
) -> torch.Tensor:
    """INC's iterative ramp (see :func:`fprune.iterative`)."""
    return ramp(
        step,
        start=start_step,
        end=end_step,
        frequency=frequency,
        curve=decay,
        initial=initial,
        target=sparsity,
    )


def _builtin_factory(name: str) -> Callable[..., Criterion]:
    """A registry factory for the stateless built-in ``name`` (pattern and dtype unused)."""

    def make(*, pattern: Pattern, reduce: str, dtype: torch.dtype | None) -> Criterion:
        return builtin_criterion(name)

    make.__qualname__ = f"{name}_factory"
    return make


def _snip_momentum_factory(
    *, pattern: Pattern, reduce: str, dtype: torch.dtype | None
) -> Criterion:
    # Accumulate on the block grid (INC does); N:M keeps elementwise scores.
    return snip_momentum(
        pattern=pattern if isinstance(pattern, Blocks) else None, reduce=reduce, dtype=dtype
    )


def _check_criterion(func: str, name: str, obj: Any) -> None:
    if not (isinstance(obj, Criterion) or callable(obj)):
        raise _errors.type_error(
            func,
            f"criterion {name!r} must be a Criterion, a scoring function or a factory",
            type(obj).__name__,
            "See fprune.registry for the protocol.",
        )


def _check_pattern(func: str, name: str, obj: Any) -> None:
    if not isinstance(obj, Pattern):
        raise _errors.type_error(
            func,
            f"pattern {name!r} must be a Blocks or NM value",
            type(obj).__name__,
            "Register e.g. fprune.NM(2, 4).",
        )
    try:
        parse_pattern(name)
    except ValueError:
        return
    raise _errors.value_error(
        func,
        "the name is already a pattern string",
        name,
        "Choose a name such as 'tensor_core'.",
    )


registry.set_check("criterion", _check_criterion)
registry.set_check("pattern", _check_pattern)
for _name in ("magnitude", "gradient", "snip"):
    registry.register_criterion(_name, _builtin_factory(_name))
registry.register_criterion("snip_momentum", _snip_momentum_factory)
registry.register_scheduler("oneshot", _oneshot)
registry.register_scheduler("iterative", _iterative)
registry.register_reg("group_lasso", group_lasso)
