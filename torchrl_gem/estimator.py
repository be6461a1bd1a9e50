"""The twin enhanced-return transform: target networks in, ``memory_return`` out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Literal

import torch
from tensordict import NestedKey, TensorDictBase, unravel_key
from tensordict.nn import TensorDictModuleBase
from torch import Tensor
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives.utils import register_value_estimator
from torchrl.objectives.value import ValueEstimatorBase

from torchrl_gem._ensemble import call_ensemble
from torchrl_gem.compiling import CompiledCall
from torchrl_gem.functional import (
    Floor,
    check_finite,
    check_return_options,
    twin_backprop_return,
)
from torchrl_gem.precision import Precision, autocast

__all__ = ["GEMEstimators", "TwinBackPropEstimator", "default_twin_groups"]


class GEMEstimators(Enum):
    """Value estimators added by this package (``value_type="tbp"`` in configs).

    Examples:
        >>> from torchrl.data import Bounded
        >>> from torchrl_gem import GEMEstimators, GEMLoss, make_gem_actor
        >>> from torchrl_gem import make_gem_critics
        >>> spec = Bounded(-1.0, 1.0, shape=(2,))
        >>> loss = GEMLoss(make_gem_actor(3, spec), make_gem_critics(3, 2),
        ...                action_spec=spec)
        >>> _ = loss.make_value_estimator(GEMEstimators.TBP, gamma=0.9)
        >>> type(loss.value_estimator).__name__, loss.value_estimator.gamma
        ('TwinBackPropEstimator', 0.9)
    """

    TBP = "twin_backprop"


def default_twin_groups(num_critics: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Consecutive halves: 4 critics -> ``((0, 1), (2, 3))``, 2 -> ``((0,), (1,))``."""
    if num_critics < 2 or num_critics % 2:
        raise ValueError(
            "twin back-propagation needs an even number (>= 2) of critics to form two "
            f"twin groups, got num_qvalue_nets={num_critics}; pass twin_groups "
            "explicitly to group them otherwise."
        )
    half = num_critics // 2
    return tuple(range(half)), tuple(range(half, num_critics))


@register_value_estimator(GEMEstimators.TBP, default_kwargs={"gamma": 0.99})
class TwinBackPropEstimator(ValueEstimatorBase):
    """GEM's twin enhanced returns of stored trajectories, as a TorchRL value estimator.

    At every ``("next", observation)`` of a ``[*B, T]`` tensordict it evaluates the
    target actor (plus TD3 smoothing noise, drawn once per state and shared by all
    critics) and the target critics, reduces each twin group with a ``min``
    (``max_a`` of the group ``min`` for discrete Q-networks), and runs
    :func:`~torchrl_gem.twin_backprop_return` along the last batch dimension (time).

    Where trajectories start and end along time:

    - ``("next", "done")`` ends the environment's episodes;
    - a caller that knows its layout passes ``cut`` (:meth:`EpisodicMemory.refresh
      <torchrl_gem.EpisodicMemory.refresh>` cuts each running episode at its newest
      stored step);
    - otherwise, when the batch carries trajectory ids and step counts (the
      ``trajectory`` and ``step_count`` keys), a cut is placed after every step whose
      successor is not the next step of the same trajectory: slices concatenated by
      a ``SliceSampler`` are kept apart;
    - a ``[*B, T]`` batch with ``B`` non-empty is taken as rows of consecutive
      steps; a flat ``[T]`` batch without ids and step counts is refused, since a
      uniformly sampled batch would chain unrelated transitions.

    The last step is always an end (a cut if not done).

    It writes ``memory_return`` (``[*B, T, 2]``) and ``value_target`` (the twin
    columns reduced with ``target_reduction``, ``[*B, T, 1]``). Three uses:

    - :meth:`~torchrl_gem.EpisodicMemory.refresh` over a whole memory;
    - a sample-time transform of a replay buffer that samples ``SliceSampler`` slices
      (wrap it in :class:`~torchrl_gem.TwinBackPropTransform`); the horizon is then
      truncated at the slice ends;
    - the value estimator of another twin-critic loss (``TD3Loss``, ``SACLoss``):
      ``loss.make_value_estimator(TwinBackPropEstimator.for_loss(loss, gamma=0.99))``.
      :meth:`value_estimate` reads ``memory_return`` from the batch when present
      (batches from an :class:`~torchrl_gem.EpisodicMemory`), else computes it along
      the batch's time dimension.

    Keyword Args:
        gamma (float): discount factor.
        qvalue_network (TensorDictModuleBase): critic template; called under each set
            of ``qvalue_params``.
        qvalue_params (TensorDictBase): stacked ``[K, ...]`` critic parameters, usually
            the target parameters of a loss (kept by reference, so a
            :class:`~torchrl.objectives.SoftUpdate` of the loss is seen here).
        actor_network (TensorDictModuleBase, optional): deterministic actor template;
            required for ``action_space="continuous"``.
        actor_params (TensorDictBase, optional): actor parameters (target ones).
        twin_groups (pair of index sequences, optional): which critics form each
            estimator. Defaults to consecutive halves of the ``K`` critics.
        single_estimator (bool): the "BP" ablation: one estimator, the ``min`` over
            all critics, in both columns (no twin cross-evaluation).
        action_space (str): ``"continuous"`` (critic takes the action) or
            ``"discrete"`` (critic outputs one value per action, ``max_a`` is taken).
        policy_noise (float): std of the target smoothing noise, in action units.
        noise_clip (float): the noise is clipped to ``[-noise_clip, noise_clip]``.
        action_low (Tensor, optional): lower action bound after adding noise.
        action_high (Tensor, optional): upper action bound after adding noise.
        max_horizon (int, optional): see :func:`~torchrl_gem.twin_backprop_return`.
        zero_tail (bool): see :func:`~torchrl_gem.twin_backprop_return`.
        floor (str): see :func:`~torchrl_gem.twin_backprop_return`.
        cross_evaluation (bool): see :func:`~torchrl_gem.twin_backprop_return`;
            ``False`` lets each estimator evaluate its own best horizon (the
            single-factor ablation of the twin cross-evaluation). Defaults to ``True``.
        target_reduction (str): ``"min"`` or ``"mean"`` of the twin columns, the
            single target given to one-target losses. Defaults to ``"min"``.
        value_chunk_size (int, optional): largest number of states per network call;
            ``None`` for one call. Defaults to ``2048`` (fastest measured on CPU for
            the reference networks; a refresh is a large batched inference).
        deactivate_vmap (bool, optional): loop over critics instead of evaluating
            them together (one batched matmul per layer for
            :class:`~torchrl_gem.GEMCritic` critics, ``torch.vmap`` for others).
            ``None`` (default) loops on CPU, where it measured about 2x faster for
            this large-batch inference, and evaluates them together on accelerators.
        precision (str): ``"fp32"`` (default) or ``"bf16"``: the target networks run
            under bf16 autocast (:mod:`torchrl_gem.precision`); their values are cast
            back to float32 before the scan. Pass a resolved value
            (:func:`torchrl_gem.precision.resolve`).
        compile (bool): run the target networks through ``torch.compile``
            (:class:`~torchrl_gem.CompiledCall`: eager if compilation fails). Every
            chunk is padded to ``value_chunk_size`` states, so one compiled graph
            serves every refresh. Needs a ``value_chunk_size``. Defaults to
            ``False``.
        device (torch.device, optional): unused, accepted for TorchRL compatibility.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl.objectives import TD3Loss
        >>> from torchrl_gem import TwinBackPropEstimator, make_gem_actor
        >>> from torchrl_gem import make_gem_critics
        >>> spec = Bounded(-1.0, 1.0, shape=(2,))
        >>> critics = make_gem_critics(3, 2, num_critics=2)
        >>> loss = TD3Loss(make_gem_actor(3, spec), critics, action_spec=spec)
        >>> estimator = TwinBackPropEstimator.for_loss(loss, gamma=0.99)
        >>> _ = loss.make_value_estimator(estimator)  # GEM returns in one line
        >>> from torchrl_gem import EpisodicMemory
        >>> memory = EpisodicMemory(capacity=100, batch_size=4)
        >>> T = 5
        >>> _ = memory.extend(TensorDict(
        ...     observation=torch.randn(T, 3), action=torch.rand(T, 2),
        ...     collector=TensorDict(traj_ids=torch.zeros(T, dtype=torch.long)),
        ...     next=TensorDict(observation=torch.randn(T, 3), reward=torch.randn(T, 1),
        ...                     done=torch.zeros(T, 1, dtype=torch.bool),
        ...                     terminated=torch.zeros(T, 1, dtype=torch.bool)),
        ...     batch_size=[T]))
        >>> memory.refresh(loss.value_estimator)  # twin returns of every stored step
        >>> batch = memory.sample()
        >>> batch["memory_return"].shape
        torch.Size([4, 2])
        >>> loss(batch)["loss_qvalue"].shape  # TD3's critic loss on GEM targets
        torch.Size([])
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys read and written, renamed with :meth:`set_keys`.

        Attributes:
            action (NestedKey): action written by the actor, read by the critics.
            value (NestedKey): critic output (``"action_value"`` for discrete Q-nets).
            memory_return (NestedKey): twin enhanced returns written, ``[*B, T, 2]``.
            value_target (NestedKey): single reduced target written, ``[*B, T, 1]``.
            advantage (NestedKey): unused; kept for TorchRL's estimator interface.
            reward (NestedKey): reward, read under ``"next"``.
            done (NestedKey): episode end, read under ``"next"``.
            terminated (NestedKey): true termination, read under ``"next"``.
            trajectory (NestedKey): per-step trajectory id (TorchRL collectors).
            step_count (NestedKey): per-step counter (TorchRL's ``StepCounter``).
        """

        action: NestedKey = "action"
        value: NestedKey = "state_action_value"
        memory_return: NestedKey = "memory_return"
        value_target: NestedKey = "value_target"
        advantage: NestedKey = "advantage"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        trajectory: NestedKey = ("collector", "traj_ids")
        step_count: NestedKey = "step_count"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(
        self,
        *,
        gamma: float,
        qvalue_network: TensorDictModuleBase,
        qvalue_params: TensorDictBase,
        actor_network: TensorDictModuleBase | None = None,
        actor_params: TensorDictBase | None = None,
        twin_groups: Sequence[Sequence[int]] | None = None,
        single_estimator: bool = False,
        action_space: Literal["continuous", "discrete"] = "continuous",
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        action_low: Tensor | float | None = None,
        action_high: Tensor | float | None = None,
        max_horizon: int | None = None,
        zero_tail: bool = False,
        floor: Floor = "own",
        cross_evaluation: bool = True,
        target_reduction: Literal["min", "mean"] = "min",
        value_chunk_size: int | None = 2048,
        deactivate_vmap: bool | None = None,
        precision: Precision = "fp32",
        compile: bool = False,
        device: torch.device | None = None,
    ) -> None:
        super().__init__(
            value_network=None,
            value_chunk_size=value_chunk_size,
            deactivate_vmap=deactivate_vmap,
            device=device,
        )
        num_critics = qvalue_params.batch_size[0] if qvalue_params.ndim else 0
        if twin_groups is None:
            twin_groups = default_twin_groups(num_critics)
        check_return_options(gamma, max_horizon, floor)
        check_twin_groups(twin_groups, num_critics)
        if action_space not in ("continuous", "discrete"):
            raise ValueError(
                "action_space must be 'continuous' or 'discrete', got "
                f"{action_space!r}."
            )
        if action_space == "continuous" and actor_network is None:
            raise ValueError("action_space='continuous' needs an actor_network.")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}.")
        if target_reduction not in ("min", "mean"):
            raise ValueError(
                f"target_reduction must be 'min' or 'mean', got {target_reduction!r}."
            )
        if compile and not value_chunk_size:
            raise ValueError(
                "compile=True needs a value_chunk_size: the compiled target pass "
                "runs on chunks of that fixed size."
            )
        self.gamma = float(gamma)
        self.twin_groups = tuple(tuple(int(i) for i in group) for group in twin_groups)
        self.single_estimator = single_estimator
        self.action_space = action_space
        self.policy_noise = float(policy_noise)
        self.noise_clip = float(noise_clip)
        self.action_low, self.action_high = action_low, action_high
        self.max_horizon = max_horizon
        self.zero_tail = zero_tail
        self.floor = floor
        self.cross_evaluation = cross_evaluation
        self.target_reduction = target_reduction
        self.precision = precision
        self.compile = compile
        self._compiled_chunk_value: CompiledCall | None = None
        # Held by reference, not registered: they belong to the loss that owns them.
        self.__dict__["qvalue_network"] = qvalue_network
        self.__dict__["qvalue_params"] = qvalue_params
        self.__dict__["actor_network"] = actor_network
        self.__dict__["actor_params"] = actor_params

    @classmethod
    def for_loss(cls, loss_module, **hyperparams) -> TwinBackPropEstimator:
        """Build an estimator on the target networks of ``loss_module``.

        Works with any loss that exposes TorchRL's usual attributes
        (``qvalue_network`` and ``target_qvalue_network_params``, and for continuous
        actions ``actor_network`` and ``target_actor_network_params``):
        :class:`~torchrl_gem.GEMLoss`, ``TD3Loss``, ``SACLoss``. The loss's
        smoothing noise, action bounds, twin groups and keys are picked up;
        ``hyperparams`` override them. (A one-critic loss such as ``DDPGLoss``
        names its critic ``value_network``: build the estimator explicitly there,
        with ``twin_groups=((0,), (0,))``.)
        """
        if not hasattr(loss_module, "qvalue_network"):
            raise ValueError(
                f"{type(loss_module).__name__} has no 'qvalue_network'; build "
                "TwinBackPropEstimator(...) with explicit networks instead."
            )
        actor_params = getattr(loss_module, "target_actor_network_params", None)
        if actor_params is None:
            actor_params = getattr(loss_module, "actor_network_params", None)
        qvalue_params = getattr(loss_module, "target_qvalue_network_params", None)
        if qvalue_params is None:
            qvalue_params = loss_module.qvalue_network_params
        defaults = {
            "qvalue_network": loss_module.qvalue_network,
            "qvalue_params": qvalue_params,
            "actor_network": getattr(loss_module, "actor_network", None),
            "actor_params": actor_params,
            "policy_noise": getattr(loss_module, "policy_noise", 0.0),
            "noise_clip": getattr(loss_module, "noise_clip", 0.0),
            "action_low": getattr(loss_module, "min_action", None),
            "action_high": getattr(loss_module, "max_action", None),
        }
        if hasattr(loss_module, "twin_groups"):
            defaults["twin_groups"] = loss_module.twin_groups
        defaults.update(hyperparams)
        estimator = cls(**defaults)
        loss_keys = loss_module.tensor_keys
        keys = {
            name: getattr(loss_keys, source)
            for name, source in (
                ("action", "action"),
                ("value", "state_action_value"),
                ("memory_return", "memory_return"),
                ("reward", "reward"),
                ("done", "done"),
                ("terminated", "terminated"),
            )
            if hasattr(loss_keys, source)
        }
        estimator.set_keys(**keys)
        return estimator

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = self.tensor_keys
        network_keys = list(self.qvalue_network.in_keys)
        if self.actor_network is not None:
            network_keys += list(self.actor_network.in_keys)
        network_keys = [key for key in network_keys if key != keys.action]
        next_keys = [*network_keys, keys.reward, keys.done, keys.terminated]
        return list(dict.fromkeys(unravel_key(("next", key)) for key in next_keys))

    @property
    def out_keys(self) -> list[NestedKey]:
        return [self.tensor_keys.memory_return, self.tensor_keys.value_target]

    def forward(
        self,
        tensordict: TensorDictBase,
        *,
        params: TensorDictBase | None = None,
        target_params: TensorDictBase | None = None,
        cut: Tensor | None = None,
    ) -> TensorDictBase:
        """Write ``memory_return`` and ``value_target`` into a ``[*B, T]`` tensordict.

        Args:
            tensordict (TensorDictBase): trajectories; the last batch dim is time.

        Keyword Args:
            params: unused (the estimator reads target parameters it was given).
            target_params: unused, likewise.
            cut (Tensor, optional): see :meth:`twin_returns`.

        Returns:
            ``tensordict``, updated in place.
        """
        returns = self.twin_returns(tensordict, cut=cut)
        tensordict.set(self.tensor_keys.memory_return, returns)
        tensordict.set(self.tensor_keys.value_target, self.reduce_twins(returns))
        return tensordict

    def value_estimate(
        self,
        tensordict: TensorDictBase,
        target_params: TensorDictBase | None = None,
        next_value: Tensor | None = None,
        **kwargs,
    ) -> Tensor:
        """The single target ``[*B, 1]`` for one-target losses (TD3, SAC).

        Uses the batch's ``memory_return`` (``[*B, 2]``) when present: batches from
        an :class:`~torchrl_gem.EpisodicMemory`. Otherwise computes it along the
        batch's trajectories (see the class docstring for how they are found).
        ``next_value`` is ignored: the twin values come from this estimator's own
        target networks.
        """
        key = self.tensor_keys.memory_return
        returns = tensordict.get(key, None)
        if returns is None:
            returns = self.twin_returns(tensordict)
        else:
            check_memory_return(returns, tensordict.batch_size, key)
        return self.reduce_twins(returns)

    def reduce_twins(self, returns: Tensor) -> Tensor:
        """``[..., 2]`` twin returns -> ``[..., 1]`` single target."""
        if self.target_reduction == "min":
            return returns.min(-1, keepdim=True).values
        return returns.mean(-1, keepdim=True)

    def twin_returns(
        self,
        tensordict: TensorDictBase,
        *,
        cut: Tensor | None = None,
        return_horizon: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``[*B, T, 2]`` twin returns of the trajectories in ``tensordict``.

        Args:
            tensordict (TensorDictBase): transitions; the last batch dim is time.

        Keyword Args:
            cut (Tensor, optional): ``[*B, T, 1]`` bool, trajectory ends that the
                environment did not make (they bootstrap and never offer the zero
                tail). ``None`` finds them from trajectory ids and step counts.
            return_horizon (bool): also return the ``[*B, T, 2]`` horizons each
                column is evaluated on (``twin_backprop_return``'s).
        """
        if tensordict.ndim < 1:
            raise ValueError(
                "TwinBackPropEstimator needs a batch of trajectories [*B, T]; got a "
                "tensordict with no batch dimension."
            )
        keys = self.tensor_keys
        next_td = tensordict.get("next")
        for key in (keys.reward, keys.done, keys.terminated):
            if key not in next_td.keys(include_nested=True):
                raise KeyError(f"Missing ('next', {key!r}) in the trajectory batch.")
        reward = next_td.get(keys.reward)
        check_finite(str(("next", keys.reward)), reward)
        if cut is None:
            cut = self.trajectory_cuts(tensordict)
        return self.returns_from_values(
            self.next_state_value(next_td),
            reward,
            next_td.get(keys.done),
            next_td.get(keys.terminated),
            cut=cut,
            return_horizon=return_horizon,
        )

    def trajectory_cuts(self, tensordict: TensorDictBase) -> Tensor | None:
        """``[*B, T, 1]`` cuts after every step not followed by its successor.

        Found from the ``trajectory`` and ``step_count`` entries; ``None`` for a
        ``[*B, T]`` batch without them (rows are taken as consecutive steps).
        """
        keys = self.tensor_keys
        present = tensordict.keys(include_nested=True)
        if keys.trajectory not in present or keys.step_count not in present:
            if tensordict.ndim > 1:
                return None
            raise ValueError(
                "TwinBackPropEstimator cannot tell where the trajectories of a flat "
                f"batch start and end: it has no {keys.trajectory!r} and "
                f"{keys.step_count!r} entries. A uniformly sampled batch holds "
                "unrelated transitions; get GEM returns from an EpisodicMemory "
                "(memory.refresh(estimator), then sample: batches carry "
                "'memory_return'), or sample trajectory slices with a SliceSampler "
                "and a TwinBackPropTransform (add a StepCounter to the env); or pass "
                "a [B, T] batch of consecutive steps."
            )
        trajectory = tensordict.get(keys.trajectory).reshape(tensordict.batch_size)
        step = tensordict.get(keys.step_count).reshape(tensordict.batch_size)
        continues = (trajectory[..., 1:] == trajectory[..., :-1]) & (
            step[..., 1:] == step[..., :-1] + 1
        )
        cut = torch.ones_like(trajectory, dtype=torch.bool)
        cut[..., :-1] = ~continues
        return cut.unsqueeze(-1)

    def returns_from_values(
        self,
        next_value: Tensor,
        reward: Tensor,
        done: Tensor,
        terminated: Tensor,
        *,
        cut: Tensor | None = None,
        return_horizon: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Run the functional core with this estimator's options."""
        return twin_backprop_return(
            self.gamma,
            next_value,
            reward,
            done,
            terminated,
            cut=cut,
            max_horizon=self.max_horizon,
            zero_tail=self.zero_tail,
            floor=self.floor,
            cross_evaluation=self.cross_evaluation,
            return_horizon=return_horizon,
        )

    @torch.no_grad()
    def next_state_value(self, next_tensordict: TensorDictBase) -> Tensor:
        """``[*B, 2]`` bootstrap values ``V^k(s')`` for ``next_tensordict``.

        Network calls are flattened and chunked by ``value_chunk_size``.
        """
        flat = next_tensordict.reshape(-1)
        chunks = (
            [flat] if not self.value_chunk_size else flat.split(self.value_chunk_size)
        )
        first = next(iter(self.qvalue_params.values(True, True)))
        with autocast(self.precision, first.device):
            values = torch.cat([self._chunk_call(chunk) for chunk in chunks])
        values = values.to(first.dtype)  # the scan stays in the parameters' dtype
        if not torch.isfinite(values).all():  # diverged target networks
            bad = (~torch.isfinite(values)).nonzero()[0].tolist()
            raise ValueError(
                f"The target networks returned a non-finite bootstrap value "
                f"({values[tuple(bad)].item()}) for twin column {bad[1]} at next "
                f"state {bad[0]} of {len(values)} (flattened "
                f"{tuple(next_tensordict.batch_size)}): the critics have diverged."
            )
        return values.reshape(*next_tensordict.batch_size, 2)

    def _chunk_call(self, states: TensorDictBase) -> Tensor:
        if not self.compile:
            return self._chunk_value(states)
        if self._compiled_chunk_value is None:
            self._compiled_chunk_value = CompiledCall(
                self._chunk_value, name="TwinBackPropEstimator's target pass"
            )
        num_states, missing = len(states), self.value_chunk_size - len(states)
        if missing:  # one static shape: pad with copies of the first state
            states = torch.cat([states, states[:1].expand(missing)])
        return self._compiled_chunk_value(states)[:num_states]

    def _use_vmap(self) -> bool:
        if self.deactivate_vmap is None:
            first = next(iter(self.qvalue_params.values(True, True)))
            return first.device.type != "cpu"
        return not self.deactivate_vmap

    def _chunk_value(self, states: TensorDictBase) -> Tensor:
        keys = self.tensor_keys
        critic_input = states.select(
            *[k for k in self.qvalue_network.in_keys if k != keys.action], strict=True
        )
        if self.action_space == "continuous":
            with (
                set_exploration_type(ExplorationType.DETERMINISTIC),
                self.actor_params.to_module(
                    self.actor_network, preserve_module_state=False
                ),
            ):
                actor_out = self.actor_network(
                    states.select(*self.actor_network.in_keys, strict=True)
                )
            action = actor_out.get(keys.action)
            noise = torch.randn_like(action) * self.policy_noise
            action = action + noise.clamp(-self.noise_clip, self.noise_clip)
            if self.action_low is not None:
                # the loss's buffers when for_loss ran: a later loss.to(device)
                # leaves them where they were
                low, high = (
                    torch.as_tensor(bound, device=action.device)
                    for bound in (self.action_low, self.action_high)
                )
                action = action.clamp(low, high)
            critic_input.set(keys.action, action)
        values = call_ensemble(
            self.qvalue_network,
            self.qvalue_params,
            critic_input,
            vmap=self._use_vmap(),
        ).get(keys.value)  # [K, n, 1] or [K, n, num_actions]
        if self.single_estimator:
            groups = [tuple(range(values.shape[0]))] * 2
        else:
            groups = self.twin_groups
        columns = [values[list(group)].min(0).values for group in groups]
        if self.action_space == "discrete":
            columns = [column.max(-1, keepdim=True).values for column in columns]
        return torch.cat(columns, -1)


def check_memory_return(value: Tensor, batch_size, key: NestedKey) -> None:
    """A ``[*B, 2]`` floating, finite ``memory_return`` for a ``[*B]`` batch."""
    expected = (*batch_size, 2)
    if tuple(value.shape) != expected:
        raise ValueError(
            f"{key!r} must have shape {expected} (batch, twin columns) for a batch "
            f"of {tuple(batch_size)}, got {tuple(value.shape)}."
        )
    if not value.is_floating_point():
        raise ValueError(f"{key!r} must be floating point, got {value.dtype}.")
    check_finite(repr(key), value)


def check_twin_groups(twin_groups, num_critics: int) -> None:
    """Two non-empty groups of critic indices, each in ``range(num_critics)``."""
    if len(twin_groups) != 2 or not all(len(group) for group in twin_groups):
        raise ValueError(
            f"twin_groups must be two non-empty groups of critic indices, got "
            f"{twin_groups}."
        )
    for group in twin_groups:
        for index in group:
            if not 0 <= index < num_critics:
                raise ValueError(
                    f"twin_groups index {index} is out of range for {num_critics} "
                    "critics."
                )
