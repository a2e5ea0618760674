"""Write the compact conformance fixtures from the recorded INC runs.

Run from the repository root with the shared reference next to it:

    python tests/data/inc_runs/extract.py ../shared/reference/inc-runs

For each run it writes ``<run>.npz``: INC's final masks as packed bits (``mask/<name>``,
with ``shape/<name>``) and float64 checksums of the final weights (``final_sum/<name>``,
``final_norm/<name>``). The initial weights and the batches are not stored: they are
``torch.manual_seed(0)`` then the model, and ``torch.manual_seed(1)`` then per batch
``randn(16, 64)`` and ``randint(0, 10, (16,))`` (tests/test_inc_conformance.py checks that
against the shared tensors when they are present). Needs safetensors.
"""

from __future__ import annotations

import pathlib
import shutil
import sys

import numpy as np


def main(source: str) -> None:
    from safetensors.torch import load_file

    here = pathlib.Path(__file__).resolve().parent
    for run in sorted(p for p in pathlib.Path(source).iterdir() if p.is_dir()):
        tensors = load_file(run / "tensors.safetensors")
        out: dict[str, np.ndarray] = {}
        for key, value in tensors.items():
            kind, _, name = key.partition("/")
            if kind == "mask":
                out[f"mask/{name}"] = np.packbits(value.numpy().reshape(-1))
                out[f"shape/{name}"] = np.array(value.shape, dtype=np.int64)
            elif kind == "final":
                final = value.double()
                out[f"final_sum/{name}"] = np.array(float(final.sum()))
                out[f"final_norm/{name}"] = np.array(float(final.norm()))
        np.savez_compressed(here / f"{run.name}.npz", **out)
        shutil.copyfile(run / "run.json", here / f"{run.name}.json")
        print(f"wrote {run.name}.npz")


if __name__ == "__main__":
    main(sys.argv[1])
