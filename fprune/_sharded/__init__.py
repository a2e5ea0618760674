"""Sharded parameters: ``DTensor`` params and grads placed ``Shard(0)`` on a 1-D device mesh.

This is the layout FSDP2's ``fully_shard`` gives every parameter: rank ``r`` of ``W`` holds
rows ``[r * c, min((r + 1) * c, R))`` of an ``R``-row weight, with ``c = ceil(R / W)``.
Rows are the rows of the 2-D view (:mod:`fprune.layout`), so every N:M group lies within
one rank, and so does every block whose row count divides ``c``; a block cut by a shard
boundary is rejected at ``init`` (scoring it would need its weights from two ranks).

The pruners unwrap ``DTensor`` inputs to their local shards, score and reduce them where
they are, and select with :class:`Collectives` (:mod:`fprune._sharded.select`): a gathered
sample of rank keys places a bracket, then per-layer counts, histograms (256 bins per layer
and radix digit) and tie counts are summed over the ranks. Nothing of weight size leaves a
rank. Masks and accumulators are wrapped back as ``DTensor`` with the
params' mesh and placements, so a state saves and loads per rank like any FSDP2 tensor.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch

from fprune import _errors
from fprune.layout import shape_2d
from fprune.patterns import NM, Pattern

__all__ = ["Collectives", "Sharding", "detect", "global_shapes", "meta", "rows_of"]

_Tensors = Mapping[str, torch.Tensor]


def _dtensor_type() -> type | None:
    """The ``DTensor`` class, or None while nothing has imported it (then no tensor can be
    one, and a plain-tensor run does not pay for importing it: about 40 MB of resident
    memory, and 0.006 byte per weight more at the peak of a 1x1 update on the workload)."""
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else module.DTensor


def rows_of(rows: int, world: int, rank: int) -> tuple[int, int]:
    """The ``[start, stop)`` rows that rank ``rank`` of ``world`` holds of an ``rows``-row
    tensor placed ``Shard(0)`` (``torch.chunk``'s split: shards of ``ceil(rows / world)``)."""
    chunk = -(-rows // world) if rows else 0
    start = min(rows, rank * chunk)
    return start, min(rows, start + chunk)


@dataclasses.dataclass(frozen=True)
class Collectives:
    """:class:`fprune._sharded.select.Comm` over the process group of a 1-D mesh."""

    group: Any
    rank: int
    world: int

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        torch.distributed.all_reduce(out, group=self.group)
        return out

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(self.world)]
        torch.distributed.all_gather(parts, t.contiguous(), group=self.group)
        return torch.stack(parts)

    def before(self, t: torch.Tensor) -> torch.Tensor:
        return self.gather(t)[: self.rank].sum(0)


@dataclasses.dataclass(frozen=True)
class Sharding:
    """The mesh and placements of a dict of ``Shard(0)`` DTensors, and this rank's place in it."""

    mesh: Any
    placements: tuple[Any, ...]
    rank: int
    world: int

    @property
    def comm(self) -> Collectives:
        return Collectives(self.mesh.get_group(), self.rank, self.world)

    def local(self, tensors: _Tensors) -> dict[str, torch.Tensor]:
        """Each DTensor's local shard (a view, no copy)."""
        return {n: cast(Any, t).to_local() for n, t in tensors.items()}

    def wrap(self, local: _Tensors, shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
        """Local shards as DTensors of the given global shapes, on this mesh and placements."""
        from torch.distributed.tensor import DTensor

        out = {}
        for name, t in local.items():
            shape = torch.Size(shapes[name])
            out[name] = DTensor.from_local(
                t,
                self.mesh,
                self.placements,
                run_check=False,
                shape=shape,
                stride=_contiguous_stride(shape),
            )
        return out

    def check_units(self, func: str, shapes: Mapping[str, Sequence[int]], pattern: Pattern) -> None:
        """Raise if a shard boundary cuts a block of ``pattern`` in a layer of ``shapes``."""
        if isinstance(pattern, NM) or self.world == 1:
            return  # N:M groups run along a row; one rank holds whole layers
        for name, shape in shapes.items():
            rows = shape_2d(shape)[0]
            block_rows = pattern.block_shape(shape_2d(shape))[0]
            chunk = rows_of(rows, self.world, 0)[1]
            if chunk < rows and chunk % block_rows:
                if getattr(pattern, "rows", 0) is None:
                    fix = (
                        f"{str(pattern)!r} blocks span all rows of a layer, which Shard(0) splits; "
                        "use blocks within a shard's rows (e.g. '1xchannel', '1x4') or an N:M "
                        "pattern, or leave the layer out."
                    )
                else:
                    cols = pattern.block_shape(shape_2d(shape))[1]
                    fix = (
                        f"Shard(0) splits rows every ceil(rows / ranks) = {chunk}; use blocks "
                        f"whose row count divides {chunk} (e.g. '1x{cols}' "
                        "or an N:M pattern), or shard over a number of ranks for which it does, "
                        "or leave the layer out."
                    )
                raise _errors.value_error(
                    func,
                    f"a shard boundary cuts the {str(pattern)!r} blocks of layer {name!r}",
                    _errors.detail(
                        f"{rows} rows in shards of {chunk} rows over {self.world} ranks; "
                        f"blocks of {block_rows} rows"
                    ),
                    fix,
                )


def _contiguous_stride(shape: torch.Size) -> tuple[int, ...]:
    stride, step = [], 1
    for side in reversed(shape):
        stride.append(step)
        step *= max(int(side), 1)
    return tuple(reversed(stride))


def detect(func: str, groups: Mapping[str, _Tensors | None]) -> Sharding | None:
    """The sharding of the DTensors in ``groups`` (argument name -> tensors), or None if they
    are all plain tensors. Raises unless every tensor is a ``Shard(0)`` DTensor of one 1-D mesh
    with ``torch.chunk``'s row split."""
    dtensor = _dtensor_type()
    if dtensor is None:
        return None
    items: list[tuple[str, str, Any]] = [
        (arg, name, t) for arg, tensors in groups.items() if tensors for name, t in tensors.items()
    ]
    sharded = [(arg, name, t) for arg, name, t in items if isinstance(t, dtensor)]
    if not sharded:
        return None
    plain = [f"{arg}[{name!r}]" for arg, name, t in items if not isinstance(t, dtensor)]
    if plain:
        raise _errors.type_error(
            func,
            "DTensor and plain tensors are mixed",
            _errors.detail(", ".join(plain[:3])),
            "Pass every param, grad and state tensor of one run as DTensors on one mesh (as "
            "fully_shard makes them), or all as plain tensors; a state from init on plain "
            "params does not step sharded params.",
        )
    arg, name, first = sharded[0]
    if torch.compiler.is_compiling():
        raise _errors.value_error(
            func,
            "sharded (DTensor) inputs are pruned in eager calls only",
            _errors.detail(f"{arg}[{name!r}]"),
            "Call it outside torch.compile when params are DTensors.",
        )
    mesh = first.device_mesh
    if mesh.ndim != 1:
        raise _errors.value_error(
            func,
            f"{arg}[{name!r}] lies on a {mesh.ndim}-D device mesh",
            _errors.detail(str(mesh)),
            "Sharded pruning supports 1-D meshes (FSDP2 fully_shard over one group of ranks).",
        )
    rank, world = mesh.get_local_rank(), mesh.size()
    from torch.distributed.tensor import Shard

    for arg, name, t in sharded:
        if t.device_mesh != mesh:
            raise _errors.value_error(
                func,
                f"{arg}[{name!r}] lies on another device mesh",
                _errors.detail(str(t.device_mesh)),
                f"Put every tensor on one mesh ({mesh}).",
            )
        if tuple(t.placements) != (Shard(0),):
            raise _errors.value_error(
                func,
                f"{arg}[{name!r}] is not placed Shard(0)",
                _errors.detail(str(tuple(t.placements))),
                "Sharded pruning needs rows split across ranks, as fully_shard does: "
                "t.redistribute(placements=[Shard(0)]).",
            )
        start, stop = rows_of(t.shape[0], world, rank)
        local = tuple(t.to_local().shape)
        if local != (stop - start, *t.shape[1:]):
            raise _errors.value_error(
                func,
                f"the local shard of {arg}[{name!r}] is not torch.chunk's split of its rows",
                _errors.detail(f"shape {local} on rank {rank} of {world}; global {tuple(t.shape)}"),
                f"Rank {rank} must hold rows {start}..{stop}: build it with distribute_tensor or "
                "fully_shard rather than DTensor.from_local with custom sizes.",
            )
    return Sharding(mesh, tuple(first.placements), rank, world)


def global_shapes(
    shapes: Mapping[str, Sequence[int]], local: _Tensors, sharding: Sharding, func: str, what: str
) -> dict[str, tuple[int, ...]]:
    """Check that ``local`` tensors are this rank's ``Shard(0)`` rows of ``shapes``; return them."""
    out = {}
    for name, t in local.items():
        shape = tuple(int(s) for s in shapes[name])
        start, stop = rows_of(shape[0], sharding.world, sharding.rank)
        if tuple(t.shape) != (stop - start, *shape[1:]):
            raise _errors.value_error(
                func,
                f"{what} for {name!r} is not sharded like its weight",
                _errors.detail(f"local {tuple(t.shape)} on rank {sharding.rank}; global {shape}"),
                "A criterion used on sharded params must keep one row of state per weight row "
                "(or per block row), as the built-in criteria do.",
            )
        out[name] = shape
    return out


def meta(tensors: _Tensors) -> dict[str, torch.Tensor]:
    """Storage-free stand-ins of the global tensors (to learn a criterion's state shapes)."""
    return {n: torch.empty(t.shape, dtype=t.dtype, device="meta") for n, t in tensors.items()}
