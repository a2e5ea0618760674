"""Group lasso on pattern blocks, as a pure transform applied after the optimizer step.

The default is the proximal step of the group-lasso penalty ``t * sum_b ||W_b||``:

    W_b <- W_b * max(0, 1 - t / ||W_b||)

with ``||.||`` the Frobenius norm of a block and ``t = learning rate * coefficient``. A
block whose norm is at most ``t`` becomes exactly zero; the others shrink towards zero.
With ``"1x1"`` blocks this is soft thresholding.

``mode="inc"`` reproduces INC's variant for compatibility: it scales each block by
``1 - t / (||G_b|| + 1e-12)`` with ``G`` the *gradient*, infinite factors set to zero. It is
not a proximal step: the factor goes negative (sign flips) and very large when gradients are
small, and training diverges quickly; use it only to reproduce INC runs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fprune import _errors
from fprune._dtypes import widen
from fprune.blocks import check_divisible, expand_blocks, reduce_blocks
from fprune.layout import from_2d, to_2d
from fprune.patterns import Blocks, Pattern, parse_pattern

__all__ = ["LASSO_MODES", "group_lasso"]

LASSO_MODES = ("proximal", "inc")


def _block_norms(view: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    return reduce_blocks(widen(view).square(), block, reduce="sum").sqrt()


def group_lasso(
    params: Mapping[str, torch.Tensor],
    *,
    pattern: str | Pattern,
    strength: float | torch.Tensor,
    grads: Mapping[str, torch.Tensor] | None = None,
    mode: str = "proximal",
) -> dict[str, torch.Tensor]:
    """Shrink every block of every weight towards zero (see module docs for the formula).

    Args:
        params: weights (2 or more dims) keyed by parameter name; returned anew, inputs
            untouched.
        pattern: an NxM or channel pattern (``"4x1"``, ``"channelx1"``, ...) that divides
            every weight; N:M has no blocks and is rejected.
        strength: ``t = learning rate * coefficient`` (>= 0), a float or 0-d tensor.
        grads: the gradients, needed only for ``mode="inc"``.
        mode: ``"proximal"`` (default) or ``"inc"`` (INC's gradient-normalised variant).

    Returns:
        New weights with the same keys, shapes and dtypes.

    Raises:
        ValueError: an N:M pattern, a negative strength, an indivisible weight, a missing
            ``grads`` in ``"inc"`` mode.

    Example:
        >>> w = {"w": torch.tensor([[3.0, 0.1], [4.0, 0.1]])}   # 2x1 blocks: norms 5, 0.14
        >>> group_lasso(w, pattern="2x1", strength=1.0)["w"]
        tensor([[2.4000, 0.0000],
                [3.2000, 0.0000]])
    """
    func = "group_lasso"
    pattern = parse_pattern(pattern)
    if not isinstance(pattern, Blocks):
        raise _errors.value_error(
            func,
            "group lasso needs a block pattern",
            str(pattern),
            "Use an NxM or channel pattern such as '4x1'; N:M groups have no blocks to shrink.",
        )
    mode = _errors.choice(func, "mode", mode, LASSO_MODES)
    _check_strength(func, strength)
    params = _errors.tensor_dict(func, "params", params)
    check_divisible(func, params, pattern, skip_indivisible=False)
    inc_grads = _inc_grads(func, params, grads) if mode == "inc" else {}
    out = {}
    for name, param in params.items():
        view = to_2d(param)
        block = pattern.block_shape(tuple(view.shape))
        if mode == "proximal":
            norms = _block_norms(view, block)
            safe = torch.where(norms > 0, norms, torch.ones_like(norms))
            factor = torch.where(
                norms > 0, (1 - strength / safe).clamp(min=0), torch.zeros_like(norms)
            )
        else:
            ratio = strength / (_block_norms(to_2d(inc_grads[name]), block) + 1e-12)
            factor = 1 - torch.where(torch.isinf(ratio), torch.zeros_like(ratio), ratio)
        scaled = view * expand_blocks(factor, block).to(view.dtype)
        out[name] = from_2d(scaled, param.shape)
    return out


def _check_strength(func: str, strength: object) -> None:
    if isinstance(strength, torch.Tensor):
        if strength.ndim != 0:
            raise _errors.type_error(
                func,
                "strength must be a number or 0-d tensor",
                tuple(strength.shape),
                "Pass lr * coeff.",
            )
    elif isinstance(strength, bool) or not isinstance(strength, int | float) or not strength >= 0:
        raise _errors.value_error(
            func, "strength must be a number >= 0", strength, "Pass lr * coeff, e.g. 1e-4."
        )


def _inc_grads(
    func: str, params: Mapping[str, torch.Tensor], grads: object
) -> Mapping[str, torch.Tensor]:
    """The gradients INC's mode scales by, checked against ``params``."""
    if grads is None:
        raise _errors.value_error(
            func,
            "mode='inc' scales by gradient norms and needs grads",
            None,
            "Pass grads, or use the default mode='proximal'.",
        )
    checked = _errors.tensor_dict(func, "grads", grads)
    _errors.same_shapes(func, "grads", checked, "params", params)
    return checked
