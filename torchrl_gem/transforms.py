"""Twin enhanced returns as a sample-time replay-buffer transform."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.envs import EnvBase
from torchrl.envs.transforms import Transform

from torchrl_gem.estimator import TwinBackPropEstimator

__all__ = ["TwinBackPropTransform"]


class TwinBackPropTransform(Transform):
    """Writes ``memory_return`` into trajectory slices sampled from a replay buffer.

    A replay buffer applies its transform *before* a ``SliceSampler``'s slice-end
    markers are merged into the sample, so the slice boundaries are found from the
    data: the estimator places a cut after every step whose successor in the sample
    is not the next step of the same trajectory (its ``trajectory`` id changes or
    its ``step_count`` does not grow by one), and after the last step. Episode ends
    inside a slice come from ``("next", "done")`` as usual. The horizon is therefore
    truncated at the slice ends (a cut that bootstraps and never offers the zero
    tail), unlike :meth:`EpisodicMemory.refresh`, which sees whole trajectories.
    The keys are the estimator's (:meth:`TwinBackPropEstimator.set_keys`).

    Only for replay buffers: used inside an environment it raises.

    Args:
        estimator (TwinBackPropEstimator): computes the returns.

    Examples:
        >>> import torch
        >>> from torchrl.data import LazyTensorStorage, ReplayBuffer, SliceSampler
        >>> from torchrl_gem import GEMLoss, TwinBackPropTransform
        >>> # loss = GEMLoss(...); estimator = loss.value_estimator
        >>> # buffer = ReplayBuffer(storage=LazyTensorStorage(10_000),
        >>> #     sampler=SliceSampler(slice_len=32), batch_size=256,
        >>> #     transform=TwinBackPropTransform(estimator))
        >>> # buffer.sample()["memory_return"]  # [256, 2]
    """

    ENV_ERR = "TwinBackPropTransform works on replay-buffer samples, not in an env."

    def __init__(self, estimator: TwinBackPropEstimator) -> None:
        keys = estimator.tensor_keys
        super().__init__(
            in_keys=[*estimator.in_keys, keys.trajectory, keys.step_count],
            out_keys=estimator.out_keys,
        )
        self.estimator = estimator

    @torch.no_grad()
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        return self.estimator(tensordict)

    def _inv_call(self, tensordict: TensorDictBase) -> TensorDictBase:
        return tensordict

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        raise ValueError(self.ENV_ERR)

    def set_container(self, container) -> None:
        if isinstance(container, EnvBase) or container.parent is not None:
            raise ValueError(self.ENV_ERR)
        super().set_container(container)
