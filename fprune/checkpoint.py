"""Checkpoint files: load, choose the weights to prune, prune one-shot, and write back.

An integration module (the primitives never import it), used by ``fprune prune`` and
``fprune report``. Two formats, told apart by their content, not their name:

- safetensors (``safetensors`` package, the ``cli`` extra); the header metadata is kept;
- PyTorch ``torch.save`` files (``.pt``, ``.pth``, ``.bin``), read with
  ``torch.load(weights_only=True)``: nested dicts, lists and tuples of tensors are walked,
  their tensors named by the dotted path (``"model.fc.weight"``), and everything that is not a
  tensor (step counters, strings, config dicts) is written back unchanged. Tensors that share
  storage (tied weights) are pruned once and stay tied.

Every failure to read or write raises :class:`CheckpointError` with a message meant for the
user; an output file is written to a temporary name and renamed only when complete.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import struct
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from fprune.dense_rule import DENSE_NAMES, file_output_layer

__all__ = [
    "DEFAULT_EXCLUDE",
    "Checkpoint",
    "CheckpointError",
    "Selection",
    "check_output",
    "eligible",
    "load",
    "overlapping",
    "prune",
    "save",
    "select",
]

DEFAULT_EXCLUDE = DENSE_NAMES
"""Name fragments (case-insensitive) that the default selection leaves dense
(:mod:`fprune.dense_rule`, which also leaves a file's output layer dense)."""

_TORCH_SUFFIXES = (".pt", ".pth", ".bin")


class CheckpointError(Exception):
    """A checkpoint cannot be read, chosen from or written; the message says why and what to do."""


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        format: ``"safetensors"`` or ``"torch"``.
        tensors: every tensor by its (dotted) name, in file order; the same tensor objects as
            in ``tree``, so changing one in place changes what :func:`save` writes.
        tree: the loaded object (``torch`` format), or None.
        metadata: the safetensors header metadata, or None.
        aliases: names whose tensor shares storage with an earlier name: ``{alias: name}``.
        parts: for a model folder or sharded checkpoint, each file's checkpoint by file name
            (the same tensor objects); None for a single file.
        folder: the folder the parts came from, or None.
    """

    format: str
    tensors: dict[str, torch.Tensor]
    tree: Any = None
    metadata: dict[str, str] | None = None
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    parts: dict[str, Checkpoint] | None = None
    folder: Path | None = None


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which tensors a one-shot prune touches, and why the others are left alone.

    Attributes:
        names: the tensors to prune, in file order.
        skipped: ``{name: reason}`` for floating tensors with 2+ dims left dense by a name
            exclusion or because they alias a chosen tensor, and for tensors chosen by
            ``include`` that cannot be pruned.
    """

    names: tuple[str, ...]
    skipped: dict[str, str]


def _is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts like a safetensors file: a little-endian u64 length, then ``{``."""
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (size,) = struct.unpack("<Q", head[:8])
    return 0 < size <= path.stat().st_size - 8


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise CheckpointError(
            "reading or writing safetensors files needs the safetensors package; "
            "install it with: pip install 'fprune[cli]'"
        ) from None
    return safetensors


def _walk(tree: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    if isinstance(tree, torch.Tensor):
        if prefix in out:  # {"a.b": x, "a": {"b": y}}: two entries, one dotted name
            raise CheckpointError(
                f"two entries of the checkpoint flatten to the same name {prefix!r}; "
                "fprune names nested entries by joining their keys with '.', so rename one"
            )
        out[prefix] = tree
    elif isinstance(tree, Mapping):
        for key, value in tree.items():
            _walk(value, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            _walk(value, f"{prefix}.{i}" if prefix else str(i), out)


def _aliases(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Names whose tensor is the same view of the same storage as an earlier name."""
    seen: dict[tuple[Any, ...], str] = {}
    aliases = {}
    for name, t in tensors.items():
        if t.device.type == "meta" or t.numel() == 0:
            continue
        key = (
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            tuple(t.shape),
            t.stride(),
            t.dtype,
        )
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
    return aliases


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """The bytes ``[start, end)`` of its storage a tensor can reach."""
    size, offset = t.element_size(), int(t.storage_offset())
    last = sum((int(n) - 1) * abs(int(s)) for n, s in zip(t.shape, t.stride(), strict=True))
    return offset * size, (offset + last + 1) * size


def overlapping(ckpt: Checkpoint, names: Iterable[str]) -> tuple[str, str] | None:
    """Two tensors that share bytes of a storage one of ``names`` lives in without being the
    same view (a slice and its base, a transpose), or None. Pruning such a tensor would also
    change the other, and prune the shared weights twice."""
    chosen = set(names)
    by_storage: dict[int, list[tuple[tuple[int, int], str]]] = {}
    for name, t in ckpt.tensors.items():
        if t.device.type == "meta" or t.numel() == 0 or name in ckpt.aliases:
            continue
        by_storage.setdefault(t.untyped_storage().data_ptr(), []).append((_extent(t), name))
    for views in by_storage.values():
        if not chosen.intersection(name for _, name in views):
            continue
        views.sort()  # by start: if any two overlap, two neighbours do
        for ((_, end), a), ((start, _), b) in itertools.pairwise(views):
            if start < end:
                return a, b
    return None


def load(path: str | os.PathLike[str]) -> Checkpoint:
    """Load a safetensors or PyTorch checkpoint onto the CPU.

    Raises:
        CheckpointError: the file is missing, unreadable, corrupt, not weights-only, or holds
            no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        if _is_safetensors(path):
            st = _safetensors()
            try:
                with st.safe_open(str(path), framework="pt") as f:
                    metadata = f.metadata()
                    tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
            except CheckpointError:
                raise
            except Exception as e:
                raise CheckpointError(
                    f"{path}: not a valid safetensors file ({_reason(e)})"
                ) from None
            ckpt = Checkpoint("safetensors", tensors, metadata=dict(metadata) if metadata else None)
        else:
            try:
                tree = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as e:
                raise CheckpointError(
                    f"{path}: not a safetensors file or a weights-only PyTorch checkpoint "
                    f"({_reason(e)})"
                ) from None
            tensors: dict[str, torch.Tensor] = {}
            _walk(tree, "", tensors)
            ckpt = Checkpoint("torch", tensors, tree=tree)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    if not ckpt.tensors:
        raise CheckpointError(
            f"{path}: the file holds no tensors, so there is nothing to prune or report"
        )
    ckpt.aliases = _aliases(ckpt.tensors)
    return ckpt


def _reason(e: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(e))  # terminal colour codes
    if "Weights only load failed" in text:
        return (
            "it pickles Python objects besides tensors, e.g. a whole model saved with "
            "torch.save(model); save model.state_dict() instead (fprune never unpickles code)"
        )
    text = " ".join(text.split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def save(ckpt: Checkpoint, path: str | os.PathLike[str]) -> None:
    """Write ``ckpt`` to ``path`` in its own format, atomically (a temporary file, then a rename).

    Raises:
        CheckpointError: the file cannot be written; nothing is left at ``path``.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CheckpointError(f"{path}: the folder {parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as e:  # a folder we may not write in
        raise CheckpointError(f"{path}: cannot write in {parent} ({e.strerror or e})") from None
    os.close(fd)
    try:
        if ckpt.format == "safetensors":
            tensors = {k: v.contiguous() for k, v in ckpt.tensors.items()}
            _safetensors().torch.save_file(tensors, tmp, metadata=ckpt.metadata)
        else:
            torch.save(ckpt.tree, tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CheckpointError(f"{path}: cannot write ({e.strerror or e})") from None
        raise


def check_output(
    source: str | os.PathLike[str], output: str | os.PathLike[str], fmt: str, *, force: bool
) -> None:
    """Refuse to overwrite the input or an existing file (unless ``force``), or to write a
    misleading suffix.

    Raises:
        CheckpointError: with the flag or name that fixes it.
    """
    source, output = Path(source), Path(output)
    suffix = output.suffix.lower()
    if fmt == "safetensors" and suffix in _TORCH_SUFFIXES:
        raise CheckpointError(
            f"{output}: the input is safetensors, so the output is too; name it *.safetensors"
        )
    if fmt == "torch" and suffix == ".safetensors":
        raise CheckpointError(
            f"{output}: the input is a PyTorch checkpoint, so the output is too; "
            "name it *.pt or *.bin"
        )
    if output.exists() and not force:
        same = output.resolve() == source.resolve() or os.path.samefile(source, output)
        what = "is the input file" if same else "exists"
        raise CheckpointError(f"{output}: {what}; pass --force to overwrite it")


def eligible(t: torch.Tensor) -> bool:
    """Whether a tensor can be pruned: floating, with 2 or more dims."""
    return t.is_floating_point() and t.ndim >= 2


def select(
    ckpt: Checkpoint, *, include: Iterable[str] = (), exclude: Iterable[str] | None = None
) -> Selection:
    """Choose the tensors to prune.

    By default: every floating tensor with 2 or more dims except what
    :mod:`fprune.dense_rule` leaves dense (names holding :data:`DEFAULT_EXCLUDE`,
    case-insensitive, and the file's output layer). ``include`` (regexes, any may match with
    ``re.search``) replaces that name test: exactly the matching eligible tensors are chosen.
    ``exclude`` (regexes) leaves matching names dense, in place of :data:`DEFAULT_EXCLUDE`.
    Aliases of a chosen tensor are pruned with it, so they are skipped.

    Raises:
        CheckpointError: a regex does not compile, or nothing is chosen.
    """
    inc = _compile("--include", include)
    if exclude is not None:
        exc = _compile("--exclude", exclude)
    elif inc:  # an explicit choice by name is not second-guessed by the default exclusions
        exc = []
    else:
        exc = [re.compile(re.escape(w), re.IGNORECASE) for w in DEFAULT_EXCLUDE]
    names, skipped = [], {}
    output = None if inc or exclude is not None else _output_layer(ckpt)
    for name, t in ckpt.tensors.items():
        if name == output:
            skipped[name] = "the output layer: the last 2-D weight in module order"
            continue
        if inc and not any(p.search(name) for p in inc):
            continue
        hit = next((p for p in exc if p.search(name)), None)
        if hit is not None:
            if eligible(t):
                skipped[name] = f"name matches the exclusion {hit.pattern!r}"
            continue
        if t.device.type == "meta" and eligible(t):
            skipped[name] = "on the meta device: it has no values to prune"
            continue
        if not eligible(t):
            if inc:
                skipped[name] = (
                    f"not a floating tensor with 2+ dims "
                    f"({str(t.dtype).removeprefix('torch.')}, shape {tuple(t.shape)})"
                )
            continue
        if name in ckpt.aliases:
            skipped[name] = f"shares storage with {ckpt.aliases[name]}, pruned with it"
            continue
        names.append(name)
    if not names:
        raise CheckpointError(
            "no tensor was selected for pruning: the default takes floating tensors with 2+ dims "
            f"whose names contain none of {', '.join(DEFAULT_EXCLUDE)}; choose with --include REGEX"
        )
    return Selection(tuple(names), skipped)


def _output_layer(ckpt: Checkpoint) -> str | None:
    return file_output_layer(
        n
        for n, t in ckpt.tensors.items()
        if eligible(t) and n not in ckpt.aliases and t.device.type != "meta"
    )


def _compile(flag: str, patterns: Iterable[str]) -> list[re.Pattern[str]]:
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise CheckpointError(f"{flag} {p!r} is not a valid regular expression ({e})") from None
    return out


def prune(
    ckpt: Checkpoint,
    names: Iterable[str],
    *,
    pattern: str,
    sparsity: float,
    scope: str = "local",
    criterion: str = "magnitude",
    max_layer_sparsity: float = 0.98,
    progress: Callable[[Iterable[str]], Iterable[str]] = lambda it: it,
) -> dict[str, str]:
    """Prune ``names`` of ``ckpt`` one-shot, in place; return ``{name: why}`` for layers left dense.

    Layers the pattern does not divide are left dense and returned. Local scope scores and
    selects one layer at a time (memory of one layer), each layer exactly ``sparsity``; global
    scope scores every layer, then selects once, each layer at most ``max_layer_sparsity``.
    8-bit float tensors are scored in float32 and written back in their dtype. ``progress``
    wraps the per-layer loops (e.g. a tqdm bar).

    Raises:
        ValueError: bad pattern, sparsity, scope (fprune's own messages).
        CheckpointError: a criterion that needs gradients, nothing divisible to prune, or a
            chosen tensor that shares storage with another without being the same view.
    """
    import fprune

    if criterion != "magnitude":
        fprune.get_criterion(criterion)  # an unknown name raises with a suggestion
        raise CheckpointError(
            f"--criterion {criterion} needs gradients, which a checkpoint does not hold; "
            "use --criterion magnitude, or prune in your training loop with fprune.pruner"
        )
    names = list(names)
    shared = overlapping(ckpt, names)
    if shared is not None:
        raise CheckpointError(
            f"{shared[0]} and {shared[1]} share storage without being the same view, so pruning "
            "one would change the other; save them as separate tensors (clone one) and retry"
        )
    params = {n: ckpt.tensors[n] for n in names}
    left = dict.fromkeys(
        fprune.indivisible_layers(params, pattern=pattern), f"{pattern} does not divide it"
    )
    names = [n for n in names if n not in left]
    if not names:
        raise CheckpointError(
            f"no selected tensor is divisible by the pattern {pattern}; nothing was pruned"
        )
    with torch.no_grad():  # a saved nn.Parameter loads as a leaf that requires grad
        if scope == "local":  # every layer exactly its share: no per-layer cap applies
            for name in progress(names):
                w = ckpt.tensors[name]
                mask = fprune.masks(
                    {name: _score(w)},
                    pattern=pattern,
                    sparsity=sparsity,
                    scope="local",
                    max_layer_sparsity=1.0,
                )[name]
                _zero(w, mask)
        else:
            scores = {n: _score(ckpt.tensors[n]) for n in progress(names)}
            masks = fprune.masks(
                scores,
                pattern=pattern,
                sparsity=sparsity,
                scope=scope,
                max_layer_sparsity=max_layer_sparsity,
            )
            del scores
            for name in progress(names):
                _zero(ckpt.tensors[name], masks[name])
    return left


_SCORED = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _score(w: torch.Tensor) -> torch.Tensor:
    """``|w|``; 8-bit floats in float32 (the selection does not take them; exact)."""
    return w.abs() if w.dtype in _SCORED else w.float().abs()


def _zero(w: torch.Tensor, mask: torch.Tensor) -> None:
    """Pruned weights to 0 in place; not a multiply, so a pruned NaN or inf becomes 0 too.
    8-bit floats through float32 and back, which is exact for every value."""
    if w.dtype in _SCORED:
        w.masked_fill_(~mask, 0)
    else:
        w.copy_(w.float().masked_fill_(~mask, 0).to(w.dtype))
