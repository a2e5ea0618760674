"""``fprune compress`` / ``fprune decompress``, and ``fprune report`` on compressed files."""

from __future__ import annotations

import json

import pytest
import torch

from tests.test_cli import _digest, _refused, _run, _weights

safetensors_torch = pytest.importorskip("safetensors.torch")
safe_open = pytest.importorskip("safetensors").safe_open


@pytest.fixture
def pruned_file(tmp_path, capsys):
    """A checkpoint pruned 2:4 by ``fprune prune``, with header metadata."""
    dense = tmp_path / "dense.safetensors"
    safetensors_torch.save_file(_weights(), str(dense), metadata={"source": "test"})
    pruned = tmp_path / "pruned.safetensors"
    code, _, err = _run(capsys, "prune", dense, "-o", pruned, "--pattern", "2:4", "--sparsity", 0.5)
    assert code == 0, err
    return pruned


@pytest.mark.parametrize("nm", [None, "2:4"])
def test_compress_then_decompress_gives_the_same_tensors_and_metadata(
    pruned_file, tmp_path, capsys, nm
):
    small, back = tmp_path / "small.safetensors", tmp_path / "back.safetensors"
    code, text, err = _run(
        capsys, "compress", pruned_file, "-o", small, "--json", *(["--nm", nm] if nm else [])
    )
    assert code == 0, err
    summary = json.loads(text)
    assert summary["output_bytes"] == small.stat().st_size < pruned_file.stat().st_size
    with safe_open(str(small), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert meta["fprune.format"] == "compressed" and meta["source"] == "test"
    assert ("encoder.0.weight::index" in keys) == (nm == "2:4")
    code, _, err = _run(capsys, "decompress", small, "-o", back)
    assert code == 0, err
    original, restored = safetensors_torch.load_file(pruned_file), safetensors_torch.load_file(back)
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    with safe_open(str(back), framework="pt") as f:
        assert f.metadata() == {"source": "test"}


def test_report_reads_compressed_files_like_the_original(pruned_file, tmp_path, capsys):
    small = tmp_path / "small.safetensors"
    assert _run(capsys, "compress", pruned_file, "-o", small)[0] == 0
    reports = []
    for path in (pruned_file, small):
        code, text, err = _run(capsys, "report", path, "--pattern", "2:4", "--json")
        assert code == 0, err
        reports.append(json.loads(text))
    assert reports[1]["format"] == "compressed safetensors"
    assert reports[0]["layers"] == reports[1]["layers"]
    assert reports[0]["total"] == reports[1]["total"]


def test_torch_checkpoints_compress_with_their_ties(tmp_path, capsys):
    w = _weights()
    w["tied.weight"] = w["encoder.0.weight"]
    path, small, back = tmp_path / "m.pt", tmp_path / "s.safetensors", tmp_path / "b.safetensors"
    torch.save(w, path)
    assert _run(capsys, "compress", path, "-o", small)[0] == 0
    with safe_open(str(small), framework="pt") as f:
        assert not any(k.startswith("tied.weight") for k in f.keys())  # noqa: SIM118
    assert _run(capsys, "decompress", small, "-o", back)[0] == 0
    restored = safetensors_torch.load_file(back)
    assert restored.keys() == w.keys() and all(torch.equal(restored[k], w[k]) for k in w)


def test_errors_are_one_line_and_write_nothing(pruned_file, tmp_path, capsys):
    small, out = tmp_path / "small.safetensors", tmp_path / "out.safetensors"
    assert _run(capsys, "compress", pruned_file, "-o", small)[0] == 0
    err = _refused(capsys, [small], out, "compress", small, "-o", out)
    assert "already compressed" in err
    err = _refused(capsys, [pruned_file], out, "decompress", pruned_file, "-o", out)
    assert "not a compressed checkpoint" in err
    err = _refused(capsys, [pruned_file], out, "compress", pruned_file, "-o", out, "--nm", "4x1")
    assert "nm must be an N:M pattern" in err
    pt_out = tmp_path / "out.pt"
    err = _refused(capsys, [pruned_file], pt_out, "compress", pruned_file, "-o", pt_out)
    assert "name it *.safetensors" in err
    before = _digest(small)
    code, _, err = _run(capsys, "compress", pruned_file, "-o", small)
    assert code == 2 and "pass --force" in err and _digest(small) == before


def test_a_checkpoint_with_non_tensor_entries_is_refused(tmp_path, capsys):
    path, out = tmp_path / "m.pt", tmp_path / "s.safetensors"
    torch.save({"model": _weights(), "step": 7}, path)
    err = _refused(capsys, [path], out, "compress", path, "-o", out)
    assert "'step'" in err and "not tensors" in err


def test_a_damaged_compressed_file_is_refused(pruned_file, tmp_path, capsys):
    small, out = tmp_path / "small.safetensors", tmp_path / "out.safetensors"
    assert _run(capsys, "compress", pruned_file, "-o", small)[0] == 0
    with safe_open(str(small), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = f.metadata()
    key = next(k for k in tensors if k.endswith("::values"))
    tensors[key] = tensors[key][:-1].clone()
    damaged = tmp_path / "damaged.safetensors"
    safetensors_torch.save_file(tensors, str(damaged), metadata=meta)
    err = _refused(capsys, [damaged], out, "decompress", damaged, "-o", out)
    assert "damaged" in err


def test_a_model_folder_is_refused_with_what_to_do(tmp_path, capsys):
    folder, out = tmp_path / "model", tmp_path / "out.safetensors"
    folder.mkdir()
    safetensors_torch.save_file(_weights(), str(folder / "model.safetensors"))
    err = _refused(capsys, [folder / "model.safetensors"], out, "compress", folder, "-o", out)
    assert "compress each weights file on its own" in err


def test_keep_negative_zeros_brings_back_every_bit(tmp_path, capsys):
    w = torch.tensor([[-0.0, 1.0, -0.0, 0.0]] * 64)  # what w * mask leaves for w < 0
    path, small = tmp_path / "w.safetensors", tmp_path / "s.safetensors"
    default, exact = tmp_path / "d.safetensors", tmp_path / "e.safetensors"
    safetensors_torch.save_file({"w": w}, str(path))
    for flags, out in (([], default), (["--keep-negative-zeros"], exact)):
        assert _run(capsys, "compress", path, "-o", small, "--force", *flags)[0] == 0
        assert _run(capsys, "decompress", small, "-o", out)[0] == 0
    assert torch.equal(safetensors_torch.load_file(default)["w"], w)  # equal values
    assert path.read_bytes() != default.read_bytes()  # the -0.0 came back as +0.0
    assert path.read_bytes() == exact.read_bytes()  # every bit
