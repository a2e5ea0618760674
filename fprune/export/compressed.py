"""Compressed checkpoints: kept values plus a packed bitmask, or packed indices for N:M.

Each tensor ``name`` of a dict is stored in one of three forms, as plain tensors that a
safetensors file can hold:

- **dense**: ``name`` itself, unchanged (a tensor with no pruned entries, or one that the
  sparse forms would not make smaller);
- **bitmask**: ``name::values`` (the kept entries in row-major order), ``name::bitmask``
  (one bit per entry, little-endian within each byte: entry ``i`` is bit ``i % 8`` of byte
  ``i // 8``) and ``name::shape`` (int64);
- **N:M**: ``name::values`` (the ``m - n`` kept entries of each group of the 2-D view, see
  :mod:`fprune.layout`), ``name::index`` (their positions in the group, ascending,
  ``ceil(log2 m)`` bits each, packed the same way), ``name::nm`` (``[n, m]``) and
  ``name::shape``. For 2:4 that is two values and two 2-bit positions per group of four.

Kept values are copied as bits, so they round trip exactly in every dtype: NaN payloads,
subnormals and ``-0.0`` included. Pruned entries come back as ``+0.0``; a tensor stored dense
without a mask comes back bit for bit. Without ``masks`` an
entry is pruned when it equals zero, so a ``-0.0`` (what ``w * mask`` leaves where ``w < 0``)
comes back as ``+0.0``: keeping its sign would cost about a bit per pruned weight. With
``keep_negative_zeros=True`` only ``+0.0`` is pruned, and every tensor round trips bit for
bit. With ``masks`` the kept entries are stored whatever they hold, ``-0.0`` included.

Sizes (bytes, ``k`` kept entries of ``numel``, ``s`` bytes per entry, ``g`` groups):
dense ``numel * s``; bitmask ``k * s + ceil(numel / 8) + 8 * ndim``; N:M
``k * s + ceil(g * (m - n) * ceil(log2 m) / 8) + 8 * ndim + 16``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from fprune import _errors
from fprune.layout import from_2d, to_2d
from fprune.patterns import NM, parse_pattern

__all__ = [
    "SEPARATOR",
    "compress",
    "compressed_masks",
    "compressed_size",
    "decompress",
    "is_compressed",
]

SEPARATOR = "::"
"""Joins a tensor's name and the part of its compressed form (``"fc.weight::values"``)."""

_PARTS = ("values", "bitmask", "index", "nm", "shape")
_BITS_DTYPE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _as_bits(t: torch.Tensor) -> torch.Tensor:
    """``t``'s entries as integers of the same width (a view: no value is converted)."""
    if t.dtype == torch.bool:
        return t.view(torch.uint8)
    return t.view(_BITS_DTYPE[t.element_size()])


def _nonzero(t: torch.Tensor) -> torch.Tensor:
    """Entries that are not zero (``+0.0`` and ``-0.0`` are zero; NaN is not), read from
    the bits so that float8 needs no arithmetic."""
    bits = _as_bits(t)
    if not t.is_floating_point():
        return bits != 0
    magnitude = torch.tensor((1 << (8 * t.element_size() - 1)) - 1, dtype=bits.dtype)
    return (bits & magnitude) != 0


def _pack(bits: torch.Tensor) -> torch.Tensor:
    """Pack a 1-D bool tensor into uint8, 8 per byte, little-endian within each byte."""
    pad = (-bits.numel()) % 8
    padded = torch.cat([bits.to(torch.uint8), bits.new_zeros(pad, dtype=torch.uint8)])
    weights = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8)
    return (padded.reshape(-1, 8) * weights).sum(1, dtype=torch.uint8)


def _unpack(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Invert :func:`_pack`: the first ``count`` bits as a bool tensor."""
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((packed.reshape(-1, 1) >> shifts) & 1).reshape(-1)[:count].bool()


def _index_bits(m: int) -> int:
    return max(1, math.ceil(math.log2(m)))


def _pack_ints(values: torch.Tensor, width: int) -> torch.Tensor:
    """Pack non-negative integers below ``2**width``, ``width`` bits each, low bit first."""
    shifts = torch.arange(width, dtype=torch.int64)
    return _pack(((values.reshape(-1, 1).to(torch.int64) >> shifts) & 1).reshape(-1).bool())


def _unpack_ints(packed: torch.Tensor, count: int, width: int) -> torch.Tensor:
    bits = _unpack(packed, count * width).reshape(count, width).to(torch.int64)
    return (bits << torch.arange(width, dtype=torch.int64)).sum(1)


def _shape_tensor(shape: torch.Size) -> torch.Tensor:
    return torch.tensor(list(shape), dtype=torch.int64)


def _nm_groups(mask: torch.Tensor, pattern: NM) -> torch.Tensor | None:
    """The kept positions ``[groups, m - n]`` when every group of ``mask``'s 2-D view keeps
    exactly ``m - n`` entries; None when the mask does not have that form."""
    if mask.ndim < 2 or mask.numel() == 0:
        return None
    view = to_2d(mask)
    if view.shape[1] % pattern.m:
        return None
    groups = view.reshape(-1, pattern.m)
    kept = pattern.m - pattern.n
    if not bool((groups.sum(1) == kept).all()):
        return None
    order = torch.argsort((~groups).to(torch.uint8), dim=1, stable=True)
    return order[:, :kept]


def _bitmask_form(name: str, value: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    flat_mask = mask.reshape(-1)
    values = value.reshape(-1)[flat_mask].clone()
    return {
        f"{name}{SEPARATOR}values": values,
        f"{name}{SEPARATOR}bitmask": _pack(flat_mask),
        f"{name}{SEPARATOR}shape": _shape_tensor(value.shape),
    }


def _nm_form(
    name: str, value: torch.Tensor, positions: torch.Tensor, pattern: NM
) -> dict[str, torch.Tensor]:
    groups = to_2d(_as_bits(value)).reshape(-1, pattern.m)
    values = torch.gather(groups, 1, positions).reshape(-1).view(value.dtype)
    return {
        f"{name}{SEPARATOR}values": values,
        f"{name}{SEPARATOR}index": _pack_ints(positions, _index_bits(pattern.m)),
        f"{name}{SEPARATOR}nm": torch.tensor([pattern.n, pattern.m], dtype=torch.int64),
        f"{name}{SEPARATOR}shape": _shape_tensor(value.shape),
    }


def _bitmask_bytes(value: torch.Tensor, kept: int) -> int:
    """The size of the bitmask form: kept values, a bit per entry, the shape."""
    return kept * value.element_size() + -(-value.numel() // 8) + 8 * value.ndim


def _nbytes(parts: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in parts.values())


def _check_inputs(
    params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None
) -> None:
    _errors.tensor_dict("compress", "params", params, floating=False)
    for name in params:
        if SEPARATOR in name:
            raise _errors.value_error(
                "compress",
                f"tensor names must not contain {SEPARATOR!r}, which joins a name and its parts",
                name,
                "Rename the tensor.",
            )
    if masks is not None:
        _errors.masks_for("compress", masks, params)


def _inferred(value: torch.Tensor, exact: bool) -> torch.Tensor:
    """The kept entries of a tensor given no mask: nonzero, or (``exact``) any bits set."""
    return _as_bits(value) != 0 if exact else _nonzero(value)


def _compress_one(
    name: str, value: torch.Tensor, mask: torch.Tensor | None, pattern: NM | None, exact: bool
) -> dict[str, torch.Tensor]:
    value = value.detach().cpu().contiguous()
    if value.dtype.is_complex:
        return {name: value.clone()}
    given = mask is not None
    mask = mask.detach().cpu().contiguous() if mask is not None else _inferred(value, exact)
    positions = None if pattern is None else _nm_groups(mask, pattern)
    if positions is not None and pattern is not None:
        return _nm_form(name, value, positions, pattern)
    if _bitmask_bytes(value, int(mask.sum())) < value.numel() * value.element_size():
        return _bitmask_form(name, value, mask)
    if not given:  # stored as it is, bit for bit (its zeros included)
        return {name: value.clone()}
    kept_bits = torch.where(mask, _as_bits(value), torch.zeros((), dtype=_as_bits(value).dtype))
    return {name: kept_bits.view(value.dtype)}


def compress(
    params: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
    *,
    nm: str | NM | None = None,
    keep_negative_zeros: bool = False,
) -> dict[str, torch.Tensor]:
    """Compress a dict of tensors into the forms described in this module's docstring.

    Args:
        params: tensors by name (on any device; the result is on the CPU).
        masks: bool masks (True = kept) for some or all names; the others are inferred from
            their zeros (``+0.0`` and ``-0.0`` are pruned).
        nm: an N:M pattern such as ``"2:4"`` (``n`` pruned of every ``m``). Tensors whose
            mask keeps exactly ``m - n`` entries in every group of their 2-D view are stored
            as packed indices; all others as a bitmask.
        keep_negative_zeros: without a mask, count ``-0.0`` as a kept value, so that every
            tensor comes back bit for bit (a tensor masked by multiplication then keeps
            about half of its pruned entries, as ``-0.0``).

    Returns:
        A dict of plain tensors for a safetensors file; :func:`decompress` inverts it.
        A tensor is stored dense when the bitmask form would not be smaller.

    Raises:
        TypeError, ValueError: bad dicts, masks that do not match, a name holding ``"::"``,
            or ``nm`` not an N:M pattern.

    Example:
        >>> w = torch.tensor([[0.0, 1.5, 0.0, -2.0], [3.0, 0.0, 0.0, 4.0]])
        >>> packed = compress({"w": w}, nm="2:4")
        >>> sorted(packed), packed["w::values"].tolist()
        (['w::index', 'w::nm', 'w::shape', 'w::values'], [1.5, -2.0, 3.0, 4.0])
        >>> torch.equal(decompress(packed)["w"], w)
        True
    """
    _check_inputs(params, masks)
    pattern = None
    if nm is not None:
        parsed = parse_pattern(nm)
        if not isinstance(parsed, NM):
            raise _errors.value_error(
                "compress", "nm must be an N:M pattern", nm, "Pass e.g. '2:4', or leave nm out."
            )
        pattern = parsed
    out: dict[str, torch.Tensor] = {}
    for name, value in params.items():
        mask = None if masks is None else masks.get(name)
        out.update(_compress_one(name, value, mask, pattern, keep_negative_zeros))
    return out


def _split(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Group a compressed dict by tensor name: ``{name: {part: tensor}}`` (dense: ``{"": t}``)."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        name, sep, part = key.rpartition(SEPARATOR)
        if not sep:
            name, part = key, ""
        elif part not in _PARTS:
            raise _errors.value_error(
                "decompress", "unknown part of a compressed tensor", key,
                f"Parts are {_PARTS}; pass the dict that compress returned.",
            )  # fmt: skip
        grouped.setdefault(name, {})[part] = t
    return grouped


def _require(name: str, parts: Mapping[str, torch.Tensor], needed: tuple[str, ...]) -> None:
    missing = [p for p in needed if p not in parts]
    extra = sorted(set(parts) - set(needed))
    if missing or extra:
        raise _errors.value_error(
            "decompress",
            f"the compressed form of {name!r} is incomplete or mixed",
            _errors.detail(f"parts {sorted(parts)}; missing {missing}, unexpected {extra}"),
            "Pass the whole dict that compress returned.",
        )


def _shape(name: str, parts: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    shape = parts["shape"]
    if shape.dtype != torch.int64 or shape.ndim != 1 or bool((shape < 0).any()):
        raise _errors.value_error(
            "decompress", f"{name!r}'s shape part is not a 1-D int64 list of sizes",
            shape, "Pass the dict that compress returned.",
        )  # fmt: skip
    return tuple(int(s) for s in shape.tolist())


def _corrupt(name: str, what: str) -> ValueError:
    return _errors.value_error(
        "decompress", f"the compressed form of {name!r} is inconsistent", _errors.detail(what),
        "The file is damaged or was not written by compress.",
    )  # fmt: skip


def _decode(name: str, parts: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One tensor and its mask from its parts."""
    values = parts["values"].reshape(-1)
    if "bitmask" in parts:
        _require(name, parts, ("values", "bitmask", "shape"))
        shape = _shape(name, parts)
        numel = math.prod(shape)
        if parts["bitmask"].numel() != -(-numel // 8):
            raise _corrupt(name, f"{parts['bitmask'].numel()} bitmask bytes for {numel} entries")
        mask = _unpack(parts["bitmask"].reshape(-1), numel)
        if int(mask.sum()) != values.numel():
            raise _corrupt(name, f"{int(mask.sum())} kept bits but {values.numel()} values")
        bits = _as_bits(values).new_zeros(numel)
        bits[mask] = _as_bits(values)
        return bits.view(values.dtype).reshape(shape), mask.reshape(shape)
    _require(name, parts, ("values", "index", "nm", "shape"))
    return _decode_nm(name, parts, values)


def _decode_nm(
    name: str, parts: Mapping[str, torch.Tensor], values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = _shape(name, parts)
    n, m = (int(v) for v in parts["nm"].tolist())
    kept = m - n
    if len(shape) < 2 or math.prod(shape) % m or values.numel() * m != math.prod(shape) * kept:
        raise _corrupt(name, f"{values.numel()} values for shape {shape} at {n}:{m}")
    groups = values.numel() // kept
    positions = _unpack_ints(parts["index"].reshape(-1), groups * kept, _index_bits(m))
    if bool((positions >= m).any()):
        raise _corrupt(name, f"a position is {int(positions.max())} in groups of {m}")
    positions = positions.reshape(groups, kept)
    bits = _as_bits(values).new_zeros(groups, m)
    bits.scatter_(1, positions, _as_bits(values).reshape(groups, kept))
    mask = torch.zeros(groups, m, dtype=torch.bool).scatter_(1, positions, True)
    rows = shape[0]
    value = from_2d(bits.reshape(rows, -1), shape).contiguous().view(values.dtype)
    return value, from_2d(mask.reshape(rows, -1), shape)


def decompress(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Invert :func:`compress`: every tensor, with its pruned entries zero.

    Raises:
        ValueError: a part is missing, unknown or inconsistent with the others.
    """
    _errors.tensor_dict("decompress", "tensors", tensors, floating=False)
    out: dict[str, torch.Tensor] = {}
    for name, parts in _split(tensors).items():
        if "" in parts:
            if len(parts) > 1:
                raise _corrupt(name, f"both a dense tensor and parts {sorted(parts)}")
            out[name] = parts[""]
        else:
            out[name] = _decode(name, parts)[0]
    return out


def compressed_masks(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The masks (True = kept) held by a compressed dict, for the tensors stored sparse."""
    _errors.tensor_dict("compressed_masks", "tensors", tensors, floating=False)
    return {
        name: _decode(name, parts)[1] for name, parts in _split(tensors).items() if "" not in parts
    }


def is_compressed(tensors: Mapping[str, torch.Tensor]) -> bool:
    """Whether any key of ``tensors`` is a part of a compressed tensor."""
    return any(SEPARATOR in key for key in tensors)


def compressed_size(tensors: Mapping[str, torch.Tensor]) -> int:
    """The bytes the tensors of a dict hold (what a safetensors file spends on data)."""
    return _nbytes(tensors)
