"""Compressed checkpoint files: :func:`fprune.export.compress` written as safetensors.

A compressed file is a safetensors file whose header metadata holds
``"fprune.format": "compressed"`` and ``"fprune.version": "1"``, the input's own metadata
(restored by :func:`decompress_checkpoint`), and ``"fprune.aliases"``: a JSON object of tied
tensors, stored once, ``{alias: name}``. Used by ``fprune compress``, ``fprune decompress`` and
``fprune report``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import torch

from fprune.checkpoint import Checkpoint, CheckpointError
from fprune.export.compressed import compress, decompress
from fprune.patterns import NM

__all__ = [
    "FORMAT",
    "VERSION",
    "compress_checkpoint",
    "decompress_checkpoint",
    "is_compressed_checkpoint",
]

FORMAT = "compressed"
VERSION = "1"
_FORMAT_KEY, _VERSION_KEY, _ALIASES_KEY = "fprune.format", "fprune.version", "fprune.aliases"


def is_compressed_checkpoint(ckpt: Checkpoint) -> bool:
    """Whether ``ckpt`` was written by :func:`compress_checkpoint`."""
    return (ckpt.metadata or {}).get(_FORMAT_KEY) == FORMAT


def _non_tensors(tree: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of the leaves of a loaded ``torch.save`` tree that are not tensors."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _non_tensors(value, f"{prefix}{key}.")
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            yield from _non_tensors(value, f"{prefix}{i}.")
    elif not isinstance(tree, torch.Tensor):
        yield prefix.rstrip(".") or "(the file itself)"


def compress_checkpoint(
    ckpt: Checkpoint, *, nm: str | NM | None = None, keep_negative_zeros: bool = False
) -> Checkpoint:
    """The compressed form of a loaded checkpoint, as a safetensors checkpoint.

    Pruned entries are read from zeros (``+0.0`` and ``-0.0``; only ``+0.0`` with
    ``keep_negative_zeros``, so that every bit comes back).

    Raises:
        CheckpointError: the checkpoint is already compressed, is a folder, or holds entries
            that are not tensors (which a safetensors file cannot hold).
    """
    if is_compressed_checkpoint(ckpt):
        raise CheckpointError("the input is already compressed; decompress it first")
    if ckpt.parts is not None:
        raise CheckpointError(
            "compress takes one checkpoint file, not a folder or sharded checkpoint; "
            "compress each weights file on its own"
        )
    others = list(_non_tensors(ckpt.tree)) if ckpt.format == "torch" else []
    if others:
        raise CheckpointError(
            f"the checkpoint holds {len(others)} entries that are not tensors ({others[0]!r} "
            "first), which a safetensors file cannot hold; save the model's state_dict alone"
        )
    tensors = {n: t for n, t in ckpt.tensors.items() if n not in ckpt.aliases}
    metadata = {
        **(ckpt.metadata or {}),
        _FORMAT_KEY: FORMAT,
        _VERSION_KEY: VERSION,
        _ALIASES_KEY: json.dumps(ckpt.aliases),
    }
    packed = compress(tensors, nm=nm, keep_negative_zeros=keep_negative_zeros)
    return Checkpoint("safetensors", packed, metadata=metadata)


def decompress_checkpoint(ckpt: Checkpoint) -> Checkpoint:
    """Invert :func:`compress_checkpoint`: every tensor by its name, with the original
    metadata; tied tensors come back as equal copies (safetensors files hold no ties).

    Raises:
        CheckpointError: the checkpoint is not compressed, has a newer version, or is damaged.
    """
    metadata = ckpt.metadata or {}
    if not is_compressed_checkpoint(ckpt):
        raise CheckpointError(
            "the input is not a compressed checkpoint (fprune compress writes one)"
        )
    if metadata.get(_VERSION_KEY) != VERSION:
        raise CheckpointError(
            f"compressed format version {metadata.get(_VERSION_KEY)!r} is not supported by "
            f"this fprune (it reads version {VERSION}); upgrade fprune"
        )
    try:
        tensors = decompress(ckpt.tensors)
        aliases = json.loads(metadata.get(_ALIASES_KEY, "{}"))
        for alias, name in aliases.items():
            tensors[alias] = tensors[name].clone()
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"the compressed checkpoint is damaged ({e})") from None
    original = {k: v for k, v in metadata.items() if not k.startswith("fprune.")}
    return Checkpoint("safetensors", tensors, metadata=original or None)
