"""Running one module under a stack of parameter sets (a critic ensemble)."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase


def call_ensemble(
    module: TensorDictModuleBase,
    params: TensorDictBase,
    tensordict: TensorDictBase,
    *,
    vmap: bool = True,
) -> TensorDictBase:
    """Apply ``module`` with each of the ``params.shape[0]`` parameter sets.

    Returns the module's output with a leading ensemble dimension. ``vmap=False``
    runs a Python loop instead of :func:`torch.vmap` (slower, but works with modules
    that vmap cannot trace); both give the same numbers.
    """

    def run(data: TensorDictBase, member_params: TensorDictBase) -> TensorDictBase:
        with member_params.to_module(module, preserve_module_state=False):
            return module(data)

    if vmap:
        return torch.vmap(run, (None, 0), randomness="different")(tensordict, params)
    return torch.stack(
        [run(tensordict.clone(False), member) for member in params.unbind(0)]
    )
