"""GEMLoss: TD3's actor and critic losses with critics regressed onto memory returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import NestedKey, TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule, dispatch
from torch import Tensor, nn
from torchrl.data import Bounded, Composite, TensorSpec
from torchrl.objectives import LossModule
from torchrl.objectives.value import ValueEstimatorBase

from torchrl_gem._ensemble import call_ensemble
from torchrl_gem.estimator import (
    GEMEstimators,
    TwinBackPropEstimator,
    check_memory_return,
    check_twin_groups,
    default_twin_groups,
)

__all__ = ["GEMLoss", "asymmetric_l2"]

_MISSING_RETURN = (
    "The batch has no {key!r} entry. GEMLoss regresses the critics onto twin "
    "enhanced returns: sample the batch from an EpisodicMemory refreshed with "
    "`memory.refresh(loss.value_estimator)`, or compute them on trajectory slices "
    "with `loss.value_estimator(batch)`."
)


def asymmetric_l2(prediction: Tensor, target: Tensor, asymmetry: float) -> Tensor:
    """Elementwise ``w * (target - prediction)^2``.

    The weight is ``1 / asymmetry`` where the prediction overestimates the target
    and ``asymmetry`` where it underestimates it (GEM's ``alpha``; ``0.5`` weighs
    overestimation 4 times more, the same as an expectile loss with ``tau = 0.2``).

    Examples:
        >>> import torch
        >>> from torchrl_gem import asymmetric_l2
        >>> # over by 1 weighs 1 / 0.5, under by 1 weighs 0.5
        >>> asymmetric_l2(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), 0.5)
        tensor([2.0000, 0.5000])
    """
    error = target - prediction
    weight = torch.where(error < 0, 1.0 / asymmetry, asymmetry)
    return weight * error.pow(2)


class GEMLoss(LossModule):
    """Generalizable Episodic Memory loss (Hu et al., ICML 2021, arXiv:2103.06469).

    TD3's two losses, with the critic target replaced by the twin enhanced returns
    ``memory_return`` (``[*B, 2]``) that an :class:`~torchrl_gem.EpisodicMemory`
    stores and refreshes with :attr:`value_estimator` (a
    :class:`~torchrl_gem.TwinBackPropEstimator` on this loss's target networks).
    The actor delay and the target-network update stay outside the loss, as in
    TorchRL: call :meth:`actor_loss` every other step and step a
    :class:`~torchrl.objectives.SoftUpdate`.

    Args:
        actor_network (TensorDictModule): deterministic actor.
        qvalue_network (TensorDictModule or list of them): critic template, or a list
            of independently initialised critics (keeps each one's initialisation).

    Keyword Args:
        action_spec (TensorSpec, optional): bounded action spec (exclusive with
            ``bounds``); the bounds clip the target actions.
        bounds (tuple of float, optional): ``(low, high)`` action bounds.
        num_qvalue_nets (int): number of critics ``K``. Defaults to ``4``; with a
            list of critics, its length.
        twin_groups (pair of index sequences, optional): the critics of each twin
            estimator. Defaults to consecutive halves (``((0, 1), (2, 3))``).
        target_assignment (str): ``"broadcast"`` (default, the released code): every
            critic regresses onto both twin columns; ``"paired"`` (the paper): the
            critics of group ``k`` regress onto column ``k``; ``"min"`` (a
            conservative variant, not the paper's): every critic regresses onto the
            smaller of the two columns.
        loss_function (str): ``"asymmetric_l2"`` (default) or ``"l2"``.
        asymmetry (float): GEM's ``alpha`` in ``(0, 1]`` for ``"asymmetric_l2"``:
            weight ``1 / alpha`` when a critic overestimates, ``alpha`` when it
            underestimates. Defaults to ``0.5``.
        actor_critics (str): the actor maximises the ``"mean"`` of all critics
            (default, the released code) or the ``"first"`` one (TD3).
        policy_noise (float): target smoothing noise std, used by the estimator.
        noise_clip (float): clip of the smoothing noise.
        delay_actor (bool): keep a target actor. Defaults to ``True``.
        delay_qvalue (bool): keep target critics. Defaults to ``True``.
        reduction (str, optional): ``"mean"`` (default), ``"sum"`` or ``"none"``.
        deactivate_vmap (bool): loop over critics instead of ``torch.vmap``.
        use_prioritized_weights (str or bool): apply ``priority_weight`` from a
            prioritized buffer (``"auto"``: when present).
        separate_losses (bool): with ``True``, parameters the critic shares with the
            actor (a common trunk) are trained by the actor loss only: the critics
            read them, detached, from the actor. With ``False`` (default) the critics
            get their own, resampled copy of them, trained by the critic loss. Needs
            a single critic template (a list of critics raises ``ValueError``).

    The critic loss is summed over critics (as TorchRL's TD3) and averaged over the
    twin columns in ``"broadcast"`` mode, so each critic's per-sample minimiser is
    ``0.8 min + 0.2 max`` of the twin targets at ``alpha = 0.5``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl_gem import GEMLoss, make_gem_actor, make_gem_critics
        >>> spec = Bounded(-1.0, 1.0, shape=(2,))
        >>> loss = GEMLoss(make_gem_actor(3, spec), make_gem_critics(3, 2),
        ...                action_spec=spec)
        >>> batch = TensorDict(observation=torch.randn(8, 3), action=torch.rand(8, 2),
        ...                    memory_return=torch.randn(8, 2), batch_size=[8])
        >>> out = loss(batch)
        >>> sorted(k for k in out.keys() if k.startswith("loss"))
        ['loss_actor', 'loss_qvalue']
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys read and written, renamed with :meth:`set_keys`.

        Attributes:
            action (NestedKey): the action. Defaults to ``"action"``.
            state_action_value (NestedKey): critic output.
            memory_return (NestedKey): twin enhanced returns ``[*B, 2]``, the targets.
            priority (NestedKey): where ``|target - Q|`` is written for prioritized
                replay. Defaults to ``"td_error"``.
            priority_weight (NestedKey): importance weights of prioritized replay.
            reward (NestedKey): reward under ``"next"`` (for the estimator).
            done (NestedKey): done flag under ``"next"`` (for the estimator).
            terminated (NestedKey): terminated flag under ``"next"``.
        """

        action: NestedKey = "action"
        state_action_value: NestedKey = "state_action_value"
        memory_return: NestedKey = "memory_return"
        priority: NestedKey = "td_error"
        priority_weight: NestedKey = "priority_weight"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = GEMEstimators.TBP
    out_keys = [
        "loss_actor",
        "loss_qvalue",
        "pred_value",
        "target_value",
        "state_action_value_actor",
    ]

    actor_network: TensorDictModule
    qvalue_network: TensorDictModule
    actor_network_params: TensorDictParams
    qvalue_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: TensorDictModule,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        *,
        action_spec: TensorSpec | None = None,
        bounds: tuple[float, float] | None = None,
        num_qvalue_nets: int = 4,
        twin_groups: Sequence[Sequence[int]] | None = None,
        target_assignment: Literal["broadcast", "paired", "min"] = "broadcast",
        loss_function: Literal["asymmetric_l2", "l2"] = "asymmetric_l2",
        asymmetry: float = 0.5,
        actor_critics: Literal["mean", "first"] = "mean",
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        delay_actor: bool = True,
        delay_qvalue: bool = True,
        reduction: str | None = None,
        deactivate_vmap: bool = False,
        use_prioritized_weights: str | bool = "auto",
        separate_losses: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(qvalue_network, (list, tuple)):
            if separate_losses:
                # convert_to_functional ignores compare_against for a list: the shared
                # parameters would stay trainable by the critic loss
                raise ValueError(
                    "separate_losses=True needs a single critic template, not a list "
                    "of critics: pass one qvalue_network and num_qvalue_nets."
                )
            num_qvalue_nets = len(qvalue_network)
        if twin_groups is None:
            twin_groups = default_twin_groups(num_qvalue_nets)
        check_twin_groups(twin_groups, num_qvalue_nets)
        self.twin_groups = tuple(tuple(int(i) for i in group) for group in twin_groups)
        _check_choice(
            "target_assignment", target_assignment, ("broadcast", "paired", "min")
        )
        _check_choice("loss_function", loss_function, ("asymmetric_l2", "l2"))
        _check_choice("actor_critics", actor_critics, ("mean", "first"))
        if loss_function == "asymmetric_l2" and not 0.0 < asymmetry <= 1.0:
            raise ValueError(f"asymmetry must lie in (0, 1], got {asymmetry}.")
        if target_assignment == "paired":
            self.register_buffer(
                "critic_column", _paired_columns(self.twin_groups, num_qvalue_nets)
            )
        self.num_qvalue_nets = num_qvalue_nets
        self.target_assignment = target_assignment
        self.loss_function = loss_function
        self.asymmetry = float(asymmetry)
        self.actor_critics = actor_critics
        self.policy_noise = float(policy_noise)
        self.noise_clip = float(noise_clip)
        self.delay_actor = delay_actor
        self.delay_qvalue = delay_qvalue
        self.deactivate_vmap = deactivate_vmap
        self.use_prioritized_weights = use_prioritized_weights
        self.reduction = "mean" if reduction is None else reduction
        self._in_keys = None

        self.convert_to_functional(
            actor_network, "actor_network", create_target_params=delay_actor
        )
        # with separate_losses, parameters shared with the actor enter the critic
        # params as detached expansions of the actor's: only the actor loss trains them
        shared = list(actor_network.parameters()) if separate_losses else None
        self.convert_to_functional(
            qvalue_network,
            "qvalue_network",
            num_qvalue_nets,
            create_target_params=delay_qvalue,
            compare_against=shared,
        )
        self._shared_with_actor = self._find_shared_params()
        if self._shared_with_actor:
            self.register_load_state_dict_pre_hook(_skip_shared_params)
        low, high = _action_bounds(action_spec, bounds, self.tensor_keys.action)
        device = next(iter(self.parameters())).device
        self.register_buffer("min_action", low.to(device))
        self.register_buffer("max_action", high.to(device))

    # ------------------------------------------------ separate_losses sharing
    def _find_shared_params(self) -> dict[tuple, tuple]:
        """Critic key -> actor key of the critic entries that view an actor param."""
        actor = {
            (value.data_ptr(), value.shape): key
            for key, value in self.actor_network_params.items(True, True)
        }
        return {
            key: actor[value.data_ptr(), value.shape[1:]]
            for key, value in self.qvalue_network_params.items(True, True)
            if not isinstance(value, nn.Parameter)
            and value.stride(0) == 0
            and (value.data_ptr(), value.shape[1:]) in actor
        }

    def _apply(self, fn, *args, **kwargs):
        # a cast or device move copies the critic's views of the actor's params
        # into private, untrained buffers: point them at the moved actor params
        out = super()._apply(fn, *args, **kwargs)
        for critic_key, actor_key in self._shared_with_actor.items():
            actor_param = self.actor_network_params.get(actor_key)
            self.qvalue_network_params.get(critic_key).data = actor_param.data.expand(
                self.num_qvalue_nets, *actor_param.shape
            )
        return out

    # ----------------------------------------------------------------- keys
    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(
                action=self.tensor_keys.action,
                value=self.tensor_keys.state_action_value,
                memory_return=self.tensor_keys.memory_return,
                reward=self.tensor_keys.reward,
                done=self.tensor_keys.done,
                terminated=self.tensor_keys.terminated,
            )
        self._set_in_keys()

    def _set_in_keys(self) -> None:
        keys = [
            self.tensor_keys.action,
            self.tensor_keys.memory_return,
            *self.actor_network.in_keys,
            *self.qvalue_network.in_keys,
        ]
        self._in_keys = list(dict.fromkeys(keys))

    @property
    def in_keys(self) -> list[NestedKey]:
        if self._in_keys is None:
            self._set_in_keys()
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values) -> None:
        self._in_keys = values

    # --------------------------------------------------------------- losses
    def _critic_values(
        self, tensordict: TensorDictBase, params: TensorDictBase
    ) -> Tensor:
        """``[K, *B]`` values of all critics under ``params``."""
        critic_input = tensordict.select(*self.qvalue_network.in_keys, strict=True)
        values = call_ensemble(
            self.qvalue_network, params, critic_input, vmap=not self.deactivate_vmap
        ).get(self.tensor_keys.state_action_value)
        return values.squeeze(-1)

    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """``-Q(s, pi(s))``, critics frozen: the mean of all critics or the first."""
        weights = self._maybe_get_priority_weight(tensordict)
        actor_input = tensordict.select(*self.actor_network.in_keys, strict=True)
        with self.actor_network_params.to_module(
            self.actor_network, preserve_module_state=False
        ):
            actor_output = self.actor_network(actor_input)
        critic_input = tensordict.select(*self.qvalue_network.in_keys, strict=True)
        critic_input.set(
            self.tensor_keys.action, actor_output.get(self.tensor_keys.action)
        )
        values = self._critic_values(critic_input, self.qvalue_network_params.detach())
        chosen = values.mean(0) if self.actor_critics == "mean" else values[0]
        loss = self._reduce_loss(-chosen, tensordict=tensordict, weights=weights)
        return loss, {"state_action_value_actor": values.detach()}

    def value_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """Regress every critic onto its twin memory returns.

        Returns the reduced loss and detached ``pred_value`` ``[K, *B]``,
        ``target_value`` ``[*B, 2]`` and ``td_error`` ``[*B]`` (the largest
        ``|target - Q|`` over critics, for prioritized replay).
        """
        weights = self._maybe_get_priority_weight(tensordict)
        key = self.tensor_keys.memory_return
        target = tensordict.get(key, None)
        if target is None:
            raise KeyError(_MISSING_RETURN.format(key=key))
        check_memory_return(target, tensordict.batch_size, key)
        target = target.detach()
        prediction = self._critic_values(tensordict, self.qvalue_network_params)
        twin_targets = target.movedim(-1, 0)  # [2, *B]
        if self.target_assignment == "broadcast":
            # [K, 2, *B]: every critic against both columns, averaged over columns
            elementwise = self._distance(prediction.unsqueeze(1), twin_targets)
            per_critic = elementwise.mean(1)
            assigned = twin_targets.mean(0).expand_as(prediction)
        elif self.target_assignment == "min":
            assigned = twin_targets.min(0).values.expand_as(prediction)
            per_critic = self._distance(prediction, assigned)
        else:
            assigned = twin_targets[self.critic_column]  # [K, *B]
            per_critic = self._distance(prediction, assigned)
        loss = self._reduce_loss(
            per_critic.sum(0), tensordict=tensordict, weights=weights
        )
        metadata = {
            "td_error": (assigned - prediction).detach().abs().max(0).values,
            "pred_value": prediction.detach(),
            "target_value": target,
        }
        return loss, metadata

    def _distance(self, prediction: Tensor, target: Tensor) -> Tensor:
        if self.loss_function == "asymmetric_l2":
            return asymmetric_l2(prediction, target, self.asymmetry)
        return (target - prediction).pow(2)

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Both losses on one batch; writes the priority into ``tensordict``."""
        loss_actor, metadata_actor = self.actor_loss(tensordict)
        loss_qvalue, metadata_value = self.value_loss(tensordict)
        tensordict.set(self.tensor_keys.priority, metadata_value.pop("td_error"))
        return TensorDict(
            loss_actor=loss_actor,
            loss_qvalue=loss_qvalue,
            **metadata_actor,
            **metadata_value,
        )

    # ------------------------------------------------------ value estimator
    def make_value_estimator(self, value_type=None, **hyperparams) -> GEMLoss:
        """Build the twin back-propagation estimator on this loss's target networks.

        Args:
            value_type: ``None`` or ``GEMEstimators.TBP`` (or ``"tbp"``) builds a
                :class:`~torchrl_gem.TwinBackPropEstimator` with ``hyperparams``
                (``gamma`` defaults to ``0.99``); an estimator instance is used as is.
            **hyperparams: keyword arguments of the estimator.

        Afterwards :attr:`value_type` is ``GEMEstimators.TBP`` (as TorchRL's losses
        hold a ``ValueEstimators`` member), or the class of a foreign estimator
        instance.
        """
        if isinstance(value_type, ValueEstimatorBase):
            self._value_estimator = value_type
            # a foreign estimator has no registry member: keep its type (LossModule's
            # convention for instances)
            if not isinstance(value_type, TwinBackPropEstimator):
                self.value_type = type(value_type)
                return self
        elif value_type in (None, GEMEstimators.TBP, TwinBackPropEstimator) or (
            isinstance(value_type, str)
            and value_type.lower() in ("tbp", "twin_backprop")
        ):
            hyperparams.setdefault("gamma", 0.99)
            self._value_estimator = TwinBackPropEstimator.for_loss(self, **hyperparams)
        else:
            raise NotImplementedError(
                f"GEMLoss supports the twin back-propagation estimator only, got "
                f"value_type={value_type!r}."
            )
        self.value_type = GEMEstimators.TBP
        return self


def _skip_shared_params(module: GEMLoss, state_dict, prefix, *args) -> None:
    """Drop the critic's views of actor params: the actor's own entries load them.

    (Copying into the stride-0 view would fail.)
    """
    for key in module._shared_with_actor:
        state_dict.pop(f"{prefix}qvalue_network_params.{'.'.join(key)}", None)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


def _paired_columns(twin_groups, num_critics: int) -> Tensor:
    """Twin column of each critic for ``target_assignment="paired"``."""
    column = [-1] * num_critics
    for index, group in enumerate(twin_groups):
        for critic in group:
            if column[critic] != -1:
                raise ValueError(
                    f"target_assignment='paired' needs disjoint twin_groups; critic "
                    f"{critic} is in both of {twin_groups}."
                )
            column[critic] = index
    if -1 in column:
        raise ValueError(
            "target_assignment='paired' needs every critic in a twin group; critic "
            f"{column.index(-1)} is in none of {twin_groups}."
        )
    return torch.tensor(column)


def _action_bounds(action_spec, bounds, action_key) -> tuple[Tensor, Tensor]:
    if (action_spec is None) == (bounds is None):
        raise ValueError(
            "Pass exactly one of action_spec and bounds, got "
            f"action_spec={action_spec} and bounds={bounds}."
        )
    if action_spec is not None:
        if isinstance(action_spec, Composite):
            action_spec = action_spec[action_key]
        if not isinstance(action_spec, Bounded):
            raise ValueError(
                f"action_spec must be Bounded, got {type(action_spec).__name__}."
            )
        low, high = action_spec.space.low, action_spec.space.high
    else:
        low, high = (torch.as_tensor(bound, dtype=torch.float32) for bound in bounds)
    if (low > high).any():
        raise ValueError("An action's low bound is above its high bound.")
    return low, high
