"""What stays dense by default: one rule for ``nn.prunable``, ``fprune prune``, the callbacks
and the demo.

A weight stays dense by default when

1. its name holds one of :data:`DENSE_NAMES` (case-insensitive): embeddings (``embed``,
   GPT-2's ``wte`` / ``wpe``), poolers (``pooler``) and heads (``lm_head``, ``classifier``);
2. or it is the output layer: in a model, the last registered module when it is a Linear or
   conv (INC's classifier-head rule); in a checkpoint file, which has no modules, the last
   2-D weight in module order (dotted names compared part by part, numbers as numbers),
   only when the file holds two or more such weights and none is named like a head or
   pooler.

Override it: ``nn.prunable(model, exclude_head=False)`` prunes every Linear and conv (then
``excluded_op_names`` says what stays dense); ``fprune prune --include REGEX`` chooses exactly
the weights to prune and ``--exclude REGEX`` replaces the rule; the callbacks take
``names=``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["DENSE_NAMES", "HEAD_NAMES", "dense_name", "file_output_layer", "module_order"]

DENSE_NAMES = ("embed", "wte", "wpe", "pooler", "lm_head", "classifier")
"""Name fragments (case-insensitive) of the weights that stay dense by default."""

HEAD_NAMES = ("pooler", "lm_head", "classifier")
"""The fragments that name an output layer; a file holding one has no positional rule."""


def dense_name(name: str) -> str | None:
    """The fragment of :data:`DENSE_NAMES` that ``name`` holds, or None.

    Example:
        >>> dense_name("bert.pooler.dense.weight"), dense_name("encoder.0.fc1.weight")
        ('pooler', None)
    """
    lowered = name.lower()
    return next((fragment for fragment in DENSE_NAMES if fragment in lowered), None)


def module_order(name: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key for dotted names in module order: parts compared in turn, numbers as
    numbers (``"layers.10"`` after ``"layers.9"``).

    Example:
        >>> sorted(["fc.10.weight", "fc.9.weight", "fc.1.weight"], key=module_order)
        ['fc.1.weight', 'fc.9.weight', 'fc.10.weight']
    """
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"\.", name))


def file_output_layer(names: Iterable[str]) -> str | None:
    """The output layer among the 2-D weight names of a checkpoint file: the last in module
    order, unless a name holds one of :data:`HEAD_NAMES` (then the name rule finds it) or
    there is only one (a single layer is what there is to prune).

    Example:
        >>> file_output_layer(["0.weight", "3.weight", "7.weight"])
        '7.weight'
        >>> file_output_layer(["encoder.0.weight", "pooler.dense.weight"]) is None
        True
    """
    names = list(names)
    if len(names) < 2 or any(h in n.lower() for n in names for h in HEAD_NAMES):
        return None
    return max(names, key=module_order)
