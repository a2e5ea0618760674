"""The sizes the eager accelerator (:mod:`fprune._eager`) and the sharded selection
(:mod:`fprune._sharded`) tune themselves by, and the one knob that changes them.

Every field is a speed setting only: any positive value gives the same masks. Tests shrink
them with :func:`tuned` so that hypothesis-sized inputs take the paths a large model takes
(strided samples, several chunks, candidates sorted in groups, brackets that miss), and turn
the accelerator off (``eager=False``) to compare it with the math at the dispatch point::

    with tuned(sample=16, alone_sample=8, compare_chunk=7):
        ...
    with tuned(eager=False):
        ...

:func:`tuned` sets them for the current context (a ``contextvars`` variable), so it is
undone on exit, also when the body raises, and does not leak into other threads.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

__all__ = ["Tuning", "current", "tuned"]


@dataclasses.dataclass(frozen=True)
class Tuning:
    """Sizes of the eager selection's samples, chunks and groups (see each field)."""

    eager: bool = True  # run the eager accelerator where it applies (False: always the math)
    # eager sample-and-settle selection (fprune._eager.settle)
    sample: int = 1 << 18  # scores sampled over all layers to bracket the threshold
    alone_sample: int = 1 << 14  # sampled from a layer bracketed or settled on its own
    local_sample: int = 1 << 16  # a local layer's sample at 2^21 units (scaled as size^(2/3))
    z: float = 4.5  # the bracket's half-width, in standard deviations of the sample quantile
    sampled_block: int = 64  # blocks up to this many weights are sampled from their weights
    compare_chunk: int = 1 << 19  # scores compared at a time through a buffer of their dtype
    key_group: int = 1 << 16  # candidate scores turned into keys together, about this many
    union_max: int = 1 << 18  # at most this many candidates are ordered in one sort
    order_group: int = 1 << 15  # small layers' candidates are ordered together, this many
    radix: int = 1 << 15  # torch sorts this many integers or more by radix, not comparisons
    pad_from: int = 5 << 10  # from this many integer keys, a sort pads them to ``radix``
    probes: int = 2048  # key values probed at once by the threshold search
    exact: int = 1024  # the search probes every distinct key once this few are left
    cut_rounds: int = 8  # rounds of guessing which layers the bounds hold
    # eager scoring (fprune._eager.scoring) and N:M (fprune._eager.nm)
    piece: int = 1 << 20  # weights of a 2-D block layer scored and reduced at a time
    nm_chunk: int = 1 << 20  # N:M groups ranked into packed words at a time
    # sharded selection (fprune._sharded.select)
    shard_sample: int = 1 << 14  # keys gathered over all layers to bracket the threshold
    shard_layer_sample: int = 1 << 10  # per layer, where each layer has its own threshold
    shard_density: int = 64  # sample only where there are this many units per sampled key
    shard_z: float = 6.0  # the sharded bracket's half-width in standard deviations


# the default is a frozen dataclass: immutable, so sharing it is safe
_CURRENT: contextvars.ContextVar[Tuning] = contextvars.ContextVar("fprune_tuning", default=Tuning())  # noqa: B039


def current() -> Tuning:
    """The sizes in force in this context."""
    return _CURRENT.get()


@contextlib.contextmanager
def tuned(**changes: float) -> Iterator[Tuning]:
    """Change some sizes of :class:`Tuning` inside a ``with`` block (tests only).

    Raises:
        TypeError: a name that is not a field of :class:`Tuning`.
    """
    token = _CURRENT.set(dataclasses.replace(current(), **changes))  # type: ignore[arg-type]
    try:
        yield current()
    finally:
        _CURRENT.reset(token)
