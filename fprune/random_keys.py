"""Counter-based random keys: a pure function of (seed, step, stream, index).

SET grows pruned weights at random, and a sparse-from-scratch run starts from random masks.
Both need randomness that ``torch.compile`` traces, that ``vmap`` maps over a batch of seeds,
that every rank of a sharded run computes alike for its own rows, and that a resumed run
repeats bit for bit. A ``torch.Generator`` does none of that, so the keys here are a hash of
their inputs, in integer tensor math only.

The mixer is a 32-bit integer hash (xorshift-multiply, constants below 2**31 so every product
fits in int64 without overflow). The seed and step are mixed in 32 bits at a time into one
0-d state; each key is then one mixing round of ``state + index``.
"""

from __future__ import annotations

import torch

__all__ = ["random_keys", "stream_id", "uniform_scores"]

_LOW32 = 0xFFFFFFFF
_MULTIPLIERS = (0x21F0AAAD, 0x735A2D97)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche of int64 values in ``[0, 2**32)`` (the result is in that range)."""
    x = x ^ (x >> 16)
    x = (x * _MULTIPLIERS[0]) & _LOW32
    x = x ^ (x >> 15)
    x = (x * _MULTIPLIERS[1]) & _LOW32
    return x ^ (x >> 15)


def _absorb(state: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Mix a 64-bit ``value`` into a 32-bit ``state``, low half then high half."""
    low = value & _LOW32
    high = (value >> 32) & _LOW32
    state = _mix((state + low) & _LOW32)
    return _mix((state ^ high) & _LOW32)


def stream_id(name: str) -> int:
    """A stable 32-bit number for a layer name (Python's ``hash`` is salted per process).

    Example:
        >>> stream_id("fc.weight") == stream_id("fc.weight"), 0 <= stream_id("a") < 2**32
        (True, True)
    """
    value = 0x811C9DC5  # FNV-1a, 32 bits
    for byte in name.encode():
        value = ((value ^ byte) * 0x01000193) & _LOW32
    return value


def random_keys(
    seed: torch.Tensor,
    step: torch.Tensor,
    stream: int,
    numel: int,
    *,
    offset: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Keys in ``[0, 2**32)`` for the flat indices ``offset .. offset + numel - 1``.

    Args:
        seed: int64 0-d tensor (batched under ``vmap``).
        step: int64 0-d tensor, the step counter (a new draw every step).
        stream: a Python int separating independent draws (e.g. :func:`stream_id` of a layer).
        numel: how many keys.
        offset: the global flat index of the first key (a shard's start).
        device: where the keys live.

    Returns:
        int64 tensor ``[numel]``; equal inputs give equal keys on every device.

    Example:
        >>> k = random_keys(torch.tensor(0), torch.tensor(3), stream_id("w"), 4)
        >>> torch.equal(k, random_keys(torch.tensor(0), torch.tensor(3), stream_id("w"), 4))
        True
        >>> torch.equal(k[2:], random_keys(torch.tensor(0), torch.tensor(3), stream_id("w"), 2,
        ...                                offset=2))
        True
    """
    index = torch.arange(offset, offset + numel, dtype=torch.int64, device=device)
    start = torch.full((), stream & _LOW32, dtype=torch.int64, device=device)
    state = _absorb(start, seed.to(device=device, dtype=torch.int64))
    state = _absorb(state, step.to(device=device, dtype=torch.int64))
    keys = _mix((state + index) & _LOW32)  # one round per key: the cost is in this pass
    if offset + numel > 1 << 32:  # indices past 32 bits: their high half too
        keys = _mix(keys ^ ((index >> 32) & _LOW32))
    return keys


def uniform_scores(keys: torch.Tensor) -> torch.Tensor:
    """:func:`random_keys` as float32 scores in ``[0, 1)``: their top 24 bits, exactly.

    Example:
        >>> uniform_scores(torch.tensor([0, 2**32 - 1])).tolist()
        [0.0, 0.9999999403953552]
    """
    return (keys >> 8).to(torch.float32) / (1 << 24)
