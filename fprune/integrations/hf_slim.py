"""Save and reload slimmed Hugging Face models (the ``export`` and ``oneshot`` extras).

:func:`save_slimmed` writes ``save_pretrained``'s folder. Where the config can express the
new shapes (an FFN width shared by every layer: ``intermediate_size``), the config is
updated and the folder reloads with the model class's own ``from_pretrained``. Where it
cannot (BERT derives its head size from ``hidden_size / num_attention_heads``, so removing
heads changes nothing it can say; FFN widths that differ between layers), the folder also
holds ``fprune_slim.json``, a manifest of every parameter shape the config does not give and
of each attention module's head count, and :func:`load_slimmed` rebuilds the model from the
config, applies the manifest and loads the weights.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import torch
from torch import nn

from fprune.export.groups import attention_modules
from fprune.integrations.hf_oneshot import require_transformers

__all__ = ["MANIFEST", "load_slimmed", "save_slimmed"]

MANIFEST = "fprune_slim.json"
_FORMAT, _VERSION = "fprune.slim", 1


def _fresh(model_class: Any, config: Any) -> nn.Module:
    """A model built from ``config`` on the meta device (no memory used)."""
    with torch.device("meta"):
        return model_class(config)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(t.shape) for n, t in model.state_dict().items()}


def _heads(model: nn.Module) -> dict[str, int]:
    return {name: found.heads for name, found in attention_modules(model).items()}


def _try_intermediate_size(model: nn.Module, config: Any) -> None:
    """Set ``config.intermediate_size`` to the FFN width when every layer shares it."""
    size = getattr(config, "intermediate_size", None)
    if not isinstance(size, int):
        return
    fresh = _shapes(_fresh(type(model), config))
    changed = {
        (old[0], new[0])
        for name, new in _shapes(model).items()
        if (old := fresh.get(name)) is not None and old != new and len(old) >= 1
        and old[0] == size
    }  # fmt: skip
    if len({new for _, new in changed}) == 1:
        config.intermediate_size = changed.pop()[1]


def save_slimmed(model: Any, folder: str | os.PathLike[str]) -> bool:
    """``model.save_pretrained(folder)``, with the config or a manifest saying the new shapes.

    Returns:
        True when the config expresses every shape (``from_pretrained`` reloads the folder
        alone); False when the folder holds ``fprune_slim.json`` for :func:`load_slimmed`.
    """
    config = model.config
    _try_intermediate_size(model, config)
    fresh = _fresh(type(model), config)
    default_shapes, default_heads = _shapes(fresh), _heads(fresh)
    shapes = {n: list(s) for n, s in _shapes(model).items() if default_shapes.get(n) != s}
    heads = {n: h for n, h in _heads(model).items() if default_heads.get(n) != h}
    model.save_pretrained(folder)
    manifest = pathlib.Path(folder) / MANIFEST
    if not shapes and not heads:
        manifest.unlink(missing_ok=True)
        return True
    body = {"format": _FORMAT, "version": _VERSION, "shapes": shapes, "heads": heads}
    manifest.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    return False


def _resize(model: nn.Module, shapes: dict[str, list[int]]) -> None:
    """Give each named parameter or buffer its manifest shape, and each Linear, conv and
    batch norm the matching size attributes."""
    for name, shape in shapes.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        old = getattr(owner, leaf)
        new = torch.empty(shape, dtype=old.dtype)
        if isinstance(old, nn.Parameter):
            setattr(owner, leaf, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            owner.register_buffer(leaf, new)
        if leaf == "weight" and isinstance(owner, nn.Linear):
            owner.out_features, owner.in_features = shape
        elif leaf == "weight" and isinstance(owner, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            owner.out_channels, owner.in_channels = shape[0], shape[1] * owner.groups
        elif leaf == "weight" and isinstance(owner, nn.modules.batchnorm._NormBase):
            owner.num_features = shape[0]


def load_slimmed(folder: str | os.PathLike[str], model_class: Any = None) -> Any:
    """Load a folder written by :func:`save_slimmed`, in eval mode.

    Args:
        folder: the folder.
        model_class: the class to build (default: the one the config's ``architectures``
            names, else ``AutoModel``).

    Raises:
        ValueError: the manifest is not one this fprune reads, or the weights do not match it.
    """
    transformers = require_transformers()
    path = pathlib.Path(folder)
    config = transformers.AutoConfig.from_pretrained(path)
    if model_class is None:
        names = getattr(config, "architectures", None) or []
        model_class = getattr(transformers, names[0], None) if names else None
        model_class = model_class or transformers.AutoModel
    manifest = path / MANIFEST
    if not manifest.is_file():
        return model_class.from_pretrained(path).eval()
    body = json.loads(manifest.read_text(encoding="utf-8"))
    if body.get("format") != _FORMAT or body.get("version") != _VERSION:
        raise ValueError(
            f"load_slimmed: {manifest} is not a version {_VERSION} fprune slim manifest "
            f"(got format {body.get('format')!r}, version {body.get('version')!r}). "
            "Upgrade fprune, or save the model again."
        )
    model = model_class(config).eval()  # the config's shapes, random weights: replaced below
    _resize(model, body["shapes"])
    for name, heads in body["heads"].items():
        module = model.get_submodule(name)
        module.num_attention_heads = heads
        module.all_head_size = heads * module.attention_head_size
    _load_weights(model, path)
    return model


def _load_weights(model: nn.Module, path: pathlib.Path) -> None:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    current = model.state_dict()
    loaded = {current[k].data_ptr() for k in state if k in current}
    untied = [k for k in missing if current[k].data_ptr() not in loaded]  # tied ones share
    if unexpected or untied:
        raise ValueError(
            f"load_slimmed: the weights in {path} do not match the manifest "
            f"(missing {untied[:3]}, unexpected {unexpected[:3]}). Save the model again."
        )
