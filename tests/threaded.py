"""Run a function on several threads that share :class:`fprune._sharded.select.Comm` collectives.

Each thread plays one rank of a sharded selection: ``sum`` and ``before`` meet at a barrier
and combine what every thread contributed. It checks the selection's arithmetic on any
split of the units in one process, quickly enough for hypothesis; the process-group tests
(``test_distributed.py``) check the real collectives.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any

import torch


class _Meeting:
    def __init__(self, world: int) -> None:
        self.world = world
        self.barrier = threading.Barrier(world)
        self.slots: list[Any] = [None] * world
        self.calls = 0  # collectives run (counted by rank 0)

    def exchange(self, rank: int, t: torch.Tensor) -> list[torch.Tensor]:
        self.slots[rank] = t.clone()
        self.barrier.wait()
        parts = list(self.slots)
        if rank == 0:
            self.calls += 1
        self.barrier.wait()  # nobody overwrites a slot before all have read
        return parts


class ThreadComm:
    """One rank's view of a :class:`_Meeting`."""

    def __init__(self, meeting: _Meeting, rank: int) -> None:
        self.meeting, self.rank = meeting, rank

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.meeting.exchange(self.rank, t)).sum(0)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.meeting.exchange(self.rank, t))

    def before(self, t: torch.Tensor) -> torch.Tensor:
        return self.gather(t)[: self.rank].sum(0)


def run_ranks(world: int, fn: Callable[[ThreadComm, int], Any]) -> tuple[list[Any], int]:
    """``fn(comm, rank)`` on ``world`` threads; their results in rank order, and the number
    of collectives they ran."""
    meeting = _Meeting(world)
    results: list[Any] = [None] * world
    errors: list[BaseException] = []

    def body(rank: int) -> None:
        try:
            results[rank] = fn(ThreadComm(meeting, rank), rank)
        except BaseException as e:
            errors.append(e)
            meeting.barrier.abort()

    # each thread runs in a copy of this context: settings made here (fprune._tuning.tuned) hold
    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(body, r))
        for r in range(world)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results, meeting.calls
