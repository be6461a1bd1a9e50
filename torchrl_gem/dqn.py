"""GEM on discrete actions (the Atari variant): sub and meta Q-networks.

GEM's Atari agent (``gem-algorithm.md`` s4) keeps six Q-networks:

- ``K = 4`` *sub* networks ``Q_k``, each trained by one-step DQN against its own
  target copy: ``y_k = r + gamma (1 - terminated) max_a Q'_k(s', a)``, Huber loss;
- two *meta* networks ``P_c`` (the "generalizable memory"), each regressed onto twin
  column ``c`` of the episodic memory's ``memory_return`` at the taken action;
- the memory's bootstrap values come from the *target* sub networks:
  ``V^k(s) = max_a min_{i in group k} Q'_i(s, a)``, groups ``(0, 1)`` and ``(2, 3)``;
- the agent acts epsilon-greedily on the mean of the two meta networks.

:class:`GEMDQNLoss` holds the six networks and both losses,
:func:`make_nature_cnn_qnet` builds the Nature-DQN torso used for each of them, and
:func:`make_gem_dqn_policy` the greedy policy on the meta networks (wrap it in
TorchRL's :class:`~torchrl.modules.EGreedyModule` to explore).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from tensordict import NestedKey, TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import (
    TensorDictModule,
    TensorDictModuleBase,
    TensorDictSequential,
    dispatch,
)
from torch import Tensor, nn
from torchrl.data import Categorical, Composite, OneHot, TensorSpec
from torchrl.modules import QValueModule
from torchrl.objectives import LossModule
from torchrl.objectives.utils import distance_loss
from torchrl.objectives.value import ValueEstimatorBase

from torchrl_gem._ensemble import call_ensemble
from torchrl_gem.estimator import (
    GEMEstimators,
    TwinBackPropEstimator,
    check_memory_return,
    check_twin_groups,
    default_twin_groups,
)
from torchrl_gem.loss import _check_choice

__all__ = [
    "GEMDQNLoss",
    "NatureQNet",
    "make_gem_dqn_policy",
    "make_nature_cnn_qnet",
    "released_huber",
]

ActionSpace = Literal["one_hot", "categorical"]

_MISSING_RETURN = (
    "The batch has no {key!r} entry. GEMDQNLoss regresses the meta networks onto "
    "twin enhanced returns: sample the batch from an EpisodicMemory refreshed with "
    "`memory.refresh(loss.value_estimator)` (the estimator runs on the target sub "
    "networks), or compute them on trajectory slices with "
    "`loss.value_estimator(batch)`."
)

# the released Atari code multiplies its meta loss by this before minimising it
_RELEASED_META_WEIGHT = 10.0


def released_huber(prediction: Tensor, target: Tensor) -> Tensor:
    """The released Atari code's "Huber" of the meta networks, elementwise.

    ``u^2`` where ``|u| <= 1`` and ``0.5 + |u|`` beyond, with ``u = prediction -
    target``: unlike the standard Huber (``0.5 u^2``, then ``|u| - 0.5``) it has no
    ``1/2`` on the square, and its value (1 to 1.5) and slope (2 to 1) jump at
    ``|u| = 1`` (``gem-algorithm.md`` s7.2).

    Examples:
        >>> import torch
        >>> from torchrl_gem import released_huber
        >>> released_huber(torch.tensor([0.5, 1.0, 3.0]), torch.zeros(3))
        tensor([0.2500, 1.0000, 3.5000])
    """
    error = (prediction - target).abs()
    return torch.where(error > 1.0, 0.5 + error, error.pow(2))


class GEMDQNLoss(LossModule):
    """GEM's discrete-action loss: DQN sub networks and memory-trained meta networks.

    The Atari agent of Hu et al. (ICML 2021, arXiv:2103.06469), as the released code
    defines it (``gem-algorithm.md`` s4):

    - ``loss_sub``: each of the ``num_sub_nets`` sub networks ``Q_k`` learns by
      one-step DQN from its own target copy ``Q'_k``:
      ``y_k = r + gamma (1 - terminated) max_a Q'_k(s', a)``. The elementwise loss
      (Huber with ``delta = 1`` by default) is summed over the sub networks, then
      reduced over the batch with ``reduction``.
    - ``loss_meta``: meta network ``P_c`` (``c = 0, 1``) regresses ``P_c(s, a)`` onto
      column ``c`` of ``memory_return`` (paired, as the released Atari code does),
      summed over the two meta networks, then reduced over the batch.

    The twin returns come from :attr:`value_estimator`, a
    :class:`~torchrl_gem.TwinBackPropEstimator` in discrete mode on the *target*
    sub networks: ``V^k(s) = max_a min_{i in twin_groups[k]} Q'_i(s, a)``; refresh an
    :class:`~torchrl_gem.EpisodicMemory` with it and sample batches from the memory.
    The meta networks have no target copy. The target sub networks move with
    TorchRL's :class:`~torchrl.objectives.HardUpdate` (the released code copies them
    every 8,000 gradient steps, then refreshes the memory) or
    :class:`~torchrl.objectives.SoftUpdate`. ``gamma`` is the estimator's
    (``loss.make_value_estimator(gamma=0.99)``); both losses use it.

    The released code sums both losses over the batch and multiplies the meta loss by
    10. Here the batch is reduced with ``reduction`` (``"mean"`` by default, as
    TorchRL's losses do); ``reduction="sum"`` with
    ``meta_loss_function="released_huber"`` gives the released losses exactly.

    Args:
        sub_qvalue_network (TensorDictModule or list of them): Q-network writing
            ``action_value`` (``[*B, num_actions]``): a template, copied
            ``num_sub_nets`` times (TorchRL resamples each copy's parameters uniformly
            between the template's min and max, which for Xavier-uniform weights and
            zero biases is the same initial distribution), or a list of independently
            initialised networks.
        meta_qvalue_network (TensorDictModule or list of 2): likewise, for the two
            meta networks. Their parameters are stacked (a list) or resampled (a
            template) into tensors of their own, never shared with the sub networks.

    Keyword Args:
        num_sub_nets (int): number of sub networks. Defaults to ``4``; with a list,
            its length.
        twin_groups (pair of index sequences, optional): the sub networks of each twin
            estimator. Defaults to consecutive halves (``((0, 1), (2, 3))``).
        action_space (str or TensorSpec): ``"one_hot"`` (default, TorchRL's DQN
            convention: ``action`` is one-hot, ``[*B, num_actions]``) or
            ``"categorical"`` (``action`` is an index, ``[*B]`` or ``[*B, 1]``); a
            ``OneHot`` or ``Categorical`` spec (or a ``Composite`` holding the action)
            picks the matching one.
        loss_function (str): elementwise loss of the sub networks: ``"smooth_l1"``
            (default, Huber with ``delta = 1``, as released), ``"l2"`` or ``"l1"``.
        meta_loss_function (str): ``"huber"`` (default, the standard Huber with
            ``delta = 1``) or ``"released_huber"`` (:func:`released_huber`, the
            released code's non-standard one).
        underestimation_weight (float): the released code's ``alpha`` for the meta
            loss: weight ``1`` where a meta network's prediction is above its target
            and ``alpha`` where it is below. Defaults to ``1.0`` (symmetric, as
            released). Note that :class:`~torchrl_gem.GEMLoss`'s ``asymmetry`` is a
            different rule (``1/alpha`` above, ``alpha`` below).
        meta_loss_weight (float, optional): factor on ``loss_meta``. ``None``
            (default) means ``10`` with ``"released_huber"`` (the released code's
            factor) and ``1`` with ``"huber"``.
        delay_value (bool): keep target sub networks. Defaults to ``True``; with
            ``False`` the targets are the online sub networks, detached.
        reduction (str, optional): ``"mean"`` (default), ``"sum"`` or ``"none"``.
        deactivate_vmap (bool): loop over networks instead of ``torch.vmap``.
        use_prioritized_weights (str or bool): apply ``priority_weight`` from a
            prioritized buffer (``"auto"``: when present).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl_gem import GEMDQNLoss
        >>> def qnet():
        ...     return TensorDictModule(torch.nn.Linear(3, 2), ["observation"],
        ...                             ["action_value"])
        >>> loss = GEMDQNLoss(qnet(), qnet())
        >>> _ = loss.make_value_estimator(gamma=0.99)
        >>> batch = TensorDict(
        ...     observation=torch.randn(8, 3),
        ...     action=torch.nn.functional.one_hot(torch.randint(2, (8,)), 2),
        ...     memory_return=torch.randn(8, 2),
        ...     next=TensorDict(observation=torch.randn(8, 3),
        ...                     reward=torch.randn(8, 1),
        ...                     done=torch.zeros(8, 1, dtype=torch.bool),
        ...                     terminated=torch.zeros(8, 1, dtype=torch.bool)),
        ...     batch_size=[8])
        >>> out = loss(batch)
        >>> out["loss_sub"].shape, out["sub_pred_value"].shape
        (torch.Size([]), torch.Size([4, 8]))
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys read and written, renamed with :meth:`set_keys`.

        Attributes:
            action (NestedKey): the taken action (one-hot or index). Defaults to
                ``"action"``.
            action_value (NestedKey): Q-network output, ``[*B, num_actions]``.
                Defaults to ``"action_value"``.
            memory_return (NestedKey): twin enhanced returns ``[*B, 2]``, the meta
                targets.
            priority (NestedKey): where ``|target - P(s, a)|`` (largest over the meta
                networks) is written for prioritized replay. Defaults to
                ``"td_error"``.
            priority_weight (NestedKey): importance weights of prioritized replay.
            reward (NestedKey): reward under ``"next"``.
            done (NestedKey): done flag under ``"next"`` (for the estimator).
            terminated (NestedKey): terminated flag under ``"next"``.
        """

        action: NestedKey = "action"
        action_value: NestedKey = "action_value"
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
        "loss_sub",
        "loss_meta",
        "pred_value",
        "target_value",
        "sub_pred_value",
        "sub_target_value",
    ]

    sub_qvalue_network: TensorDictModule
    sub_qvalue_network_params: TensorDictParams
    target_sub_qvalue_network_params: TensorDictParams
    meta_qvalue_network: TensorDictModule
    meta_qvalue_network_params: TensorDictParams
    target_meta_qvalue_network_params: TensorDictParams

    num_meta_nets = 2

    def __init__(
        self,
        sub_qvalue_network: TensorDictModule | list[TensorDictModule],
        meta_qvalue_network: TensorDictModule | list[TensorDictModule],
        *,
        num_sub_nets: int = 4,
        twin_groups: Sequence[Sequence[int]] | None = None,
        action_space: ActionSpace | TensorSpec = "one_hot",
        loss_function: Literal["smooth_l1", "l2", "l1"] = "smooth_l1",
        meta_loss_function: Literal["huber", "released_huber"] = "huber",
        underestimation_weight: float = 1.0,
        meta_loss_weight: float | None = None,
        delay_value: bool = True,
        reduction: str | None = None,
        deactivate_vmap: bool = False,
        use_prioritized_weights: str | bool = "auto",
    ) -> None:
        super().__init__()
        if isinstance(sub_qvalue_network, (list, tuple)):
            num_sub_nets = len(sub_qvalue_network)
        if isinstance(meta_qvalue_network, (list, tuple)) and (
            len(meta_qvalue_network) != self.num_meta_nets
        ):
            raise ValueError(
                "GEMDQNLoss has one meta network per twin column: pass a template or "
                f"a list of 2, got a list of {len(meta_qvalue_network)}."
            )
        if twin_groups is None:
            twin_groups = default_twin_groups(num_sub_nets)
        check_twin_groups(twin_groups, num_sub_nets)
        _check_choice("loss_function", loss_function, ("smooth_l1", "l2", "l1"))
        _check_choice(
            "meta_loss_function", meta_loss_function, ("huber", "released_huber")
        )
        if underestimation_weight <= 0:
            raise ValueError(
                "underestimation_weight must be positive, got "
                f"{underestimation_weight}."
            )
        if meta_loss_weight is None:
            meta_loss_weight = (
                _RELEASED_META_WEIGHT if meta_loss_function == "released_huber" else 1.0
            )
        self.twin_groups = tuple(tuple(int(i) for i in group) for group in twin_groups)
        self.num_sub_nets = num_sub_nets
        self.action_space = _action_space(action_space)
        self.loss_function = loss_function
        self.meta_loss_function = meta_loss_function
        self.underestimation_weight = float(underestimation_weight)
        self.meta_loss_weight = float(meta_loss_weight)
        self.delay_value = delay_value
        self.deactivate_vmap = deactivate_vmap
        self.use_prioritized_weights = use_prioritized_weights
        self.reduction = "mean" if reduction is None else reduction
        self._in_keys = None

        self.convert_to_functional(
            sub_qvalue_network,
            "sub_qvalue_network",
            num_sub_nets,
            create_target_params=delay_value,
        )
        self.convert_to_functional(
            meta_qvalue_network,
            "meta_qvalue_network",
            self.num_meta_nets,
            create_target_params=False,
        )

    # ----------------------------------------------------------------- keys
    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(
                action=self.tensor_keys.action,
                value=self.tensor_keys.action_value,
                memory_return=self.tensor_keys.memory_return,
                reward=self.tensor_keys.reward,
                done=self.tensor_keys.done,
                terminated=self.tensor_keys.terminated,
            )
        self._set_in_keys()

    def _set_in_keys(self) -> None:
        keys = self.tensor_keys
        sub_keys = list(self.sub_qvalue_network.in_keys)
        keys = [
            keys.action,
            keys.memory_return,
            *sub_keys,
            *self.meta_qvalue_network.in_keys,
            *(("next", key) for key in sub_keys),
            ("next", keys.reward),
            ("next", keys.done),
            ("next", keys.terminated),
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
    def _action_values(
        self, module: TensorDictModule, params: TensorDictBase, td: TensorDictBase
    ) -> Tensor:
        """``[N, *B, num_actions]`` values of the ``N`` networks under ``params``."""
        network_input = td.select(*module.in_keys, strict=True)
        return call_ensemble(
            module, params, network_input, vmap=not self.deactivate_vmap
        ).get(self.tensor_keys.action_value)

    def _chosen(self, action_values: Tensor, action: Tensor) -> Tensor:
        """``[N, *B, A]`` values and the batch's actions -> ``[N, *B]``."""
        batch = action_values.shape[1:-1]
        if self.action_space == "one_hot":
            if action.shape != action_values.shape[1:]:  # nothing broadcast
                raise ValueError(
                    f"action_space='one_hot' needs {self.tensor_keys.action!r} of "
                    f"shape {(*batch, action_values.shape[-1])}, got "
                    f"{tuple(action.shape)}; pass action_space='categorical' for "
                    "action indices."
                )
            return (action_values * action.to(action_values.dtype)).sum(-1)
        if action.shape not in (batch, (*batch, 1)):
            raise ValueError(
                f"action_space='categorical' needs {self.tensor_keys.action!r} of "
                f"shape {tuple(batch)} or {(*batch, 1)} (action indices), got "
                f"{tuple(action.shape)}; pass action_space='one_hot' for one-hot "
                "actions."
            )
        index = action.reshape(*batch, 1).long()
        index = index.expand(action_values.shape[0], *batch, 1)
        return action_values.gather(-1, index).squeeze(-1)

    def sub_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """One-step DQN of every sub network, each from its own target copy.

        Returns the reduced loss (summed over sub networks) and detached
        ``sub_pred_value`` and ``sub_target_value``, both ``[K, *B]``.
        """
        weights = self._maybe_get_priority_weight(tensordict)
        keys = self.tensor_keys
        batch = tensordict.batch_size
        next_td = tensordict.get("next")
        with torch.no_grad():
            next_values = self._action_values(
                self.sub_qvalue_network,
                self.target_sub_qvalue_network_params,
                next_td,
            )  # [K, *B, A]
            reward = next_td.get(keys.reward).reshape(batch)
            not_terminated = (~next_td.get(keys.terminated).reshape(batch)).to(
                reward.dtype
            )
            target = (
                reward + self._gamma() * not_terminated * next_values.max(-1).values
            )
        values = self._action_values(
            self.sub_qvalue_network, self.sub_qvalue_network_params, tensordict
        )
        prediction = self._chosen(values, tensordict.get(keys.action))  # [K, *B]
        elementwise = distance_loss(prediction, target, self.loss_function)
        loss = self._reduce_loss(
            elementwise.sum(0), tensordict=tensordict, weights=weights
        )
        return loss, {
            "sub_pred_value": prediction.detach(),
            "sub_target_value": target,
        }

    def meta_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """Regress meta network ``c`` onto column ``c`` of ``memory_return``.

        Returns the reduced loss (summed over the two meta networks, times
        ``meta_loss_weight``) and detached ``pred_value`` (``[2, *B]``),
        ``target_value`` (``[*B, 2]``) and ``td_error`` (``[*B]``, the largest
        ``|target - P_c(s, a)|``).
        """
        weights = self._maybe_get_priority_weight(tensordict)
        keys = self.tensor_keys
        target = tensordict.get(keys.memory_return, None)
        if target is None:
            raise KeyError(_MISSING_RETURN.format(key=keys.memory_return))
        check_memory_return(target, tensordict.batch_size, keys.memory_return)
        target = target.detach()
        values = self._action_values(
            self.meta_qvalue_network, self.meta_qvalue_network_params, tensordict
        )
        prediction = self._chosen(values, tensordict.get(keys.action))  # [2, *B]
        paired = target.movedim(-1, 0)  # [2, *B]: column c for meta network c
        if self.meta_loss_function == "huber":
            elementwise = F.smooth_l1_loss(prediction, paired, reduction="none")
        else:
            elementwise = released_huber(prediction, paired)
        if self.underestimation_weight != 1.0:
            elementwise = torch.where(
                prediction > paired,
                elementwise,
                self.underestimation_weight * elementwise,
            )
        loss = self._reduce_loss(
            self.meta_loss_weight * elementwise.sum(0),
            tensordict=tensordict,
            weights=weights,
        )
        return loss, {
            "td_error": (paired - prediction).detach().abs().max(0).values,
            "pred_value": prediction.detach(),
            "target_value": target,
        }

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Both losses on one batch; writes the priority into ``tensordict``."""
        loss_sub, metadata_sub = self.sub_loss(tensordict)
        loss_meta, metadata_meta = self.meta_loss(tensordict)
        tensordict.set(self.tensor_keys.priority, metadata_meta.pop("td_error"))
        return TensorDict(
            loss_sub=loss_sub, loss_meta=loss_meta, **metadata_meta, **metadata_sub
        )

    def _gamma(self) -> float:
        return self.value_estimator.gamma

    # ------------------------------------------------------ value estimator
    def make_value_estimator(self, value_type=None, **hyperparams) -> GEMDQNLoss:
        """Build the twin back-propagation estimator on the target sub networks.

        It runs in discrete mode (``V^k = max_a`` of the group ``min``) with this
        loss's ``twin_groups``, and the released Atari code's return rule
        (``gem-algorithm.md`` s4): unbounded horizon (``max_horizon=None``), column
        ``c`` floored by its own estimator's one-step target (``floor="own"``), and
        no zero-tail candidate (``zero_tail=False``: the released code treats the
        27k-step cap as a termination, where the zero tail equals the last
        bootstrapped candidate). One difference remains at that cap: TorchRL marks
        it ``truncated``, so the returns (and the sub networks' DQN targets)
        bootstrap there where the released code counts 0.

        Args:
            value_type: ``None`` or ``GEMEstimators.TBP`` (or ``"tbp"``) builds a
                :class:`~torchrl_gem.TwinBackPropEstimator` with ``hyperparams``
                (``gamma`` defaults to ``0.99``; any other option overrides the
                above); a discrete-mode ``TwinBackPropEstimator`` instance is used
                as is.
            **hyperparams: keyword arguments of the estimator.

        ``gamma`` of the estimator is also the discount of the sub networks' DQN
        targets.
        """
        if isinstance(value_type, ValueEstimatorBase):
            if not (
                isinstance(value_type, TwinBackPropEstimator)
                and value_type.action_space == "discrete"
            ):
                raise ValueError(
                    "GEMDQNLoss needs a TwinBackPropEstimator with "
                    f"action_space='discrete', got {value_type!r}."
                )
            self._value_estimator = value_type
        elif value_type in (None, GEMEstimators.TBP, TwinBackPropEstimator) or (
            isinstance(value_type, str)
            and value_type.lower() in ("tbp", "twin_backprop")
        ):
            options = {
                "gamma": 0.99,
                "qvalue_network": self.sub_qvalue_network,
                "qvalue_params": self.target_sub_qvalue_network_params,
                "twin_groups": self.twin_groups,
                "action_space": "discrete",
                "max_horizon": None,
                "zero_tail": False,
                "floor": "own",
            }
            options.update(hyperparams)
            self._value_estimator = TwinBackPropEstimator(**options)
        else:
            raise NotImplementedError(
                f"GEMDQNLoss supports the twin back-propagation estimator only, got "
                f"value_type={value_type!r}."
            )
        self.value_type = GEMEstimators.TBP
        self._forward_value_estimator_keys()
        return self


def _action_space(action_space, action_key: NestedKey = "action") -> ActionSpace:
    """``"one_hot"`` or ``"categorical"`` from a name or a discrete action spec."""
    if isinstance(action_space, Composite):
        action_space = action_space[action_key]
    if isinstance(action_space, OneHot):
        return "one_hot"
    if isinstance(action_space, Categorical):
        return "categorical"
    names = {"one_hot": "one_hot", "one-hot": "one_hot", "categorical": "categorical"}
    if isinstance(action_space, str) and action_space in names:
        return names[action_space]
    raise ValueError(
        "action_space must be 'one_hot', 'categorical', or a OneHot or Categorical "
        f"spec, got {action_space!r}."
    )


# ------------------------------------------------------------------ policy
class _MeanMetaValue(TensorDictModuleBase):
    """Mean action values of a :class:`GEMDQNLoss`'s meta networks, live."""

    def __init__(self, loss: GEMDQNLoss) -> None:
        super().__init__()
        self.__dict__["network"] = loss.meta_qvalue_network
        # registered (not copied): the policy reads the weights the optimiser moves,
        # and a collector that syncs weights finds them in the state dict
        self.params = loss.meta_qvalue_network_params
        self.vmap = not loss.deactivate_vmap
        self.value_key = loss.tensor_keys.action_value
        self.in_keys = list(loss.meta_qvalue_network.in_keys)
        self.out_keys = [self.value_key]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        network_input = tensordict.select(*self.in_keys, strict=True)
        values = call_ensemble(self.network, self.params, network_input, vmap=self.vmap)
        tensordict.set(self.value_key, values.get(self.value_key).mean(0))
        return tensordict


def make_gem_dqn_policy(
    loss: GEMDQNLoss, *, spec: TensorSpec | None = None
) -> TensorDictSequential:
    """The greedy policy of GEM's Atari agent: argmax of the meta networks' mean.

    It reads the loss's meta parameters (not a copy), writes their mean as
    ``action_value`` and, through TorchRL's :class:`~torchrl.modules.QValueModule`,
    ``action`` (one-hot or an index, following ``loss.action_space``) and
    ``chosen_action_value``. Wrap it for exploration, as the released code acts
    (``gem-algorithm.md`` s4: epsilon 1 to 0.1 over 1M steps, 0.05 at test):
    ``TensorDictSequential(policy, EGreedyModule(spec, eps_init=1.0, eps_end=0.1,
    annealing_num_steps=1_000_000))``.

    Args:
        loss (GEMDQNLoss): the loss whose meta networks act.

    Keyword Args:
        spec (TensorSpec, optional): the action spec, passed to ``QValueModule``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl_gem import GEMDQNLoss, make_gem_dqn_policy
        >>> def qnet():
        ...     return TensorDictModule(torch.nn.Linear(3, 5), ["observation"],
        ...                             ["action_value"])
        >>> policy = make_gem_dqn_policy(GEMDQNLoss(qnet(), qnet()))
        >>> out = policy(TensorDict(observation=torch.randn(2, 3), batch_size=[2]))
        >>> out["action"].shape, out["action"].sum(-1).tolist()
        (torch.Size([2, 5]), [1, 1])
    """
    return TensorDictSequential(
        _MeanMetaValue(loss),
        QValueModule(
            action_space=loss.action_space,
            action_value_key=loss.tensor_keys.action_value,
            out_keys=[
                loss.tensor_keys.action,
                loss.tensor_keys.action_value,
                "chosen_action_value",
            ],
            spec=spec,
        ),
    )


# ---------------------------------------------------------------- networks
def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF's ``'same'`` padding of one spatial dim: output ``ceil(size / stride)``,
    the odd pixel (if any) at the end."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class NatureQNet(nn.Module):
    """The Nature-DQN Q-network with TF ``'same'`` padding, as GEM's Atari code.

    Conv 32x8x8 stride 4, 64x4x4 stride 2, 64x3x3 stride 1 (each ReLU, each padded
    so the output is ``ceil(input / stride)``: 84 -> 21 -> 11 -> 11), flatten,
    Linear 512 + ReLU, Linear ``num_actions``. Xavier-uniform weights and zero
    biases (``gem-algorithm.md`` s4). Inputs are ``[*, frames, H, W]`` (channels
    first, as TorchRL's ``CatFrames`` stacks them), cast to float and multiplied by
    ``pixel_scale``.

    Args:
        num_actions (int): number of discrete actions.

    Keyword Args:
        frames (int): stacked frames (input channels). Defaults to ``4``.
        height (int): input height. Defaults to ``84``.
        width (int): input width. Defaults to ``84``.
        pixel_scale (float): factor applied to the input after the float cast;
            ``1/255`` (default) for ``uint8`` frames, ``1.0`` for frames already in
            ``[0, 1]``.

    Examples:
        >>> import torch
        >>> from torchrl_gem import NatureQNet
        >>> net = NatureQNet(9)
        >>> frames = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
        >>> net(frames).shape  # one value per action
        torch.Size([2, 9])
    """

    convs = ((32, 8, 4), (64, 4, 2), (64, 3, 1))  # (channels, kernel, stride)

    def __init__(
        self,
        num_actions: int,
        *,
        frames: int = 4,
        height: int = 84,
        width: int = 84,
        pixel_scale: float = 1.0 / 255.0,
    ) -> None:
        super().__init__()
        self.pixel_scale = float(pixel_scale)
        self.input_shape = (frames, height, width)
        layers, channels, self.odd_pads = [], frames, []
        for out_channels, kernel, stride in self.convs:
            top, bottom = _same_padding(height, kernel, stride)
            left, right = _same_padding(width, kernel, stride)
            # the even part of the padding inside the convolution (no copy); the
            # odd pixel, if any, padded at the end beforehand (TF puts it there)
            layers.append(
                nn.Conv2d(channels, out_channels, kernel, stride, padding=(top, left))
            )
            self.odd_pads.append((0, right - left, 0, bottom - top))
            channels = out_channels
            height, width = math.ceil(height / stride), math.ceil(width / stride)
        self.conv = nn.ModuleList(layers)
        self.hidden = nn.Linear(channels * height * width, 512)
        self.head = nn.Linear(512, num_actions)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, pixels: Tensor) -> Tensor:
        if tuple(pixels.shape[-3:]) != self.input_shape:
            raise ValueError(
                "NatureQNet expects pixels [*, frames, height, width] of shape "
                f"[*, {', '.join(map(str, self.input_shape))}], got "
                f"{tuple(pixels.shape)}."
            )
        batch = pixels.shape[:-3]
        # one cast, to the dtype the convolutions run in (bf16 under autocast)
        device = pixels.device.type
        dtype = self.hidden.weight.dtype
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
        x = pixels.reshape(-1, *self.input_shape).to(dtype) * self.pixel_scale
        for conv, odd_pad in zip(self.conv, self.odd_pads, strict=True):
            if any(odd_pad):
                x = F.pad(x, odd_pad)
            x = F.relu(conv(x), inplace=True)
        x = F.relu(self.hidden(x.flatten(1)), inplace=True)
        return self.head(x).reshape(*batch, -1)


def make_nature_cnn_qnet(
    num_actions: int,
    *,
    frames: int = 4,
    height: int = 84,
    width: int = 84,
    pixel_scale: float = 1.0 / 255.0,
    pixels_key: NestedKey = "pixels",
    action_value_key: NestedKey = "action_value",
) -> TensorDictModule:
    """A :class:`NatureQNet` as a ``TensorDictModule``: ``pixels`` -> ``action_value``.

    Build one per network (each GEM Atari network has its own torso), or one
    template per role and let :class:`GEMDQNLoss` copy it.

    Examples:
        >>> import torch
        >>> qnet = make_nature_cnn_qnet(6)
        >>> pixels = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
        >>> qnet.module(pixels).shape
        torch.Size([2, 6])
    """
    network = NatureQNet(
        num_actions,
        frames=frames,
        height=height,
        width=width,
        pixel_scale=pixel_scale,
    )
    return TensorDictModule(network, in_keys=[pixels_key], out_keys=[action_value_key])
