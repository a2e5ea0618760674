"""The pruner's state: a frozen dataclass of tensors, registered as a pytree.

``PruneState`` holds everything that changes during a run, and nothing else: the step
counter, the current target, the initial sparsity (non-zero only with
``lock_init_sparsity``), the masks, the criterion's accumulators and a fingerprint of the
pruner that made it. Static settings live in the :class:`~fprune.pruner.Pruner` closure.

Because the state is a pytree of tensors, it passes through ``torch.compile``,
``torch.func`` transforms and ``torch.utils._pytree`` utilities, and
:meth:`PruneState.state_dict` gives a flat ``dict[str, Tensor]`` for ``torch.save`` (load
it with ``weights_only=True``) or safetensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

import torch
import torch.utils._pytree as pytree

from fprune import _errors

__all__ = ["PruneState"]

_SCALARS = ("step", "target", "initial", "fingerprint", "sparsity")
_DICTS = ("masks", "aux")


@dataclasses.dataclass(frozen=True)
class PruneState:
    """Everything a pruner carries from one step to the next.

    Attributes:
        step: int64 0-d tensor, the index of the next step ``step`` will process.
        target: float64 0-d tensor, the target the current masks were computed for.
        initial: float64 0-d tensor, the sparsity the schedule starts from (the existing
            zeros with ``lock_init_sparsity``, else 0).
        masks: bool masks keyed by parameter name, shaped like the parameters, True = kept.
        aux: the criterion's accumulators (empty for stateless criteria).
        fingerprint: int64 tensor ``[2]``: a hash of the pruner's settings and one of the
            parameter names, shapes and dtypes given to ``init``. ``step`` rejects a state
            whose fingerprint does not match.
        sparsity: float64 0-d tensor, the final target: the pruner's ``sparsity``, or the
            value given to ``init(params, sparsity=...)`` (data, so ``vmap`` can sweep it).

    Example:
        >>> import fprune
        >>> prune = fprune.pruner(0.5, pattern="1x1", criterion="magnitude")
        >>> state = prune.init({"w": torch.ones(2, 2)})
        >>> int(state.step), float(state.target), sorted(state.state_dict())
        (0, 0.0, ['fingerprint', 'initial', 'masks/w', 'sparsity', 'step', 'target'])
    """

    step: torch.Tensor
    target: torch.Tensor
    initial: torch.Tensor
    masks: dict[str, torch.Tensor]
    aux: dict[str, torch.Tensor]
    fingerprint: torch.Tensor
    sparsity: torch.Tensor

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A flat ``dict[str, Tensor]``: the five scalars, ``masks/<name>``, ``aux/<name>``.

        Tensors are made contiguous (safetensors needs that); they are not copied otherwise.
        """
        out = {name: getattr(self, name) for name in _SCALARS}
        for field in _DICTS:
            out.update({f"{field}/{k}": v for k, v in getattr(self, field).items()})
        return {k: v.contiguous() for k, v in out.items()}

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> PruneState:
        """Rebuild a state from :meth:`state_dict`'s output (e.g. after ``torch.load``).

        Raises:
            ValueError: a scalar is missing, or a key has no known prefix.
            TypeError: a value is not a tensor.

        Example:
            >>> import fprune, io
            >>> prune = fprune.pruner(0.5, pattern="1x1", criterion="magnitude")
            >>> state = prune.init({"w": torch.ones(2, 2)})
            >>> buf = io.BytesIO(); torch.save(state.state_dict(), buf); _ = buf.seek(0)
            >>> again = PruneState.from_state_dict(torch.load(buf, weights_only=True))
            >>> torch.equal(again.masks["w"], state.masks["w"])
            True
        """
        func = "PruneState.from_state_dict"
        state_dict = _errors.tensor_dict(func, "state_dict", state_dict, floating=False)
        missing = [k for k in _SCALARS if k not in state_dict]
        if missing == ["sparsity"]:  # saved before the final target was part of the state
            raise _errors.value_error(
                func, "state_dict lacks the final target 'sparsity'", missing,
                "Add it: state_dict['sparsity'] = torch.tensor(<the pruner's sparsity>, dtype=torch.float64).",
            )
        if missing:
            raise _errors.value_error(
                func, "state_dict lacks required entries", missing,
                "Pass the dict returned by PruneState.state_dict().",
            )
        fields: dict[str, dict[str, torch.Tensor]] = {f: {} for f in _DICTS}
        for key, value in state_dict.items():
            if key in _SCALARS:
                continue
            prefix, _, name = key.partition("/")
            if prefix not in fields or not name:
                raise _errors.value_error(
                    func, "unknown key", key,
                    f"Keys are {', '.join(_SCALARS)}, masks/<name> and aux/<name>.",
                )
            fields[prefix][name] = value
        return cls(
            step=state_dict["step"], target=state_dict["target"], initial=state_dict["initial"],
            masks=fields["masks"], aux=fields["aux"], fingerprint=state_dict["fingerprint"],
            sparsity=state_dict["sparsity"],
        )


def _flatten(state: PruneState) -> tuple[list[object], None]:
    return [getattr(state, f.name) for f in dataclasses.fields(state)], None


def _unflatten(children: list[object], context: None) -> PruneState:
    return PruneState(*children)  # type: ignore[arg-type]


def _flatten_with_keys(state: PruneState) -> tuple[list[tuple[Any, Any]], None]:
    children = [(pytree.GetAttrKey(f.name), getattr(state, f.name)) for f in dataclasses.fields(state)]
    return children, None


pytree.register_pytree_node(
    PruneState, _flatten, _unflatten,  # type: ignore[arg-type]
    serialized_type_name="fprune.PruneState", flatten_with_keys_fn=_flatten_with_keys,  # type: ignore[arg-type]
)


def hash64(text: str) -> int:
    """A stable signed 64-bit hash of ``text`` (blake2b; Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def layout_text(params: Mapping[str, torch.Tensor]) -> str:
    """The parameter names, shapes and dtypes, in sorted name order, as text."""
    return ";".join(f"{n}:{tuple(params[n].shape)}:{params[n].dtype}" for n in sorted(params))
