"""The 2-D view of a weight that patterns, N:M groups and flat indices refer to.

A Linear weight ``[out, in]`` is used as is. A conv weight ``[O, C, *k]`` becomes
``[O, prod(k) * C]`` with the input channel innermost: it is permuted to ``[O, *k, C]``
and flattened. So ``"channelx1"`` on a conv prunes one column of the view (one kernel tap
of one input channel across all filters), and an N:M group on a conv runs over M
consecutive input channels at a fixed kernel tap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fprune import _errors

__all__ = ["check_weights", "from_2d", "shape_2d", "to_2d"]


def _check_ndim(func: str, shape: Sequence[int]) -> None:
    if len(shape) < 2:
        raise _errors.value_error(
            func,
            "only weights with 2 or more dimensions have a 2-D view",
            tuple(shape),
            "Leave biases, norms and other 1-D parameters out of the dict to prune.",
        )


def check_weights(func: str, tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise unless every tensor has 2 or more dimensions (a weight with a 2-D view)."""
    for name, t in tensors.items():
        if t.ndim < 2:
            raise _errors.value_error(
                func,
                f"layer {name!r} has fewer than 2 dimensions",
                tuple(t.shape),
                "Only weights with a 2-D view (Linear, conv) can be pruned; leave biases "
                "and norms out of the dict.",
            )


def shape_2d(shape: Sequence[int]) -> tuple[int, int]:
    """The shape of the 2-D view of a weight of ``shape``.

    Example:
        >>> shape_2d((16, 8)), shape_2d((16, 3, 5, 5))
        ((16, 8), (16, 75))
    """
    _check_ndim("shape_2d", shape)
    cols = 1
    for side in shape[1:]:
        cols *= int(side)
    return (int(shape[0]), cols)


def to_2d(weight: torch.Tensor) -> torch.Tensor:
    """View ``weight`` as ``[out, inputs]`` with the input channel innermost.

    Args:
        weight: a tensor with 2 or more dimensions, ``[O, I]`` or ``[O, C, *k]``.

    Returns:
        ``weight`` itself for 2-D tensors; for conv weights, ``[O, prod(k) * C]`` (a copy).

    Example:
        >>> w = torch.arange(12).reshape(2, 3, 2)   # [O=2, C=3, k=2]
        >>> to_2d(w)[0].tolist()                    # tap 0 of channels 0..2, then tap 1
        [0, 2, 4, 1, 3, 5]
        >>> torch.equal(from_2d(to_2d(w), w.shape), w)
        True
    """
    _check_ndim("to_2d", weight.shape)
    if weight.ndim == 2:
        return weight
    order = (0, *range(2, weight.ndim), 1)
    return weight.permute(order).reshape(weight.shape[0], -1)


def from_2d(view: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Invert :func:`to_2d`: map a ``[O, prod(k) * C]`` view back to ``shape``.

    Args:
        view: ``[O, prod(k) * C]`` tensor, e.g. a mask computed on the 2-D view.
        shape: the weight's shape ``[O, C, *k]`` (or ``[O, I]``, returned as is).

    Returns:
        A tensor of ``shape``.

    Raises:
        ValueError: ``view`` is not shaped like the 2-D view of ``shape``.

    Example:
        >>> mask_2d = torch.tensor([[True, False, True, False]])   # [O=1, k=2 * C=2]
        >>> from_2d(mask_2d, (1, 2, 2))[0].tolist()                # channel 1 pruned at both taps
        [[True, True], [False, False]]
    """
    shape = tuple(int(s) for s in shape)
    _check_ndim("from_2d", shape)
    if view.shape != shape_2d(shape):
        raise _errors.value_error(
            "from_2d",
            "the view does not match the target shape",
            _errors.detail(f"view {tuple(view.shape)} for weight {shape}"),
            f"Pass a view of shape {shape_2d(shape)}.",
        )
    if len(shape) == 2:
        return view
    out, channels, kernel = shape[0], shape[1], shape[2:]
    inverse = (0, len(shape) - 1, *range(1, len(shape) - 1))
    return view.reshape(out, *kernel, channels).permute(inverse).contiguous()
