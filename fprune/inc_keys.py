"""INC's config keys: their defaults, legacy names and unsupported values, and a pruner's
settings written back as them (:func:`config_dict`).

Below :mod:`fprune.pruner` (which writes itself back with :func:`config_dict`) and
:mod:`fprune.config` (which reads these keys).
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

from fprune import _errors, registry

__all__ = ["DEFAULTS", "DYNAMIC", "LEGACY_NAMES", "ONE_SHOT", "UNSUPPORTED", "config_dict"]

#: INC 3.x keys and defaults (``pruning_op_types`` etc. as tuples: nothing mutable is shared).
DEFAULTS: Mapping[str, Any] = types.MappingProxyType(
    {
        "target_sparsity": 0.9,
        "pruning_type": "snip_momentum",
        "pattern": "4x1",
        "op_names": (),
        "excluded_op_names": (),
        "start_step": 0,
        "end_step": 0,
        "pruning_scope": "global",
        "pruning_frequency": 1,
        "min_sparsity_ratio_per_op": 0.0,
        "max_sparsity_ratio_per_op": 0.98,
        "sparsity_decay_type": "exp",
        "pruning_op_types": ("Conv", "Linear"),
        "low_memory_usage": False,
        "backend": None,
        "resume_from_pruned_checkpoint": False,
        "reg_type": None,
        "reg_coeff": 0.0,
        "criterion_reduce_type": "mean",
        "lock_init_sparsity": False,
        # fprune extensions
        "skip_indivisible": False,
        "schedule": None,
        "sparsity_distribution": None,  # "uniform" | "erk" (local scope, or rigl / set)
        "drop_fraction": None,  # rigl / set only (default 0.3)
        "seed": None,  # rigl / set only (default 0)
    }
)

#: Older (INC 1.x / experimental) names and the keys they map to.
LEGACY_NAMES: Mapping[str, str] = types.MappingProxyType(
    {
        "prune_domain": "pruning_scope",
        "update_frequency_on_step": "pruning_frequency",
        "max_sparsity_ratio_per_layer": "max_sparsity_ratio_per_op",
        "min_sparsity_ratio_per_layer": "min_sparsity_ratio_per_op",
        "prune_type": "pruning_type",
        "names": "op_names",
        "excluded_names": "excluded_op_names",
        "extra_excluded_names": "excluded_op_names",
        "prune_layer_type": "pruning_op_types",
        "reduce_type": "criterion_reduce_type",
    }
)

#: INC pruning types fprune does not implement.
UNSUPPORTED = ("progressive", "block_mask", "retrain_free", "mha")

#: ``pruning_type`` values of dynamic sparse training (:func:`fprune.dynamic`) and the growth
#: each selects.
DYNAMIC = types.MappingProxyType({"rigl": "gradient", "set": "random"})

#: ``pruning_type`` values of one-shot methods: :func:`fprune.from_config` gives a
#: :class:`fprune.posttrain.OneShot` plan for them, not a pruner.
ONE_SHOT = {"sparse_gpt": "sparsegpt", "sparsegpt": "sparsegpt", "wanda": "wanda"}


def _name_of(kind: str, value: object) -> str:
    if isinstance(value, str):
        return value
    for name in registry.registered(kind):
        if getattr(registry, f"get_{kind}")(name) is value:
            return name
    raise _errors.value_error(
        "to_config",
        f"the {kind} is an unregistered object",
        value,
        f"Register it with fprune.register_{kind}(name, obj) so a config can name it.",
    )


def _dynamic_keys(s: Mapping[str, Any]) -> dict[str, Any]:
    """A dynamic pruner's settings as config keys (layer choices by name are not written:
    ``dense`` names layers, which a config selects with ``excluded_op_names``)."""
    if s["dense"] or s["first_dense"] or s["start"] != "random":
        raise _errors.value_error(
            "to_config",
            "dense, first_dense and start have no config keys",
            _errors.detail(
                f"dense={s['dense']}, first_dense={s['first_dense']}, start={s['start']!r}"
            ),
            "Leave those layers out with excluded_op_names, or keep the pruner in code.",
        )
    return dict(
        pruning_type=s["kind"],
        target_sparsity=s["sparsity"],
        start_step=s["start_step"],
        end_step=s["end_step"],
        pruning_frequency=s["frequency"],
        criterion_reduce_type=s["reduce"],
        sparsity_distribution=s["distribution"],
        drop_fraction=s["drop_fraction"],
        seed=s["seed"],
    )


def config_dict(settings: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """An INC-style dict (3.x key names) of a pruner's ``settings`` and ``extra`` keys (see
    :func:`fprune.to_config`).

    Raises:
        ValueError: a setting is an unregistered callable (a config can only name things).
    """
    s, extra = dict(settings), dict(extra)
    out: dict[str, Any] = {"pattern": s["pattern"], "skip_indivisible": s["skip_indivisible"]}
    if s["kind"] == "pattern_lock":
        out["pruning_type"] = "pattern_lock"
    elif s["kind"] in DYNAMIC:
        out.update(_dynamic_keys(s))
    else:
        if s["kind"] != "basic":
            out["pruning_type"] = s["kind"]
        else:
            out["pruning_type"] = _name_of("criterion", s["criterion"])
        if not isinstance(s["decay"], str):
            raise _errors.value_error(
                "to_config",
                "a decay callable cannot be written to a config",
                s["decay"],
                "Use a named decay ('exp', 'cos', 'linear', 'cube').",
            )
        out.update(
            target_sparsity=s["sparsity"],
            start_step=s["start_step"],
            end_step=s["end_step"],
            pruning_frequency=s["frequency"],
            pruning_scope=s["scope"],
            min_sparsity_ratio_per_op=s["min_layer_sparsity"],
            max_sparsity_ratio_per_op=s["max_layer_sparsity"],
            sparsity_decay_type=s["decay"],
            criterion_reduce_type=s["reduce"],
            low_memory_usage=s["low_memory_usage"],
            lock_init_sparsity=s["lock_init_sparsity"],
        )
        if s["schedule"] is not None:
            out["schedule"] = _name_of("scheduler", s["schedule"])
        if s.get("distribution") is not None:
            out["sparsity_distribution"] = s["distribution"]
    for key in ("op_names", "excluded_op_names", "pruning_op_types"):
        out[key] = list(extra.get(key, DEFAULTS[key]))
    if extra.get("reg_type") is not None:
        out["reg_type"] = extra["reg_type"]
        out["parameters"] = {"reg_coeff": extra.get("reg_coeff", 0.0)}
    return out
