"""What single eager ops cost per element on this CPU: the facts the eager selection is built on.

Times each op on one tensor the size of the workload's largest layer (3072 x 768 =
2,359,296 elements), median of 50 calls after a warm-up, 2 threads, and prints ns per element
and the ratio to a uint8 subtraction. Run: ``python benchmarks/bench_ops.py``.
"""

from __future__ import annotations

import argparse

import torch
from _common import median_seconds

from fprune import _tuning, nm
from fprune._eager import nm as eager_nm
from fprune._eager.compare import compare_into, indices
from fprune._eager.keys import all_true
from fprune.patterns import NM


def _ns_per_element(fn, n: int, repeats: int) -> float:
    return median_seconds(fn, repeats=repeats)[0] / n * 1e9


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    n = 3072 * 768
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, generator=gen), torch.rand(n, generator=gen)
    kx, ky = x.view(torch.int32), y.view(torch.int32)
    ranks = torch.randint(0, 4, (n,), dtype=torch.uint8, generator=gen)
    mask = torch.ones(n, dtype=torch.bool)
    sparse = torch.rand(n, generator=gen) < 0.01
    sure, inside = torch.empty(n, dtype=torch.bool), torch.empty(n, dtype=torch.bool)
    buf, fout = torch.empty(_tuning.current().compare_chunk), torch.empty(n)
    iout = torch.empty(n, dtype=torch.int32)
    scores_2d = x.view(3072, 768)

    def bracket_into_bool() -> None:  # the pass's two comparisons as bool comparisons
        torch.gt(x, 0.5, out=sure)
        torch.ge(x, 0.49, out=inside)
        inside.__ixor__(sure)

    def kept_2_4(
        packed: bool,
    ):  # a 2:4 layer's flags: packed int32 ranks (eager), or the math's uint8 ranks
        if packed:
            return lambda: eager_nm.within_groups(
                scores_2d, NM(2, 4), pruned=None, reduce=None, complement=True
            )
        return lambda: nm.within_groups(scores_2d, NM(2, 4), pruned=None, reduce=None)

    rows = {
        "uint8 subtraction (ranks - 2)": lambda: ranks - 2,
        "uint8 rank < 2 as (ranks - 2) >> 7": lambda: ((ranks - 2) >> 7).view(torch.bool),
        "uint8 rank < 2 by comparison": lambda: ranks < 2,
        "int32 keys compared (a <= b)": lambda: kx <= ky,
        "the same, written as int32 (0 or 1)": lambda: torch.le(kx, ky, out=iout),
        "a strided int32 column copied (every 4th)": lambda: iout[: n // 4].copy_(
            kx.view(-1, 4)[:, 0]
        ),
        "2:4 flags, the math's uint8 ranks (per weight)": kept_2_4(False),
        "2:4 kept mask, eager packed int32 ranks (per weight)": kept_2_4(True),
        "float32 compared with a scalar (x > 0.5)": lambda: x > 0.5,
        "the same, written as float32 (0 or 1)": lambda: torch.gt(x, 0.5, out=fout),
        "float32 (0 or 1) copied to bool": lambda: sure.copy_(fout),
        "bracket (x > b, a <= x <= b) into bool": bracket_into_bool,
        "the same through a float buffer (compare_into)": lambda: compare_into(
            sure, inside, x, 0.49, 0.5, buf
        ),
        "float32 abs": lambda: torch.abs(x),
        "int32 aminmax (read only)": lambda: torch.aminmax(kx),
        "bool Tensor.all()": lambda: bool(mask.all()),
        "bool all as the byte minimum (all_true)": lambda: all_true(mask),
        "nonzero of a 1% mask": lambda: sparse.nonzero(),
        "nonzero of a 1% mask, 8 bytes at a time (indices)": lambda: indices(sparse),
    }
    results = {name: _ns_per_element(fn, n, args.repeats) for name, fn in rows.items()}
    base = results["uint8 subtraction (ranks - 2)"]
    print(f"{n:,} elements, 2 threads, median of {args.repeats}")
    print(f"{'op':<55}{'ns/element':>12}{'x uint8 sub':>14}")
    for name, ns in results.items():
        print(f"{name:<55}{ns:>12.3f}{ns / base:>14.1f}")
    return results


if __name__ == "__main__":
    main()
