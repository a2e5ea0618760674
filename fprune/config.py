"""INC-style config dicts -> pruners, and back.

:func:`from_config` reads the keys of INC's ``WeightPruningConfig`` (and the older names),
fills each ``pruning_configs`` entry from the global keys and then INC's defaults, checks
every value, and builds one :class:`~fprune.pruner.Pruner` per entry. Nothing is shared
or mutated: the input dict is left as it was. :func:`to_config` writes a pruner back.
"""

from __future__ import annotations

import math
import numbers
import types
from collections.abc import Mapping
from typing import Any

from fprune import _errors, registry
from fprune.inc_keys import DEFAULTS, DYNAMIC, LEGACY_NAMES, ONE_SHOT, UNSUPPORTED, config_dict
from fprune.posttrain import OneShot
from fprune.pruner import Pruner
from fprune.schedules import DECAYS

__all__ = ["DEFAULTS", "LEGACY_NAMES", "UNSUPPORTED", "from_config", "to_config"]

_FUNC = "from_config"
_STRUCTURE = ("pruning_configs", "parameters")


def _unsupported(key: str, value: object) -> ValueError:
    return _errors.value_error(
        _FUNC,
        f"{key} names an INC feature fprune does not support",
        value,
        "fprune implements magnitude, gradient, snip, snip_momentum and pattern_lock pruning, "
        "sparse_gpt and wanda (plus registered criteria); see docs/divergences.md.",
    )


def _normalize(where: str, entry: object) -> dict[str, Any]:
    """Legacy names -> 3.x names; unknown keys are an error; ``parameters`` is flattened."""
    if not isinstance(entry, Mapping):
        raise _errors.type_error(
            _FUNC, f"{where} must be a dict", type(entry).__name__, "Pass a dict of INC keys."
        )
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key == "parameters":
            if not isinstance(value, Mapping) or set(value) - {"reg_coeff"}:
                raise _errors.value_error(
                    _FUNC,
                    f"{where}['parameters'] may only hold reg_coeff",
                    value,
                    "Pass parameters={'reg_coeff': 0.01} or a top-level reg_coeff.",
                )
            key, value = "reg_coeff", value.get("reg_coeff")
        name = LEGACY_NAMES.get(key, key)
        if (
            name == "excluded_op_names" and name in out and value is not None
        ):  # INC joins both lists
            value = [*_strings(key, out[name]), *_strings(key, value)]
            out[name] = value
            continue
        if name not in DEFAULTS:
            valid = sorted([*DEFAULTS, *LEGACY_NAMES, *_STRUCTURE])
            raise _errors.value_error(
                _FUNC,
                f"unknown key in {where}",
                key,
                f"Valid keys: {', '.join(valid)}.",
            )
        if value is None and DEFAULTS[name] is not None:  # an empty YAML value, say
            raise _errors.value_error(
                _FUNC,
                f"{where}[{key!r}] is None, which this key does not take",
                None,
                f"Give a value (the default is {DEFAULTS[name]!r}) or leave the key out.",
            )
        if name in out and out[name] != value and value is not None:
            raise _errors.value_error(
                _FUNC,
                f"{where} sets {name!r} twice with different values (a key and its legacy name)",
                _errors.detail(f"{out[name]!r} and {value!r}"),
                "Keep one of the two keys.",
            )
        if value is not None:
            out[name] = value
    return out


def _number(key: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
    ):
        raise _errors.type_error(_FUNC, f"{key} must be a finite number", value, "Pass e.g. 0.8.")
    return float(value)


def _int(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _errors.type_error(_FUNC, f"{key} must be an int", value, "Pass an integer.")
    return int(value)


def _type(key: str, value: object, kind: type, hint: str) -> Any:
    if not isinstance(value, kind):
        raise _errors.type_error(_FUNC, f"{key} must be a {kind.__name__}", value, hint)
    return value


def _strings(key: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        raise _errors.type_error(
            _FUNC, f"{key} must be a list of strings", value, f"Wrap it in a list: [{value!r}]."
        )
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _errors.type_error(
            _FUNC, f"{key} must be a list of strings", value, f"Pass e.g. {key}=['fc1']."
        )
    if key != "pruning_op_types":  # names are regexes: check them now, model or not
        _errors.regexes(_FUNC, key, value)
    return tuple(value)


def _settings(where: str, cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Checked values -> (pruner kind, keyword settings, loop extras)."""
    ptype = _type("pruning_type", cfg["pruning_type"], str, "Pass e.g. 'snip_momentum'.")
    pattern = _type("pattern", cfg["pattern"], str, "Pass e.g. '4x1' or '2:4'.")
    if any(word in ptype for word in UNSUPPORTED):
        raise _unsupported("pruning_type", ptype)
    if "mha" in pattern:
        raise _unsupported("pattern", pattern)
    if cfg["backend"] is not None:
        raise _errors.value_error(
            _FUNC,
            "backend selects INC's Keras/TensorFlow pruner, which fprune does not support",
            cfg["backend"],
            "Remove the key (fprune is for PyTorch).",
        )
    _type(
        "resume_from_pruned_checkpoint",
        cfg["resume_from_pruned_checkpoint"],
        bool,
        "Pass True or False.",
    )
    reg_type = cfg["reg_type"]
    if reg_type is not None:
        _type("reg_type", reg_type, str, "Pass 'group_lasso' or None.")
        registry.get_reg(reg_type)  # unknown names suggest the closest
    reg_coeff = _number("reg_coeff", cfg["reg_coeff"])
    if reg_coeff < 0:
        raise _errors.value_error(
            _FUNC, "reg_coeff must be >= 0", reg_coeff, "Pass a non-negative coefficient."
        )
    extras = {
        "op_names": _strings("op_names", cfg["op_names"]),
        "excluded_op_names": _strings("excluded_op_names", cfg["excluded_op_names"]),
        "pruning_op_types": _strings("pruning_op_types", cfg["pruning_op_types"]),
        "reg_type": reg_type,
        "reg_coeff": reg_coeff,
    }
    # a registered pruner name (pattern_lock, or the user's) picks that factory; else a criterion
    kind = ptype if ptype in registry.registered("pruner") and ptype != "basic" else "basic"
    _errors.fraction(_FUNC, "target_sparsity", _number("target_sparsity", cfg["target_sparsity"]))
    if isinstance(cfg["sparsity_decay_type"], str):  # checked even where a pruner ignores it
        _errors.choice(_FUNC, "sparsity_decay_type", cfg["sparsity_decay_type"], DECAYS)
    settings = dict(
        sparsity=_number("target_sparsity", cfg["target_sparsity"]),
        pattern=_pattern_text(pattern),
        criterion=ptype if kind == "basic" else "snip_momentum",
        start_step=_int("start_step", cfg["start_step"]),
        end_step=_int("end_step", cfg["end_step"]),
        frequency=_int("pruning_frequency", cfg["pruning_frequency"]),
        schedule=cfg["schedule"],
        decay=_type(
            "sparsity_decay_type",
            cfg["sparsity_decay_type"],
            str,
            "Pass 'exp', 'cos', 'linear' or 'cube'.",
        ),
        scope=_type("pruning_scope", cfg["pruning_scope"], str, "Pass 'global' or 'local'."),
        min_layer_sparsity=_number("min_sparsity_ratio_per_op", cfg["min_sparsity_ratio_per_op"]),
        max_layer_sparsity=_number("max_sparsity_ratio_per_op", cfg["max_sparsity_ratio_per_op"]),
        reduce=_type(
            "criterion_reduce_type",
            cfg["criterion_reduce_type"],
            str,
            "Pass 'mean', 'sum' or 'max'.",
        ),
        low_memory_usage=_type(
            "low_memory_usage", cfg["low_memory_usage"], bool, "Pass True or False."
        ),
        lock_init_sparsity=_type(
            "lock_init_sparsity", cfg["lock_init_sparsity"], bool, "Pass True or False."
        ),
        skip_indivisible=_type(
            "skip_indivisible", cfg["skip_indivisible"], bool, "Pass True or False."
        ),
    )
    settings.update(_dynamic_settings(where, kind, cfg))
    return kind, settings, extras


def _dynamic_settings(where: str, kind: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of dynamic sparse training (and ``sparsity_distribution``) for ``kind``."""
    out: dict[str, Any] = {}
    if cfg["sparsity_distribution"] is not None:
        out["distribution"] = _type("sparsity_distribution", cfg["sparsity_distribution"], str,
                                    "Pass 'uniform' or 'erk'.")  # fmt: skip
    if kind not in DYNAMIC:
        for key in ("drop_fraction", "seed"):
            if cfg[key] is not None:
                raise _errors.value_error(
                    _FUNC,
                    f"{where} sets {key}, which only pruning_type 'rigl' or 'set' uses",
                    cfg[key],
                    "Set pruning_type='rigl' (or 'set'), or remove the key.",
                )
        if out and kind != "basic":
            raise _errors.value_error(
                _FUNC,
                f"{where} sets sparsity_distribution for pruning_type {kind!r}",
                out["distribution"],
                "Use it with a criterion (and pruning_scope='local'), 'rigl' or 'set'.",
            )
        return out
    if cfg["drop_fraction"] is not None:
        out["drop_fraction"] = _number("drop_fraction", cfg["drop_fraction"])
    if cfg["seed"] is not None:
        out["seed"] = _int("seed", cfg["seed"])
    return out


def _pattern_text(pattern: str) -> str:
    """INC reads only the text after the last ``_`` (``"tile_pattern_4x1"``), unless the whole
    string is a registered pattern name."""
    if "_" in pattern and pattern not in registry.registered("pattern"):
        tail = pattern.rsplit("_", 1)[1]
        if not tail:
            raise _errors.value_error(
                _FUNC,
                "pattern ends in '_', and INC reads the text after the last '_'",
                pattern,
                "Pass e.g. '4x1' or 'tile_pattern_4x1'.",
            )
        return tail
    return pattern


def from_config(config: Mapping[str, Any], model: Any = None) -> list[Pruner | OneShot]:
    """Build one pruner per ``pruning_configs`` entry of an INC-style config dict.

    An entry whose ``pruning_type`` is ``"sparse_gpt"`` or ``"wanda"`` gives a one-shot plan
    (:class:`fprune.posttrain.OneShot`, run with :func:`fprune.nn.oneshot`) instead: it uses
    ``target_sparsity``, ``pattern`` and the layer selection; the schedule keys do not apply.

    Each entry is filled from the global keys, then from INC's defaults (:data:`DEFAULTS`);
    an empty ``pruning_configs`` list means one pruner from the global keys. Legacy names
    (:data:`LEGACY_NAMES`) are accepted. ``pruning_type`` is a criterion name (built-in or
    registered), ``"pattern_lock"``, or a registered pruner name.

    With ``model`` each pruner's ``names`` lists the weights it covers, selected as INC does
    (:func:`fprune.nn.prunable`: regex search, exclusions, op types, classifier head left out).

    Args:
        config: the dict (it is not modified).
        model: optional ``nn.Module`` to resolve layer names against.

    Returns:
        A list of :class:`~fprune.pruner.Pruner` (or :class:`~fprune.posttrain.OneShot`), in
        ``pruning_configs`` order.

    Raises:
        ValueError: unknown keys (the valid ones are listed), unsupported INC features,
            bad values, an entry that matches no layer, or a layer matched by two entries.
        TypeError: a value of the wrong type.

    Example:
        >>> import fprune
        >>> second = {"op_names": ["fc2"], "pattern": "2:4", "target_sparsity": 0.5,
        ...           "pruning_type": "magnitude"}
        >>> cfg = {"target_sparsity": 0.8, "pattern": "4x1", "start_step": 0, "end_step": 100,
        ...        "pruning_frequency": 10, "pruning_configs": [{"op_names": ["fc1"]}, second]}
        >>> [(p.settings["pattern"], p.settings["sparsity"], p.settings["criterion"])
        ...  for p in fprune.from_config(cfg)]
        [('4x1', 0.8, 'snip_momentum'), ('2:4', 0.5, 'magnitude')]
    """
    top = _normalize(
        "config", {k: v for k, v in _mapping(config).items() if k != "pruning_configs"}
    )
    entries = _mapping(config).get("pruning_configs", [{}])
    if not isinstance(entries, (list, tuple)):
        raise _errors.type_error(
            _FUNC,
            "pruning_configs must be a list of dicts",
            entries,
            "Pass e.g. [{'op_names': ['fc1']}].",
        )
    pruners: list[Pruner | OneShot] = []
    owner: dict[str, int] = {}
    for i, entry in enumerate(entries or [{}]):
        where = f"pruning_configs[{i}]"
        given = {**top, **_normalize(where, entry)}
        cfg = {**DEFAULTS, **given}
        if cfg["pruning_type"] in ONE_SHOT:
            pruners.append(_one_shot(cfg, "target_sparsity" in given, where, model, owner, i))
            continue
        kind, settings, extras = _settings(where, cfg)
        built = registry.get_pruner(kind)(**settings)
        if not isinstance(built, Pruner):
            raise _errors.type_error(
                _FUNC,
                f"pruner factory {kind!r} must return a Pruner",
                type(built).__name__,
                "Fix the registered factory.",
            )
        names = None
        if model is not None:
            names, extras["head"] = _layers(model, where, extras, owner, i)
        settings = types.MappingProxyType(dict(built.settings))
        pruners.append(
            Pruner(built.init, built.step, settings, names, types.MappingProxyType(extras))
        )
    return pruners


def _one_shot(
    cfg: Mapping[str, Any],
    sparsity_given: bool,
    where: str,
    model: Any,
    owner: dict[str, int],
    index: int,
) -> OneShot:
    """A ``sparse_gpt`` / ``wanda`` entry: its method, sparsity, pattern and layers. An N:M
    pattern implies its sparsity, so INC's default ``target_sparsity`` does not apply to it."""
    pattern = _pattern_text(_type("pattern", cfg["pattern"], str, "Pass e.g. '1x1' or '2:4'."))
    extras = {
        "op_names": _strings("op_names", cfg["op_names"]),
        "excluded_op_names": _strings("excluded_op_names", cfg["excluded_op_names"]),
        "pruning_op_types": _strings("pruning_op_types", cfg["pruning_op_types"]),
    }
    names = None if model is None else _layers(model, where, extras, owner, index)[0]
    sparsity = _number("target_sparsity", cfg["target_sparsity"])
    if ":" in pattern and not sparsity_given:
        n, m = pattern.split(":")
        sparsity = int(n) / int(m) if n.isdigit() and m.isdigit() and int(m) else sparsity
    return OneShot(ONE_SHOT[cfg["pruning_type"]], sparsity, pattern, names, extras)


def _layers(
    model: Any, where: str, extras: Mapping[str, Any], owner: dict[str, int], index: int
) -> tuple[tuple[str, ...], str | None]:
    """The weights of ``model`` an entry covers, and the head left out, as INC selects them;
    ``owner`` (name -> entry index) catches a layer matched by two entries."""
    from fprune.nn import prunable  # integration layer, only when a model is given

    chosen = prunable(
        model,
        op_names=extras["op_names"],
        excluded_op_names=extras["excluded_op_names"],
        op_types=extras["pruning_op_types"],
    )
    if not chosen.names:
        raise _errors.value_error(
            _FUNC,
            f"{where} matches no prunable layer",
            list(extras["op_names"]) or [".*"],
            "Check op_names, excluded_op_names and pruning_op_types against model.named_modules().",
        )
    for name in chosen.names:
        if name in owner:
            raise _errors.value_error(
                _FUNC,
                f"layer {name!r} is matched by two entries",
                _errors.detail(f"pruning_configs[{owner[name]}] and {where}"),
                "Make the entries' op_names disjoint (use excluded_op_names).",
            )
        owner[name] = index
    return chosen.names, chosen.head


def _mapping(config: object) -> Mapping[str, Any]:
    if not isinstance(config, Mapping):
        raise _errors.type_error(
            _FUNC, "config must be a dict", type(config).__name__, "Pass a dict of INC keys."
        )
    return config


def to_config(pruner: Pruner) -> dict[str, Any]:
    """An INC-style dict (3.x key names) that :func:`from_config` turns back into ``pruner``.

    Raises:
        ValueError: a setting is an unregistered callable (a config can only name things).

    Example:
        >>> import fprune
        >>> p = fprune.pruner(0.5, pattern="1x1", criterion="magnitude", end_step=4, decay="cos")
        >>> cfg = fprune.to_config(p)
        >>> cfg["pruning_type"], cfg["sparsity_decay_type"]
        ('magnitude', 'cos')
        >>> fprune.from_config(cfg)[0].settings == p.settings
        True
    """
    if not isinstance(pruner, Pruner):
        raise _errors.type_error(
            "to_config", "pruner must be a Pruner", type(pruner).__name__, "Pass a Pruner."
        )
    return config_dict(pruner.settings, pruner.extra)
