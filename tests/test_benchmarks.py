"""The step benchmark runs end to end on a tiny workload and writes what it prints."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import pytest
import torch

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _bench_step():
    if str(BENCHMARKS) not in sys.path:  # the benchmark imports its helpers as a script does
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("bench_step", BENCHMARKS / "bench_step.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_step_runs_and_writes_its_rows(tmp_path, capsys):
    bench = _bench_step()
    out = tmp_path / "step.json"
    payload = bench.main(
        [
            "--layers",
            "2",
            "--repeats",
            "5",
            "--skip-peers",
            "torch.nn,torch.ao",
            "--json",
            str(out),
            "--allocator",
            "glibc keeping freed memory",
        ]
    )  # "as set": the same run, no variable
    written = json.loads(out.read_text())
    assert written["weights"] == payload["weights"] == 768 * 768 * 2
    names = [r["name"] for r in written["rows"]]
    assert "fprune global 4x1 80%" in names and "AdamW(foreach) step" in names
    assert "fprune global 2:4 30%" in names  # an iterative N:M step, groups selected
    assert "4x1 80% passes, threshold known (no selection)" in names  # the floor
    assert {
        "fprune snip_momentum 4x1 non-prune step",
        "fprune snip_momentum 4x1 non-prune step, same state",
    } <= set(names)
    assert not any(n.startswith(("torch.nn", "torch.ao")) for n in names)  # skipped
    for row in written["rows"]:
        assert len(row["times_s"]) == 5 and min(row["times_s"]) > 0
        assert row["paired_x_adamw"] > 0 and row["paired_x_mul"] > 0
        assert len(row["minor_faults"]) == 5 and all(
            f >= 0 for f in row["minor_faults"]
        )  # less the warm-up
    assert [m["pattern"] for m in written["memory"]] == ["1x1", "4x1", "2:4"]
    assert all(
        m["masks_bytes_per_weight"] == 1.0 and m["extra_bytes_per_weight"] > 0
        for m in written["memory"]
    )
    scaling = {(r["allocator"], r["layers"], r["pattern"]): r for r in written["scaling"]}
    allocators = ("glibc keeping freed memory",)
    # each allocator setting at 1/10 (at least 1), 1x and 4x the layers
    assert set(scaling) == {
        (a, k, p) for a in allocators for k in (1, 2, 8) for p in ("1x1", "4x1")
    }
    for a in allocators:  # 6 square, 2 of 4 squares
        assert [scaling[(a, k, "1x1")]["weights"] for k in (1, 2, 8)] == [
            768 * 768,
            2 * 768 * 768,
            14 * 768 * 768,
        ]
    for r in scaling.values():
        assert r["paired_x_mul"] > 0 and r["ns_per_weight"] > 0
        assert (
            len(r["times_s"]) == len(r["mul_times_s"]) == len(r["minor_faults"]) == 5
        )  # less the warm-up
        assert all(f >= 0 for f in r["minor_faults"])
    printed = capsys.readouterr().out
    assert "x AdamW" in printed and printed.count("1x -> 4x the weights") == 2  # 2 patterns
    assert "GLIBC_TUNABLES=" in printed and "page faults a call" in printed


def test_non_prune_row_advances_its_state_and_never_prunes():
    bench = _bench_step()
    torch.manual_seed(0)
    params = {"w": torch.randn(8, 8)}
    grads = {"w": torch.randn(8, 8)}
    same = bench._non_prune_snip_momentum(params, grads, advance=False)
    advancing = bench._non_prune_snip_momentum(params, grads, advance=True)
    masks = same()
    assert masks["w"].dtype == torch.bool and masks["w"].all()  # the schedule starts at sparsity 0
    for _ in range(bench.MAX_REPEATS + 1):  # the warm-up call and the most timed calls
        assert torch.equal(advancing()["w"], masks["w"])  # steps 1 to 99: the masks stay
        same()
    with pytest.raises(RuntimeError, match="reached prune step 100"):
        advancing()
    assert torch.equal(same()["w"], masks["w"])  # still step 1


@pytest.mark.parametrize("repeats", ["4", "99"])
def test_bench_step_rejects_repeats_out_of_range(repeats, capsys):
    with pytest.raises(SystemExit):
        _bench_step().main(["--repeats", repeats])
    assert "--repeats must be between 5 and 98" in capsys.readouterr().err


def test_bench_dynamic_runs_and_writes_its_rows(tmp_path, capsys):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("bench_dynamic", BENCHMARKS / "bench_dynamic.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "dynamic.json"
    payload = bench.main(["--layers", "2", "--repeats", "2", "--json", str(out)])
    written = json.loads(out.read_text())
    assert [r["row"] for r in written["rows"]] == [r["row"] for r in payload["rows"]]
    names = {r["row"] for r in written["rows"]}
    assert {"fprune RigL 1x1 update", "peer: torch.topk RigL 1x1", "AdamW(foreach) step"} <= names
    assert all(len(r["times"]) == 2 and r["paired_x_adamw"] > 0 for r in written["rows"])
    assert "x AdamW" in capsys.readouterr().out
