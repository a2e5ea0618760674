"""The pattern-lock pruner: masks from the existing zeros at ``init``, never changing."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

import torch

from fprune import _checks, _errors, _resolve, _sharded, registry
from fprune.blocks import check_divisible
from fprune.layout import check_weights
from fprune.masking import pattern_lock_masks
from fprune.patterns import Pattern
from fprune.pruner import Pruner
from fprune.state import PruneState, hash64

__all__ = ["pattern_lock"]

_Tensors = Mapping[str, torch.Tensor]


def pattern_lock(*, pattern: str | Pattern = "4x1", skip_indivisible: bool = False) -> Pruner:
    """A pruner whose masks are the existing zeros of the params at ``init``, never changing.

    A block is kept iff any of its weights is non-zero; for N:M every non-zero weight is
    kept. Use it to fine-tune an already-pruned model without losing its structure: apply
    the masks after every optimizer step. ``step`` only advances the counter (``grads`` is
    ignored).

    Example:
        >>> import torch, fprune
        >>> w = {"w": torch.tensor([[0., 1.], [0., 2.], [0., 0.], [0., 0.]])}
        >>> lock = fprune.pattern_lock(pattern="2x1")
        >>> state = lock.init(w)
        >>> state, masks = lock.step(state, w)
        >>> masks["w"].int().tolist()
        [[0, 1], [0, 1], [0, 0], [0, 0]]
    """
    func = "pattern_lock"
    pat = _resolve.pattern(pattern)
    if not isinstance(skip_indivisible, bool):
        raise _errors.type_error(
            func, "skip_indivisible must be a bool", skip_indivisible, "Pass True or False."
        )
    settings: dict[str, Any] = dict(
        pattern=str(pat) if not isinstance(pattern, str) else pattern,
        skip_indivisible=skip_indivisible,
    )
    config_hash = hash64(f"pattern_lock:{pat}:{skip_indivisible}")
    settings["kind"] = "pattern_lock"

    def init(params: _Tensors, *, sparsity: None = None) -> PruneState:
        if sparsity is not None:
            raise _errors.value_error(
                "init",
                "pattern_lock has no target sparsity to override",
                _errors.detail(repr(sparsity)),
                "Call init(params) without sparsity; the masks come from the existing zeros.",
            )
        params = _checks.detached(_errors.tensor_dict("init", "params", params))
        check_weights("init", params)
        sharding = _sharded.detect("init", {"params": params})
        if sharding is None:
            masks = pattern_lock_masks(params, pattern=pat, skip_indivisible=skip_indivisible)
        else:  # each rank locks its own rows, judged on the global shapes
            skipped = check_divisible("init", params, pat, skip_indivisible=skip_indivisible)
            sharding.check_units(
                "init", {n: p.shape for n, p in params.items() if n not in skipped}, pat
            )
            local = sharding.local(params)
            locked = pattern_lock_masks(
                {n: p for n, p in local.items() if n not in skipped}, pattern=pat
            )
            masks = sharding.wrap(
                {
                    n: locked[n] if n in locked else torch.ones_like(p, dtype=torch.bool)
                    for n, p in local.items()
                },
                {n: p.shape for n, p in params.items()},
            )
        zero = _checks.scalar(0.0, torch.float64)
        return PruneState(
            step=_checks.scalar(0, torch.int64),
            current_target=zero.clone(),
            initial_target=zero,
            masks=masks,
            aux={},
            fingerprint=_checks.fingerprint(config_hash, params),
            final_target=zero.clone(),
        )

    def step(
        state: PruneState, params: _Tensors, grads: _Tensors | None = None
    ) -> tuple[PruneState, dict[str, torch.Tensor]]:
        state = _checks.check_state("step", state)
        params = _checks.detached(_checks.check_params("step", params, state))
        _checks.check_fingerprint("step", state, config_hash, params)
        return dataclasses.replace(state, step=state.step + 1), dict(state.masks)

    return Pruner(init, step, types.MappingProxyType(settings))


def _pattern_lock_factory(
    *, pattern: str | Pattern = "4x1", skip_indivisible: bool = False, **ignored: Any
) -> Pruner:
    """The registered ``pattern_lock`` factory: the pruner settings it does not use are ignored."""
    return pattern_lock(pattern=pattern, skip_indivisible=skip_indivisible)


registry.register_pruner("pattern_lock", _pattern_lock_factory)
