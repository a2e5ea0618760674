"""``fprune oneshot`` on a small random BERT folder: a folder from_pretrained loads, pruned as
fprune.nn.oneshot prunes it, other files kept; one-line errors with exit status 2."""

from __future__ import annotations

import json
import pathlib
import re

import pytest
import torch

import fprune
from fprune import cli
from fprune.integrations import hf_oneshot

transformers = pytest.importorskip("transformers")

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "that",
    "with",
    "as",
    "on",
    "by",
    "it",
    "be",
    "this",
    "are",
    "from",
    "an",
    "or",
    "at",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("bert")
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(path)
    config = transformers.BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(path)
    (path / "README.md").write_text("a model card\n")
    return path


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> pathlib.Path:
    gen = torch.Generator().manual_seed(0)
    words = [WORDS[i] for i in torch.randint(0, len(WORDS), (600,), generator=gen).tolist()]
    path = tmp_path_factory.mktemp("text") / "calibration.txt"
    path.write_text("\n".join(" ".join(words[i : i + 12]) for i in range(0, 600, 12)))
    return path


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_oneshot_writes_a_folder_that_loads_pruned_like_the_library(
    folder, text_file, tmp_path, capsys
):
    out = tmp_path / "pruned"
    args = [str(folder), "-o", str(out), "--method", "sparsegpt", "--pattern", "2:4"]
    args += ["--calibration", str(text_file), "--samples", "8", "--seq-len", "16"]
    code, stdout, _ = _run(["oneshot", *args, "--batch-size", "4", "--json"], capsys)
    assert code == 0
    result = json.loads(stdout)
    assert len(result["layers"]) == 12 and "README.md" in result["copied"]
    assert not any(name.endswith(".safetensors") for name in result["copied"])
    assert (out / "README.md").read_text() == "a model card\n"

    model, tokenizer = hf_oneshot.load(folder)
    batches = hf_oneshot.calibration_batches(
        tokenizer, text_file.read_text(), samples=8, seq_len=16, batch_size=4
    )
    assert [tuple(b["input_ids"].shape) for b in batches] == [(4, 16), (4, 16)]
    fprune.nn.oneshot(model, batches, method="sparsegpt", pattern="2:4", progress=False)
    loaded = transformers.BertModel.from_pretrained(out)
    want = dict(model.named_parameters())
    for name, p in loaded.named_parameters():
        torch.testing.assert_close(p, want[name])
        if name in result["layers"]:
            groups = (p != 0).reshape(p.shape[0], -1, 4).sum(-1)
            assert torch.equal(groups, torch.full_like(groups, 2))

    code, _, _ = _run(
        ["report", str(out / "model.safetensors"), "--pattern", "2:4", "--include", "encoder"],
        capsys,
    )
    assert code == 0


def test_oneshot_prints_a_table(folder, text_file, tmp_path, capsys):
    args = [str(folder), "-o", str(tmp_path / "o"), "--method", "wanda", "--sparsity", "0.5"]
    args += ["--seq-len", "32"]
    code, out, _ = _run(["oneshot", *args, "--calibration", str(text_file)], capsys)
    assert code == 0
    assert re.search(r"encoder\.layer\.1\.output\.dense\.weight +0\.5000 +0\.\d{4}", out)
    assert "in 12 layers, wanda, 1x1" in out and f"wrote {tmp_path / 'o'}" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sparsity", "0.5", "--samples", "0", "--seq-len", "16"], "samples must be >= 1"),
        (["--sparsity", "0.5", "--seq-len", "65"], "seq_len is longer than the model's 64"),
        ([], "sparsity is needed for this pattern"),
        (["--sparsity", "0.5", "--pattern", "4x1"], "SparseGPT prunes single weights or N:M"),
        (["--pattern", "2:4", "--sparsity", "0.3"], "an 2:4 pattern prunes exactly 0.5"),
    ],
)
def test_oneshot_errors_exit_2_with_one_line(folder, text_file, tmp_path, capsys, extra, message):
    args = [str(folder), "-o", str(tmp_path / "o"), "--calibration", str(text_file), *extra]
    code, out, err = _run(["oneshot", *args], capsys)
    assert code == 2 and out == ""
    assert err.startswith("fprune oneshot: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_oneshot_refuses_a_full_output_folder_and_a_missing_file(
    folder, text_file, tmp_path, capsys
):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    args = ["oneshot", str(folder), "--calibration", str(text_file), "--sparsity", "0.5"]
    code, _, err = _run([*args, "-o", str(tmp_path / "full")], capsys)
    assert code == 2 and "OUT_DIR exists and is not empty" in err
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    code, _, err = _run([*args, "-o", str(folder)], capsys)
    assert code == 2 and "OUT_DIR is MODEL_DIR" in err
    code, _, err = _run(
        [
            "oneshot",
            str(tmp_path),
            "-o",
            str(tmp_path / "o"),
            "--calibration",
            str(text_file),
            "--sparsity",
            "0.5",
        ],
        capsys,
    )
    assert code == 2 and "must be a Hugging Face model folder" in err
    code, _, err = _run(
        [*args[:2], "--calibration", str(tmp_path / "none.txt"), "-o", str(tmp_path / "o")],
        capsys,
    )
    assert code == 2 and "cannot read the text" in err
    (tmp_path / "short.txt").write_text("the of and\n")
    code, _, err = _run(
        [
            *args[:2],
            "--calibration",
            str(tmp_path / "short.txt"),
            "-o",
            str(tmp_path / "o"),
            "--sparsity",
            "0.5",
            "--seq-len",
            "60",
        ],
        capsys,
    )
    assert code == 2 and "the calibration text is shorter than one window of 60" in err
    assert not (tmp_path / "o").exists()
