"""Post-training (one-shot) pruning of a pretrained layer from calibration statistics: Wanda
and SparseGPT.

Both methods prune a ``Linear`` weight ``W`` (``[out, in]``) once, without retraining, from
statistics of the layer's inputs ``X`` (``[tokens, in]``) over a little calibration data:

* **Wanda** (Sun et al. 2023) scores ``|W_ij| * ||X_j||_2`` and compares the scores within
  each output row: every row loses exactly ``floor(r * in)`` weights (ties to the lower
  index). For N:M each group of M inputs loses its N lowest.
* **SparseGPT** (Frantar & Alistarh 2023) treats the layer as a least-squares problem with the
  Hessian ``H = X^T X``: it walks the columns left to right in blocks, prunes the weights
  with the lowest ``w^2 / [H^-1]_jj^2`` and adds each pruned weight's optimal-brain-surgeon
  correction to the columns not yet processed, so the kept weights absorb the error.

The statistics are pure running sums (:class:`Stats`, :func:`accumulate`); the layer functions
are pure too. Math is float32 (float64 when the weight or Hessian is float64); 16-bit weights
come back in their dtype. Masks are ``torch.bool``, True = kept, as everywhere in fprune.
:func:`fprune.nn.oneshot` drives these over a whole model, one block at a time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from fprune import _errors
from fprune.masking import masks as block_masks
from fprune.nm import within_groups
from fprune.patterns import NM, Pattern, parse_pattern
from fprune.selection import lowest, rank_keys, unit_count

__all__ = [
    "METHODS",
    "OneShot",
    "Stats",
    "accumulate",
    "init_stats",
    "input_norms",
    "merge",
    "reconstruction_error",
    "resolve",
    "sparsegpt",
    "sparsegpt_layers",
    "wanda",
    "wanda_masks",
    "wanda_scores",
]

METHODS = ("wanda", "sparsegpt", "magnitude")


@dataclasses.dataclass(frozen=True)
class OneShot:
    """A one-shot pruning plan, as :func:`fprune.from_config` reads INC's ``sparse_gpt`` (and
    a ``wanda``) ``pruning_type``: run it with ``fprune.nn.oneshot(model, batches,
    **plan.options())``.

    Attributes:
        method: ``"sparsegpt"`` or ``"wanda"``.
        sparsity: the fraction of each layer to prune (N / M for N:M).
        pattern: ``"1x1"`` or ``"N:M"`` (Wanda: also a block pattern).
        names: the weights to prune (chosen as INC chooses them when ``from_config`` got a
            model), or None for every ``Linear`` inside the model's blocks.
        extra: the config's other keys (``op_names``, ...), for the record.

    Example:
        >>> plan = OneShot("sparsegpt", 0.5, "2:4")
        >>> plan.options()
        {'method': 'sparsegpt', 'sparsity': 0.5, 'pattern': '2:4', 'names': None}
    """

    method: str
    sparsity: float
    pattern: str
    names: tuple[str, ...] | None = None
    extra: Any = None

    def __post_init__(self) -> None:
        resolve(self.method, self.sparsity, self.pattern, func="OneShot")

    def options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`fprune.nn.oneshot` this plan stands for."""
        return {
            "method": self.method,
            "sparsity": self.sparsity,
            "pattern": self.pattern,
            "names": self.names,
        }


class Stats(NamedTuple):
    """Running statistics of a layer's inputs (a pytree: a named tuple of tensors).

    Attributes:
        rows: 0-d int64, the number of input rows (tokens) seen.
        sq_norms: ``[in]``, ``sum_t x_tj^2`` per input feature (Wanda's ``||X_j||^2``).
        gram: ``[in, in]``, ``X^T X`` (SparseGPT's Hessian, up to a positive scale), or None
            when not collected.
    """

    rows: torch.Tensor
    sq_norms: torch.Tensor
    gram: torch.Tensor | None


def init_stats(
    features: int,
    *,
    gram: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Stats:
    """Empty statistics for a layer with ``features`` inputs.

    Example:
        >>> s = init_stats(3, gram=False)
        >>> int(s.rows), s.sq_norms.tolist(), s.gram
        (0, [0.0, 0.0, 0.0], None)
    """
    features = _errors.positive_int("init_stats", "features", features)
    if dtype not in (torch.float32, torch.float64):
        raise _errors.type_error(
            "init_stats", "dtype must be float32 or float64", dtype, "Sums need a wide dtype."
        )
    return Stats(
        torch.zeros((), dtype=torch.int64, device=device),
        torch.zeros(features, dtype=dtype, device=device),
        torch.zeros(features, features, dtype=dtype, device=device) if gram else None,
    )


def accumulate(stats: Stats, inputs: torch.Tensor) -> Stats:
    """``stats`` plus a batch of a layer's inputs ``[..., in]`` (every leading index is a row).

    ``rows += batch rows``, ``sq_norms += sum_t x_t^2``, ``gram += X^T X``, in the statistics'
    dtype. Pure: ``stats`` is not changed.

    Example:
        >>> s = accumulate(init_stats(2), torch.tensor([[1., 2.], [3., 0.]]))
        >>> int(s.rows), s.sq_norms.tolist(), s.gram.tolist()
        (2, [10.0, 4.0], [[10.0, 2.0], [2.0, 4.0]])
    """
    features = stats.sq_norms.shape[0]
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise _errors.type_error(
            "accumulate", "inputs must be a floating tensor", inputs, "Pass a layer's inputs."
        )
    if inputs.ndim == 0 or inputs.shape[-1] != features:
        raise _errors.value_error(
            "accumulate",
            f"inputs must end in the layer's {features} features",
            _errors.detail(f"shape {tuple(inputs.shape)}"),
            "Pass the inputs of the layer these statistics belong to.",
        )
    x = inputs.reshape(-1, features).to(stats.sq_norms.dtype)
    return Stats(
        stats.rows + x.shape[0],
        stats.sq_norms + (x * x).sum(dim=0),
        None if stats.gram is None else stats.gram + _gram(x),
    )


def _gram(x: torch.Tensor, parts: int = 4) -> torch.Tensor:
    """``X^T X``, symmetric: for wide inputs, only the blocks on and above the diagonal of a
    ``parts`` x ``parts`` grid are multiplied and the rest mirrored (about 5/8 of the
    products; the statistics of a transformer's widest layer dominate a calibration pass)."""
    n = x.shape[1]
    if n < 512:
        return x.T @ x
    step = -(-n // parts)
    gram = torch.empty(n, n, dtype=x.dtype, device=x.device)
    for start in range(0, n, step):
        top = x[:, start : start + step].T @ x[:, start:]  # rows [start, start + step), cols >=
        gram[start : start + step, start:] = top
        gram[start + step :, start : start + step] = top[:, step:].T
    return gram


def merge(a: Stats, b: Stats) -> Stats:
    """The statistics of two disjoint sets of rows together (e.g. two batches, or two ranks'
    shares: an all-reduce of each field merges across processes).

    Example:
        >>> x = torch.tensor([[1., 2.], [3., 0.]])
        >>> s = merge(accumulate(init_stats(2), x[:1]), accumulate(init_stats(2), x[1:]))
        >>> int(s.rows), s.gram.tolist()
        (2, [[10.0, 2.0], [2.0, 4.0]])
    """
    if a.sq_norms.shape != b.sq_norms.shape or (a.gram is None) != (b.gram is None):
        raise _errors.value_error(
            "merge",
            "the statistics must be of the same layer and both with or without gram",
            _errors.detail(f"{tuple(a.sq_norms.shape)} and {tuple(b.sq_norms.shape)}"),
            "Merge statistics made by init_stats with the same arguments.",
        )
    gram = None if a.gram is None or b.gram is None else a.gram + b.gram
    return Stats(a.rows + b.rows, a.sq_norms + b.sq_norms, gram)


def input_norms(stats: Stats) -> torch.Tensor:
    """``||X_j||_2`` per input feature: Wanda's activation norms.

    Example:
        >>> input_norms(accumulate(init_stats(2), torch.tensor([[3., 0.], [4., 1.]]))).tolist()
        [5.0, 1.0]
    """
    return torch.sqrt(stats.sq_norms)


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _floating(func: str, arg: str, value: object, shape: str, fits: bool, fix: str) -> torch.Tensor:
    """``value`` if it is a floating tensor that ``fits``; else a TypeError naming ``shape``."""
    if isinstance(value, torch.Tensor) and value.is_floating_point() and fits:
        return value
    got = (
        _errors.detail(f"{value.dtype} tensor of shape {tuple(value.shape)}")
        if isinstance(value, torch.Tensor)
        else value
    )
    raise _errors.type_error(func, f"{arg} must be a floating tensor {shape}", got, fix)


def _weight(func: str, weight: object) -> torch.Tensor:
    fits = isinstance(weight, torch.Tensor) and weight.ndim == 2
    fix = "Pass a Linear weight (reshape a conv weight to [out, in * kh * kw])."
    return _floating(func, "weight", weight, "[out, in] (2-D)", fits, fix)


def _vector(func: str, arg: str, value: object, length: int) -> torch.Tensor:
    fits = isinstance(value, torch.Tensor) and tuple(value.shape) == (length,)
    fix = "Pass input_norms(stats) of this layer's statistics."
    return _floating(func, arg, value, f"of shape [{length}] (one per input feature)", fits, fix)


def _nm_sparsity(func: str, sparsity: float | None, pattern: NM) -> float:
    """An N:M pattern prunes N of every M: ``sparsity`` may be left out or must say N / M."""
    want = pattern.n / pattern.m
    if sparsity is not None:
        value = _errors.fraction(func, "sparsity", sparsity)
        if not isinstance(value, float) or abs(value - want) > 1e-9:
            raise _errors.value_error(
                func,
                f"an {pattern.n}:{pattern.m} pattern prunes exactly {want:g} of the weights",
                sparsity,
                f"Leave sparsity out or pass {want:g}.",
            )
    return want


def _fraction(func: str, sparsity: float | None) -> float:
    if sparsity is None:
        raise _errors.value_error(
            func, "sparsity is needed for this pattern", None, "Pass e.g. sparsity=0.5."
        )
    value = _errors.fraction(func, "sparsity", sparsity)
    if not isinstance(value, float):
        raise _errors.type_error(func, "sparsity must be a Python float", sparsity, "Pass 0.5.")
    return value


def resolve(
    method: str, sparsity: float | None, pattern: str | Pattern, *, func: str = "resolve"
) -> tuple[Pattern, float]:
    """Check a method's settings before any work: ``(pattern, sparsity)``, the sparsity N / M
    for an N:M pattern (where it may be left out).

    Example:
        >>> resolve("sparsegpt", None, "2:4")
        (NM(n=2, m=4), 0.5)
    """
    method = _errors.choice(func, "method", method, METHODS)
    pat = parse_pattern(pattern)
    if isinstance(pat, NM):
        return pat, _nm_sparsity(func, sparsity, pat)
    if method == "sparsegpt" and (pat.rows, pat.cols) != (1, 1):
        raise _errors.value_error(
            func,
            "SparseGPT prunes single weights or N:M groups",
            str(pattern),
            "Pass pattern='1x1' or an N:M pattern such as '2:4'.",
        )
    return pat, _fraction(func, sparsity)


def _nm_columns(func: str, cols: int, pattern: NM) -> None:
    if cols % pattern.m:
        raise _errors.value_error(
            func,
            f"the {pattern.m} of an {pattern.n}:{pattern.m} pattern must divide the inputs",
            _errors.detail(f"{cols} inputs"),
            "Use a pattern whose M divides the layer's input width.",
        )


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """Wanda's score ``S_ij = |W_ij| * ||X_j||_2`` in float32 (float64 if either is).

    Example:
        >>> wanda_scores(torch.tensor([[1., -2.], [3., 4.]]), torch.tensor([2., 0.5])).tolist()
        [[2.0, 1.0], [6.0, 2.0]]
    """
    weight = _weight("wanda_scores", weight)
    norms = _vector("wanda_scores", "input_norms", input_norms, weight.shape[1])
    dtype = _compute_dtype(weight, norms)
    return weight.to(dtype).abs() * norms.to(dtype)[None, :]


def _per_row(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Kept mask with the ``floor(r * cols)`` lowest scores of every row pruned, ties by index."""
    rows, cols = scores.shape
    count = int(unit_count(sparsity, cols, scores.device))
    order = torch.sort(rank_keys(scores), dim=1, stable=True).indices[:, :count]
    pruned = torch.zeros(rows, cols, dtype=torch.bool, device=scores.device)
    return ~pruned.scatter(1, order, True)


def wanda(
    weight: torch.Tensor,
    input_norms: torch.Tensor,
    *,
    sparsity: float | None = None,
    pattern: str | Pattern = "1x1",
) -> torch.Tensor:
    """Wanda's mask of one layer: the lowest ``|W_ij| * ||X_j||_2`` pruned.

    ``1x1`` compares within each output row, and every row loses exactly
    ``floor(sparsity * in)`` weights; an ``N:M`` pattern prunes the N lowest of each group of
    M inputs (``sparsity`` may be left out); a block pattern (``"4x1"``, ``"channelx1"``)
    prunes ``floor(sparsity * blocks)`` blocks of the layer by their mean score. Ties go to the
    lower index; a NaN score ranks lowest, as in :func:`fprune.selection.rank_keys`.

    Args:
        weight: ``[out, in]`` floating weight.
        input_norms: ``[in]`` L2 norms of the layer's input features over the calibration
            tokens (:func:`input_norms`).
        sparsity: the fraction to prune, in [0, 1).
        pattern: ``"1x1"``, ``"N:M"`` or a block pattern.

    Returns:
        Bool mask shaped like ``weight`` (True = kept).

    Example:
        >>> w = torch.tensor([[1., 2., 3., 4.], [4., 3., 2., 1.]])
        >>> wanda(w, torch.tensor([4., 1., 1., 1.]), sparsity=0.5).int().tolist()
        [[1, 0, 0, 1], [1, 1, 0, 0]]
        >>> wanda(w, torch.ones(4), pattern="2:4").int().tolist()
        [[0, 0, 1, 1], [1, 1, 0, 0]]
    """
    scores = wanda_scores(weight, input_norms)
    pat, value = resolve("wanda", sparsity, pattern, func="wanda")
    if isinstance(pat, NM):
        _nm_columns("wanda", scores.shape[1], pat)
        low, _ = within_groups(scores, pat, pruned=None, reduce=None)
        return ~low.reshape(scores.shape)
    if pat.block_shape(tuple(scores.shape)) == (1, 1):
        return _per_row(scores, value)
    kept = block_masks(
        {"w": scores}, pattern=pat, sparsity=value, scope="local", max_layer_sparsity=1.0
    )
    return kept["w"]


class _Solver(NamedTuple):
    """SparseGPT's settings for one layer, checked."""

    pattern: Pattern
    sparsity: float
    block_size: int


def _solver(
    weight: torch.Tensor, sparsity: float | None, pattern: str | Pattern, block_size: int
) -> _Solver:
    pat, value = resolve("sparsegpt", sparsity, pattern, func="sparsegpt")
    block_size = _errors.positive_int("sparsegpt", "block_size", block_size)
    if isinstance(pat, NM):
        _nm_columns("sparsegpt", weight.shape[1], pat)
        if block_size % pat.m:
            raise _errors.value_error(
                "sparsegpt",
                f"block_size must be a multiple of the pattern's M ({pat.m})",
                block_size,
                f"Pass e.g. block_size={pat.m * max(block_size // pat.m, 1)}.",
            )
    return _Solver(pat, value, block_size)


def _inverse_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """The upper Cholesky factor ``U`` of ``(H + damp * mean(diag H) * I)^-1``, with the
    diagonal of never-active inputs (``H_jj = 0``) set to 1 first."""
    h = hessian.clone()
    diag = torch.diagonal(h)
    diag.masked_fill_(diag == 0, 1.0)
    diag.add_(damp * diag.mean())
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info) == 0:
        upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
        if int(info) == 0:
            return upper
    raise _errors.value_error(
        "sparsegpt",
        "the Hessian is not positive definite, even after dampening",
        _errors.detail(f"damp={damp}, failed at pivot {int(info)}"),
        "Pass a larger damp (e.g. 0.1), more calibration tokens, or a symmetric X^T X.",
    )


def _metric(w: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """SparseGPT's ``w^2 / d^2`` ranked as ``|w| / d`` (``d > 0``): the same order, without
    the squares that underflow for tiny weights and overflow for huge ones."""
    return w.abs() / d[None, :]


def _block_pruned(w: torch.Tensor, d: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` lowest ``w^2 / d^2`` of a column block (True = pruned), ties by flat index."""
    keys = rank_keys(_metric(w, d)).reshape(-1)
    return lowest(keys, torch.tensor(count, device=w.device)).reshape(w.shape)


def _group_pruned(w: torch.Tensor, d: torch.Tensor, pattern: NM) -> torch.Tensor:
    """The N lowest ``w^2 / d^2`` of each row of one group of M columns (True = pruned)."""
    low, _ = within_groups(_metric(w, d), pattern, pruned=None, reduce=None)
    return low.reshape(w.shape)


def _solve_block(
    w: torch.Tensor, u: torch.Tensor, pruned: torch.Tensor, pattern: Pattern
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one column block ``w`` in place, column by column: each pruned weight's error
    ``e = w / U_jj`` is spread over the block's later columns as ``w_k -= e * U_jk``, then the
    pruned weights are set to exactly zero. N:M groups are chosen as their first column is
    reached, from the weights as updated so far. Returns ``(pruned, errors)``, errors
    ``[rows, block]``. The block is worked on transposed, a column a contiguous row."""
    wt = w.t().contiguous()
    errors = torch.zeros_like(wt)
    d = torch.diagonal(u)
    scale = pruned.t() / d[:, None]  # 1 / U_jj where pruned, else 0
    for j in range(wt.shape[0]):
        if isinstance(pattern, NM) and j % pattern.m == 0:
            cols = slice(j, j + pattern.m)
            pruned[:, cols] = _group_pruned(wt[cols].t(), d[cols], pattern)
            scale[cols] = pruned[:, cols].t() / d[cols, None]
        torch.mul(wt[j], scale[j], out=errors[j])
        wt[j:].addr_(u[j, j:], errors[j], alpha=-1.0)  # w_k -= e * U_jk, in place
    w.copy_(wt.t().masked_fill(pruned, 0.0))  # exactly zero, not a rounding error
    return pruned, errors.t()


def sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: float | None = None,
    pattern: str | Pattern = "1x1",
    block_size: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT: prune one layer and update its kept weights to reconstruct its outputs.

    With ``U`` the upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``, the columns
    are processed left to right in blocks of ``block_size``. In a block, the weights with the
    lowest ``w^2 / U_jj^2`` are pruned (``1x1``: exactly this block's share of
    ``floor(sparsity * numel)``, ties by flat index; ``N:M``: the N lowest of each row's group
    of M, chosen when the group is reached). Each pruned weight's error ``e = w / U_jj`` is
    subtracted along its row from the later columns, ``w_k -= e * U_jk`` (the optimal brain
    surgeon update); a processed column never changes again.

    Args:
        weight: ``[out, in]`` floating weight.
        hessian: ``[in, in]``, ``X^T X`` of the layer's calibration inputs (any positive
            scale; :func:`accumulate` collects it). An input that is never active
            (``H_jj = 0``) gets a diagonal of 1: its weights are ranked by magnitude alone.
        sparsity: the fraction to prune, in [0, 1); may be left out for N:M.
        pattern: ``"1x1"`` or ``"N:M"`` (``block_size`` a multiple of M).
        block_size: columns per block.
        damp: dampening, a fraction of the mean diagonal added to the diagonal.

    Returns:
        ``(new_weight, mask)``: the updated weight in ``weight``'s dtype, zero where pruned,
        and the bool mask (True = kept).

    Raises:
        ValueError: a Hessian that is not positive definite after dampening, a non-finite
        weight or Hessian, or settings the layer cannot take.

    Example:
        >>> w = torch.tensor([[1., -3., 2., 0.5]])
        >>> new, mask = sparsegpt(w, torch.eye(4), sparsity=0.5)   # H = I: no correction
        >>> mask.int().tolist(), new.tolist()
        ([[0, 1, 1, 0]], [[0.0, -3.0, 2.0, 0.0]])
        >>> h = torch.tensor([[2., 1.], [1., 2.]])                   # correlated inputs
        >>> new, mask = sparsegpt(torch.tensor([[1., 2.]]), h, sparsity=0.5, damp=0.0)
        >>> mask.tolist(), new.tolist()                               # 2 absorbs half of the 1
        ([[False, True]], [[0.0, 2.5]])
    """
    weight = _weight("sparsegpt", weight)
    solver = _solver(weight, sparsity, pattern, block_size)
    cols = weight.shape[1]
    _square("sparsegpt", hessian, cols)
    if not (isinstance(damp, (int, float)) and math.isfinite(damp) and damp >= 0):
        raise _errors.value_error(
            "sparsegpt", "damp must be a finite number >= 0", damp, "Pass e.g. damp=0.01."
        )
    dtype = _compute_dtype(weight, hessian)
    w, h = weight.to(dtype).clone(), hessian.to(dtype)
    if not (torch.isfinite(w).all() and torch.isfinite(h).all()):
        raise _errors.value_error(
            "sparsegpt",
            "weight and hessian must be finite",
            _errors.detail("a NaN or inf entry"),
            "Check the layer and its calibration inputs.",
        )
    u = _inverse_factor(h, float(damp))
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for start in range(0, cols, solver.block_size):
        stop = min(start + solver.block_size, cols)
        block, ub = w[:, start:stop], u[start:stop, start:stop]
        if not isinstance(solver.pattern, NM):  # this block's share of the exact total
            share = _share(solver.sparsity, start * w.shape[0], stop * w.shape[0])
            pruned[:, start:stop] = _block_pruned(block, torch.diagonal(ub), share)
        pruned[:, start:stop], errors = _solve_block(
            block, ub, pruned[:, start:stop], solver.pattern
        )
        w[:, stop:].addmm_(errors, u[start:stop, stop:], alpha=-1.0)
    return w.to(weight.dtype), ~pruned


def _share(sparsity: float, before: int, through: int) -> int:
    """The weights a block of flat positions ``[before, through)`` prunes, so that every block
    prunes its share and the layer exactly ``floor(sparsity * total)``: the cumulative target
    at its end minus the one at its start."""
    cpu = torch.device("cpu")
    return int(unit_count(sparsity, through, cpu)) - int(unit_count(sparsity, before, cpu))


def _square(func: str, hessian: object, cols: int) -> None:
    fits = isinstance(hessian, torch.Tensor) and tuple(hessian.shape) == (cols, cols)
    fix = "Pass stats.gram of this layer's statistics (accumulate collects X^T X)."
    _floating(func, "hessian", hessian, f"of shape [{cols}, {cols}]", fits, fix)


def wanda_masks(
    params: Mapping[str, torch.Tensor],
    norms: Mapping[str, torch.Tensor],
    *,
    sparsity: float | None = None,
    pattern: str | Pattern = "1x1",
) -> dict[str, torch.Tensor]:
    """:func:`wanda` of every layer: masks in the usual dict, for ``fprune.total_sparsity``,
    ``fprune.nn.apply_masks_`` and the rest of fprune.

    Example:
        >>> m = wanda_masks({"fc": torch.tensor([[1., 2.]])}, {"fc": torch.ones(2)}, sparsity=0.5)
        >>> m["fc"].tolist()
        [[False, True]]
    """
    _errors.same_keys("wanda_masks", "norms", norms, "params", params)
    return {n: wanda(w, norms[n], sparsity=sparsity, pattern=pattern) for n, w in params.items()}


def sparsegpt_layers(
    params: Mapping[str, torch.Tensor],
    hessians: Mapping[str, torch.Tensor],
    *,
    sparsity: float | None = None,
    pattern: str | Pattern = "1x1",
    block_size: int = 128,
    damp: float = 0.01,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """:func:`sparsegpt` of every layer: ``(new_params, masks)``, two dicts with the keys of
    ``params``.

    Example:
        >>> new, m = sparsegpt_layers({"fc": torch.tensor([[1., 2.]])}, {"fc": torch.eye(2)},
        ...                           sparsity=0.5)
        >>> new["fc"].tolist(), m["fc"].tolist()
        ([[0.0, 2.0]], [[False, True]])
    """
    _errors.same_keys("sparsegpt_layers", "hessians", hessians, "params", params)
    out = {
        n: sparsegpt(
            w, hessians[n], sparsity=sparsity, pattern=pattern, block_size=block_size, damp=damp
        )
        for n, w in params.items()
    }
    return {n: w for n, (w, _) in out.items()}, {n: m for n, (_, m) in out.items()}


def reconstruction_error(
    weight: torch.Tensor, new_weight: torch.Tensor, gram: torch.Tensor
) -> float:
    """``||W X^T - W' X^T||_F / ||W X^T||_F`` from ``gram = X^T X``, without ``X``:
    ``||A X^T||_F^2 = sum((A @ G) * A)``, both norms from one product, in the gram's dtype.
    0.0 when ``W X^T`` is zero.

    Example:
        >>> reconstruction_error(torch.tensor([[3., 4.]]), torch.tensor([[3., 0.]]), torch.eye(2))
        0.8
    """
    dtype = _compute_dtype(gram)
    w = weight.to(dtype)
    both = torch.cat([w, w - new_weight.to(dtype)])  # [W; W - W']
    squares = ((both @ gram.to(dtype)) * both).double().sum(dim=1)
    dense, lost = float(squares[: w.shape[0]].sum()), float(squares[w.shape[0] :].sum())
    return math.sqrt(max(lost, 0.0) / dense) if dense > 0 else 0.0
