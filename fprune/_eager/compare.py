"""One pass of a layer's scores against a bracket ``[a, b]``, and the scan for its candidates
(private to the accelerator)."""

from __future__ import annotations

import torch

__all__ = ["compare_into", "indices"]


def indices(mask: torch.Tensor) -> torch.Tensor:
    """``mask.nonzero()`` of a sparse flat bool tensor (the ~1% candidates), in index order.

    The mask is scanned 8 bytes at a time as int64 words; only the words with a set byte are
    looked into, instead of every byte.
    """
    n = mask.numel()
    head = n - n % 8
    if head == 0 or mask.storage_offset() % 8:
        return mask.nonzero().squeeze(1)
    packed = mask[:head].view(torch.int64)
    words = torch.nonzero(packed).squeeze(1)
    word, byte = packed.index_select(0, words).view(torch.uint8).view(-1, 8).nonzero().unbind(1)
    idx = words.index_select(0, word).mul_(8).add_(byte)
    if head < n:
        idx = torch.cat([idx, mask[head:].nonzero().squeeze(1) + head])
    return idx


def compare_into(
    sure: torch.Tensor,
    inside: torch.Tensor,
    score: torch.Tensor,
    lo_end: float,
    hi_end: float,
    buf: torch.Tensor | None,
) -> int | None:
    """``sure = score > hi_end`` and ``inside = lo_end <= score <= hi_end`` (bool, flat);
    returns the number of True in ``sure`` when it comes cheaply (with ``buf``), else None.

    A comparison writing bool runs a scalar loop on the CPU; written in the scores' own
    floating dtype (0 or 1) it is vectorized, and the copy to bool is cheap. So with ``buf``
    (of the scores' dtype, for contiguous scores) each chunk of ``buf.numel()`` scores is
    compared into it while it stays in cache, and copied. The count is then the sum of each
    chunk's 0s and 1s (exact: a chunk is far below 2^24, and 16-bit chunks are summed in
    float32), cheaper than a ``count_nonzero`` over the bool result. NaN fails both
    comparisons.
    """
    if buf is None:
        torch.gt(score, hi_end, out=sure)
        torch.ge(score, lo_end, out=inside)
        count = None
    else:
        step, wide = buf.numel(), torch.float32 if buf.element_size() < 4 else None
        sums = []
        for start in range(0, score.numel(), step):
            end = min(start + step, score.numel())
            part, out = score[start:end], buf[: end - start]
            sure[start:end].copy_(torch.gt(part, hi_end, out=out))
            sums.append(out.sum(dtype=wide))
            inside[start:end].copy_(torch.ge(part, lo_end, out=out))
        count = sum(int(s) for s in sums)
    inside ^= sure  # lo <= score <= hi: score > hi implies score >= lo (lo <= hi, NaN in neither)
    return count
