"""from_config / to_config: INC keys, legacy names, defaults, errors, round trips."""

from __future__ import annotations

import copy

import pytest
import torch

import fprune
from fprune.config import DEFAULTS
from fprune.registry import snapshot
from tests.models import MLP


def _same_masks(a: fprune.Pruner, b: fprune.Pruner, criterion: str = "snip") -> bool:
    torch.manual_seed(0)
    params = {"x": torch.randn(8, 16), "y": torch.randn(16, 8)}
    sa, sb = a.init(params), b.init(params)
    for _ in range(4):
        grads = {n: torch.randn_like(p) for n, p in params.items()}
        sa, ma = a.step(sa, params, grads)
        sb, mb = b.step(sb, params, grads)
        if any(not torch.equal(ma[n], mb[n]) for n in params):
            return False
    return True


def test_from_config_matches_the_keyword_api():
    cfg = {
        "target_sparsity": 0.7,
        "pruning_type": "snip",
        "pattern": "4x1",
        "start_step": 0,
        "end_step": 3,
        "pruning_frequency": 1,
        "pruning_scope": "local",
        "sparsity_decay_type": "cos",
        "min_sparsity_ratio_per_op": 0.1,
        "max_sparsity_ratio_per_op": 0.9,
        "criterion_reduce_type": "sum",
    }
    (built,) = fprune.from_config(cfg)
    keyword = fprune.pruner(
        0.7,
        pattern="4x1",
        criterion="snip",
        start_step=0,
        end_step=3,
        frequency=1,
        scope="local",
        decay="cos",
        min_layer_sparsity=0.1,
        max_layer_sparsity=0.9,
        reduce="sum",
    )
    assert dict(built.settings) == dict(keyword.settings)
    assert _same_masks(built, keyword)
    params = {
        "x": torch.randn(8, 16)
    }  # same settings, same fingerprint: states are interchangeable
    built.step(keyword.init(params), params, {"x": torch.ones(8, 16)})


def test_legacy_names_build_the_same_pruner():
    new = {
        "target_sparsity": 0.6,
        "pruning_type": "snip_momentum",
        "pruning_scope": "local",
        "pruning_frequency": 2,
        "max_sparsity_ratio_per_op": 0.9,
        "min_sparsity_ratio_per_op": 0.1,
        "criterion_reduce_type": "max",
        "end_step": 6,
        "pattern": "tile_pattern_4x1",
        "op_names": ["fc"],
        "excluded_op_names": ["fc3", "fc2"],
        "pruning_op_types": ["Linear"],
    }
    legacy = {
        "target_sparsity": 0.6,
        "prune_type": "snip_momentum",
        "prune_domain": "local",
        "update_frequency_on_step": 2,
        "max_sparsity_ratio_per_layer": 0.9,
        "min_sparsity_ratio_per_layer": 0.1,
        "reduce_type": "max",
        "end_step": 6,
        "pattern": "tile_pattern_4x1",
        "names": ["fc"],
        "excluded_names": ["fc3"],
        "extra_excluded_names": ["fc2"],
        "prune_layer_type": ["Linear"],
    }
    (a,), (b,) = fprune.from_config(new, model=MLP()), fprune.from_config(legacy, model=MLP())
    assert dict(a.settings) == dict(b.settings) and a.names == b.names == ("fc1.weight",)
    assert a.settings["pattern"] == "4x1"
    assert _same_masks(a, b)


def test_defaults_are_inc_defaults_and_nothing_is_shared():
    cfg = {"pruning_configs": [{}]}
    before = copy.deepcopy(cfg)
    (p,) = fprune.from_config(cfg)
    s = p.settings
    assert (
        s["sparsity"],
        s["pattern"],
        s["criterion"],
        s["scope"],
        s["frequency"],
        s["decay"],
        s["reduce"],
        s["min_layer_sparsity"],
        s["max_layer_sparsity"],
        s["start_step"],
        s["end_step"],
    ) == (0.9, "4x1", "snip_momentum", "global", 1, "exp", "mean", 0.0, 0.98, 0, 0)
    assert cfg == before  # the input is not modified (INC's B7)
    (q,) = fprune.from_config({"target_sparsity": 0.3, "pattern": "1x1"})
    (r,) = fprune.from_config({})
    assert q.settings["sparsity"] == 0.3 and r.settings["sparsity"] == 0.9  # no leak between calls
    assert p.extra["op_names"] == () and isinstance(DEFAULTS["pruning_op_types"], tuple)


def test_pruning_configs_entries_inherit_globals_and_cover_disjoint_layers():
    cfg = {
        "target_sparsity": 0.8,
        "pattern": "4x1",
        "pruning_type": "magnitude",
        "pruning_configs": [
            {"op_names": ["fc1"]},
            {
                "op_names": ["fc2", "fc3"],
                "pattern": "2:4",
                "target_sparsity": 0.5,
                "lock_init_sparsity": True,
            },
        ],
    }
    first, second = fprune.from_config(cfg, model=MLP())
    assert first.names == ("fc1.weight",) and second.names == ("fc2.weight", "fc3.weight")
    assert first.settings["sparsity"] == 0.8 and second.settings["pattern"] == "2:4"
    assert (
        second.settings["lock_init_sparsity"] is True
        and first.settings["lock_init_sparsity"] is False
    )
    assert first.extra["head"] == "head"  # returned, so the caller sees the excluded head
    assert fprune.from_config({**cfg, "pruning_configs": []})[0].settings["pattern"] == "4x1"


def test_pattern_lock_and_group_lasso_from_config():
    model = MLP()
    with torch.no_grad():
        model.fc1.weight[:, :8] = 0
    (lock,) = fprune.from_config(
        {"pruning_type": "pattern_lock", "pattern": "1x1", "op_names": ["fc1"]}, model=model
    )
    params = {n: p.detach() for n, p in model.named_parameters() if n in lock.names}
    _, masks = lock.step(lock.init(params), params)
    assert torch.equal(masks["fc1.weight"], model.fc1.weight != 0)
    (reg,) = fprune.from_config(
        {
            "reg_type": "group_lasso",
            "parameters": {"reg_coeff": 0.5},
            "pattern": "4x1",
            "start_step": 0,
            "end_step": 10,
        },
        model=model,
    )
    params = {n: p.detach() for n, p in model.named_parameters() if n in reg.names}
    shrunk = reg.regularize(params, step=3, lr=0.1)
    want = fprune.group_lasso(params, pattern="4x1", strength=0.05)
    assert all(torch.equal(shrunk[n], want[n]) for n in params)
    outside = reg.regularize(params, step=11, lr=0.1)
    assert all(outside[n] is params[n] for n in params)
    (top,) = fprune.from_config({"reg_type": "group_lasso", "reg_coeff": 0.5, "end_step": 10})
    assert top.extra["reg_coeff"] == 0.5  # a top-level reg_coeff counts (INC drops it: B22)


@pytest.mark.parametrize(
    "pruner",
    [
        fprune.pruner(0.8),
        fprune.pruner(
            0.5,
            pattern="2:4",
            criterion="magnitude",
            start_step=3,
            end_step=30,
            frequency=3,
            decay="cube",
            scope="local",
            reduce="max",
            low_memory_usage=True,
        ),
        fprune.pruner(
            0.7,
            pattern="channelx1",
            criterion="gradient",
            end_step=5,
            min_layer_sparsity=0.2,
            max_layer_sparsity=0.9,
            lock_init_sparsity=True,
            skip_indivisible=True,
        ),
        fprune.pruner(0.5, pattern="1x1", criterion="magnitude", start_step=2, schedule="oneshot"),
        fprune.pattern_lock(pattern="1xchannel"),
    ],
)
def test_to_config_round_trips(pruner):
    cfg = pruner.to_config()
    (again,) = fprune.from_config(cfg)
    assert dict(again.settings) == dict(pruner.settings)
    assert again.to_config() == cfg


def test_to_config_of_from_config_keeps_layer_selection_and_reg():
    cfg = {
        "target_sparsity": 0.5,
        "op_names": ["fc"],
        "excluded_op_names": ["fc3"],
        "reg_type": "group_lasso",
        "parameters": {"reg_coeff": 0.01},
        "end_step": 4,
    }
    (p,) = fprune.from_config(cfg, model=MLP())
    (q,) = fprune.from_config(p.to_config(), model=MLP())
    assert q.names == p.names == ("fc1.weight", "fc2.weight") and q.extra["reg_coeff"] == 0.01


def test_registered_criterion_by_name_from_a_config():
    def inverse_magnitude(params, grads):
        return {n: -p.abs() for n, p in params.items()}

    with snapshot():
        fprune.register_criterion("inverse_magnitude", inverse_magnitude)
        (p,) = fprune.from_config(
            {"pruning_type": "inverse_magnitude", "pattern": "1x1", "target_sparsity": 0.25}
        )
        params = {"w": torch.arange(1.0, 17.0).reshape(4, 4)}
        _, masks = p.step(p.init(params), params)
        assert (~masks["w"]).nonzero().tolist() == [[3, 0], [3, 1], [3, 2], [3, 3]]
        assert p.to_config()["pruning_type"] == "inverse_magnitude"
        direct = fprune.pruner(0.25, pattern="1x1", criterion=inverse_magnitude)
        assert direct.to_config()["pruning_type"] == "inverse_magnitude"  # found by identity
    with pytest.raises(ValueError, match="unknown criterion"):
        fprune.from_config({"pruning_type": "inverse_magnitude"})


INVALID = [
    ({"target_sparsity": 1.0}, ValueError, r"sparsity must be a fraction in \[0, 1\)"),
    ({"target_sparsity": float("nan")}, TypeError, "target_sparsity must be a finite number"),
    ({"target_sparsity": float("inf")}, TypeError, "target_sparsity must be a finite number"),
    ({"target_sparsity": "0.8"}, TypeError, "target_sparsity must be a finite number"),
    ({"start_step": 1.5}, TypeError, "start_step must be an int"),
    ({"start_step": 5, "end_step": 2}, ValueError, "end_step is before start_step"),
    ({"pruning_frequency": 0}, ValueError, "frequency must be >= 1"),
    ({"pruning_scope": "layer"}, ValueError, "unknown scope .* Did you mean 'local'"),
    ({"pattern": "4y1"}, ValueError, "pattern"),
    ({"pattern": "4:2"}, ValueError, "pattern"),
    ({"pattern": "2:4", "target_sparsity": 0.6}, ValueError, "cannot exceed sparsity N/M = 0.5"),
    ({"pruning_type": "foo"}, ValueError, "unknown criterion .* Did you mean"),
    ({"pruning_type": 3}, TypeError, "pruning_type must be a str"),
    ({"sparsity_decay_type": "sqrt"}, ValueError, "unknown sparsity_decay_type"),
    ({"criterion_reduce_type": "median"}, ValueError, "unknown reduce"),
    ({"max_sparsity_ratio_per_op": 0.5}, ValueError, "sparsity exceeds max_layer_sparsity"),
    ({"min_sparsity_ratio_per_op": 0.95}, ValueError, "min_layer_sparsity exceeds sparsity"),
    ({"reg_coeff": -1.0, "reg_type": "group_lasso"}, ValueError, "reg_coeff must be >= 0"),
    ({"reg_type": "l1"}, ValueError, "unknown reg"),
    ({"low_memory_usage": "yes"}, TypeError, "low_memory_usage must be a bool"),
    ({"op_names": "fc1"}, TypeError, "op_names must be a list of strings"),
    ({"parameters": {"alpha": 1}}, ValueError, "may only hold reg_coeff"),
    (
        {"prune_domain": "local", "pruning_scope": "global"},
        ValueError,
        "sets 'pruning_scope' twice",
    ),
    (
        {"target_sparsty": 0.8},
        ValueError,
        r"unknown key in config \(got 'target_sparsty'\). Valid keys: .*target_sparsity",
    ),
    ({"pruning_configs": [{"false_key": 1}]}, ValueError, r"unknown key in pruning_configs\[0\]"),
    ({"pruning_configs": {"op_names": ["fc1"]}}, TypeError, "pruning_configs must be a list"),
    ({"pruning_type": "snip_momentum_progressive"}, ValueError, "does not support"),
    ({"pruning_type": "block_mask"}, ValueError, "does not support"),
    ({"pruning_type": "retrain_free"}, ValueError, "does not support"),
    ({"pruning_type": "sparse_gpt"}, ValueError, "OneShot: SparseGPT prunes single weights"),
    ({"pruning_type": "wanda", "pattern": "2:4", "target_sparsity": 0.3}, ValueError, "0.5"),
    ({"pattern": "mha"}, ValueError, "does not support"),
    ({"backend": "itex"}, ValueError, "Keras"),
]


@pytest.mark.parametrize(("cfg", "error", "message"), INVALID)
def test_invalid_configs_raise_their_documented_error(cfg, error, message):
    with pytest.raises(error, match=message):
        fprune.from_config(cfg)


def test_overlapping_layers_and_empty_entries_are_errors():
    with pytest.raises(
        ValueError,
        match=r"layer 'fc1.weight' is matched by two entries "
        r"\(got pruning_configs\[0\] and pruning_configs\[1\]\)",
    ):
        fprune.from_config(
            {"pruning_configs": [{"op_names": ["fc1"]}, {"op_names": ["fc"]}]}, model=MLP()
        )
    with pytest.raises(ValueError, match=r"pruning_configs\[0\] matches no prunable layer"):
        fprune.from_config({"pruning_configs": [{"op_names": ["conv"]}]}, model=MLP())


def test_to_config_rejects_unregistered_callables():
    with pytest.raises(ValueError, match="criterion is an unregistered object"):
        fprune.pruner(0.5, criterion=lambda p, g: dict(p)).to_config()
    with pytest.raises(ValueError, match="decay callable cannot be written"):
        fprune.pruner(0.5, end_step=3, decay=lambda x, i, a: i + (a - i) * x).to_config()


def test_to_config_uses_inc_key_names():
    cfg = fprune.pruner(0.5, end_step=3).to_config()
    assert {
        "target_sparsity",
        "pruning_type",
        "pattern",
        "start_step",
        "end_step",
        "pruning_frequency",
        "sparsity_decay_type",
        "pruning_scope",
        "min_sparsity_ratio_per_op",
        "max_sparsity_ratio_per_op",
        "criterion_reduce_type",
    } <= set(cfg)


def test_sparse_gpt_and_wanda_entries_give_one_shot_plans():
    cfg = {
        "pruning_type": "snip_momentum",
        "pruning_configs": [
            {"op_names": ["fc1"], "pruning_type": "sparse_gpt", "pattern": "2:4"},
            {
                "op_names": ["fc2"],
                "pruning_type": "wanda",
                "pattern": "1x1",
                "target_sparsity": 0.6,
            },
            {"op_names": ["fc3"], "pattern": "4x1", "end_step": 10},
        ],
    }
    model = torch.nn.Sequential()
    for name in ("fc1", "fc2", "fc3", "head"):
        model.add_module(name, torch.nn.Linear(8, 8))
    sgpt, wanda, pruner = fprune.from_config(cfg, model)
    assert sgpt == fprune.posttrain.OneShot("sparsegpt", 0.5, "2:4", ("fc1.weight",), sgpt.extra)
    assert wanda.options() == {
        "method": "wanda",
        "sparsity": 0.6,
        "pattern": "1x1",
        "names": ("fc2.weight",),
    }
    assert isinstance(pruner, fprune.Pruner) and pruner.names == ("fc3.weight",)
    assert fprune.from_config({"pruning_type": "sparse_gpt", "pattern": "1x1"})[0].names is None


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"target_sparsity": None}, r"config\['target_sparsity'\] is None"),
        ({"pruning_configs": [{"pattern": None}]}, r"pruning_configs\[0\]\['pattern'\] is None"),
        ({"pruning_type": "pattern_lock", "target_sparsity": 5.0}, "target_sparsity must be"),
        ({"pruning_type": "pattern_lock", "sparsity_decay_type": "bogus"}, "'bogus'"),
        ({"op_names": ["("]}, "op_names has an invalid regex"),
        ({"excluded_op_names": ["[a"]}, "excluded_op_names has an invalid regex"),
    ],
)
def test_values_a_pruner_would_ignore_are_still_checked(cfg, message):
    """An explicit None (an empty YAML value) is an error unless the key takes None; values
    pattern_lock ignores and regexes are checked without a model."""
    with pytest.raises(ValueError, match=message):
        fprune.from_config(cfg)


def test_keys_that_document_none_take_it():
    (pruner,) = fprune.from_config({"reg_type": None, "schedule": None, "backend": None})
    assert isinstance(pruner, fprune.Pruner)
