"""fprune.nn.oneshot: the sequential driver equals pruning the blocks by hand in order, on a
small random-weight BERT and on a plain torch model; reports, names, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fprune
from fprune import posttrain
from tests import reference_posttrain as ref


class _Residual(nn.Module):
    """``h + scale * mlp(h)``: a block whose output is the next block's input."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )

    def forward(self, h: torch.Tensor, *, scale: float) -> torch.Tensor:
        return h + scale * self.mlp(h)


class _Blocks(nn.Module):
    """Residual MLP blocks in a ModuleList, called with a tensor and a scale argument (which
    reaches every block as a keyword)."""

    def __init__(self, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(8, width)
        self.layers = nn.ModuleList(_Residual(width) for _ in range(depth))
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        h = self.inp(x)
        for layer in self.layers:
            h = layer(h, scale=scale)
        return self.head(h)


def _blocks_model(seed: int = 0) -> _Blocks:
    torch.manual_seed(seed)
    return _Blocks()


def _by_hand_layers(model: nn.Module, prefix: str, blocks: nn.ModuleList):
    return [
        [
            (f"{prefix}.{i}.{sub}.weight", m)
            for sub, m in block.named_modules()
            if isinstance(m, nn.Linear)
        ]
        for i, block in enumerate(blocks)
    ]


def _layer_fn(method: str, **kw):
    if method == "sparsegpt":
        return lambda w, g: posttrain.sparsegpt(w, g, **kw)

    def wanda(w, g):
        kept = posttrain.wanda(w, torch.sqrt(torch.diagonal(g)), **kw)
        return torch.where(kept, w, torch.zeros_like(w)), kept

    return wanda


def _bert(seed: int = 0):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    torch.manual_seed(seed)
    model = transformers.BertModel(config).eval()
    gen = torch.Generator().manual_seed(seed)
    batches = [
        {
            "input_ids": torch.randint(0, 50, (4, 12), generator=gen),
            "attention_mask": torch.ones(4, 12, dtype=torch.long),
        }
        for _ in range(3)
    ]
    return model, batches


@pytest.mark.parametrize(
    ("method", "settings"),
    [
        ("sparsegpt", {"sparsity": 0.5, "block_size": 16}),
        ("sparsegpt", {"pattern": "2:4", "block_size": 16}),
        ("wanda", {"sparsity": 0.6}),
        ("wanda", {"pattern": "2:4"}),
    ],
)
def test_the_driver_on_a_bert_equals_pruning_the_layers_by_hand(method, settings):
    model, batches = _bert()
    twin, _ = _bert()
    report = fprune.nn.oneshot(model, batches, method=method, progress=False, **settings)
    layers = _by_hand_layers(twin, "encoder.layer", twin.encoder.layer)
    masks = ref.prune_by_hand(
        twin, batches, layers, _layer_fn(method, **settings), dtype=torch.float32
    )
    assert list(report) == [name for block in layers for name, _ in block]
    params = dict(model.named_parameters())
    for name, kept in masks.items():
        assert torch.equal(params[name] != 0, kept), name
        torch.testing.assert_close(params[name], dict(twin.named_parameters())[name])
        assert torch.equal(report[name].mask, kept)
        assert report[name].sparsity == pytest.approx(float((~kept).sum()) / kept.numel())
        assert 0.0 < report[name].error < 1.0
    fresh = dict(_bert()[0].named_parameters())
    assert all(torch.equal(params[n], fresh[n]) for n in params if n not in masks)


def test_the_driver_takes_tensor_and_tuple_batches_and_restores_training_mode():
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(6, 8, generator=gen) for _ in range(2)]
    for batches in (xs, [(x, 0.5) for x in xs]):
        model, twin = _blocks_model(), _blocks_model()
        model.train()
        report = fprune.nn.oneshot(model, batches, method="sparsegpt", sparsity=0.5)
        assert model.training
        twin.eval()
        layers = _by_hand_layers(twin, "layers", twin.layers)
        masks = ref.prune_by_hand(
            _Call(twin),
            batches,
            layers,
            _layer_fn("sparsegpt", sparsity=0.5),
            dtype=torch.float32,
        )
        assert list(report) == list(masks)
        params, want = dict(model.named_parameters()), dict(twin.named_parameters())
        for name in masks:
            torch.testing.assert_close(params[name], want[name])
        assert model.inp.weight.count_nonzero() == model.inp.weight.numel()  # outside the blocks


class _Call(nn.Module):
    """Calls the wrapped model with a batch that may be a tuple of arguments."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch):  # type: ignore[no-untyped-def]
        return self.model(*batch) if isinstance(batch, tuple) else self.model(batch)


def test_names_limit_the_layers_and_magnitude_needs_no_statistics_to_rank():
    model = _blocks_model()
    chosen = ["layers.1.mlp.0.weight", "layers.2.mlp.2.weight"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = fprune.nn.oneshot(
        model, [torch.randn(5, 8)], method="magnitude", sparsity=0.25, names=chosen
    )
    assert list(report) == chosen
    for name, p in model.named_parameters():
        if name in chosen:
            want = fprune.masks({"w": before[name].abs()}, pattern="1x1", sparsity=0.25)["w"]
            assert torch.equal(p.detach() != 0, want)
        else:
            assert torch.equal(p.detach(), before[name])


def test_the_default_blocks_are_the_longest_module_list():
    model = _blocks_model()
    model.extra = nn.ModuleList([nn.Linear(2, 2)])
    name, blocks = fprune.blockwise.default_blocks(model)
    assert name == "layers" and blocks is model.layers


def test_driver_errors_name_the_problem_and_the_fix():
    model = _blocks_model()
    x = [torch.randn(4, 8)]
    with pytest.raises(ValueError, match="oneshot: unknown method"):
        fprune.nn.oneshot(model, x, method="obs", sparsity=0.5)
    with pytest.raises(ValueError, match="oneshot: SparseGPT prunes single weights or N:M"):
        fprune.nn.oneshot(model, x, method="sparsegpt", sparsity=0.5, pattern="4x1")
    with pytest.raises(ValueError, match="oneshot: batches is empty"):
        fprune.nn.oneshot(model, [], sparsity=0.5)
    with pytest.raises(ValueError, match="oneshot: names holds weights that are not Linear"):
        fprune.nn.oneshot(model, x, sparsity=0.5, names=["head.weight"])
    with pytest.raises(ValueError, match=r"oneshot: blocks must be a non-empty nn\.ModuleList"):
        fprune.nn.oneshot(model, x, sparsity=0.5, blocks=nn.ModuleList([nn.Linear(2, 2)]))
    with pytest.raises(ValueError, match=r"oneshot: the model has no nn\.ModuleList"):
        fprune.nn.oneshot(nn.Linear(8, 2), x, sparsity=0.5)
    with pytest.raises(TypeError, match="oneshot: a batch must be a tensor, a tuple"):
        fprune.nn.oneshot(model, ["text"], sparsity=0.5)
    with pytest.raises(ValueError, match="oneshot: damp must be a finite number"):
        fprune.nn.oneshot(model, x, method="sparsegpt", sparsity=0.5, damp=float("nan"))
    skipped = _blocks_model()
    skipped.forward = lambda x: skipped.head(skipped.inp(x))  # never calls its blocks
    with pytest.raises(ValueError, match="oneshot: the model ran without calling its first"):
        fprune.nn.oneshot(skipped, x, sparsity=0.5)
    assert all(p.count_nonzero() == p.numel() for p in model.parameters())  # nothing pruned


def test_progress_bar_and_log_lines(caplog, capsys):
    pytest.importorskip("tqdm")
    with caplog.at_level("INFO", logger="fprune"):
        fprune.nn.oneshot(_blocks_model(), [torch.randn(4, 8)], sparsity=0.5, progress=True)
    assert "oneshot" in capsys.readouterr().err
    assert sum("oneshot wanda: layers." in r.getMessage() for r in caplog.records) == 6


def test_wide_inputs_use_the_symmetric_gram():
    x = torch.randn(40, 600, dtype=torch.float64)
    stats = posttrain.accumulate(posttrain.init_stats(600, dtype=torch.float64), x)
    assert stats.gram is not None
    torch.testing.assert_close(stats.gram, x.T @ x)
    assert torch.equal(stats.gram[:150, 150:], stats.gram[150:, :150].T)  # mirrored, 4 parts
