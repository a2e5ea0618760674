"""One default-dense rule for the CLI, nn.prunable, the callbacks and the demo."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from fprune import checkpoint
from fprune.dense_rule import dense_name, file_output_layer, module_order
from fprune.nn import prunable
from tests.test_cli import _run

safetensors_torch = pytest.importorskip("safetensors.torch")


def _conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 4)
    )


@given(st.lists(st.integers(0, 200), min_size=1, max_size=20, unique=True))
def test_module_order_compares_numbers_as_numbers(indices):
    names = [f"layers.{i}.fc.weight" for i in indices]
    assert sorted(names, key=module_order) == [f"layers.{i}.fc.weight" for i in sorted(indices)]


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("bert.embeddings.word_embeddings.weight", "embed"),
        ("transformer.wte.weight", "wte"),
        ("bert.pooler.dense.weight", "pooler"),
        ("lm_head.weight", "lm_head"),
        ("Classifier.Weight", "classifier"),
        ("encoder.layer.0.output.dense.weight", None),
    ],
)
def test_dense_names(name, fragment):
    assert dense_name(name) == fragment


def test_a_conv_nets_file_keeps_its_classifier_dense_as_prunable_does(tmp_path, capsys):
    net = _conv_net()
    path, out = tmp_path / "net.safetensors", tmp_path / "out.safetensors"
    safetensors_torch.save_file(net.state_dict(), str(path))
    code, text, err = _run(capsys, "prune", path, "-o", out, "--pattern", "1x1", "--sparsity", 0.5)
    assert code == 0, err
    assert "left dense: 4.weight (the output layer" in text
    pruned = safetensors_torch.load_file(str(out))
    assert torch.equal(pruned["4.weight"], net.state_dict()["4.weight"])
    assert prunable(net).names == ("0.weight", "2.weight") and prunable(net).head == "4"


def test_file_output_layer_golden_cases():
    assert file_output_layer(["0.weight", "2.weight", "10.weight"]) == "10.weight"
    assert file_output_layer(["fc.weight"]) is None  # one layer: it is what there is to prune
    assert file_output_layer(["encoder.0.weight", "lm_head.weight"]) is None


def test_bert_keeps_embeddings_and_pooler_dense_in_the_cli_and_in_prunable(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32)  # fmt: skip
    model = transformers.BertModel(config)
    selection = prunable(model)
    assert selection.dense == ("pooler.dense.weight",)  # the last module is its Tanh
    assert all("embed" not in n for n in selection.names) and len(selection.names) == 6
    path = tmp_path / "bert.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                str(path))  # fmt: skip
    chosen = checkpoint.select(checkpoint.load(path))
    assert set(chosen.names) == set(selection.names)
    assert "pooler" in chosen.skipped["pooler.dense.weight"]


def test_the_override_prunes_everything_or_exactly_what_is_named():
    net = _conv_net()
    assert prunable(net, exclude_head=False).names == ("0.weight", "2.weight", "4.weight")
    model = nn.ModuleDict({"classifier": nn.Linear(4, 4), "body": nn.Linear(4, 4)})
    assert prunable(model).dense == ("classifier.weight",)
    assert prunable(model, exclude_head=False).dense == ()
