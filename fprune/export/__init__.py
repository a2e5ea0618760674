"""Turning masks into a payoff: compressed checkpoints, slimmer models, sparse kernels.

- :func:`compress` / :func:`decompress` (:mod:`fprune.export.compressed`): kept values plus
  a packed bitmask or packed N:M indices, exactly invertible.
"""

from __future__ import annotations

from fprune.export.compressed import (
    compress,
    compressed_masks,
    compressed_size,
    decompress,
    is_compressed,
)

__all__ = [
    "compress",
    "compressed_masks",
    "compressed_size",
    "decompress",
    "is_compressed",
]
