"""From masks to a payoff: a slimmer model, a smaller file, sparse kernels.

On the examples' synthetic task (``_task.py``), an MLP is trained dense, then:

1. **Slim**: ``coupled_masks`` prunes half of each hidden layer's channels, scored over
   every tensor each channel touches; a short fine-tune keeps them at zero; ``slim``
   removes them. The slimmed model has fewer parameters and the masked model's accuracy.
2. **Compress**: 90% of the weights pruned (1x1, magnitude); ``compress`` stores the kept
   values and a bitmask; ``decompress`` gives the same tensors back.
3. **Sparse kernels**: the same weights as CSR (``sparsify_linears_``); same outputs.

Run ``python examples/export_payoff.py`` (needs the ``export`` extra), or ``--quick``.
"""

from __future__ import annotations

import argparse
import copy

import torch
from _task import accuracy, data, mlp, set_threads

import fprune
from fprune.export import (
    compress,
    compressed_size,
    coupled_masks,
    decompress,
    slim,
    sparsify_linears_,
)


def train(model, x, y, steps: int, masks=None, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        if masks:
            fprune.nn.apply_masks_(model, masks)


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if n.endswith("weight")}


def slim_step(model, x, y, x_test, y_test, steps: int) -> dict:
    masked = copy.deepcopy(model)
    masks = coupled_masks(masked, fprune.magnitude(weights(masked)), x[:8], sparsity=0.5)
    fprune.nn.apply_masks_(masked, masks)
    train(masked, x, y, steps, masks, seed=1)
    slimmed, report = slim(masked, masks, x_test)
    widths = [m.out_features for m in slimmed if isinstance(m, torch.nn.Linear)]
    print(f"slim: widths {widths}, parameters {report.parameters[0]:,} -> "
          f"{report.parameters[1]:,}, output error vs masked {report.error:.1e}")  # fmt: skip
    return {
        "widths": widths,
        "parameters": report.parameters,
        "masked_accuracy": accuracy(masked, x_test, y_test),
        "slim_accuracy": accuracy(slimmed, x_test, y_test),
    }


def compress_step(model, x_test) -> dict:
    pruned = copy.deepcopy(model)
    masks = fprune.masks(fprune.magnitude(weights(pruned)), pattern="1x1", sparsity=0.9)
    fprune.nn.apply_masks_(pruned, masks)
    state = {n: t.detach() for n, t in pruned.state_dict().items()}
    packed = compress(state)
    ratio = compressed_size(packed) / sum(t.numel() * t.element_size() for t in state.values())
    back = decompress(packed)
    exact = all(torch.equal(back[n], state[n]) for n in state)
    print(f"compress: {ratio:.3f}x the dense bytes, round trip exact: {exact}")
    with torch.no_grad():
        expected = pruned(x_test)
        sparsify_linears_(pruned, masks)
        same = torch.allclose(pruned(x_test), expected, atol=1e-5)
    print(f"csr: outputs equal to the masked dense model: {same}")
    return {"ratio": ratio, "exact": exact, "csr_matches": same}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (for tests)")
    args = parser.parse_args(argv)
    set_threads()
    torch.manual_seed(0)
    x, y, x_test, y_test = data(torch.Generator().manual_seed(0))
    model = mlp()
    train(model, x, y, 150 if args.quick else 1500)
    dense = accuracy(model, x_test, y_test)
    print(f"dense accuracy {dense:.4f}")
    result = {"dense_accuracy": dense, **slim_step(model, x, y, x_test, y_test,
                                                     50 if args.quick else 500)}  # fmt: skip
    print(f"masked accuracy {result['masked_accuracy']:.4f}, "
          f"slim accuracy {result['slim_accuracy']:.4f}")  # fmt: skip
    result.update(compress_step(model, x_test))
    return result


if __name__ == "__main__":
    main()
