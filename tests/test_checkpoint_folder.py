"""``fprune prune`` / ``report`` on a model folder and a sharded checkpoint: one checkpoint,
global scope across the shards, the output in the same layout; precise errors otherwise."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from fprune.cli import main
from fprune.report import layer_report

safetensors_torch = pytest.importorskip("safetensors.torch")

SHARDS = {
    "model-00001-of-00002.safetensors": {"enc.0.weight": 0, "enc.0.bias": 1},
    "model-00002-of-00002.safetensors": {"enc.1.weight": 2, "classifier.weight": 3},
}


def _tensor(seed: int, name: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (16,) if name.endswith("bias") else (16, 8) if "classifier" not in name else (4, 16)
    return torch.randn(shape, generator=gen) * (10.0 if seed == 2 else 1.0)


@pytest.fixture
def sharded(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    weight_map = {}
    for file, names in SHARDS.items():
        tensors = {n: _tensor(seed, n) for n, seed in names.items()}
        safetensors_torch.save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text('{"model_type": "test"}')
    return folder


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("entry", ["folder", "index"])
def test_global_scope_spans_the_shards_and_the_output_mirrors_them(
    sharded, tmp_path, capsys, entry
):
    source = sharded if entry == "folder" else sharded / "model.safetensors.index.json"
    before = _digests(sharded)
    out = tmp_path / "pruned"
    args = [
        "prune",
        source,
        "-o",
        out,
        "--pattern",
        "4x1",
        "--sparsity",
        "0.5",
        "--scope",
        "global",
    ]
    code, stdout, _ = _run(capsys, *args)
    assert code == 0 and "wrote" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # same files
    assert _digests(sharded) == before  # the input untouched
    assert json.loads((out / "model.safetensors.index.json").read_text())["weight_map"] == {
        n: f for f, names in SHARDS.items() for n in names
    }
    w0 = safetensors_torch.load_file(str(out / "model-00001-of-00002.safetensors"))["enc.0.weight"]
    w1 = safetensors_torch.load_file(str(out / "model-00002-of-00002.safetensors"))["enc.1.weight"]
    # one ranking over both shards: the layer with 10x larger weights keeps more
    assert (w0 == 0).sum() + (w1 == 0).sum() == 128 and (w1 == 0).sum() < (w0 == 0).sum()
    assert layer_report("w0", w0, pattern="4x1").satisfies
    code, stdout, _ = _run(capsys, "report", out, "--pattern", "4x1")
    assert code == 0 and "2 of 2 checked layers follow 4x1" in stdout


def test_a_model_folder_with_one_file_is_written_as_a_folder(tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    safetensors_torch.save_file({"fc.weight": torch.randn(8, 8)}, str(folder / "model.safetensors"))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "pooling").mkdir()
    (folder / "pooling" / "config.json").write_text("{}")
    out = tmp_path / "out"
    code, _, _ = _run(capsys, "prune", folder, "-o", out, "--pattern", "1x1", "--sparsity", "0.5")
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "tokenizer.json", "pooling"}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "a folder without model.safetensors.index.json"),
        (lambda d: (d / "x.index.json").write_text("{}"), "not a sharded-checkpoint index"),
        (
            lambda d: torch.save(torch.nn.Linear(2, 2), d / "whole.pt"),
            "a whole model saved with torch.save(model); save model.state_dict() instead",
        ),
    ],
)
def test_unsupported_layouts_say_what_to_pass(tmp_path, capsys, make, message):
    folder = tmp_path / "in"
    folder.mkdir()
    make(folder)
    target = next((p for p in folder.iterdir() if p.is_file()), folder)
    code, out, err = _run(capsys, "report", target)
    assert code == 2 and out == "" and message in err
    assert "\x1b[" not in err and len(err.splitlines()) == 1


def test_the_output_folder_is_refused_when_full_or_the_input(sharded, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("me")
    base = ["prune", sharded, "--pattern", "1x1", "--sparsity", "0.5"]
    code, _, err = _run(capsys, *base, "-o", full)
    assert code == 2 and "exists and is not empty; pass --force" in err
    assert (full / "keep").read_text() == "me"
    code, _, err = _run(capsys, *base, "-o", sharded)
    assert code == 2 and "is the input folder" in err
    assert _run(capsys, *base, "-o", full, "--force")[0] == 0
    assert not (full / "keep").exists() and (full / "config.json").exists()
