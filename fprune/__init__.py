"""fprune: functional, stateless pruning for PyTorch.

Pure functions compute scores, block reductions, exact selections and masks from explicit
``dict[str, Tensor]``s keyed by parameter name. Masks are ``torch.bool`` tensors shaped
like their parameters, ``True`` = kept; sparsity is the fraction of zeros.

Example:
    >>> import torch, fprune
    >>> params = {"fc.weight": torch.randn(8, 16, generator=torch.Generator().manual_seed(0))}
    >>> m = fprune.masks(fprune.magnitude(params), pattern="4x1", sparsity=0.5)
    >>> float(fprune.total_sparsity(m))
    0.5
    >>> params = fprune.apply_masks(params, m)
"""

from fprune import (
    _resolve,  # noqa: F401  (registers the built-ins)
    distributed,
    export,
    nn,
    posttrain,
    training,
)
from fprune.blocks import (
    block_scores,
    expand_blocks,
    expand_masks,
    grid_shape,
    indivisible_layers,
    reduce_blocks,
    reduce_masks,
)
from fprune.config import from_config, to_config
from fprune.distributions import layer_counts, layer_sparsities
from fprune.dynamic import dynamic
from fprune.layout import from_2d, shape_2d, to_2d
from fprune.lock import pattern_lock
from fprune.masking import (
    apply_masks,
    global_masks,
    grid_masks,
    local_masks,
    masks,
    pattern_lock_masks,
)
from fprune.patterns import NM, Blocks, Pattern, parse_pattern
from fprune.pruner import Pruner, pruner
from fprune.registry import (
    get_criterion,
    get_pattern,
    get_pruner,
    get_reg,
    get_scheduler,
    register_criterion,
    register_pattern,
    register_pruner,
    register_reg,
    register_scheduler,
)
from fprune.regularizers import group_lasso
from fprune.schedules import is_prune_step, iterative, oneshot, prune_steps
from fprune.scores import Criterion, criterion, gradient, magnitude, snip, snip_momentum
from fprune.selection import rank_keys
from fprune.sparsity import layer_sparsity, total_sparsity
from fprune.state import PruneState

__version__ = "0.1.0.dev0"

__all__ = [
    "NM",
    "Blocks",
    "Criterion",
    "Pattern",
    "PruneState",
    "Pruner",
    "apply_masks",
    "block_scores",
    "criterion",
    "distributed",
    "dynamic",
    "expand_blocks",
    "expand_masks",
    "export",
    "from_2d",
    "from_config",
    "get_criterion",
    "get_pattern",
    "get_pruner",
    "get_reg",
    "get_scheduler",
    "global_masks",
    "gradient",
    "grid_masks",
    "grid_shape",
    "group_lasso",
    "indivisible_layers",
    "is_prune_step",
    "iterative",
    "layer_counts",
    "layer_sparsities",
    "layer_sparsity",
    "local_masks",
    "magnitude",
    "masks",
    "nn",
    "oneshot",
    "parse_pattern",
    "pattern_lock",
    "pattern_lock_masks",
    "posttrain",
    "prune_steps",
    "pruner",
    "rank_keys",
    "reduce_blocks",
    "reduce_masks",
    "register_criterion",
    "register_pattern",
    "register_pruner",
    "register_reg",
    "register_scheduler",
    "shape_2d",
    "snip",
    "snip_momentum",
    "to_2d",
    "to_config",
    "total_sparsity",
    "training",
]
