"""Any checkpoint the command line takes: a single file (:mod:`fprune.checkpoint`), or one
that spans files, a Hugging Face model folder or a sharded checkpoint's ``*.index.json``,
read as one checkpoint and written back in the same layout.

A folder holds ``model.safetensors`` or ``pytorch_model.bin``, or one of their
``.index.json`` files naming the shards. Every shard is loaded (weights only), their tensors
form one name space (so global scope spans the shards), and :func:`save` writes each shard
under its own name into the output folder, with the index and the folder's other files
(config, tokenizer) copied.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from fprune import checkpoint
from fprune.checkpoint import Checkpoint, CheckpointError

__all__ = [
    "WEIGHT_FILES",
    "WEIGHT_SUFFIXES",
    "check_output",
    "copy_other_files",
    "is_folder",
    "load",
    "save",
]

WEIGHT_FILES = (
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "model.safetensors",
    "pytorch_model.bin",
)


def is_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is read with this module: a folder, or an ``.index.json`` file."""
    path = Path(path)
    return path.is_dir() or path.name.endswith(".index.json")


def _entry(path: Path) -> tuple[Path, Path]:
    """``(folder, the file that lists the weights)`` for a folder or an index file."""
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path, path / name
        raise CheckpointError(
            f"{path}: a folder without {', '.join(WEIGHT_FILES)}; pass one of its weight files, "
            "or a folder that save_pretrained wrote"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    return path.parent, path


def _shard_names(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        files = list(dict.fromkeys(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index}: not a sharded-checkpoint index ({e})") from None
    if not files or not all(isinstance(f, str) and "/" not in f for f in files):
        raise CheckpointError(f"{index}: its weight_map names no shard files in its folder")
    return files


def load(path: str | os.PathLike[str]) -> Checkpoint:
    """A file as :func:`fprune.checkpoint.load` reads it; a folder's (or an index's) shards as
    one checkpoint whose ``parts`` keep each shard by file name (the same tensor objects)."""
    if not is_folder(path):
        return checkpoint.load(path)
    read = checkpoint.load
    folder, listing = _entry(Path(path))
    names = _shard_names(listing) if listing.name.endswith(".index.json") else [listing.name]
    parts = {name: read(folder / name) for name in names}
    formats = {p.format for p in parts.values()}
    if len(formats) != 1:
        raise CheckpointError(f"{path}: shards of both formats ({sorted(formats)})")
    tensors: dict = {}
    for name, part in parts.items():
        clash = sorted(set(tensors) & set(part.tensors))
        if clash:
            raise CheckpointError(f"{path}: {clash[0]!r} is in two shards (the second: {name})")
        tensors.update(part.tensors)
    merged = Checkpoint(formats.pop(), tensors, parts=parts, folder=folder)
    merged.aliases = {a: n for p in parts.values() for a, n in p.aliases.items()}
    return merged


def check_output(
    source: str | os.PathLike[str], output: str | os.PathLike[str], fmt: str, *, force: bool
) -> None:
    """As :func:`fprune.checkpoint.check_output` for a file; the output of a folder checkpoint
    is a folder: new or empty (unless ``force``), never the input's."""
    if not is_folder(source):
        checkpoint.check_output(source, output, fmt, force=force)
        return
    folder, _ = _entry(Path(source))
    out = Path(output)
    if out.exists() and out.resolve() == folder.resolve():
        raise CheckpointError(f"{out}: is the input folder; write the pruned model elsewhere")
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: the input is a folder, so the output is one too")
    if out.exists() and any(out.iterdir()) and not force:
        raise CheckpointError(f"{out}: exists and is not empty; pass --force to overwrite it")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")


def copy_other_files(
    source: Path, target: Path, *, skip: tuple[str, ...] = WEIGHT_SUFFIXES
) -> list[str]:
    """Copy the entries of ``source`` that ``target`` lacks, except names ending in ``skip``
    (weights, which the caller writes); the names copied."""
    copied = []
    for entry in sorted(source.iterdir()):
        if (target / entry.name).exists() or entry.name.endswith(skip):
            continue
        if entry.is_dir():
            shutil.copytree(entry, target / entry.name)
        else:
            shutil.copy2(entry, target / entry.name)
        copied.append(entry.name)
    return copied


def save(ckpt: Checkpoint, output: str | os.PathLike[str]) -> None:
    """As :func:`fprune.checkpoint.save` for a file; a folder checkpoint's shards each under
    its name into ``output`` (through a temporary folder beside it, renamed when complete),
    with the folder's other files copied."""
    if ckpt.parts is None or ckpt.folder is None:
        checkpoint.save(ckpt, output)
        return
    write = checkpoint.save
    out = Path(output)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    except OSError as e:
        raise CheckpointError(f"{out}: cannot write in {parent} ({e.strerror or e})") from None
    try:
        for name, part in ckpt.parts.items():
            write(part, tmp / name)
        copy_other_files(ckpt.folder, tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise CheckpointError(f"{out}: cannot write ({e.strerror or e})") from None
        raise
