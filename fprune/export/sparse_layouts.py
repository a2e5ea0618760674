"""Sparse kernels for inference: torch's CSR, BSR and 2:4 semi-structured layouts.

:func:`to_sparse` converts masked 2-D weights; :func:`sparsify_linears_` swaps a model's
Linear weights for them in place, so that ``F.linear`` runs torch's sparse kernels. Which
layout pays, and from what sparsity, depends on the machine: ``benchmarks/bench_inference.py``
measures it, and ``docs/export.md`` has the table. The semi-structured layout needs CUDA and
a 2:4 mask (two of every four consecutive inputs pruned).

Run sparse models under ``torch.no_grad()``: with torch 2.13, ``F.linear`` with a CSR weight
fails under ``torch.inference_mode()`` ("Cannot set version_counter for inference tensor").
On the CPU, torch's BSR kernels (MKL) take square blocks only.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from fprune import _errors
from fprune.report import pattern_violation

__all__ = ["LAYOUTS", "sparsify_linears_", "to_sparse"]

LAYOUTS = ("csr", "bsr", "semi_structured")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence torch's once-per-process notice that its sparse CSR/BSR support is beta."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Sparse (CSR|BSR|CSC|BSC) tensor support")
        yield


def _check_layout(layout: str, blocksize: Sequence[int], device: torch.device) -> None:
    _errors.choice("to_sparse", "layout", layout, LAYOUTS)
    if layout == "bsr" and (len(blocksize) != 2 or any(b < 1 for b in blocksize)):
        raise _errors.value_error(
            "to_sparse", "blocksize must be two positive ints", tuple(blocksize),
            "Pass e.g. blocksize=(16, 16).",
        )  # fmt: skip
    if layout == "bsr" and device.type == "cpu" and blocksize[0] != blocksize[1]:
        raise _errors.value_error(
            "to_sparse", "on the CPU, torch's BSR kernels take square blocks only",
            tuple(blocksize), "Pass e.g. blocksize=(16, 16), or use layout='csr'.",
        )  # fmt: skip
    if layout == "semi_structured" and device.type != "cuda":
        raise _errors.value_error(
            "to_sparse", "the semi_structured layout runs on CUDA only", str(device),
            "Move the weights to a CUDA device, or use layout='csr' or 'bsr' on the CPU.",
        )  # fmt: skip


def _convert(
    name: str, weight: torch.Tensor, layout: str, blocksize: Sequence[int]
) -> torch.Tensor:
    if weight.ndim != 2:
        raise _errors.value_error(
            "to_sparse", f"{name!r} is not a 2-D weight", tuple(weight.shape),
            "Sparse layouts hold Linear weights; leave conv weights and biases out.",
        )  # fmt: skip
    if layout == "csr":
        return weight.to_sparse_csr()
    if layout == "bsr":
        rows, cols = blocksize
        if weight.shape[0] % rows or weight.shape[1] % cols:
            raise _errors.value_error(
                "to_sparse", f"blocksize does not tile {name!r}",
                _errors.detail(f"blocksize {tuple(blocksize)}, weight {tuple(weight.shape)}"),
                "Pass a blocksize that divides the weight's shape.",
            )  # fmt: skip
        return weight.to_sparse_bsr((rows, cols))
    where = pattern_violation(weight, pattern="2:4")
    if where is not None:
        raise _errors.value_error(
            "to_sparse", f"{name!r} does not follow 2:4 (needed by semi_structured)", where,
            "Prune it with pattern='2:4' at sparsity 0.5 first.",
        )  # fmt: skip
    return torch.sparse.to_sparse_semi_structured(weight)


def to_sparse(
    params: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
    *,
    layout: str = "csr",
    blocksize: Sequence[int] = (16, 16),
) -> dict[str, torch.Tensor]:
    """Sparse copies of 2-D weights, with ``masks`` (if given) applied first.

    Args:
        params: 2-D weights by name.
        masks: bool masks (True = kept) for some of them; the others are stored as they are
            (their zeros are dropped).
        layout: ``"csr"``, ``"bsr"`` (blocks of ``blocksize``; all-zero blocks are dropped)
            or ``"semi_structured"`` (2:4; CUDA, float16 or bfloat16).
        blocksize: the BSR block shape.

    Returns:
        The sparse tensors, same names; ``torch.nn.functional.linear`` accepts each.

    Example:
        >>> w = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
        >>> sparse = to_sparse({"w": w}, layout="csr")["w"]
        >>> sparse.layout, sparse.values().tolist()
        (torch.sparse_csr, [2.0])
    """
    _errors.tensor_dict("to_sparse", "params", params)
    if masks is not None:
        _errors.masks_for("to_sparse", masks, params)
    out = {}
    with _quiet():
        for name, weight in params.items():
            _check_layout(layout, blocksize, weight.device)
            weight = weight.detach()
            if masks is not None and name in masks:
                weight = weight * masks[name].to(weight.device)
            out[name] = _convert(name, weight, layout, blocksize)
    return out


def sparsify_linears_(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | None = None,
    *,
    layout: str = "csr",
    blocksize: Sequence[int] = (16, 16),
    names: Sequence[str] | None = None,
) -> list[str]:
    """Swap Linear weights for sparse ones in place (for inference: they no longer train).

    Args:
        model: the model.
        masks: bool masks by parameter name (``"fc.weight"``); applied first.
        layout, blocksize: as for :func:`to_sparse`.
        names: the Linear modules to convert (default: those ``masks`` names, or every
            Linear when ``masks`` is None).

    Returns:
        The names of the converted modules.
    """
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if names is None:
        names = [n for n in linears if masks is None or f"{n}.weight" in masks]
    unknown = [n for n in names if n not in linears]
    if unknown:
        raise _errors.value_error(
            "sparsify_linears_", "names must name Linear modules of the model", unknown[:5],
            "Pass module names from model.named_modules().",
        )  # fmt: skip
    weights = {f"{n}.weight": linears[n].weight for n in names}
    mine = None if masks is None else {k: v for k, v in masks.items() if k in weights}
    sparse = to_sparse(weights, mine or None, layout=layout, blocksize=blocksize) if weights else {}
    for name in names:
        linears[name].weight = nn.Parameter(sparse[f"{name}.weight"], requires_grad=False)
    return list(names)
