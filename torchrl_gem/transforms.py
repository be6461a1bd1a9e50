"""Twin enhanced returns as a sample-time replay-buffer transform."""

from __future__ import annotations

import torch
from tensordict import NestedKey, TensorDictBase
from torchrl.envs import EnvBase
from torchrl.envs.transforms import Transform

from torchrl_gem.estimator import TwinBackPropEstimator

__all__ = ["TwinBackPropTransform"]


class TwinBackPropTransform(Transform):
    """Writes ``memory_return`` into trajectory slices sampled from a replay buffer.

    A replay buffer applies its transform *before* a ``SliceSampler``'s slice-end
    markers are merged into the sample, so slice boundaries are found here from the
    data: an end is placed after every step whose successor in the sample is not the
    next step of the same trajectory (``trajectory_key`` changes or ``step_key``
    does not grow by one), and after the last step. Episode ends inside a slice come
    from ``("next", "done")`` as usual. The horizon is therefore truncated at the
    slice ends (a cut that bootstraps), unlike :meth:`EpisodicMemory.refresh`,
    which sees whole trajectories.

    Only for replay buffers: used inside an environment it raises.

    Args:
        estimator (TwinBackPropEstimator): computes the returns.

    Keyword Args:
        trajectory_key (NestedKey): per-step trajectory id. Defaults to
            ``("collector", "traj_ids")``.
        step_key (NestedKey): per-step counter within the trajectory (TorchRL's
            ``StepCounter`` writes it). Defaults to ``"step_count"``.

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

    def __init__(
        self,
        estimator: TwinBackPropEstimator,
        *,
        trajectory_key: NestedKey = ("collector", "traj_ids"),
        step_key: NestedKey = "step_count",
    ) -> None:
        super().__init__(in_keys=estimator.in_keys, out_keys=estimator.out_keys)
        self.estimator = estimator
        self.trajectory_key = trajectory_key
        self.step_key = step_key

    @torch.no_grad()
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if tensordict.ndim != 1:
            self.estimator(tensordict)
            return tensordict
        for key in (self.trajectory_key, self.step_key):
            if key not in tensordict.keys(include_nested=True):
                raise KeyError(
                    f"TwinBackPropTransform needs {key!r} in the samples to find the "
                    "slice boundaries."
                )
        trajectory = tensordict.get(self.trajectory_key).reshape(-1)
        step = tensordict.get(self.step_key).reshape(-1)
        continues = (trajectory[1:] == trajectory[:-1]) & (step[1:] == step[:-1] + 1)
        ends = torch.ones_like(trajectory, dtype=torch.bool)
        ends[:-1] = ~continues
        done_key = ("next", self.estimator.tensor_keys.done)
        view = tensordict.select(*self.estimator.in_keys, strict=True)
        view.set(done_key, view.get(done_key) | ends.unsqueeze(-1))
        self.estimator(view)
        tensordict.update(view.select(*self.estimator.out_keys))
        return tensordict

    def _inv_call(self, tensordict: TensorDictBase) -> TensorDictBase:
        return tensordict

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        raise ValueError(self.ENV_ERR)

    def set_container(self, container) -> None:
        if isinstance(container, EnvBase) or container.parent is not None:
            raise ValueError(self.ENV_ERR)
        super().set_container(container)
