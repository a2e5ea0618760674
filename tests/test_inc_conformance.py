"""The three training runs recorded with INC 3.7.1's pruner, replayed with fprune.

Replayed as shared/reference/inc-runs/README.md says: magnitude steps at the start of each
training step; gradient criteria step after backward with the window shifted one step
earlier, so the trace matches INC's shifted by one. Final masks must be equal bit for bit,
the traces exactly, the final weights to float32 rounding.

The compact fixtures in tests/data/inc_runs come from tests/data/inc_runs/extract.py; when
the shared reference is next to the repository, the fixtures are checked against it.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch

import fprune

DATA = pathlib.Path(__file__).resolve().parent / "data" / "inc_runs"
SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference" / "inc-runs"
RUNS = ("mlp_2in4_mag_global_linear", "mlp_4x1_mag_global_exp", "mlp_4x1_snipm_global_cube")
GRADIENT_CRITERIA = ("gradient", "snip", "snip_momentum")


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 128)
        self.fc2 = torch.nn.Linear(128, 128)
        self.fc3 = torch.nn.Linear(128, 64)
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        return self.head(torch.relu(self.fc3(torch.relu(self.fc2(x)))))


def recorded_model() -> Net:
    torch.manual_seed(0)
    return Net()


def recorded_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(1)
    return [(torch.randn(16, 64), torch.randint(0, 10, (16,))) for _ in range(4)]


def load(run: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, np.ndarray]]:
    meta = json.loads((DATA / f"{run}.json").read_text())
    arrays = dict(np.load(DATA / f"{run}.npz"))
    masks = {}
    for key, bits in arrays.items():
        if key.startswith("mask/"):
            name = key[len("mask/") :]
            shape = tuple(arrays[f"shape/{name}"])
            flat = np.unpackbits(bits)[: int(np.prod(shape))].astype(bool)
            masks[name] = torch.from_numpy(flat.reshape(shape))
    return meta, masks, arrays


def replay(meta: dict) -> tuple[torch.nn.Module, dict[str, torch.Tensor], list[float]]:
    cfg = meta["config"]
    gradient_based = cfg["pruning_type"] in GRADIENT_CRITERIA
    shift = 1 if gradient_based else 0
    # The run's INC config, in INC's own key names.
    inc_config = {
        "target_sparsity": cfg["target"],
        "pruning_type": cfg["pruning_type"],
        "pattern": cfg["pattern"],
        "pruning_scope": cfg["scope"],
        "sparsity_decay_type": cfg["decay"],
        "start_step": cfg["start"] - shift,
        "end_step": cfg["end"] - shift,
        "pruning_frequency": cfg["freq"],
        "min_sparsity_ratio_per_op": cfg["min_per_op"],
        "max_sparsity_ratio_per_op": cfg["max_per_op"],
        "criterion_reduce_type": cfg["reduce_type"],
    }
    model = recorded_model()
    (prune,) = fprune.from_config(inc_config, model=model)
    assert prune.names == tuple(meta["pruned_layers"]) and prune.extra["head"] == "head"
    params = dict(model.named_parameters())
    names = prune.names
    opt = torch.optim.SGD(model.parameters(), lr=meta["training"]["lr"])
    state = prune.init({n: params[n].detach() for n in names})
    masks, trace = None, []
    data = recorded_batches()
    for s in range(meta["training"]["steps"]):
        x, y = data[s % len(data)]
        if not gradient_based:
            state, masks = prune.step(state, {n: params[n].detach() for n in names})
            fprune.nn.apply_masks_(model, masks)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if gradient_based:
            state, masks = prune.step(
                state, {n: params[n].detach() for n in names}, {n: params[n].grad for n in names}
            )
        opt.step()
        fprune.nn.apply_masks_(model, masks)
        zeros = sum(int((params[n] == 0).sum()) for n in names)
        trace.append(round(zeros / sum(params[n].numel() for n in names), 6))
    return model, masks, trace


@pytest.mark.parametrize("run", RUNS)
def test_inc_run_is_reproduced(run):
    meta, inc_masks, arrays = load(run)
    model, masks, trace = replay(meta)
    assert set(masks) == set(inc_masks)
    for name, mask in masks.items():
        assert torch.equal(mask, inc_masks[name]), name
        assert float(fprune.layer_sparsity({name: mask})[name]) == pytest.approx(
            meta["final_layer_mask_sparsity"][name], abs=1e-6
        )
    inc_trace = meta["trace_weight_zero_fraction_after_each_step"]
    if meta["config"]["pruning_type"] in GRADIENT_CRITERIA:  # fprune's masks land one step earlier
        inc_trace = inc_trace[1:] + inc_trace[-1:]
    assert trace == inc_trace
    for name, p in model.named_parameters():
        final = p.detach().double()
        assert float(final.sum()) == pytest.approx(
            float(arrays[f"final_sum/{name}"]), rel=1e-5, abs=1e-5
        )
        assert float(final.norm()) == pytest.approx(float(arrays[f"final_norm/{name}"]), rel=1e-6)


@pytest.mark.skipif(
    not SHARED.is_dir(), reason="the shared INC reference is not next to the repository"
)
@pytest.mark.parametrize("run", RUNS)
def test_fixtures_match_the_shared_recording(run):
    safetensors = pytest.importorskip("safetensors.torch")
    tensors = safetensors.load_file(SHARED / run / "tensors.safetensors")
    _, masks, _ = load(run)
    for name, mask in masks.items():
        assert torch.equal(mask, tensors[f"mask/{name}"])
    for name, p in recorded_model().named_parameters():
        assert torch.equal(p.detach(), tensors[f"init/{name}"])
    for i, (x, y) in enumerate(recorded_batches()):
        assert torch.equal(x, tensors[f"data/{i}/x"]) and torch.equal(y, tensors[f"data/{i}/y"])
    assert json.loads((SHARED / run / "run.json").read_text()) == json.loads(
        (DATA / f"{run}.json").read_text()
    )
