"""Inference payoff on the real all-MiniLM-L6-v2: slimming, sparse kernels, compressed files.

One command, the ``examples`` and ``export`` extras installed::

    OMP_NUM_THREADS=2 python benchmarks/bench_inference.py

Input: 8 standard-library docstrings, each exactly 128 tokens (truncated or padded). The 36
encoder Linear weights are pruned; embeddings, LayerNorms and the pooler stay dense. Rows,
all timed in the same process, in rounds that run every row once (``round_robin``), at 1
and 2 threads, the median of ``--repeats`` rounds (at least 20) under ``torch.no_grad``:

- dense;
- slim: 50% of the FFN channels and 4 of 12 heads removed in every layer
  (``coupled_masks`` on magnitude scores, then ``slim``); its outputs are checked against
  the masked model's;
- csr 1x1, csr 4x1 and bsr 16x16 at 50/80/90/95% (magnitude, ``scope="local"``), the
  Linear weights swapped by ``sparsify_linears_``.

``ratio`` is the median over rounds of the row's time over dense's time in the same round.
File sizes: the dense safetensors file and its compressed form, for the 36 pruned weights
alone and for the whole checkpoint. With CUDA, dense float16 against 2:4 semi-structured.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import statistics
import sys
import tempfile
from typing import Any

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import minilm_oneshot as example
from _common import RESULTS, machine, round_robin

import fprune
from fprune.export import compress, coupled_masks, slim, sparsify_linears_

SPARSITIES = (0.5, 0.8, 0.9, 0.95)
SPARSE_ROWS = (("csr", "1x1"), ("csr", "4x1"), ("bsr", "16x16"))
FILE_ROWS = (("1x1", 0.8, torch.float32), ("2:4", 0.5, torch.float16), ("4x1", 0.9, torch.bfloat16))


def _inputs(tokenizer: Any) -> dict[str, torch.Tensor]:
    texts = [body for _, _, body in example._pairs()[:8]]
    return dict(
        tokenizer(texts, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    )


def _weights(model: Any) -> dict[str, torch.Tensor]:
    return {
        n: p.detach()
        for n, p in model.named_parameters()
        if n.startswith("encoder.") and p.ndim == 2
    }


def _slim(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[Any, dict[str, Any]]:
    scores = fprune.magnitude(_weights(model))
    masks = coupled_masks(model, scores, inputs, sparsity=0.5, head_sparsity=4 / 12)
    slimmed, report = slim(model, masks, inputs)
    layer = slimmed.encoder.layer[0]
    info = {
        "ffn_width": layer.intermediate.dense.out_features,
        "heads": layer.attention.self.num_attention_heads,
        "relative_error_vs_masked": report.error,
        "parameters": report.parameters,
        "inconsistent": report.inconsistent,
    }
    return slimmed.eval(), info


def _sparse(model: Any, layout: str, pattern: str, sparsity: float) -> Any:
    sparse = copy.deepcopy(model).eval()
    weights = _weights(sparse)
    masks = fprune.masks(
        fprune.magnitude(weights), pattern=pattern, sparsity=sparsity, scope="local"
    )
    sparsify_linears_(sparse, masks, layout=layout, blocksize=(16, 16))
    return sparse


def _times(rows: dict[str, Any], inputs: dict[str, torch.Tensor], repeats: int) -> dict[str, Any]:
    calls = {name: (lambda m=m: m(**inputs)) for name, m in rows.items()}
    with torch.no_grad():
        times = round_robin(calls, repeats=repeats, warmup=2)
    dense = times["dense"]
    return {
        name: {
            "median_ms": 1000 * statistics.median(t),
            "ratio": statistics.median(a / b for a, b in zip(t, dense, strict=True)),
        }
        for name, t in times.items()
    }


def _file_sizes(model: Any) -> list[dict[str, Any]]:
    from safetensors.torch import save_file

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for pattern, sparsity, dtype in FILE_ROWS:
            state = {n: t.to(dtype).contiguous() for n, t in model.state_dict().items()
                     if t.is_floating_point()}  # fmt: skip
            weights = {n: state[n] for n in _weights(model)}
            masks = fprune.masks(fprune.magnitude(weights), pattern=pattern, sparsity=sparsity,
                                 scope="local")  # fmt: skip
            for name, mask in masks.items():
                state[name] = state[name] * mask
            nm = pattern if ":" in pattern else None
            for scope, tensors in (("pruned weights", {n: state[n] for n in masks}),
                                   ("whole checkpoint", state)):  # fmt: skip
                dense_file, small_file = f"{tmp}/dense.safetensors", f"{tmp}/small.safetensors"
                save_file(tensors, dense_file)
                save_file(compress(tensors, nm=nm), small_file)
                dense, small = (pathlib.Path(f).stat().st_size for f in (dense_file, small_file))
                out.append({"pattern": pattern, "sparsity": sparsity, "dtype": str(dtype),
                            "scope": scope, "dense_bytes": dense, "compressed_bytes": small,
                            "ratio": small / dense})  # fmt: skip
    return out


def _cuda_rows(model: Any, inputs: dict[str, torch.Tensor], repeats: int) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    dense = copy.deepcopy(model).half().cuda().eval()
    weights = _weights(dense)
    masks = fprune.masks(fprune.magnitude(weights), pattern="2:4", sparsity=0.5, scope="local")
    sparse = copy.deepcopy(dense)
    fprune.nn.apply_masks_(dense, masks)
    sparsify_linears_(sparse, masks, layout="semi_structured")
    cuda_inputs = {k: v.cuda() for k, v in inputs.items()}

    def run(m: Any) -> Any:
        out = m(**cuda_inputs)
        torch.cuda.synchronize()
        return out

    with torch.no_grad():
        times = round_robin({"dense fp16": lambda: run(dense), "2:4 fp16": lambda: run(sparse)},
                            repeats=repeats, warmup=5)  # fmt: skip
        error = (run(dense).last_hidden_state - run(sparse).last_hidden_state).abs().max()
    base = times["dense fp16"]
    return {
        "device": torch.cuda.get_device_name(),
        "rows": {
            n: {
                "median_ms": 1000 * statistics.median(t),
                "ratio": statistics.median(a / b for a, b in zip(t, base, strict=True)),
            }
            for n, t in times.items()
        },
        "max_abs_difference": float(error),
    }


def _print(result: dict[str, Any]) -> None:
    print(f"slim: {json.dumps(result['slim'])}")
    print("\n| row | 1 thread ms | ratio | 2 threads ms | ratio |\n|---|---|---|---|---|")
    one, two = result["latency"]["1"], result["latency"]["2"]
    for name in one:
        print(f"| {name} | {one[name]['median_ms']:.1f} | {one[name]['ratio']:.3f} | "
              f"{two[name]['median_ms']:.1f} | {two[name]['ratio']:.3f} |")  # fmt: skip
    print("\n| pattern | sparsity | dtype | file | dense bytes | compressed | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in result["files"]:
        print(f"| {r['pattern']} | {r['sparsity']} | {r['dtype']} | {r['scope']} | "
              f"{r['dense_bytes']:,} | {r['compressed_bytes']:,} | {r['ratio']:.3f} |")  # fmt: skip
    print(f"\ncuda: {json.dumps(result['cuda'])}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="rounds (default 20)")
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument(
        "--no-sparse", action="store_true", help="dense and slim only (a quick check of slim)"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    tokenizer, model = example._load()
    model.eval()
    inputs = _inputs(tokenizer)
    slimmed, slim_info = _slim(model, inputs)
    rows = {"dense": model, "slim": slimmed}
    for layout, pattern in () if args.no_sparse else SPARSE_ROWS:
        for sparsity in SPARSITIES:
            rows[f"{layout} {pattern} {sparsity:.0%}"] = _sparse(model, layout, pattern, sparsity)
    latency = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        latency[str(threads)] = _times(rows, inputs, args.repeats)
    result = {
        "machine": machine(),
        "slim": slim_info,
        "latency": latency,
        "files": _file_sizes(model),
        "cuda": _cuda_rows(model, inputs, args.repeats),
    }
    _print(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_inference.json").write_text(json.dumps(result, indent=1))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
