"""Named registries: the one deliberate piece of global state.

Five registries map names to the same plain objects a user can pass directly, so a name in
a config dict and the object itself are interchangeable. Each has a protocol:

* **criterion**: a :class:`~fprune.scores.Criterion`; or a scoring function
  ``f(params, grads) -> scores``; or a factory whose parameters are all keyword-only,
  ``make(*, pattern, reduce, dtype) -> Criterion`` (how ``snip_momentum`` learns where to
  accumulate). Built in: ``magnitude``, ``gradient``, ``snip``, ``snip_momentum``.
* **pattern**: a :class:`~fprune.patterns.Blocks` or :class:`~fprune.patterns.NM` value,
  under a name that is not itself a pattern string. Pattern strings (``"4x1"``, ``"2:4"``)
  need no registration.
* **scheduler**: ``f(step, *, initial, sparsity, start_step, end_step, frequency, decay)
  -> sparsity``, with ``step`` an int64 0-d tensor, ``initial`` and ``sparsity`` (the
  state's final target) float64 0-d tensors and ``decay`` a callable
  ``decay(x, initial, final)``; it must not branch in Python on tensor values. Built in:
  ``oneshot``, ``iterative``.
* **reg**: ``f(params, *, pattern, strength, grads=None) -> params``, a pure transform
  applied after the optimizer step. Built in: ``group_lasso``.
* **pruner**: a factory ``f(sparsity, **settings) -> Pruner`` taking the keyword arguments
  of :func:`fprune.pruner`. Built in: ``basic`` (:func:`fprune.pruner`) and
  ``pattern_lock`` (:func:`fprune.pattern_lock`).

``register_<kind>(name, obj)`` adds an entry; registering a taken name raises unless
``override=True``. ``get_<kind>(name)`` returns it, or raises a ``ValueError`` naming the
closest registered name. Tests that register must restore the registry (see
:func:`snapshot`).
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator
from typing import Any

from fprune import _errors

__all__ = [
    "KINDS",
    "get_criterion",
    "get_pattern",
    "get_pruner",
    "get_reg",
    "get_scheduler",
    "register_criterion",
    "register_pattern",
    "register_pruner",
    "register_reg",
    "register_scheduler",
    "registered",
    "set_check",
    "snapshot",
]

KINDS = ("criterion", "pattern", "scheduler", "reg", "pruner")
_TABLES: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
_CHECKS: dict[str, Callable[[str, str, Any], None]] = {}


def _register(kind: str, name: object, obj: object, override: bool) -> None:
    func = f"register_{kind}"
    if not isinstance(name, str) or not name:
        raise _errors.type_error(
            func, "name must be a non-empty string", name, "Pass e.g. 'my_criterion'."
        )
    if not isinstance(override, bool):
        raise _errors.type_error(
            func, "override must be a bool", override, "Pass override=True to replace."
        )
    check = _CHECKS.get(kind)
    if check is not None:
        check(func, name, obj)
    table = _TABLES[kind]
    if name in table and not override:
        raise _errors.value_error(
            func,
            f"the {kind} name is already registered",
            name,
            "Choose another name, or pass override=True to replace the entry.",
        )
    table[name] = obj


def _get(kind: str, name: object) -> Any:
    func = f"get_{kind}"
    table = _TABLES[kind]
    if not isinstance(name, str):
        raise _errors.type_error(
            func, "name must be a string", name, f"Use one of {sorted(table)}."
        )
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, list(table), n=1, cutoff=0.0)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    raise _errors.value_error(
        func,
        f"unknown {kind}",
        name,
        f"{hint}Registered: {', '.join(sorted(table))}; add one with register_{kind}.",
    )


def registered(kind: str) -> tuple[str, ...]:
    """The names registered for ``kind`` (one of :data:`KINDS`), sorted.

    Example:
        >>> registered("scheduler")
        ('iterative', 'oneshot')
    """
    return tuple(sorted(_TABLES[_errors.choice("registered", "kind", kind, KINDS)]))


@contextlib.contextmanager
def snapshot() -> Iterator[None]:
    """Restore every registry to its current contents on exit (for tests and notebooks).

    Example:
        >>> with snapshot():
        ...     register_reg("noop", lambda params, **kw: dict(params))
        >>> "noop" in registered("reg")
        False
    """
    saved = {kind: dict(table) for kind, table in _TABLES.items()}
    try:
        yield
    finally:
        for kind, table in _TABLES.items():
            table.clear()
            table.update(saved[kind])


def register_criterion(name: str, criterion: Any, *, override: bool = False) -> None:
    """Register a criterion (see the module docs for the three accepted forms).

    Example:
        >>> import torch
        >>> with snapshot():
        ...     register_criterion("square", lambda ps, gs: {n: p * p for n, p in ps.items()})
        ...     get_criterion("square")({"w": torch.tensor([-3.])}, None)
        {'w': tensor([9.])}
    """
    _register("criterion", name, criterion, override)


def get_criterion(name: str) -> Any:
    """The object registered as criterion ``name``.

    Example:
        >>> get_criterion("snip_mometum")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: get_criterion: unknown criterion (got 'snip_mometum'). Did you mean ...
    """
    return _get("criterion", name)


def register_pattern(name: str, pattern: Any, *, override: bool = False) -> None:
    """Register a pattern value under a name that is not a pattern string.

    Example:
        >>> from fprune.patterns import NM
        >>> with snapshot():
        ...     register_pattern("tensor_core", NM(2, 4))
        ...     str(get_pattern("tensor_core"))
        '2:4'
    """
    _register("pattern", name, pattern, override)


def get_pattern(name: str) -> Any:
    """The pattern registered as ``name`` (pattern strings are parsed, not looked up).

    Example:
        >>> registered("pattern")
        ()
    """
    return _get("pattern", name)


def register_scheduler(name: str, scheduler: Any, *, override: bool = False) -> None:
    """Register a scheduler function (protocol in the module docs).

    Example:
        >>> import torch
        >>> def halfway(step, *, initial, sparsity, start_step, end_step, frequency, decay):
        ...     return torch.where(step >= (start_step + end_step) // 2, sparsity, initial)
        >>> with snapshot():
        ...     register_scheduler("halfway", halfway)
        ...     at = get_scheduler("halfway")
        ...     float(at(torch.tensor(6), initial=torch.tensor(0.), sparsity=0.5, start_step=0,
        ...              end_step=10, frequency=1, decay=None))
        0.5
    """
    _register("scheduler", name, scheduler, override)


def get_scheduler(name: str) -> Any:
    """The scheduler registered as ``name``.

    Example:
        >>> get_scheduler("iterative").__name__
        '_iterative'
    """
    return _get("scheduler", name)


def register_reg(name: str, reg: Any, *, override: bool = False) -> None:
    """Register a regularizer transform ``f(params, *, pattern, strength, grads=None)``.

    Example:
        >>> with snapshot():
        ...     register_reg("decay", lambda params, *, pattern, strength, grads=None:
        ...                  {n: p * (1 - strength) for n, p in params.items()})
        ...     "decay" in registered("reg")
        True
    """
    _register("reg", name, reg, override)


def get_reg(name: str) -> Any:
    """The regularizer registered as ``name``.

    Example:
        >>> get_reg("group_lasso").__name__
        'group_lasso'
    """
    return _get("reg", name)


def register_pruner(name: str, factory: Any, *, override: bool = False) -> None:
    """Register a pruner factory ``f(sparsity, **settings) -> Pruner``.

    Example:
        >>> import fprune
        >>> def local_magnitude(sparsity, **settings):
        ...     settings = {**settings, "criterion": "magnitude", "scope": "local"}
        ...     return fprune.pruner(sparsity, **settings)
        >>> with snapshot():
        ...     register_pruner("local_magnitude", local_magnitude)
        ...     get_pruner("local_magnitude")(0.5, pattern="1x1").settings["scope"]
        'local'
    """
    _register("pruner", name, factory, override)


def get_pruner(name: str) -> Any:
    """The pruner factory registered as ``name``.

    Example:
        >>> registered("pruner")
        ('basic', 'pattern_lock', 'rigl', 'set')
    """
    return _get("pruner", name)


def set_check(kind: str, check: Callable[[str, str, Any], None]) -> None:
    """Install the validator run on every ``register_<kind>`` call (used by the modules that
    define each protocol)."""
    _CHECKS[kind] = check


def _callable_check(func: str, name: str, obj: Any) -> None:
    if not callable(obj):
        raise _errors.type_error(
            func,
            f"the object registered as {name!r} must be callable",
            type(obj).__name__,
            "Register a function that follows the protocol in fprune.registry's docs.",
        )


for _kind in ("scheduler", "reg", "pruner"):
    set_check(_kind, _callable_check)
