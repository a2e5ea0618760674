"""Independent references of the one-shot methods, written from the papers: plain loops,
Python sorting on explicit rank tuples, float64, sharing no code with fprune.

* Wanda (Sun et al. 2023, Algorithm 1): score ``|W_ij| * ||X_j||``, sort each output row,
  prune the lowest ``floor(r * in)``.
* SparseGPT (Frantar & Alistarh 2023, Algorithm 1): ``Hinv = chol(H^-1)^T`` (upper), column
  blocks of ``B``; in a block, prune the lowest ``w^2 / [Hinv]_jj^2`` (an exact count: the
  block's share of ``floor(r * numel)``; N:M groups chosen when reached); for each column,
  ``E = w / [Hinv]_jj`` on the pruned rows, ``W[:, j:] -= E [Hinv]_{j, j:}``; after the block,
  ``W[:, end:] -= E_block Hinv[block, end:]``.
"""

from __future__ import annotations

import torch

from tests.reference import count, rank


def _order(values: list[float]) -> list[int]:
    """Indices lowest first: NaN, -inf, ascending, +inf; ties by index (DESIGN section 4)."""
    return [i for _, i in sorted((rank(v, False), i) for i, v in enumerate(values))]


def _scores(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """``|W_ij| * ||X_j||``, rounded to float32 like the layer's math unless an input is
    float64 (the product of two float32 values is exact in float64: one rounding, as
    float32's own product)."""
    wide = weight.dtype == torch.float64 or norms.dtype == torch.float64
    score = weight.double().abs() * norms.double()[None, :]
    return score if wide else score.float().double()


def wanda(weight: torch.Tensor, norms: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per-row Wanda mask (True = kept)."""
    score = _scores(weight, norms)
    rows, cols = weight.shape
    kept = torch.ones(rows, cols, dtype=torch.bool)
    for r in range(rows):
        for c in _order(score[r].tolist())[: count(sparsity, cols)]:
            kept[r, c] = False
    return kept


def wanda_nm(weight: torch.Tensor, norms: torch.Tensor, n: int, m: int) -> torch.Tensor:
    score = _scores(weight, norms)
    rows, cols = weight.shape
    kept = torch.ones(rows, cols, dtype=torch.bool)
    for r in range(rows):
        for g in range(0, cols, m):
            for c in _order(score[r, g : g + m].tolist())[:n]:
                kept[r, g + c] = False
    return kept


def _inverse_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    h = hessian.double().clone()
    for j in range(h.shape[0]):
        if h[j, j] == 0:
            h[j, j] = 1.0
    h += damp * float(torch.diagonal(h).mean()) * torch.eye(h.shape[0], dtype=torch.float64)
    return torch.linalg.cholesky(torch.linalg.inv(h), upper=True)


def sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    *,
    nm: tuple[int, int] | None = None,
    block: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(new_weight, kept)`` in float64."""
    w = weight.double().clone()
    u = _inverse_factor(hessian, damp)
    rows, cols = w.shape
    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    for start in range(0, cols, block):
        stop = min(start + block, cols)
        errors = torch.zeros(rows, stop - start, dtype=torch.float64)
        if nm is None:
            share = count(sparsity, rows * stop) - count(sparsity, rows * start)
            flat = [
                float(w[r, c] ** 2 / u[c, c] ** 2) for r in range(rows) for c in range(start, stop)
            ]
            for i in _order(flat)[:share]:
                pruned[i // (stop - start), start + i % (stop - start)] = True
        for j in range(start, stop):
            if nm is not None and (j - start) % nm[1] == 0:
                for r in range(rows):
                    group = [float(w[r, c] ** 2 / u[c, c] ** 2) for c in range(j, j + nm[1])]
                    for c in _order(group)[: nm[0]]:
                        pruned[r, j + c] = True
            for r in range(rows):
                if pruned[r, j]:
                    e = float(w[r, j] / u[j, j])
                    w[r, j:stop] -= e * u[j, j:stop]
                    w[r, j] = 0.0
                    errors[r, j - start] = e
        w[:, stop:] -= errors @ u[start:stop, stop:]
    return w, ~pruned


def sparsegpt_fast(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    *,
    nm: tuple[int, int] | None = None,
    block: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sparsegpt` with each column's update over all rows at once, as the paper's
    Algorithm 1 writes it (for whole models); ties by a stable sort of the block's flat order."""
    w = weight.double().clone()
    u = _inverse_factor(hessian, damp)
    rows, cols = w.shape
    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    for start in range(0, cols, block):
        stop = min(start + block, cols)
        d = torch.diagonal(u)[start:stop]
        errors = torch.zeros(rows, stop - start, dtype=torch.float64)
        if nm is None:
            share = count(sparsity, rows * stop) - count(sparsity, rows * start)
            metric = (w[:, start:stop] ** 2 / d**2).reshape(-1)
            lowest = torch.sort(metric, stable=True).indices[:share]
            chosen = torch.zeros(metric.numel(), dtype=torch.bool)
            chosen[lowest] = True
            pruned[:, start:stop] = chosen.reshape(rows, stop - start)
        for j in range(start, stop):
            if nm is not None and (j - start) % nm[1] == 0:
                group = w[:, j : j + nm[1]] ** 2 / torch.diagonal(u)[j : j + nm[1]] ** 2
                low = torch.sort(group, dim=1, stable=True).indices[:, : nm[0]]
                pruned[:, j : j + nm[1]].scatter_(1, low, True)
            e = torch.where(pruned[:, j], w[:, j], 0.0) / u[j, j]
            w[:, j:stop] -= e[:, None] * u[j, j:stop][None, :]
            w[:, j] = torch.where(pruned[:, j], 0.0, w[:, j])
            errors[:, j - start] = e
        w[:, stop:] -= errors @ u[start:stop, stop:]
    return w, ~pruned


def prune_by_hand(model, batches, layers_in_order, prune_layer, dtype=torch.float64):
    """Prune ``layers_in_order`` (lists of ``(name, Linear)``, one list a block) one block at a
    time: for each block, run the whole model on every batch with hooks on the block's layers
    (their inputs' ``X^T X`` in ``dtype``), call ``prune_layer(weight, gram) -> (new, kept)``,
    write the weights, go on. Returns ``{name: kept mask}``."""
    masks = {}
    for layers in layers_in_order:
        grams = {name: 0.0 for name, _ in layers}

        def hook(name, grams=grams):
            def record(_, args, __):
                x = args[0].detach().to(dtype).reshape(-1, args[0].shape[-1])
                grams[name] = grams[name] + x.T @ x

            return record

        handles = [m.register_forward_hook(hook(name)) for name, m in layers]
        with torch.no_grad():
            for batch in batches:
                model(**batch) if isinstance(batch, dict) else model(batch)
        for handle in handles:
            handle.remove()
        for name, module in layers:
            new, kept = prune_layer(module.weight.detach(), grams[name])
            with torch.no_grad():
                module.weight.copy_(new.to(module.weight.dtype))
            masks[name] = kept
    return masks


def wanda_by_gram(sparsity: float, nm: tuple[int, int] | None = None):
    """A ``prune_layer`` for :func:`prune_by_hand`: Wanda with ``||X_j|| = sqrt(G_jj)``."""

    def prune(weight, gram):
        norms = torch.sqrt(torch.diagonal(gram))
        kept = wanda_nm_fast(weight, norms, *nm) if nm else wanda_rows(weight, norms, sparsity)
        return weight.double() * kept, kept

    return prune


def wanda_nm_fast(weight: torch.Tensor, norms: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """:func:`wanda_nm` by a stable sort within each group (for whole models; no NaN there)."""
    score = _scores(weight, norms)
    rows, cols = score.shape
    groups = score.reshape(rows, cols // m, m)
    low = torch.sort(groups, dim=-1, stable=True).indices[..., :n]
    return ~torch.zeros_like(groups, dtype=torch.bool).scatter(-1, low, True).reshape(rows, cols)


def wanda_rows(weight: torch.Tensor, norms: torch.Tensor, sparsity: float) -> torch.Tensor:
    """:func:`wanda` by a stable sort of each row (for whole models; no NaN there)."""
    score = _scores(weight, norms)
    rows, cols = score.shape
    low = torch.sort(score, dim=1, stable=True).indices[:, : count(sparsity, cols)]
    return ~torch.zeros(rows, cols, dtype=torch.bool).scatter(1, low, True)


def magnitude_per_layer(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    values = weight.double().abs().reshape(-1).tolist()
    kept = torch.ones(len(values), dtype=torch.bool)
    for i in _order(values)[: count(sparsity, len(values))]:
        kept[i] = False
    return kept.reshape(weight.shape)


def relative_error(weight: torch.Tensor, new: torch.Tensor, x: torch.Tensor) -> float:
    """``||W X^T - W' X^T|| / ||W X^T||`` from the inputs themselves."""
    dense = weight.double() @ x.double().T
    return float(torch.linalg.norm(dense - new.double() @ x.double().T) / torch.linalg.norm(dense))


__all__ = [
    "magnitude_per_layer",
    "prune_by_hand",
    "relative_error",
    "sparsegpt",
    "sparsegpt_fast",
    "wanda",
    "wanda_by_gram",
    "wanda_nm",
    "wanda_nm_fast",
    "wanda_rows",
]
