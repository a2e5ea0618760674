"""``fprune prune`` and ``fprune report`` on small generated checkpoints in both formats."""

from __future__ import annotations

import collections
import hashlib
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

import fprune
from fprune import checkpoint
from fprune.cli import main
from fprune.report import layer_report

safetensors_torch = pytest.importorskip("safetensors.torch")


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "embed_tokens.weight": torch.randn(50, 32, generator=g),
        "encoder.0.weight": torch.randn(64, 32, generator=g),
        "encoder.0.bias": torch.randn(64, generator=g),
        "encoder.1.weight": torch.randn(32, 64, generator=g).to(torch.bfloat16),
        "conv.weight": torch.randn(8, 4, 3, 3, generator=g),
        "norm.weight": torch.ones(32),
        "classifier.weight": torch.randn(4, 32, generator=g),
        "position_ids": torch.arange(16).reshape(1, 16),
    }


PRUNED = ("encoder.0.weight", "encoder.1.weight", "conv.weight")  # the default selection


@pytest.fixture
def st_file(tmp_path):
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(_weights(), str(path), metadata={"source": "test", "step": "7"})
    return path


@pytest.fixture
def pt_file(tmp_path):
    w = _weights()
    tree = {
        "model": dict(w),
        "step": 7,
        "config": {"lr": 0.1, "name": "mlp"},
        "extra": [w["norm.weight"], "note"],
    }
    tree["model"]["tied.weight"] = tree["model"]["encoder.0.weight"]  # shares storage
    tree["model"]["conv.weight"] = torch.nn.Parameter(w["conv.weight"])  # loads requiring grad
    path = tmp_path / "model.pt"
    torch.save(tree, path)
    return path


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _refused(capsys, inputs, out, *argv: str) -> str:
    """Run a command that must fail: exit 2, nothing on stdout, one line on stderr without a
    traceback, every input file unchanged and nothing at ``out``; the error line."""
    before = {p: _digest(p) for p in inputs}
    code, stdout, err = _run(capsys, *argv)
    assert code == 2 and stdout == "", (code, stdout, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert {p: _digest(p) for p in inputs} == before
    assert not Path(out).exists()
    return err


def _units(weight: torch.Tensor, pattern: str) -> int:
    return fprune.grid_shape(pattern, weight.shape)[0] * fprune.grid_shape(pattern, weight.shape)[1]


@pytest.mark.parametrize(
    ("pattern", "sparsity"), [("1x1", 0.5), ("4x1", 0.5), ("2:4", 0.5), ("1x2", 0.3)]
)
def test_prune_safetensors_round_trip(st_file, tmp_path, capsys, pattern, sparsity):
    before = _digest(st_file)
    out = tmp_path / "pruned.safetensors"
    code, text, err = _run(
        capsys, "prune", st_file, "-o", out, "--pattern", pattern, "--sparsity", sparsity
    )
    assert code == 0, err
    assert _digest(st_file) == before  # the input is untouched
    dense, pruned = _weights(), safetensors_torch.load_file(str(out))
    assert set(pruned) == set(dense)  # nothing lost
    with safetensors_torch.safe_open(str(out), framework="pt") as f:
        assert f.metadata() == {"source": "test", "step": "7"}
    for name, w in dense.items():
        assert pruned[name].dtype == w.dtype
        if name not in PRUNED:
            assert torch.equal(pruned[name], w), name  # bit for bit
            continue
        kept = pruned[name] != 0
        assert torch.equal(pruned[name][kept], w[kept])  # kept weights unchanged
        report = layer_report(name, pruned[name], pattern=pattern)
        assert report.satisfies, (name, report.violation)
        if ":" in pattern:  # 2:4 at 0.5: every group loses exactly 2
            assert report.zeros == w.numel() // 2
        else:  # local scope: exactly floor(r * units) units in every layer
            units = _units(w, pattern)
            assert report.unit_sparsity * units == math.floor(sparsity * units + 1e-9)
    for name in PRUNED:
        assert name in text
    assert "does not divide" not in text  # every chosen layer is divisible by these patterns
    assert "left dense: embed_tokens.weight (name matches the exclusion 'embed')" in text
    assert "left dense: classifier.weight (name matches the exclusion 'classifier')" in text


def test_prune_torch_keeps_structure_and_ties(pt_file, tmp_path, capsys):
    out = tmp_path / "pruned.pt"
    code, text, err = _run(
        capsys, "prune", pt_file, "-o", out, "--pattern", "4x1", "--sparsity", "0.75"
    )
    assert code == 0, err
    tree = torch.load(out, weights_only=True)
    assert (
        tree["step"] == 7
        and tree["config"] == {"lr": 0.1, "name": "mlp"}
        and tree["extra"][1] == "note"
    )
    model = tree["model"]
    assert (
        model["tied.weight"].untyped_storage().data_ptr()
        == model["encoder.0.weight"].untyped_storage().data_ptr()
    )
    w = _weights()["encoder.0.weight"]
    zeros = int((model["encoder.0.weight"] == 0).sum())
    assert zeros == 4 * math.floor(0.75 * w.numel() // 4)  # pruned once, not twice through the tie
    assert "model.tied.weight" in text and "shares storage with model.encoder.0.weight" in text
    assert torch.equal(model["embed_tokens.weight"], _weights()["embed_tokens.weight"])
    assert layer_report("conv", model["conv.weight"].detach(), pattern="4x1").unit_sparsity == 0.75


def test_prune_global_scope_is_exact(st_file, tmp_path, capsys):
    out = tmp_path / "g.safetensors"
    code, text, err = _run(
        capsys,
        "prune",
        st_file,
        "-o",
        out,
        "--pattern",
        "1x1",
        "--sparsity",
        "0.6",
        "--scope",
        "global",
        "--json",
    )
    assert code == 0, err
    result = json.loads(text.strip().splitlines()[-1])
    assert sorted(result["pruned"]) == sorted(PRUNED)
    size = sum(_weights()[n].numel() for n in PRUNED)
    assert result["total"]["zeros"] == math.floor(0.6 * size)
    assert len({round(r["sparsity"], 3) for r in result["layers"]}) > 1  # global: layers differ


def test_include_and_exclude_override_the_default(st_file, tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    code, text, _ = _run(
        capsys,
        "prune",
        st_file,
        "-o",
        out,
        "--pattern",
        "1x1",
        "--sparsity",
        "0.5",
        "--include",
        "embed|classifier|bias",
        "--json",
    )
    assert code == 0
    result = json.loads(text)
    assert sorted(result["pruned"]) == ["classifier.weight", "embed_tokens.weight"]
    assert "encoder.0.bias" in result["skipped"]  # chosen by name, but 1-D
    code, text, _ = _run(
        capsys,
        "prune",
        st_file,
        "-o",
        out,
        "--force",
        "--pattern",
        "1x1",
        "--sparsity",
        "0.5",
        "--exclude",
        "conv",
        "--exclude",
        "encoder.1",
        "--json",
    )
    assert code == 0
    assert sorted(json.loads(text)["pruned"]) == [
        "classifier.weight",
        "embed_tokens.weight",
        "encoder.0.weight",
    ]


def test_indivisible_layers_stay_dense_and_are_listed(st_file, tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    code, text, _ = _run(
        capsys, "prune", st_file, "-o", out, "--pattern", "16x1", "--sparsity", "0.5", "--json"
    )
    assert code == 0
    result = json.loads(text)
    assert sorted(result["pruned"]) == ["encoder.0.weight", "encoder.1.weight"]
    assert "16x1 does not divide it" in result["skipped"]["conv.weight"]
    assert torch.equal(
        safetensors_torch.load_file(str(out))["conv.weight"], _weights()["conv.weight"]
    )


def test_refuses_to_overwrite(st_file, tmp_path, capsys):
    before = _digest(st_file)
    code, _, err = _run(
        capsys, "prune", st_file, "-o", st_file, "--pattern", "4x1", "--sparsity", "0.5"
    )
    assert code == 2 and "is the input file; pass --force" in err
    assert _digest(st_file) == before
    other = tmp_path / "exists.safetensors"
    other.write_bytes(b"keep me")
    code, _, err = _run(
        capsys, "prune", st_file, "-o", other, "--pattern", "4x1", "--sparsity", "0.5"
    )
    assert code == 2 and "exists; pass --force" in err and other.read_bytes() == b"keep me"
    code, _, err = _run(
        capsys, "prune", st_file, "-o", st_file, "--force", "--pattern", "4x1", "--sparsity", "0.5"
    )
    assert code == 0, err
    assert (
        layer_report("w", safetensors_torch.load_file(str(st_file))["encoder.0.weight"]).sparsity
        == 0.5
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def _corrupt_files(tmp_path, st_file):
    data = st_file.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.bin").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.safetensors").write_text("not a checkpoint\n")
    torch.save({"step": 3, "name": "no tensors"}, tmp_path / "notensors.pt")
    with (tmp_path / "pickle.pt").open("wb") as f:
        pickle.dump({"w": torch.ones(2, 2), "f": collections.Counter("ab")}, f)  # not weights-only
    return [
        "truncated.safetensors",
        "noise.bin",
        "empty.pt",
        "text.safetensors",
        "notensors.pt",
        "pickle.pt",
        "missing.pt",
    ]


def test_corrupt_and_non_tensor_files_fail_cleanly(st_file, tmp_path, capsys):
    for name in _corrupt_files(tmp_path, st_file):
        out = tmp_path / f"out-{name}"
        code, text, err = _run(
            capsys, "prune", tmp_path / name, "-o", out, "--pattern", "4x1", "--sparsity", "0.5"
        )
        assert code == 2, name
        assert err.startswith("fprune prune: error: ") and name in err and "Traceback" not in err, (
            err
        )
        assert err.count("\n") == 1 and text == ""
        assert not out.exists()
        code, _, err = _run(capsys, "report", tmp_path / name)
        assert code == 2 and err.startswith("fprune report: error: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--criterion", "snip"], "needs gradients"),
        (["--criterion", "snipp"], "Did you mean 'snip'"),
        (["--sparsity", "1.5"], "sparsity"),
        (["--pattern", "3:4", "--sparsity", "0.9"], "prunes 0.75 of the weights"),
        (["--pattern", "4y1"], "pattern"),
        (["--include", "("], "--include '(' is not a valid regular expression"),
        (["--include", "nothing-matches"], "no tensor was selected"),
    ],
)
def test_bad_arguments_name_the_fix(st_file, tmp_path, capsys, args, message):
    out = tmp_path / "o.safetensors"
    argv = ["prune", st_file, "-o", out, "--pattern", "4x1", "--sparsity", "0.5", *args]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_output_suffix_must_match_the_format(st_file, pt_file, tmp_path, capsys):
    code, _, err = _run(
        capsys, "prune", st_file, "-o", tmp_path / "o.pt", "--pattern", "4x1", "--sparsity", "0.5"
    )
    assert code == 2 and "name it *.safetensors" in err
    code, _, err = _run(
        capsys,
        "prune",
        pt_file,
        "-o",
        tmp_path / "o.safetensors",
        "--pattern",
        "4x1",
        "--sparsity",
        "0.5",
    )
    assert code == 2 and "name it *.pt or *.bin" in err


def test_report_checks_the_pattern(st_file, tmp_path, capsys):
    assert (
        _run(capsys, "report", st_file, "--pattern", "4x1")[0] == 0
    )  # no zero at all: whole blocks
    code, text, _ = _run(
        capsys, "report", st_file, "--pattern", "2:4", "--json"
    )  # dense groups break 2:4
    assert code == 1 and all(
        r["violation"] == [0] * len(r["shape"]) for r in json.loads(text)["layers"]
    )
    out = tmp_path / "p.safetensors"
    assert (
        _run(capsys, "prune", st_file, "-o", out, "--pattern", "2:4", "--sparsity", "0.5")[0] == 0
    )
    code, text, _ = _run(capsys, "report", out, "--pattern", "2:4", "--json")
    assert code == 0
    result = json.loads(text)
    assert sorted(r["name"] for r in result["layers"]) == sorted(PRUNED)
    assert all(
        r["satisfies"] and r["unit_sparsity"] == 0.5 and r["sparsity"] == 0.5
        for r in result["layers"]
    )
    assert result["total"]["checked"] == result["total"]["satisfying"] == 3
    code, text, _ = _run(
        capsys, "report", out, "--pattern", "4x1", "--json"
    )  # 2:4 zeros are not 4x1 blocks
    assert code == 1
    row = next(r for r in json.loads(text)["layers"] if r["name"] == "encoder.0.weight")
    assert row["satisfies"] is False
    i, j = row["violation"]
    block = safetensors_torch.load_file(str(out))["encoder.0.weight"][i : i + 4, j] == 0
    assert i % 4 == 0 and 0 < int(block.sum()) < 4  # the reported block is mixed


def test_report_all_and_human_table(pt_file, capsys):
    code, text, _ = _run(capsys, "report", pt_file, "--all")
    assert code == 0
    for name in ("model.embed_tokens.weight", "model.classifier.weight", "model.conv.weight"):
        assert name in text
    assert "total: 0 of" in text


def test_python_dash_m_runs_without_traceback(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 64)
    run = subprocess.run(
        [sys.executable, "-m", "fprune", "report", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr and "bad.pt" in run.stderr


def test_checkpoint_load_error_is_a_checkpoint_error(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no such file"):
        checkpoint.load(tmp_path / "nope.safetensors")


@pytest.mark.parametrize(
    "tree",
    [
        lambda b: {"w1": b, "w2": b[:4]},  # a slice and its base
        lambda b: {"w": b, "wt": b.t()},  # a transpose
        lambda b: {"w1": b[:, :4], "w2": b[:, 2:6]},  # two slices that overlap
    ],
)
def test_prune_refuses_tensors_that_overlap_in_storage(tmp_path, capsys, tree):
    """Pruning one would change the other and prune the shared weights twice (4x1 would
    break its own pattern): refused, one line, nothing written, the input unchanged."""
    path, out = tmp_path / "shared.pt", tmp_path / "out.pt"
    torch.save(tree(torch.randn(8, 8, generator=torch.Generator().manual_seed(0))), path)
    before = _digest(path)
    code, stdout, err = _run(
        capsys,
        "prune",
        str(path),
        "-o",
        str(out),
        "--pattern",
        "4x1",
        "--sparsity",
        "0.5",
        "--include",
        "w",
    )
    assert code == 2 and stdout == ""
    assert "share storage without being the same view" in err and len(err.splitlines()) == 1
    assert not out.exists() and _digest(path) == before
    assert _run(capsys, "report", str(path))[0] == 0  # reading it is fine


def test_slices_that_do_not_overlap_are_pruned_each_exactly(tmp_path, capsys):
    base = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    path, out = tmp_path / "halves.pt", tmp_path / "out.pt"
    torch.save({"top": base[:4], "bottom": base[4:]}, path)
    code, _, _ = _run(
        capsys,
        "prune",
        str(path),
        "-o",
        str(out),
        "--pattern",
        "4x1",
        "--sparsity",
        "0.5",
        "--include",
        ".",
    )
    assert code == 0
    pruned = torch.load(out, weights_only=True)
    for name in ("top", "bottom"):
        assert layer_report(name, pruned[name], pattern="4x1").satisfies
        assert float((pruned[name] == 0).float().mean()) == 0.5


def test_entries_that_flatten_to_one_name_are_refused(tmp_path, capsys):
    path = tmp_path / "clash.pt"
    torch.save({"a.b": torch.ones(4, 4), "a": {"b": torch.zeros(4, 4)}}, path)
    for command in (
        ["report", str(path)],
        ["prune", str(path), "-o", str(tmp_path / "o.pt"), "--pattern", "1x1", "--sparsity", "0.5"],
    ):
        err = _refused(capsys, [path], tmp_path / "o.pt", *command)
        assert "flatten to the same name 'a.b'" in err


def test_a_partial_nm_ramp_is_asked_for_explicitly(st_file, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    args = ["prune", str(st_file), "-o", str(out), "--pattern", "2:4", "--sparsity", "0.3"]
    assert "--partial-nm" in _refused(capsys, [st_file], out, *args)
    code, _, _ = _run(capsys, *args, "--partial-nm", "--json")
    assert code == 0
    pruned = safetensors_torch.load_file(str(out))
    w = pruned["encoder.0.weight"]
    assert float((w == 0).float().mean()) == pytest.approx(0.3, abs=1 / 64)
    assert not layer_report("w", w, pattern="2:4").satisfies  # a ramp, as asked


@pytest.mark.parametrize("pattern", ["1x1", "4x1", "2:4", "channelx1", "1xchannel"])
def test_zero_size_tensors_are_left_as_they_are(tmp_path, capsys, pattern):
    path, out = tmp_path / "z.safetensors", tmp_path / "out.safetensors"
    tensors = {
        "a.weight": torch.randn(8, 8),
        "z.weight": torch.zeros(0, 8),
        "y.weight": torch.zeros(8, 0),
    }
    safetensors_torch.save_file(tensors, str(path))
    code, stdout, err = _run(
        capsys, "prune", str(path), "-o", str(out), "--pattern", pattern, "--sparsity", "0.5"
    )
    assert code == 0 and err == ""
    assert "n/a: no weights" in stdout
    pruned = safetensors_torch.load_file(str(out))
    assert pruned["z.weight"].shape == (0, 8) and pruned["y.weight"].shape == (8, 0)
    assert float((pruned["a.weight"] == 0).float().mean()) == 0.5


def test_float8_checkpoints_are_scored_wide_and_written_in_their_dtype(tmp_path, capsys):
    path, out = tmp_path / "f8.safetensors", tmp_path / "out.safetensors"
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(2)).to(torch.float8_e4m3fn)
    safetensors_torch.save_file({"a.weight": w}, str(path))
    code, _, err = _run(capsys, "prune", path, "-o", out, "--pattern", "4x1", "--sparsity", "0.5")
    assert code == 0 and err == ""
    got = safetensors_torch.load_file(str(out))["a.weight"]
    assert got.dtype == torch.float8_e4m3fn
    kept = got.float() != 0
    want = fprune.masks({"w": w.float().abs()}, pattern="4x1", sparsity=0.5, scope="local")["w"]
    assert torch.equal(kept | (w.float() == 0), want | (w.float() == 0))
    assert torch.equal(got.view(torch.uint8)[want], w.view(torch.uint8)[want])  # bit for bit


def test_meta_tensors_are_left_dense_with_the_reason(tmp_path, capsys):
    path, out = tmp_path / "meta.pt", tmp_path / "out.pt"
    torch.save({"m.weight": torch.empty(8, 8, device="meta"), "a.weight": torch.randn(8, 8)}, path)
    code, stdout, _ = _run(
        capsys, "prune", path, "-o", out, "--pattern", "1x1", "--sparsity", "0.5"
    )
    assert code == 0 and "left dense: m.weight (on the meta device" in stdout


def test_an_unwritable_folder_is_one_line_and_nothing_left(st_file, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", refuse)
    out = tmp_path / "out.safetensors"
    args = ["prune", st_file, "-o", out, "--pattern", "1x1", "--sparsity", "0.5"]
    err = _refused(capsys, [st_file], out, *args)
    assert "cannot write in" in err and "Permission denied" in err


def test_high_sparsity_local_and_global_say_what_the_cli_can_do(st_file, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    base = ["prune", st_file, "-o", out, "--pattern", "1x1", "--sparsity", "0.99", "--force"]
    err = _refused(capsys, [st_file], out, *base, "--scope", "global")
    assert "raise --max-layer-sparsity" in err
    assert _run(capsys, *base)[0] == 0  # local: every layer exactly 0.99, no cap
    assert _run(capsys, *base, "--scope", "global", "--max-layer-sparsity", "1")[0] == 0


@st.composite
def _nested_checkpoints(draw):
    """Random nestings of dicts and lists holding 8x8 tensors, some of them views of one
    base (the same view, a slice, a transpose), and keys that may spell another's dotted
    path."""
    base = torch.randn(16, 8, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    views = {
        "fresh": lambda: torch.randn(8, 8),
        "same": lambda: base[:8],
        "top": lambda: base[:8],
        "shifted": lambda: base[4:12],  # overlaps top
        "bottom": lambda: base[8:],  # disjoint from top
        "transposed": lambda: base[:8].t(),
    }
    leaves = [
        views[k]() for k in draw(st.lists(st.sampled_from(sorted(views)), min_size=1, max_size=5))
    ]
    tree: dict = {}
    for i, leaf in enumerate(leaves):
        depth = draw(st.integers(0, 2))
        keys = [draw(st.sampled_from(["a", "b", "a.b"])) for _ in range(depth)]
        keys.append(draw(st.sampled_from([f"w{i}", "w0", "b.w0"])))
        node = tree
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[keys[-1]] = leaf
    return tree


def _flat(tree, prefix=""):
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            yield from _flat(value, name)
        else:
            yield name, value


def _cells(t: torch.Tensor) -> set[int]:
    """The storage positions a tensor's elements live at (its view, spelled out)."""
    index = torch.full((), t.storage_offset(), dtype=torch.int64)
    for size, stride in zip(t.shape, t.stride(), strict=True):
        index = index[..., None] + torch.arange(size) * stride
    return set(index.reshape(-1).tolist())


def _must_refuse(tensors: dict[str, torch.Tensor]) -> bool:
    """Two tensors of one storage that share a position without being the same view."""
    items = list(tensors.values())
    for i, a in enumerate(items):
        for b in items[i + 1 :]:
            same_storage = a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
            same_view = (a.storage_offset(), a.shape, a.stride()) == (
                b.storage_offset(),
                b.shape,
                b.stride(),
            )
            if same_storage and not same_view and _cells(a) & _cells(b):
                return True
    return False


@settings(max_examples=60, deadline=None)
@given(_nested_checkpoints())
def test_prune_on_random_nestings_is_exact_or_refused(tmp_path_factory, tree):
    """Whatever the nesting: two entries with one dotted name are refused; tensors that
    overlap without being the same view are refused, nothing changed; otherwise every tensor
    is pruned exactly once, to exactly its share (an alias is not pruned twice)."""
    pairs = list(_flat(tree))
    if not pairs:
        return
    path = tmp_path_factory.mktemp("nest") / "m.pt"
    torch.save(tree, path)
    names = [n for n, _ in pairs]
    if len(set(names)) < len(names):
        event("two entries, one name")
        with pytest.raises(checkpoint.CheckpointError, match="flatten to the same name"):
            checkpoint.load(path)
        return
    ckpt = checkpoint.load(path)
    chosen = checkpoint.select(ckpt, include=["."])
    before = {n: t.clone() for n, t in ckpt.tensors.items()}
    if _must_refuse(ckpt.tensors):
        event("overlapping views")
        with pytest.raises(checkpoint.CheckpointError, match="share storage without being"):
            checkpoint.prune(ckpt, chosen.names, pattern="4x1", sparsity=0.5)
        assert all(torch.equal(ckpt.tensors[n], before[n]) for n in ckpt.tensors)
        return
    event("pruned" + (" with aliases" if ckpt.aliases else ""))
    checkpoint.prune(ckpt, chosen.names, pattern="4x1", sparsity=0.5)
    for name, t in ckpt.tensors.items():
        report = layer_report(name, t, pattern="4x1")
        assert report.satisfies, name
        assert report.unit_sparsity == 0.5, name
