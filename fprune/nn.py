"""``nn.Module`` helpers: choose the weights to prune, apply masks in place, tidy optimizers.

The pure core of fprune works on ``dict[str, Tensor]``; these helpers connect it to a model
and a ``torch.optim`` optimizer:

* :func:`prunable` selects weights the way INC does (regex *search* on module names,
  exclusions, class-name substrings, automatic exclusion of the classifier head) and
  returns what it excluded, so nothing happens silently;
* :func:`apply_masks_` and :func:`mask_grads_` zero pruned weights or gradients in place;
* :func:`oneshot` prunes a pretrained model once from calibration data, block by block
  (Wanda, SparseGPT or magnitude; :mod:`fprune.blockwise`);
* :func:`masked_optimizer_state` zeroes the optimizer state (momentum, Adam moments) of
  pruned weights in an optimizer state dict, as a pure function.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from fprune import _errors
from fprune.blockwise import LayerReport, oneshot
from fprune.dense_rule import dense_name

__all__ = [
    "LayerReport",
    "Selection",
    "apply_masks_",
    "classifier_head",
    "mask_grads_",
    "masked_optimizer_state",
    "oneshot",
    "prunable",
]

_HEAD_TYPES = (nn.Linear, nn.Conv2d)


class Selection(NamedTuple):
    """What :func:`prunable` chose.

    Attributes:
        names: parameter names to prune (``"<module>.weight"``), in ``named_modules`` order.
        head: the classifier-head module excluded automatically, or None.
        dense: other weights left dense by default, by name (embeddings, poolers, heads:
            :mod:`fprune.dense_rule`).
    """

    names: tuple[str, ...]
    head: str | None
    dense: tuple[str, ...] = ()


def _patterns(func: str, arg: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise _errors.type_error(
            func, f"{arg} must be a list of strings", value, f"Pass e.g. {arg}=['fc1']."
        )
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise _errors.type_error(
                func, f"{arg} must hold strings", item, f"Pass e.g. {arg}=['fc1']."
            )
    if arg != "op_types":
        _errors.regexes(func, arg, items)
    return items


def classifier_head(model: nn.Module) -> str | None:
    """The module INC treats as the classifier head: the last registered module (Dropout
    skipped) if it is a ``Linear`` or ``Conv2d``; otherwise None.

    Example:
        >>> classifier_head(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
        '2'
    """
    last = None
    for name, module in model.named_modules():
        if name and not isinstance(module, nn.Dropout):
            last = (name, module)
    if last is not None and isinstance(last[1], _HEAD_TYPES):
        return last[0]
    return None


def prunable(
    model: nn.Module,
    *,
    op_names: Sequence[str] = (".*",),
    excluded_op_names: Sequence[str] = (),
    op_types: Sequence[str] = ("Conv", "Linear"),
    exclude_head: bool = True,
) -> Selection:
    """Select the weights to prune, as INC does.

    A module is chosen if its name matches one of ``op_names`` (``re.search``, so ``"fc"``
    matches ``"blocks.0.fc1"``), its class name contains one of ``op_types``, it has a
    tensor ``weight`` of 2 or more dimensions, and its name matches none of
    ``excluded_op_names``. With ``exclude_head`` fprune's default-dense rule applies
    (:mod:`fprune.dense_rule`): the classifier head (:func:`classifier_head`) and the layers
    named like embeddings, poolers or heads are left out too, and reported.

    Args:
        model: the model.
        op_names: regexes of module names to include (empty means all).
        excluded_op_names: regexes of module names to leave out.
        op_types: substrings of class names (INC default: ``"Conv"``, ``"Linear"``).
        exclude_head: leave out the last Linear/Conv2d (INC does this automatically) and the
            weights :func:`fprune.dense_rule.dense_name` names (embeddings, poolers, heads).

    Returns:
        A :class:`Selection` of parameter names and the excluded head.

    Example:
        >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> prunable(model)
        Selection(names=('0.weight',), head='2', dense=())
        >>> prunable(model, exclude_head=False).names
        ('0.weight', '2.weight')
    """
    func = "prunable"
    if not isinstance(model, nn.Module):
        raise _errors.type_error(
            func, "model must be an nn.Module", type(model).__name__, "Pass the model."
        )
    include = _patterns(func, "op_names", op_names) or (".*",)
    exclude = _patterns(func, "excluded_op_names", excluded_op_names)
    types = _patterns(func, "op_types", op_types)
    head = classifier_head(model) if exclude_head else None
    names, dense = [], []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not name or not isinstance(weight, torch.Tensor) or weight.ndim < 2:
            continue
        if not any(t in type(module).__name__ for t in types):
            continue
        if not any(re.search(p, name) for p in include) or any(re.search(p, name) for p in exclude):
            continue
        if name == head:
            continue
        if exclude_head and dense_name(name) is not None:
            dense.append(f"{name}.weight")
            continue
        names.append(f"{name}.weight")
    return Selection(tuple(names), head, tuple(dense))


def _targets(
    func: str, model: nn.Module | Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
):  # type: ignore[no-untyped-def]
    params = dict(model.named_parameters()) if isinstance(model, nn.Module) else dict(model)
    masks = _errors.bool_masks(func, "masks", masks)
    missing = sorted(set(masks) - set(params))
    if missing:
        raise _errors.value_error(
            func, "masks has names the model lacks", missing, "Mask only the model's parameters."
        )
    _errors.same_shapes(func, "masks", masks, "params", {n: params[n] for n in masks})
    return params, masks


def apply_masks_(
    model: nn.Module | Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> None:
    """Zero pruned weights in place, under ``no_grad`` (for ``nn.Module`` training loops).

    Example:
        >>> lin = nn.Linear(2, 1, bias=False)
        >>> apply_masks_(lin, {"weight": torch.tensor([[True, False]])})
        >>> float(lin.weight.detach()[0, 1])
        0.0
    """
    params, masks = _targets("apply_masks_", model, masks)
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].masked_fill_(~mask.to(params[name].device), 0)


def mask_grads_(
    model: nn.Module | Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> None:
    """Zero the gradients of pruned weights in place (parameters without ``.grad`` are skipped).

    Example:
        >>> lin = nn.Linear(2, 1, bias=False)
        >>> lin(torch.ones(1, 2)).sum().backward()
        >>> mask_grads_(lin, {"weight": torch.tensor([[True, False]])})
        >>> lin.weight.grad.tolist()
        [[1.0, 0.0]]
    """
    params, masks = _targets("mask_grads_", model, masks)
    with torch.no_grad():
        for name, mask in masks.items():
            grad = params[name].grad
            if grad is not None:
                grad.masked_fill_(~mask.to(grad.device), 0)


def masked_optimizer_state(
    state_dict: Mapping[str, Any], masks: Mapping[str, torch.Tensor], *, names: Sequence[str]
) -> dict[str, Any]:
    """An optimizer state dict with the state of pruned weights set to zero (pure).

    Every per-parameter state tensor shaped like its parameter (SGD's ``momentum_buffer``,
    Adam's ``exp_avg`` and ``exp_avg_sq``, ...) becomes ``where(mask, state, 0)``; scalars
    such as ``step`` and parameters without a mask are kept. The input is not modified.

    Args:
        state_dict: ``optimizer.state_dict()``.
        masks: bool masks keyed by parameter name.
        names: the parameter names in the order they were given to the optimizer, e.g.
            ``[n for n, _ in model.named_parameters()]`` for ``optim.SGD(model.parameters())``.

    Returns:
        A new state dict for ``optimizer.load_state_dict``.

    Example:
        >>> lin = nn.Linear(2, 1, bias=False)
        >>> opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
        >>> lin(torch.ones(1, 2)).sum().backward(); opt.step()
        >>> keep = {"weight": torch.tensor([[True, False]])}
        >>> sd = masked_optimizer_state(opt.state_dict(), keep, names=["weight"])
        >>> sd["state"][0]["momentum_buffer"].tolist()
        [[1.0, 0.0]]
    """
    func = "masked_optimizer_state"
    if (
        not isinstance(state_dict, Mapping)
        or "state" not in state_dict
        or "param_groups" not in state_dict
    ):
        raise _errors.type_error(
            func,
            "state_dict must be an optimizer state dict",
            type(state_dict).__name__,
            "Pass optimizer.state_dict().",
        )
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise _errors.type_error(
            func,
            "names must be a list of parameter names",
            names,
            "Pass the names in optimizer order.",
        )
    masks = _errors.bool_masks(func, "masks", masks)
    ids = [i for group in state_dict["param_groups"] for i in group["params"]]
    if len(ids) != len(names):
        raise _errors.value_error(
            func,
            "names must list every parameter the optimizer holds",
            _errors.detail(f"{len(names)} names for {len(ids)} parameters"),
            "Pass every parameter's name in the order the optimizer holds them, e.g. "
            "[n for n, _ in model.named_parameters()], or call "
            "fprune.training.mask_optimizer_state_(optimizer, model, masks), which matches "
            "parameters by identity.",
        )
    unknown = sorted(set(masks) - set(names))
    if unknown:
        raise _errors.value_error(
            func, "masks has names not in names", unknown, "Mask only optimizer parameters."
        )
    by_id = dict(zip(ids, names, strict=True))
    state = {}
    for pid, entry in state_dict["state"].items():
        mask = masks.get(by_id.get(pid, ""))
        if mask is None:
            state[pid] = entry
            continue
        state[pid] = {
            k: torch.where(mask.to(v.device), v, torch.zeros((), dtype=v.dtype, device=v.device))
            if isinstance(v, torch.Tensor) and v.shape == mask.shape
            else v
            for k, v in entry.items()
        }
    return {**state_dict, "state": state}
