"""One-shot pruning of a Hugging Face model folder (``fprune oneshot``; the ``oneshot`` extra).

The folder's model is loaded with the class its config names (so a task head stays), pruned
with :func:`fprune.nn.oneshot` on calibration windows of text, and saved with
``save_pretrained`` beside its tokenizer; the folder's other files (a sentence-transformers
pooling config, a README) are copied, old weight files excepted.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable
from typing import Any

import torch

from fprune import _errors, posttrain
from fprune.blockwise import LayerReport, oneshot
from fprune.checkpoint_folder import WEIGHT_SUFFIXES, copy_other_files

__all__ = [
    "MissingTransformers",
    "calibration_batches",
    "load",
    "prune_folder",
    "require_transformers",
]

# save_pretrained writes the weights and, when sharded, its own index
_SKIP = (*WEIGHT_SUFFIXES, ".index.json")


class MissingTransformers(RuntimeError):
    """``transformers`` is not installed; the message says how to install it."""


def require_transformers() -> Any:
    """Import transformers, or raise :class:`MissingTransformers` naming the extra."""
    try:
        import transformers
    except ImportError:
        raise MissingTransformers(
            "one-shot pruning of a model folder needs transformers; install the oneshot extra: "
            "pip install 'fprune[oneshot]'"
        ) from None
    return transformers


def load(model_dir: str | os.PathLike[str]) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a Hugging Face model folder, the model of the class its
    config's ``architectures`` names (``AutoModel`` when it names none), in eval mode."""
    transformers = require_transformers()
    path = pathlib.Path(model_dir)
    if not (path / "config.json").is_file():
        raise _errors.value_error(
            "oneshot",
            "MODEL_DIR must be a Hugging Face model folder with a config.json",
            str(path),
            "Pass a folder written by save_pretrained.",
        )
    config = transformers.AutoConfig.from_pretrained(path)
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    hf_logging = transformers.utils.logging
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # fprune shows its own bar over the blocks
    try:
        model = (cls or transformers.AutoModel).from_pretrained(path)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model.eval(), transformers.AutoTokenizer.from_pretrained(path)


def calibration_batches(
    tokenizer: Any,
    text: str,
    *,
    samples: int = 128,
    seq_len: int = 128,
    batch_size: int = 16,
) -> list[dict[str, torch.Tensor]]:
    """Up to ``samples`` windows of ``seq_len`` tokens (the tokenizer's special tokens
    included) cut from ``text`` in order, without padding, in batches of ``batch_size``."""
    samples = _errors.positive_int("oneshot", "samples", samples)
    batch_size = _errors.positive_int("oneshot", "batch_size", batch_size)
    prefix, suffix = _special_tokens(tokenizer)
    special = len(prefix) + len(suffix)
    body = _errors.positive_int("oneshot", "seq_len", seq_len, minimum=special + 1) - special
    ids: list[int] = []
    for line in text.splitlines():  # a line at a time: no warning about over-long inputs
        if line.strip():
            ids += tokenizer(line, add_special_tokens=False)["input_ids"]
    count = min(samples, len(ids) // body)
    if count == 0:
        raise _errors.value_error(
            "oneshot",
            f"the calibration text is shorter than one window of {seq_len} tokens",
            _errors.detail(f"{len(ids)} tokens"),
            "Pass more text or a smaller --seq-len.",
        )
    windows = [prefix + ids[i * body : (i + 1) * body] + suffix for i in range(count)]
    rows = torch.tensor(windows, dtype=torch.long)
    return [
        {"input_ids": part, "attention_mask": torch.ones_like(part)}
        for part in rows.split(batch_size)
    ]


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text (BERT: ``[CLS]`` and ``[SEP]``)."""
    plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []


def _check_output(model_dir: pathlib.Path, out_dir: pathlib.Path, force: bool) -> None:
    if out_dir.resolve() == model_dir.resolve():
        raise _errors.value_error(
            "oneshot", "OUT_DIR is MODEL_DIR", str(out_dir), "Write the pruned model elsewhere."
        )
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise _errors.value_error(
            "oneshot",
            "OUT_DIR exists and is not empty",
            str(out_dir),
            "Choose a new folder or pass --force.",
        )


def prune_folder(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    texts: Iterable[str],
    *,
    method: str,
    sparsity: float | None,
    pattern: str,
    samples: int = 128,
    seq_len: int = 128,
    batch_size: int = 16,
    force: bool = False,
    progress: bool | None = None,
) -> tuple[dict[str, LayerReport], list[str]]:
    """Prune a model folder one-shot into ``out_dir``; the report and the other files copied."""
    posttrain.resolve(method, sparsity, pattern, func="oneshot")  # before the slow part
    source, target = pathlib.Path(model_dir), pathlib.Path(out_dir)
    _check_output(source, target, force)
    model, tokenizer = load(source)
    longest = getattr(model.config, "max_position_embeddings", None)
    if isinstance(longest, int) and seq_len > longest:
        raise _errors.value_error(
            "oneshot",
            f"seq_len is longer than the model's {longest} positions",
            seq_len,
            f"Pass --seq-len {longest} or less.",
        )
    batches = calibration_batches(
        tokenizer, "\n".join(texts), samples=samples, seq_len=seq_len, batch_size=batch_size
    )
    report = oneshot(
        model, batches, method=method, sparsity=sparsity, pattern=pattern, progress=progress
    )
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return report, copy_other_files(source, target, skip=_SKIP)
