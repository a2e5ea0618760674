"""Checks and helpers shared by the pruners' ``init`` and ``step`` (private)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from fprune import _errors
from fprune._trace import tracing
from fprune.state import PruneState, hash64, layout_text

__all__ = [
    "all_finite",
    "check_accumulators",
    "check_fingerprint",
    "check_params",
    "check_state",
    "detached",
    "fingerprint",
    "scalar",
]

_Tensors = Mapping[str, torch.Tensor]


def detached(tensors: _Tensors) -> dict[str, torch.Tensor]:
    """Views that autograd does not track: scores and masks carry no graph from step to step
    (passing ``dict(model.named_parameters())`` directly would otherwise chain one graph per
    step through the accumulators)."""
    return {n: t.detach() for n, t in tensors.items()}


def check_params(func: str, params: object, state: PruneState) -> _Tensors:
    params = _errors.tensor_dict(func, "params", params)
    missing = sorted(set(params) - set(state.masks))
    if missing and set(state.masks) <= set(params):  # the state lacks layers params has
        raise _errors.value_error(
            func,
            "state.masks lacks layers that params has",
            missing,
            "Use the state from init with these params (or call init again).",
        )
    _errors.same_shapes(
        func, "params", params, "the params given to init (state.masks)", state.masks
    )
    return params


def check_state(func: str, state: object) -> PruneState:
    if not isinstance(state, PruneState):
        raise _errors.type_error(
            func,
            "state must be a PruneState",
            type(state).__name__,
            "Pass the state returned by init or by the previous step.",
        )
    _state_fields(func, state)
    return state


def _state_fields(func: str, state: PruneState) -> None:
    """The dtypes and shapes ``init`` gives (static, so checked under tracing too)."""
    fp = state.fingerprint
    if not isinstance(fp, torch.Tensor) or fp.dtype != torch.int64 or fp.shape[-1:] != (2,):
        raise _errors.value_error(
            func,
            "state.fingerprint must be an int64 tensor of shape [2]",
            _errors.detail(repr(fp) if not isinstance(fp, torch.Tensor) else f"shape {fp.shape}"),
            "Pass the state returned by init or by the previous step.",
        )
    for name, mask in state.masks.items():
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise _errors.type_error(
                func,
                f"state.masks[{name!r}] must be a bool mask",
                _errors.detail(str(getattr(mask, "dtype", type(mask).__name__))),
                "Pass the state returned by init or by the previous step.",
            )


def fingerprint(config_hash: int, params: _Tensors) -> torch.Tensor:
    """The state's int64 ``[2]`` fingerprint: the settings' hash and the params' layout hash."""
    return torch.tensor([config_hash, hash64(layout_text(params))], dtype=torch.int64)


def check_fingerprint(func: str, state: PruneState, config_hash: int, params: _Tensors) -> None:
    if tracing(state.fingerprint):
        return  # values cannot be read while tracing; checked in eager calls
    stored = state.fingerprint.tolist()
    if stored[0] != config_hash:
        raise _errors.value_error(
            func,
            "state was made by a pruner with different settings",
            _errors.detail(f"fingerprint {stored[0]}, this pruner {config_hash}"),
            "Use the state from this pruner's init (or rebuild the pruner with the same settings).",
        )
    if stored[1] != hash64(layout_text(params)):
        dtypes = {n: str(p.dtype) for n, p in params.items()}
        raise _errors.value_error(
            func,
            "params dtypes differ from those given to init",
            dtypes,
            "Step with params of the same dtypes as at init (or call init again).",
        )


def check_accumulators(func: str, state: PruneState, params: _Tensors) -> None:
    """Accumulators in float64 only for float64 weights (as ``init`` makes them): a state
    edited or converted by hand would otherwise fold in another precision."""
    for name, acc in state.aux.items():
        weight = params.get(name)
        if weight is not None and acc.dtype == torch.float64 and weight.dtype != torch.float64:
            raise _errors.value_error(
                func,
                f"state.aux[{name!r}] is float64 for a {weight.dtype} weight",
                _errors.detail(str(acc.dtype)),
                "Use the state from this pruner's init (accumulators follow the weights' dtype).",
            )


def scalar(value: float | int, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype)


def all_finite(
    tensors: Sequence[torch.Tensor],
    combine: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """A 0-d bool: whether every element of ``tensors`` is finite (summed over the ranks with
    ``combine``). A float64 sum is non-finite exactly when an element is (no float32 sum can
    overflow it): one reduction a tensor, without a tensor-sized bool."""
    total = torch.stack([t.sum(dtype=torch.float64) for t in tensors]).sum()
    if combine is not None:
        total = combine(total)
    return torch.isfinite(total)
