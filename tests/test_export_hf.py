"""Slimming a small random-weight BERT: equal to masking, and saved folders that reload."""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("torch_pruning")
transformers = pytest.importorskip("transformers")

import fprune  # noqa: E402
from fprune.export import coupled_masks, slim  # noqa: E402
from fprune.integrations.hf_slim import MANIFEST, load_slimmed, save_slimmed  # noqa: E402


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    model = transformers.BertModel(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):  # BERT starts with zero biases; constants must be folded
                param.uniform_(-0.5, 0.5)
    return model


INPUTS = {
    "input_ids": torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1)),
    "attention_mask": torch.tensor([[1] * 12, [1] * 8 + [0] * 4]),
}


def _outputs(model) -> torch.Tensor:
    with torch.no_grad():
        out = model(**INPUTS)
    return torch.cat([out.last_hidden_state.flatten(), out.pooler_output.flatten()])


def _masked(model, masks) -> torch.Tensor:
    reference = copy.deepcopy(model)
    fprune.nn.apply_masks_(reference, masks)
    return _outputs(reference)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def _row_masks(model, ffn_rows: slice, head: int) -> dict[str, torch.Tensor]:
    """Prune FFN rows, and the query/key/value rows of one head, in every layer (the FFN's
    output layer and the attention output keep their columns: constants get folded)."""
    size = model.config.hidden_size // model.config.num_attention_heads
    masks = {}
    for i, layer in enumerate(model.encoder.layer):
        ffn = torch.ones(layer.intermediate.dense.weight.shape, dtype=torch.bool)
        ffn[ffn_rows] = False
        masks[f"encoder.layer.{i}.intermediate.dense.weight"] = ffn
        for proj in ("query", "key", "value"):
            rows = torch.ones(32, 32, dtype=torch.bool)
            rows[head * size : (head + 1) * size] = False
            masks[f"encoder.layer.{i}.attention.self.{proj}.weight"] = rows
    return masks


def test_pruned_rows_and_heads_slim_to_the_masked_outputs(bert):
    masks = _row_masks(bert, slice(0, 64, 2), head=1)
    slimmed, report = slim(bert, masks, INPUTS)
    layer = slimmed.encoder.layer[0]
    assert layer.intermediate.dense.out_features == 32
    assert layer.output.dense.in_features == 32
    assert layer.attention.self.query.out_features == 24
    assert layer.attention.self.num_attention_heads == 3
    assert report.folded["encoder.layer.0.output.dense"] == 32
    assert report.inconsistent == {}
    assert _relative(_masked(bert, masks), _outputs(slimmed)) <= 1e-5


def test_a_partly_pruned_head_stays_whole(bert):
    masks = _row_masks(bert, slice(0, 0), head=1)
    for name, mask in masks.items():
        if "attention" in name:
            mask[8] = True  # one channel of head 1 kept
    slimmed, report = slim(bert, masks, INPUTS)
    assert slimmed.encoder.layer[0].attention.self.num_attention_heads == 4
    assert "whole heads" in report.inconsistent["encoder.layer.0.attention.self.value"]
    assert _relative(_masked(bert, masks), _outputs(slimmed)) <= 1e-5


def _coupled(bert, head_sparsity):
    params = {n: p.detach() for n, p in bert.named_parameters() if "encoder" in n and p.ndim == 2}
    return coupled_masks(
        bert, fprune.magnitude(params), INPUTS, sparsity=0.5, head_sparsity=head_sparsity
    )


def test_uniform_ffn_slimming_reloads_with_from_pretrained(bert, tmp_path):
    slimmed, _ = slim(bert, _coupled(bert, 0.0), INPUTS)
    assert save_slimmed(slimmed, tmp_path) is True
    assert not (tmp_path / MANIFEST).exists()
    assert json.loads((tmp_path / "config.json").read_text())["intermediate_size"] == 32
    reloaded = transformers.BertModel.from_pretrained(tmp_path).eval()
    assert torch.equal(_outputs(reloaded), _outputs(slimmed))


def test_removed_heads_reload_through_the_manifest(bert, tmp_path):
    masks = _coupled(bert, 0.25)
    slimmed, report = slim(bert, masks, INPUTS)
    assert report.inconsistent == {}
    assert slimmed.encoder.layer[1].attention.self.num_attention_heads == 3
    assert _relative(_masked(bert, masks), _outputs(slimmed)) <= 1e-5
    assert save_slimmed(slimmed, tmp_path) is False
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["heads"]["encoder.layer.0.attention.self"] == 3
    assert manifest["shapes"]["encoder.layer.0.attention.self.query.weight"] == [24, 32]
    reloaded = load_slimmed(tmp_path)
    assert type(reloaded) is transformers.BertModel
    assert torch.equal(_outputs(reloaded), _outputs(slimmed))


def test_a_manifest_of_another_version_is_refused(bert, tmp_path):
    slimmed, _ = slim(bert, _coupled(bert, 0.25), INPUTS)
    save_slimmed(slimmed, tmp_path)
    body = json.loads((tmp_path / MANIFEST).read_text())
    (tmp_path / MANIFEST).write_text(json.dumps({**body, "version": 99}))
    with pytest.raises(ValueError, match="not a version 1 fprune slim manifest"):
        load_slimmed(tmp_path)
