"""The public surface is deliberate: adding or removing a name is a visible change."""

from __future__ import annotations

import inspect
import pathlib
import re

import fprune

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"

PUBLIC = {
    "NM",
    "Blocks",
    "Criterion",
    "Pattern",
    "apply_masks",
    "block_scores",
    "criterion",
    "expand_blocks",
    "expand_masks",
    "from_2d",
    "global_masks",
    "gradient",
    "grid_masks",
    "grid_shape",
    "group_lasso",
    "indivisible_layers",
    "is_prune_step",
    "iterative",
    "layer_sparsity",
    "local_masks",
    "magnitude",
    "masks",
    "oneshot",
    "parse_pattern",
    "pattern_lock_masks",
    "prune_steps",
    "rank_keys",
    "reduce_blocks",
    "reduce_masks",
    "shape_2d",
    "snip",
    "snip_momentum",
    "to_2d",
    "total_sparsity",
    "PruneState",
    "Pruner",
    "from_config",
    "to_config",
    "nn",
    "distributed",
    "dynamic",
    "layer_counts",
    "layer_sparsities",
    "export",
    "posttrain",
    "training",
    "pattern_lock",
    "pruner",
    "get_criterion",
    "get_pattern",
    "get_pruner",
    "get_reg",
    "get_scheduler",
    "register_criterion",
    "register_pattern",
    "register_pruner",
    "register_reg",
    "register_scheduler",
}


def test_public_names_are_pinned():
    assert set(fprune.__all__) == PUBLIC
    assert all(hasattr(fprune, name) for name in fprune.__all__)


def test_options_are_keyword_only():
    """Tensors are positional; every option after them is keyword-only."""
    for name in fprune.__all__:
        obj = getattr(fprune, name)
        if not inspect.isfunction(obj):
            continue
        for param in inspect.signature(obj).parameters.values():
            if (
                param.default is not inspect.Parameter.empty
                and param.kind is param.POSITIONAL_OR_KEYWORD
            ):
                assert name in {"magnitude", "from_config"}, (
                    f"{name}({param.name}=...) should be keyword-only"
                )


def test_every_public_function_has_a_docstring_example():
    for name in fprune.__all__:
        obj = getattr(fprune, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            doc = inspect.getdoc(obj) or ""
            assert doc, name
            if inspect.isfunction(obj):
                assert ">>>" in doc, f"{name} has no runnable example"


def test_every_public_name_is_in_the_api_reference():
    text = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"`(\w+)\(", text)) | {
        "Pattern",
        "nn",
        "distributed",
        "export",
        "posttrain",
        "training",
    }  # a type alias, modules
    assert documented >= PUBLIC, sorted(PUBLIC - documented)
