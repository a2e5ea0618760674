"""The pruner's state: a frozen dataclass of tensors, registered as a pytree.

``PruneState`` holds everything that changes during a run, and nothing else: the step
counter, the schedule's initial, current and final targets, the masks, the criterion's
accumulators and a fingerprint of the pruner that made it. Static settings live in the
pruner's :class:`~fprune.steps.Settings`.

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

__all__ = ["PruneState", "hash64", "layout_text"]

_SCALARS = ("step", "current_target", "initial_target", "fingerprint", "final_target")
_OPTIONAL = ("seed",)  # present only in the states of pruners that draw random numbers
_DICTS = ("masks", "aux")
# the keys of fprune 0.1.0.dev states saved before the targets were renamed, still read
_RENAMED = {"target": "current_target", "initial": "initial_target", "sparsity": "final_target"}


@dataclasses.dataclass(frozen=True)
class PruneState:
    """Everything a pruner carries from one step to the next.

    Attributes:
        step: int64 0-d tensor, the index of the next step ``step`` will process.
        current_target: float64 0-d tensor, the target the current masks were computed for.
        initial_target: float64 0-d tensor, the sparsity the schedule starts from (the
            existing zeros with ``lock_init_sparsity``, else 0).
        masks: bool masks keyed by parameter name, shaped like the parameters, True = kept.
        aux: the criterion's accumulators (empty for stateless criteria).
        fingerprint: int64 tensor ``[2]``: a hash of the pruner's settings and one of the
            parameter names, shapes and dtypes given to ``init``. ``step`` rejects a state
            whose fingerprint does not match.
        final_target: float64 0-d tensor, the schedule's last target: the pruner's
            ``sparsity``, or the value given to ``init(params, sparsity=...)`` (data, so
            ``vmap`` can sweep it).
        seed: int64 0-d tensor, the seed of a pruner that draws random numbers
            (:func:`fprune.dynamic`); None for the others. Data, so ``vmap`` can map over
            seeds.

    Example:
        >>> import fprune
        >>> prune = fprune.pruner(0.5, pattern="1x1", criterion="magnitude")
        >>> state = prune.init({"w": torch.ones(2, 2)})
        >>> int(state.step), float(state.current_target), float(state.final_target)
        (0, 0.0, 0.5)
        >>> sorted(state.state_dict())
        ['current_target', 'final_target', 'fingerprint', 'initial_target', 'masks/w', 'step']
    """

    step: torch.Tensor
    current_target: torch.Tensor
    initial_target: torch.Tensor
    masks: dict[str, torch.Tensor]
    aux: dict[str, torch.Tensor]
    fingerprint: torch.Tensor
    final_target: torch.Tensor
    seed: torch.Tensor | None = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A flat ``dict[str, Tensor]``: the five scalars (and ``seed`` where there is one),
        ``masks/<name>``, ``aux/<name>``.

        Tensors are made contiguous (safetensors needs that); they are not copied otherwise.
        """
        out = {name: getattr(self, name) for name in _SCALARS}
        if self.seed is not None:
            out["seed"] = self.seed
        for field in _DICTS:
            out.update({f"{field}/{k}": v for k, v in getattr(self, field).items()})
        return {k: v.contiguous() for k, v in out.items()}

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> PruneState:
        """Rebuild a state from :meth:`state_dict`'s output (e.g. after ``torch.load``).

        States saved by fprune 0.1.0.dev before the targets were renamed (keys ``target``,
        ``initial`` and ``sparsity``) are read too.

        Every field is checked as ``init`` and ``step`` make it: ``step`` a 0-d int64 >= 0,
        the targets 0-d float64 fractions with the initial and current ones at most the final
        one, ``fingerprint`` int64 ``[2]``, bool masks, floating accumulators with a mask of
        the same name. ``step`` then checks the fingerprint, names, shapes and accumulator
        dtypes against the pruner and the parameters.

        Raises:
            ValueError: a scalar is missing, a key has no known prefix, or a field has the
                wrong dtype, shape or range.
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
        state_dict = _renamed(
            func, _errors.tensor_dict(func, "state_dict", state_dict, floating=False)
        )
        missing = [k for k in _SCALARS if k not in state_dict]
        if missing == ["final_target"]:  # saved before the final target was part of the state
            raise _errors.value_error(
                func,
                "state_dict lacks the final target 'final_target'",
                missing,
                "Add it: state_dict['final_target'] = torch.tensor(<the pruner's sparsity>, "
                "dtype=torch.float64).",
            )
        if missing:
            raise _errors.value_error(
                func,
                "state_dict lacks required entries",
                missing,
                "Pass the dict returned by PruneState.state_dict().",
            )
        fields: dict[str, dict[str, torch.Tensor]] = {f: {} for f in _DICTS}
        for key, value in state_dict.items():
            if key in _SCALARS or key in _OPTIONAL:
                continue
            prefix, _, name = key.partition("/")
            if prefix not in fields or not name:
                raise _errors.value_error(
                    func,
                    "unknown key",
                    key,
                    f"Keys are {', '.join(_SCALARS)}, seed, masks/<name> and aux/<name>.",
                )
            fields[prefix][name] = value
        _check_fields(func, state_dict, fields)
        return cls(
            step=state_dict["step"],
            current_target=state_dict["current_target"],
            initial_target=state_dict["initial_target"],
            masks=fields["masks"],
            aux=fields["aux"],
            fingerprint=state_dict["fingerprint"],
            final_target=state_dict["final_target"],
            seed=state_dict.get("seed"),
        )


def _field_error(func: str, key: str, problem: str, value: torch.Tensor) -> ValueError:
    got = _errors.detail(f"{value.dtype} tensor of shape {tuple(value.shape)}")
    if value.numel() == 1:
        got = _errors.detail(f"{value.dtype} {value.item()!r}")
    return _errors.value_error(
        func,
        f"state_dict[{key!r}] {problem}",
        got,
        "Pass a state saved by PruneState.state_dict().",
    )


def _check_fields(
    func: str, scalars: Mapping[str, torch.Tensor], fields: Mapping[str, Mapping[str, torch.Tensor]]
) -> None:
    """Every field's dtype, shape and range, as ``init`` and ``step`` make them: a hand-edited
    or corrupted state is refused here rather than pruned with."""
    step = scalars["step"]
    if step.dtype != torch.int64 or step.ndim != 0 or int(step) < 0:
        raise _field_error(func, "step", "must be a 0-d int64 tensor >= 0", step)
    targets = {k: scalars[k] for k in ("initial_target", "current_target", "final_target")}
    for key, value in targets.items():
        if value.dtype != torch.float64 or value.ndim != 0:
            raise _field_error(func, key, "must be a 0-d float64 tensor", value)
        if not 0.0 <= float(value) <= 1.0:
            raise _field_error(func, key, "must be a fraction in [0, 1]", value)
    final = float(targets["final_target"])
    for key in ("initial_target", "current_target"):
        if float(targets[key]) > final + 1e-12:
            raise _field_error(func, key, f"exceeds the final target {final}", targets[key])
    seed = scalars.get("seed")
    if seed is not None and (seed.dtype != torch.int64 or seed.ndim != 0):
        raise _field_error(func, "seed", "must be a 0-d int64 tensor", seed)
    fingerprint = scalars["fingerprint"]
    if fingerprint.dtype != torch.int64 or tuple(fingerprint.shape) != (2,):
        raise _field_error(func, "fingerprint", "must be an int64 tensor of shape [2]", fingerprint)
    for name, mask in fields["masks"].items():
        if mask.dtype != torch.bool:
            raise _field_error(func, f"masks/{name}", "must be a bool mask", mask)
    for name, acc in fields["aux"].items():
        if acc.dtype not in (torch.float32, torch.float64, torch.bfloat16):
            raise _field_error(func, f"aux/{name}", "must be float32, float64 or bfloat16", acc)
        if name not in fields["masks"]:
            raise _field_error(func, f"aux/{name}", "has no mask of the same name", acc)


def _renamed(func: str, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` with the keys of earlier 0.1.0.dev states under their current names."""
    out = dict(state_dict)
    for old, new in _RENAMED.items():
        if old in out:
            if new in out:
                raise _errors.value_error(
                    func,
                    f"state_dict has both {old!r} and its current name {new!r}",
                    sorted(out),
                    f"Keep {new!r} only.",
                )
            out[new] = out.pop(old)
    return out


def _fields(state: PruneState) -> list[str]:
    """The fields that hold tensors: all but ``seed`` where it is None (a pytree leaf must
    be a tensor, so that a state passes through ``torch.compile`` and ``vmap``)."""
    names = [f.name for f in dataclasses.fields(state)]
    return names if state.seed is not None else [n for n in names if n != "seed"]


def _flatten(state: PruneState) -> tuple[list[object], tuple[str, ...]]:
    names = _fields(state)
    return [getattr(state, n) for n in names], tuple(names)


def _unflatten(children: list[object], context: tuple[str, ...]) -> PruneState:
    return PruneState(**dict(zip(context, children, strict=True)))  # type: ignore[arg-type]


def _flatten_with_keys(state: PruneState) -> tuple[list[tuple[Any, Any]], tuple[str, ...]]:
    names = _fields(state)
    return [(pytree.GetAttrKey(n), getattr(state, n)) for n in names], tuple(names)


pytree.register_pytree_node(
    PruneState,
    _flatten,
    _unflatten,  # type: ignore[arg-type]
    serialized_type_name="fprune.PruneState",
    flatten_with_keys_fn=_flatten_with_keys,  # type: ignore[arg-type]
)


def hash64(text: str) -> int:
    """A stable signed 64-bit hash of ``text`` (blake2b; Python's ``hash`` is salted)."""
    return int.from_bytes(
        hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True
    )


def layout_text(params: Mapping[str, torch.Tensor]) -> str:
    """The parameter names, shapes and dtypes, in sorted name order, as text."""
    return ";".join(f"{n}:{tuple(params[n].shape)}:{params[n].dtype}" for n in sorted(params))
