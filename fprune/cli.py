"""The ``fprune`` command: ``demo``, ``prune``, ``report``, ``oneshot``, ``compress`` and
``decompress``.

Exit status: 0 on success; 1 when ``report --pattern`` finds a layer that breaks the pattern;
2 for bad arguments and for files that cannot be read or written (a one-line message on
stderr, no traceback, and no output file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from fprune import checkpoint, checkpoint_folder
from fprune.report import LayerReport, layer_report, total_report

__all__ = ["main"]

_LARGE = 1 << 24  # weights; above this the per-layer loops show a progress bar (on a terminal)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fprune",
        description="Functional, exact pruning for PyTorch: a demo and tools for checkpoint files.",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{demo,prune,report,oneshot,compress,decompress}"
    )
    _demo_args(sub)
    _prune_args(sub)
    _report_args(sub)
    _oneshot_args(sub)
    _compress_args(sub)
    return parser


def _demo_args(sub: Any) -> None:
    demo = sub.add_parser(
        "demo", help="train and prune an MLP on scikit-learn's digits (needs the demo extra)"
    )
    demo.add_argument(
        "--pattern",
        default="4x1",
        help="pruning pattern, e.g. 4x1, 1x1, channelx1, 2:4 (default 4x1)",
    )
    demo.add_argument(
        "--criterion",
        default="snip_momentum",
        help="magnitude, gradient, snip or snip_momentum (default snip_momentum)",
    )
    demo.add_argument("--sparsity", type=float, default=0.9, help="final sparsity (default 0.9)")
    demo.add_argument(
        "--scope", choices=("global", "local"), default="global", help="default global"
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for the split, the init and the batches (default 0)",
    )
    demo.add_argument(
        "--plot",
        default="fprune-demo.png",
        help="PNG to write (default fprune-demo.png); 'none' to skip",
    )
    demo.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: the MLP is too small to split, and one thread keeps "
        "a busy machine from slowing it several times)",
    )
    demo.add_argument("--fast", action="store_true", help="a few steps only (for smoke tests)")
    demo.add_argument("--json", action="store_true", help="print one JSON object on the last line")


def _prune_args(sub: Any) -> None:
    prune = sub.add_parser(
        "prune", help="prune a checkpoint one-shot and write it in the same format"
    )
    prune.add_argument(
        "input", metavar="IN", help="a .safetensors file or a torch state dict (.pt/.pth/.bin)"
    )
    prune.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="where to write the pruned checkpoint"
    )
    prune.add_argument("--pattern", required=True, help="e.g. 1x1, 4x1, channelx1, 2:4")
    prune.add_argument(
        "--sparsity", type=float, required=True, help="fraction of units to prune, in [0, 1)"
    )
    prune.add_argument(
        "--criterion",
        default="magnitude",
        help="default magnitude (the only one that needs no gradients)",
    )
    prune.add_argument(
        "--scope", choices=("local", "global"), default="local", help="default local"
    )
    prune.add_argument(
        "--max-layer-sparsity",
        type=float,
        default=0.98,
        metavar="M",
        help="with --scope global, the most any one layer may be pruned (default 0.98)",
    )
    prune.add_argument(
        "--partial-nm",
        action="store_true",
        help="with an N:M pattern and a sparsity below N/M, convert only that share of the "
        "groups (a ramp; the layers do not follow N:M)",
    )
    _selection_args(prune)
    prune.add_argument(
        "--force", action="store_true", help="overwrite OUT if it exists, even when it is IN"
    )
    prune.add_argument(
        "--json", action="store_true", help="print one JSON object instead of tables"
    )


def _report_args(sub: Any) -> None:
    report = sub.add_parser("report", help="per-layer sparsity of a checkpoint, and pattern checks")
    report.add_argument(
        "file", metavar="FILE", help="a .safetensors file or a torch state dict (.pt/.pth/.bin)"
    )
    report.add_argument(
        "--pattern", help="check that each layer's zeros follow this pattern (exit 1 if not)"
    )
    _selection_args(report)
    report.add_argument(
        "--all", action="store_true", help="report every floating tensor with 2+ dims"
    )
    report.add_argument(
        "--json", action="store_true", help="print one JSON object instead of tables"
    )


def _oneshot_args(sub: Any) -> None:
    oneshot = sub.add_parser(
        "oneshot",
        help="prune a Hugging Face model folder once from calibration text (Wanda, SparseGPT)",
    )
    oneshot.add_argument("model_dir", metavar="MODEL_DIR", help="a save_pretrained folder")
    oneshot.add_argument(
        "-o", "--output", required=True, metavar="OUT_DIR", help="where to save the pruned model"
    )
    oneshot.add_argument(
        "--method",
        choices=("sparsegpt", "wanda", "magnitude"),
        default="sparsegpt",
        help="default sparsegpt",
    )
    oneshot.add_argument("--pattern", default="1x1", help="1x1 or N:M such as 2:4 (default 1x1)")
    oneshot.add_argument(
        "--sparsity", type=float, help="fraction of each layer to prune (N:M: implied)"
    )
    oneshot.add_argument(
        "--calibration", required=True, metavar="FILE", help="a UTF-8 text file to calibrate on"
    )
    oneshot.add_argument("--samples", type=int, default=128, help="windows of text (default 128)")
    oneshot.add_argument("--seq-len", type=int, default=128, help="tokens a window (default 128)")
    oneshot.add_argument(
        "--batch-size", type=int, default=16, help="windows a forward pass (default 16)"
    )
    oneshot.add_argument(
        "--force", action="store_true", help="write into OUT_DIR even if it is not empty"
    )
    oneshot.add_argument(
        "--json", action="store_true", help="print one JSON object instead of tables"
    )


def _compress_args(sub: Any) -> None:
    compress = sub.add_parser(
        "compress",
        help="write a pruned checkpoint as kept values plus a packed bitmask (or N:M indices)",
    )
    compress.add_argument(
        "input", metavar="IN", help="a .safetensors file or a torch state dict (.pt/.pth/.bin)"
    )
    compress.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="the compressed .safetensors file"
    )
    compress.add_argument(
        "--nm",
        metavar="N:M",
        help="store layers that follow this N:M pattern (e.g. 2:4) as packed positions",
    )
    compress.add_argument(
        "--keep-negative-zeros",
        action="store_true",
        help="keep -0.0 as a value, so that every bit comes back (w * mask leaves many)",
    )
    decompress = sub.add_parser(
        "decompress", help="write a compressed checkpoint back as a plain safetensors file"
    )
    decompress.add_argument("input", metavar="IN", help="a file that fprune compress wrote")
    decompress.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="the .safetensors file to write"
    )
    for parser in (compress, decompress):
        parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
        parser.add_argument(
            "--json", action="store_true", help="print one JSON object instead of a line"
        )


def _selection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="REGEX",
        help="choose only tensors whose name matches (repeatable); replaces the default name test",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=None,
        metavar="REGEX",
        help="leave tensors whose name matches dense (repeatable); replaces the default: "
        + ", ".join(checkpoint.DEFAULT_EXCLUDE)
        + " and the output layer",
    )


def _progress(total: int, desc: str) -> Callable[[Iterable[str]], Iterable[str]]:
    """A tqdm bar over layers for large checkpoints on a terminal; nothing otherwise."""
    if total < _LARGE:
        return lambda it: it
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return lambda it: it

    def wrap(it: Iterable[str]) -> Iterable[str]:
        items = list(it)
        return tqdm(items, desc=desc, unit="layer", disable=None, leave=False, file=sys.stderr)

    return wrap


def _table(rows: Sequence[Sequence[str]], head: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [head, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _report_table(reports: Sequence[LayerReport], pattern: str | None) -> str:
    head = ["layer", "shape", "dtype", "sparsity"]
    if pattern:
        head += [f"{pattern} units", f"follows {pattern}"]
    rows = []
    for r in reports:
        row = [r.name, "x".join(map(str, r.shape)), r.dtype, f"{r.sparsity:.4f}"]
        if pattern:
            if r.note:
                row += ["-", f"n/a: {r.note}"]
            else:
                row += [
                    f"{r.unit_sparsity:.4f}",
                    "yes" if r.satisfies else f"no: first at {list(r.violation or ())}",
                ]
        rows.append(row)
    return _table(rows, head)


def _total_line(total: dict[str, Any], pattern: str | None) -> str:
    line = (
        f"total: {total['zeros']:,} of {total['size']:,} weights are zero "
        f"(sparsity {total['sparsity']:.4f}) in {total['layers']} layers"
    )
    if pattern:
        line += f"; {total['satisfying']} of {total['checked']} checked layers follow {pattern}"
    return line


def _check_nm(pattern: str, sparsity: float, partial: bool) -> bool:
    """Whether an N:M run converts only part of the groups: an error unless asked for."""
    from fprune.patterns import NM, parse_pattern

    parsed = parse_pattern(pattern)
    if not isinstance(parsed, NM) or abs(sparsity - parsed.n / parsed.m) < 1e-9:
        return False
    if not partial:
        full = parsed.n / parsed.m
        raise ValueError(
            f"--pattern {pattern} prunes {full:g} of the weights, but --sparsity is {sparsity:g}: "
            f"pass --sparsity {full:g}, or --partial-nm to convert only part of the groups "
            "(then no layer follows the pattern)"
        )
    return True


def _prune(args: argparse.Namespace) -> int:
    partial = _check_nm(args.pattern, args.sparsity, args.partial_nm)
    if args.scope == "global" and args.sparsity > args.max_layer_sparsity:
        raise ValueError(
            f"--sparsity {args.sparsity:g} is above --max-layer-sparsity "
            f"{args.max_layer_sparsity:g}, so no layer could take its share: raise "
            "--max-layer-sparsity (at most 1) or lower --sparsity"
        )
    ckpt = checkpoint_folder.load(args.input)
    checkpoint_folder.check_output(args.input, args.output, ckpt.format, force=args.force)
    chosen = checkpoint.select(ckpt, include=args.include, exclude=args.exclude)
    size = sum(ckpt.tensors[n].numel() for n in chosen.names)
    left = checkpoint.prune(
        ckpt,
        chosen.names,
        pattern=args.pattern,
        sparsity=args.sparsity,
        scope=args.scope,
        criterion=args.criterion,
        max_layer_sparsity=args.max_layer_sparsity,
        progress=_progress(size, "pruning"),
    )
    pruned = [n for n in chosen.names if n not in left]
    skipped = {**chosen.skipped, **left}
    reports = [layer_report(n, ckpt.tensors[n], pattern=args.pattern) for n in pruned]
    broken = [r.name for r in reports if not partial and r.satisfies is False]
    if broken:  # never write a file that breaks the pattern it was pruned to
        raise checkpoint.CheckpointError(
            f"{broken[0]} does not follow {args.pattern} after pruning; nothing was written"
        )
    checkpoint_folder.save(ckpt, args.output)
    total = total_report(reports)
    if args.json:
        print(
            json.dumps(
                {
                    "input": str(args.input),
                    "output": str(args.output),
                    "format": ckpt.format,
                    "pattern": args.pattern,
                    "sparsity": args.sparsity,
                    "scope": args.scope,
                    "criterion": args.criterion,
                    "pruned": pruned,
                    "skipped": skipped,
                    "layers": [r.as_dict() for r in reports],
                    "total": total,
                }
            )
        )
        return 0
    print(f"{args.input}: {ckpt.format}, {len(ckpt.tensors)} tensors")
    print(
        f"pruning {len(pruned)} tensors ({size:,} weights) to {args.pattern} at {args.sparsity}, "
        f"{args.scope} scope, {args.criterion}:"
    )
    for name in pruned:
        t = ckpt.tensors[name]
        print(f"  {name}  {tuple(t.shape)}  {str(t.dtype).removeprefix('torch.')}")
    for name, why in skipped.items():
        print(f"  left dense: {name} ({why})")
    print()
    print(_report_table(reports, args.pattern))
    print(_total_line(total, args.pattern))
    print(f"wrote {args.output} ({ckpt.format})")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from fprune.export import files

    checkpoint.check_output(args.input, args.output, "safetensors", force=args.force)
    ckpt = checkpoint_folder.load(args.input)  # a folder is refused with its own message
    if args.command == "compress":
        out = files.compress_checkpoint(
            ckpt, nm=args.nm, keep_negative_zeros=args.keep_negative_zeros
        )
    else:
        out = files.decompress_checkpoint(ckpt)
    checkpoint.save(out, args.output)
    sizes = {
        "input_bytes": os.path.getsize(args.input),
        "output_bytes": os.path.getsize(args.output),
    }
    ratio = sizes["output_bytes"] / sizes["input_bytes"]
    if args.json:
        print(json.dumps({"output": str(args.output), **sizes, "ratio": ratio}))
    else:
        print(
            f"wrote {args.output}: {sizes['output_bytes']:,} bytes from "
            f"{sizes['input_bytes']:,} ({ratio:.3f}x)"
        )
    return 0


def _load_for_report(path: str) -> tuple[checkpoint.Checkpoint, str]:
    """The checkpoint to report on (decompressed in memory if need be) and its format."""
    from fprune.export import files

    ckpt = checkpoint_folder.load(path)
    if files.is_compressed_checkpoint(ckpt):
        return files.decompress_checkpoint(ckpt), "compressed safetensors"
    return ckpt, ckpt.format


def _report(args: argparse.Namespace) -> int:
    ckpt, fmt = _load_for_report(args.file)
    if args.all:
        names = [n for n, t in ckpt.tensors.items() if checkpoint.eligible(t)]
        if not names:
            raise checkpoint.CheckpointError(
                f"{args.file}: no floating tensor with 2 or more dims to report"
            )
        skipped: dict[str, str] = {}
    else:
        chosen = checkpoint.select(ckpt, include=args.include, exclude=args.exclude)
        names, skipped = list(chosen.names), chosen.skipped
    reports = [layer_report(n, ckpt.tensors[n], pattern=args.pattern) for n in names]
    total = total_report(reports)
    broken = args.pattern is not None and total["satisfying"] < total["checked"]
    if args.json:
        print(
            json.dumps(
                {
                    "file": str(args.file),
                    "format": fmt,
                    "pattern": args.pattern,
                    "layers": [r.as_dict() for r in reports],
                    "skipped": skipped,
                    "total": total,
                }
            )
        )
    else:
        print(f"{args.file}: {fmt}, {len(ckpt.tensors)} tensors, {len(reports)} reported")
        print(_report_table(reports, args.pattern))
        for name, why in skipped.items():
            print(f"not reported: {name} ({why})")
        print(_total_line(total, args.pattern))
    return 1 if broken else 0


def _oneshot(args: argparse.Namespace) -> int:
    from fprune.integrations import hf_oneshot

    try:
        with open(args.calibration, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise checkpoint.CheckpointError(f"{args.calibration}: cannot read the text ({e})") from e
    report, copied = hf_oneshot.prune_folder(
        args.model_dir,
        args.output,
        [text],
        method=args.method,
        sparsity=args.sparsity,
        pattern=args.pattern,
        samples=args.samples,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        force=args.force,
        progress=None if not args.json else False,
    )
    pruned = sum(r.sparsity * r.size for r in report.values())
    size = sum(r.size for r in report.values())
    if args.json:
        layers = {n: {"sparsity": r.sparsity, "error": r.error} for n, r in report.items()}
        print(json.dumps({"output": str(args.output), "layers": layers, "copied": copied}))
        return 0
    rows = [[n, f"{r.sparsity:.4f}", f"{r.error:.4f}"] for n, r in report.items()]
    print(_table(rows, ["layer", "sparsity", "relative error"]))
    print(
        f"total: {round(pruned):,} of {size:,} weights pruned (sparsity {pruned / size:.4f}) "
        f"in {len(report)} layers, {args.method}, {args.pattern}"
    )
    print(f"wrote {args.output}" + (f" (also copied: {', '.join(copied)})" if copied else ""))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from fprune import demo

    return demo.run(args)


def _expected(e: Exception) -> bool:
    """Errors that are the user's to fix, shown as one line (FPRUNE_DEBUG=1 shows the traceback)."""
    from fprune.demo import MissingExtra
    from fprune.integrations.hf_oneshot import MissingTransformers

    expected = checkpoint.CheckpointError | MissingExtra | MissingTransformers
    return isinstance(e, expected | ValueError | TypeError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fprune`` command line; returns the exit status."""
    args = _parser().parse_args(argv)
    commands = {
        "demo": _demo,
        "prune": _prune,
        "report": _report,
        "oneshot": _oneshot,
        "compress": _convert,
        "decompress": _convert,
    }
    command = commands[args.command]
    try:
        return command(args)
    except Exception as e:
        if os.environ.get("FPRUNE_DEBUG") or not _expected(e):
            raise
        print(f"fprune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fprune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
