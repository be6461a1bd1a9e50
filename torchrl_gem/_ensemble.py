"""Running one module under a stack of parameter sets (a critic ensemble)."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase

from torchrl_gem.networks import GEMCritic


def call_ensemble(
    module: TensorDictModuleBase,
    params: TensorDictBase,
    tensordict: TensorDictBase,
    *,
    vmap: bool = True,
) -> TensorDictBase:
    """Apply ``module`` with each of the ``params.shape[0]`` parameter sets.

    Returns the module's output with a leading ensemble dimension. Critics built on
    :class:`~torchrl_gem.GEMCritic` run all parameter sets with one batched matmul
    per layer (:meth:`GEMCritic.ensemble_forward`); other modules go through
    :func:`torch.vmap`. ``vmap=False`` runs a Python loop instead (slower, but works
    with modules that vmap cannot trace). All give the same numbers up to rounding.
    """
    if vmap and batched_critic(module):
        critic = module.module
        value = critic.ensemble_forward(
            params.get("module"), *(tensordict.get(key) for key in module.in_keys)
        )
        return TensorDict(
            {module.out_keys[0]: value},
            batch_size=[params.shape[0], *tensordict.batch_size],
        )

    def run(data: TensorDictBase, member_params: TensorDictBase) -> TensorDictBase:
        with member_params.to_module(module, preserve_module_state=False):
            return module(data)

    if vmap:
        return torch.vmap(run, (None, 0), randomness="different")(tensordict, params)
    return torch.stack(
        [run(tensordict.clone(False), member) for member in params.unbind(0)]
    )


def batched_critic(module: TensorDictModuleBase) -> bool:
    """Whether ``module`` is a :class:`~torchrl_gem.GEMCritic` value operator."""
    return (
        isinstance(module, TensorDictModule)
        and isinstance(module.module, GEMCritic)
        and len(module.out_keys) == 1
    )
