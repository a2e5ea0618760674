"""Turning masks into a payoff: compressed checkpoints, slimmer models, sparse kernels.

- :func:`compress` / :func:`decompress` (:mod:`fprune.export.compressed`): kept values plus
  a packed bitmask or packed N:M indices, exactly invertible.
- :func:`slim` (:mod:`fprune.export.slimming`): a copy of a model without its pruned
  channels and heads, computing what the masked model computes; :func:`coupled_masks`
  (:mod:`fprune.export.coupled`) prunes coupled channels together. Both read Torch-Pruning's
  dependency graph (the ``export`` extra), imported only when called.
- :func:`to_sparse` / :func:`sparsify_linears_` (:mod:`fprune.export.sparse_layouts`):
  torch's CSR, BSR and 2:4 semi-structured layouts for inference.
"""

from __future__ import annotations

from fprune.export.compressed import (
    compress,
    compressed_masks,
    compressed_size,
    decompress,
    is_compressed,
)
from fprune.export.coupled import coupled_masks
from fprune.export.groups import MissingTorchPruning
from fprune.export.slimming import SlimReport, slim
from fprune.export.sparse_layouts import LAYOUTS, sparsify_linears_, to_sparse

__all__ = [
    "LAYOUTS",
    "MissingTorchPruning",
    "SlimReport",
    "compress",
    "compressed_masks",
    "compressed_size",
    "coupled_masks",
    "decompress",
    "is_compressed",
    "slim",
    "sparsify_linears_",
    "to_sparse",
]
