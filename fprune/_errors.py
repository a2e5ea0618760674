"""Error construction and boundary checks shared by every module.

Messages follow one form: ``"<function>: <problem> (got <value>). <how to fix>."``
Checks run on static properties only (types, key sets, shapes, Python numbers), so
they never read tensor values and never synchronise with a device.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from fprune._trace import tracing

__all__ = [
    "bool_masks",
    "choice",
    "detail",
    "fraction",
    "masks_for",
    "positive_int",
    "previous_masks",
    "regexes",
    "same_keys",
    "same_shapes",
    "tensor_dict",
    "type_error",
    "value_error",
]


class detail(str):  # used like a function: detail("shape (4, 3)")
    """A description of the bad input, shown as is; any other ``got`` value is shown with repr."""

    __slots__ = ()


def _short(value: Any, limit: int = 120) -> str:
    text = str(value) if isinstance(value, detail) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def value_error(func: str, problem: str, got: Any, fix: str) -> ValueError:
    return ValueError(f"{func}: {problem} (got {_short(got)}). {fix}")


def type_error(func: str, problem: str, got: Any, fix: str) -> TypeError:
    return TypeError(f"{func}: {problem} (got {_short(got)}). {fix}")


def choice(func: str, arg: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise raise, naming the closest."""
    options = tuple(choices)
    if not isinstance(value, str):
        raise type_error(func, f"{arg} must be a string", value, f"Use one of {options}.")
    if value in options:
        return value
    close = difflib.get_close_matches(value, options, n=1, cutoff=0.0)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    raise value_error(func, f"unknown {arg}", value, f"{hint}Valid names: {', '.join(options)}.")


def fraction(func: str, arg: str, value: Any, *, allow_one: bool = False) -> float | torch.Tensor:
    """Check a sparsity-like number: in [0, 1) (or [0, 1]); 0-d tensors pass unchecked.

    A 0-d floating tensor is data (it may change between calls without recompiling), so
    its value is not read here; the selection functions clamp it into range instead.
    """
    if isinstance(value, torch.Tensor):
        if value.ndim != 0 or not value.is_floating_point():
            raise type_error(
                func,
                f"{arg} as a tensor must be a 0-d floating tensor",
                detail(f"{value.dtype} tensor of shape {tuple(value.shape)}"),
                "Pass a Python float or torch.tensor(x, dtype=torch.float64).",
            )
        if not tracing(value) and value.device.type != "meta":  # eager: NaN, inf refused
            fraction(func, arg, float(value), allow_one=allow_one)
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise type_error(func, f"{arg} must be a float", value, "Pass a number such as 0.8.")
    value = float(value)
    upper = "1]" if allow_one else "1)"
    # counts are floor(s * n + 1e-9): within 1e-9 of 1 prunes every unit, like 1.0 itself
    inside = 0.0 <= value <= 1.0 if allow_one else 0.0 <= value < 1.0 - 1e-9
    if not math.isfinite(value) or not inside:
        raise value_error(
            func,
            f"{arg} must be a fraction in [0, {upper}",
            value,
            f"Sparsity is the fraction of zeros; pass a value in [0, {upper}.",
        )
    return value


def regexes(func: str, arg: str, items: Iterable[str]) -> None:
    """Raise for the first item that does not compile as a regular expression."""
    for item in items:
        try:
            re.compile(item)
        except re.error as err:
            raise value_error(
                func, f"{arg} has an invalid regex ({err})", item, "Fix the pattern."
            ) from None


def positive_int(func: str, arg: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise type_error(func, f"{arg} must be an int", value, f"Pass an integer >= {minimum}.")
    value = int(value)
    if value < minimum:
        raise value_error(
            func, f"{arg} must be >= {minimum}", value, f"Pass an integer >= {minimum}."
        )
    return value


def tensor_dict(
    func: str, arg: str, value: Any, *, floating: bool = True
) -> Mapping[str, torch.Tensor]:
    """Check a non-empty ``Mapping[str, Tensor]``; with ``floating``, reject int and bool."""
    if not isinstance(value, Mapping):
        raise type_error(
            func,
            f"{arg} must be a mapping of parameter names to tensors",
            type(value).__name__,
            "Pass a dict such as dict(model.named_parameters()).",
        )
    if len(value) == 0:
        raise value_error(
            func,
            f"{arg} is empty",
            {},
            "Pass at least one tensor to prune.",
        )
    for name, tensor in value.items():
        if not isinstance(name, str) or not name:
            raise type_error(
                func,
                f"{arg} keys must be non-empty strings",
                name,
                "Key tensors by parameter name (an empty name cannot be saved in a state dict).",
            )
        if tensor is None and arg == "grads":  # p.grad before any backward
            raise type_error(
                func,
                f"grads[{name!r}] is None",
                None,
                "Call loss.backward() before step, or leave layers without gradients out of "
                "params and grads.",
            )
        if not isinstance(tensor, torch.Tensor):
            raise type_error(
                func,
                f"{arg}[{name!r}] must be a torch.Tensor",
                type(tensor).__name__,
                "Pass tensors, e.g. dict(model.named_parameters()).",
            )
        if floating and not tensor.is_floating_point():
            raise type_error(
                func,
                f"{arg}[{name!r}] must be a floating tensor",
                detail(str(tensor.dtype)),
                "Only float16, bfloat16, float32 and float64 tensors can be scored; "
                "leave integer and bool tensors out of the dict.",
            )
    return value


def same_keys(
    func: str, arg: str, value: Mapping[str, Any], ref_arg: str, ref: Mapping[str, Any]
) -> None:
    missing = sorted(set(ref) - set(value))
    unexpected = sorted(set(value) - set(ref))
    if missing or unexpected:
        raise value_error(
            func,
            f"{arg} and {ref_arg} have different keys",
            detail(f"missing {missing}, unexpected {unexpected}"),
            f"Give {arg} exactly the keys of {ref_arg}.",
        )


def same_shapes(
    func: str,
    arg: str,
    value: Mapping[str, torch.Tensor],
    ref_arg: str,
    ref: Mapping[str, torch.Tensor],
) -> None:
    same_keys(func, arg, value, ref_arg, ref)
    for name, tensor in value.items():
        if tensor.shape != ref[name].shape:
            raise value_error(
                func,
                f"{arg}[{name!r}] has a different shape from {ref_arg}[{name!r}]",
                detail(f"{tuple(tensor.shape)} vs {tuple(ref[name].shape)}"),
                f"Give {arg} tensors shaped like {ref_arg}.",
            )


def previous_masks(
    func: str, previous: Any, ref_arg: str, ref: Mapping[str, torch.Tensor]
) -> Mapping[str, torch.Tensor] | None:
    """Check optional earlier masks: None, or bool masks with the keys and shapes of ``ref``."""
    if previous is None:
        return None
    previous = bool_masks(func, "previous", previous)
    same_shapes(func, "previous", previous, ref_arg, ref)
    return previous


def bool_masks(func: str, arg: str, value: Any) -> Mapping[str, torch.Tensor]:
    masks = tensor_dict(func, arg, value, floating=False)
    for name, mask in masks.items():
        if mask.dtype != torch.bool:
            raise type_error(
                func,
                f"{arg}[{name!r}] must be a torch.bool mask",
                detail(str(mask.dtype)),
                "Masks are bool tensors with True = kept; convert with mask != 0.",
            )
    return masks


def masks_for(
    func: str, masks: Any, params: Mapping[str, torch.Tensor]
) -> Mapping[str, torch.Tensor]:
    """Check bool ``masks`` for some of the tensors of ``params``, each of its tensor's shape."""
    masks = bool_masks(func, "masks", masks)
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise value_error(
            func,
            "masks names tensors that params does not hold",
            unknown[:5],
            "Pass masks only for tensors in params.",
        )
    for name, mask in masks.items():
        if mask.shape != params[name].shape:
            raise value_error(
                func,
                f"the mask of {name!r} does not match its tensor's shape",
                detail(f"mask {tuple(mask.shape)}, tensor {tuple(params[name].shape)}"),
                "Pass one bool mask of the tensor's shape per name.",
            )
    return masks
