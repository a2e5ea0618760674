"""One-shot pruning of a whole model, one block at a time (:func:`oneshot`, exported as
:func:`fprune.nn.oneshot`).

Sequential calibration, as in the SparseGPT and Wanda papers: the inputs of the first block
(for a transformer, its first layer) are captured from the calibration batches; then, for each
block in turn, forward hooks collect every prunable ``Linear``'s input statistics
(:class:`fprune.posttrain.Stats`), the layers are pruned with
:mod:`fprune.posttrain`, and the block is run again with its pruned weights to give the next
block's inputs. So each block is calibrated on what the pruned blocks before it produce, and
peak memory is one block's statistics plus the calibration activations.

The blocks must form a chain, as a transformer's layer stack does: the model calls each block
with the hidden states as its first argument (positional, or the keyword ``hidden_states``),
the block's output (or its first element) is the next block's hidden states, and the other
arguments (attention masks, position embeddings) are the same for every block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from fprune import _errors, posttrain
from fprune.masking import masks as pattern_masks
from fprune.patterns import Pattern

__all__ = ["LayerReport", "call_model", "default_blocks", "oneshot"]

_log = logging.getLogger("fprune")

_Inputs = list[tuple[tuple[Any, ...], dict[str, Any]]]  # a block's (args, kwargs) per batch


class LayerReport(NamedTuple):
    """What :func:`oneshot` did to one layer.

    Attributes:
        sparsity: the fraction of the weight pruned.
        error: the relative reconstruction error ``||W X - W' X|| / ||W X||`` on the layer's
            calibration inputs (those the pruned blocks before it produce).
        size: the number of weights.
        mask: the bool mask (True = kept): ``{n: r.mask for n, r in report.items()}`` is the
            usual masks dict (for ``fprune.total_sparsity``, ``fprune.nn.apply_masks_``).
    """

    sparsity: float
    error: float
    size: int
    mask: torch.Tensor


class _Reached(Exception):
    """Raised by the capture hook: the model has handed its first block the inputs."""


def default_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's repeated blocks: its longest ``nn.ModuleList`` (the first of equal ones),
    with its name.

    Example:
        >>> net = nn.Sequential(nn.ModuleList([nn.Linear(2, 2)] * 3), nn.ModuleList([nn.ReLU()]))
        >>> name, blocks = default_blocks(net)
        >>> name, len(blocks)
        ('0', 3)
    """
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise _errors.value_error(
            "oneshot",
            "the model has no nn.ModuleList of blocks",
            type(model).__name__,
            "Pass blocks=<the ModuleList of the model's repeated layers>.",
        )
    return max(lists, key=lambda item: len(item[1]))


def _blocks(model: nn.Module, blocks: nn.ModuleList | None) -> tuple[str, nn.ModuleList]:
    if blocks is None:
        return default_blocks(model)
    for name, module in model.named_modules():
        if module is blocks and isinstance(module, nn.ModuleList) and len(module):
            return name, module
    raise _errors.value_error(
        "oneshot",
        "blocks must be a non-empty nn.ModuleList inside the model",
        type(blocks).__name__,
        "Pass e.g. blocks=model.encoder.layer.",
    )


def _linears(
    prefix: str, blocks: nn.ModuleList, names: Iterable[str] | None
) -> list[dict[str, nn.Linear]]:
    """Each block's ``Linear`` modules by weight name (``names`` keeps only those named)."""
    found = [
        {
            ".".join(part for part in (prefix, str(i), sub, "weight") if part): module
            for sub, module in block.named_modules()
            if isinstance(module, nn.Linear)
        }
        for i, block in enumerate(blocks)
    ]
    if names is None:
        return found
    listed = [] if isinstance(names, str) else list(names)
    if not listed or not all(isinstance(n, str) for n in listed):
        raise _errors.type_error(
            "oneshot", "names must be a list of weight names", names, "Pass e.g. ['fc.weight']."
        )
    wanted = set(listed)
    known = {name for layers in found for name in layers}
    unknown = sorted(wanted - known)
    if unknown:
        raise _errors.value_error(
            "oneshot",
            "names holds weights that are not Linear weights inside the blocks",
            unknown,
            f"Choose from the blocks' Linear weights, e.g. {sorted(known)[:3]}.",
        )
    return [{n: m for n, m in layers.items() if n in wanted} for layers in found]


def call_model(model: nn.Module, batch: Any, *, func: str = "oneshot") -> Any:
    """Run ``model`` on one input: a tensor, a tuple of arguments, or a dict of keyword
    arguments (a tokenizer's output). ``func`` names the caller in the error."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    raise _errors.type_error(
        func,
        "a batch must be a tensor, a tuple of arguments or a dict of keyword arguments",
        type(batch).__name__,
        "Pass e.g. [tokenizer(texts, return_tensors='pt')] or [torch.randn(8, 16)].",
    )


def _capture(model: nn.Module, first: nn.Module, batches: Iterable[Any]) -> _Inputs:
    """The first block's ``(args, kwargs)`` for every batch (the model stops there)."""
    captured: _Inputs = []

    def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append((args, kwargs))
        raise _Reached

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                call_model(model, batch)
            except _Reached:
                continue
            raise _errors.value_error(
                "oneshot",
                "the model ran without calling its first block",
                type(first).__name__,
                "Pass blocks= the ModuleList the model's forward walks through.",
            )
    finally:
        handle.remove()
    if not captured:
        raise _errors.value_error(
            "oneshot", "batches is empty", batches, "Pass at least one calibration batch."
        )
    return captured


def _collect(
    block: nn.Module, inputs: _Inputs, layers: Mapping[str, nn.Linear]
) -> dict[str, posttrain.Stats]:
    """Run the block on every input, summing each layer's input statistics. Layers that read
    the same tensor in one forward (a transformer's query, key and value) share one sum."""
    stats = {
        name: posttrain.init_stats(m.in_features, device=m.weight.device)
        for name, m in layers.items()
    }
    of_input: dict[int, tuple[torch.Tensor, posttrain.Stats]] = {}  # this forward's, by input

    def recorder(name: str) -> Callable[..., None]:
        def hook(_: nn.Module, args: tuple[Any, ...], __: Any) -> None:
            x = args[0]  # under no_grad; the object itself, so that id() matches
            known = of_input.get(id(x))
            if known is None or known[0] is not x:
                empty = posttrain.init_stats(x.shape[-1], device=x.device)
                known = of_input[id(x)] = (x, posttrain.accumulate(empty, x))
            stats[name] = posttrain.merge(stats[name], known[1])

        return hook

    handles = [m.register_forward_hook(recorder(name)) for name, m in layers.items()]
    try:
        for args, kwargs in inputs:
            block(*args, **kwargs)
            of_input.clear()
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _advance(block: nn.Module, inputs: _Inputs) -> _Inputs:
    """The next block's inputs: this block's output in place of its hidden-state argument."""
    out: _Inputs = []
    for args, kwargs in inputs:
        result = block(*args, **kwargs)
        hidden = result[0] if isinstance(result, (tuple, list)) else result
        if args:
            out.append(((hidden, *args[1:]), kwargs))
        elif "hidden_states" in kwargs:
            out.append(((), {**kwargs, "hidden_states": hidden}))
        else:
            raise _errors.value_error(
                "oneshot",
                "cannot tell which argument of the block is its input",
                sorted(kwargs),
                "Call the blocks with the hidden states as first positional argument.",
            )
    return out


class _Method(NamedTuple):
    name: str
    pattern: Pattern
    sparsity: float
    block_size: int
    damp: float


def _prune(module: nn.Linear, stats: posttrain.Stats, method: _Method) -> LayerReport:
    """Prune one layer in place with the method; its report."""
    weight, gram = module.weight.detach(), stats.gram
    assert gram is not None  # _collect always sums X^T X (the report needs it)
    if method.name == "sparsegpt":
        new, mask = posttrain.sparsegpt(
            weight,
            gram,
            sparsity=method.sparsity,
            pattern=method.pattern,
            block_size=method.block_size,
            damp=method.damp,
        )
    else:
        if method.name == "wanda":
            mask = posttrain.wanda(
                weight,
                posttrain.input_norms(stats),
                sparsity=method.sparsity,
                pattern=method.pattern,
            )
        else:
            scores = {"w": weight.abs()}
            mask = pattern_masks(
                scores,
                pattern=method.pattern,
                sparsity=method.sparsity,
                scope="local",
                max_layer_sparsity=1.0,
            )["w"]
        new = torch.where(mask, weight, torch.zeros_like(weight))
    error = posttrain.reconstruction_error(weight, new, gram)
    with torch.no_grad():
        module.weight.copy_(new)
    return LayerReport(float((~mask).sum()) / mask.numel(), error, mask.numel(), mask)


def _bar(total: int, progress: bool | None) -> Any:
    """A tqdm bar over the blocks (when tqdm is installed), or a stand-in that does nothing."""
    if progress is not False:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            return tqdm(
                total=total,
                desc="oneshot",
                unit="block",
                disable=None if progress is None else False,
            )
    return _NoBar()


class _NoBar:
    def update(self, _: int) -> None:
        pass

    def close(self) -> None:
        pass


@torch.no_grad()
def oneshot(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    method: str = "wanda",
    sparsity: float | None = None,
    pattern: str | Pattern = "1x1",
    blocks: nn.ModuleList | None = None,
    names: Iterable[str] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    progress: bool | None = None,
) -> dict[str, LayerReport]:
    """Prune a pretrained model in place, once, from calibration batches, block by block.

    Args:
        model: the model; its weights are changed in place (eval mode while it runs).
        batches: calibration inputs, each a tensor, a tuple of arguments, or a dict of keyword
            arguments (a tokenizer's output); iterated once. Padding tokens count as data, so
            prefer full windows of text.
        method: ``"wanda"``, ``"sparsegpt"`` or ``"magnitude"`` (per layer, no data needed
            but the reconstruction error is still measured).
        sparsity: the fraction of each layer to prune; may be left out for N:M.
        pattern: ``"1x1"``, ``"N:M"``, or (Wanda, magnitude) a block pattern.
        blocks: the ``nn.ModuleList`` of repeated blocks (default: :func:`default_blocks`).
        names: the weights to prune (default: every ``Linear`` weight inside the blocks).
        block_size: SparseGPT's column block.
        damp: SparseGPT's dampening.
        progress: a tqdm bar over the blocks; None shows it on a terminal when tqdm is
            installed.

    Returns:
        A report per pruned weight, by parameter name, in the order they were pruned.

    Example:
        >>> torch.manual_seed(0) and None
        >>> net = nn.Sequential(nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)]))
        >>> net.forward = lambda x: net[0][1](net[0][0](x))
        >>> report = oneshot(net, [torch.randn(16, 8)], method="sparsegpt", sparsity=0.5)
        >>> [(name, r.sparsity) for name, r in report.items()]
        [('0.0.weight', 0.5), ('0.1.weight', 0.5)]
    """
    pattern, value = posttrain.resolve(method, sparsity, pattern, func="oneshot")
    if not (isinstance(damp, (int, float)) and 0 <= damp < float("inf")):
        raise _errors.value_error(
            "oneshot", "damp must be a finite number >= 0", damp, "Pass e.g. damp=0.01."
        )
    size = _errors.positive_int("oneshot", "block_size", block_size)
    how = _Method(method, pattern, value, size, float(damp))
    prefix, chosen = _blocks(model, blocks)
    layers = _linears(prefix, chosen, names)
    training = model.training
    model.eval()
    bar = _bar(len(chosen), progress)
    report: dict[str, LayerReport] = {}
    try:
        inputs = _capture(model, chosen[0], batches)
        for i, (block, block_layers) in enumerate(zip(chosen, layers, strict=True)):
            stats = _collect(block, inputs, block_layers)
            for name, module in block_layers.items():
                report[name] = _prune(module, stats.pop(name), how)
                _log.info(
                    "oneshot %s: %s sparsity %.4f error %.4f",
                    method,
                    name,
                    report[name].sparsity,
                    report[name].error,
                )
            if i + 1 < len(chosen):  # the last block's outputs feed nothing
                inputs = _advance(block, inputs)
            bar.update(1)
    finally:
        bar.close()
        model.train(training)
    return report
