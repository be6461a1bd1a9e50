"""Self-imitation (SIL) for off-policy critics: the TD3+SIL baseline of GEM's paper.

Self-imitation learning (Oh et al., ICML 2018) pushes value estimates up towards the
returns the agent has actually obtained, where those exceed the estimate. GEM's
authors compare against TD3 plus such a critic term (``TD3SIL`` in MouseHu/GEM).
Three pieces, each usable alone:

- :class:`MonteCarloReturn`: discounted returns-to-go of the episodes stored in an
  :class:`~torchrl_gem.EpisodicMemory`, written by ``memory.refresh(...)``;
- :class:`SelfImitationLoss`: the critic term ``(R - Q)_+``, clipped, as a TorchRL
  loss module (it can share its critics with a ``TD3Loss``: :meth:`~SelfImitationLoss.
  attached_to`);
- :class:`SelfImitationHook`: a few SIL gradient steps per collected batch, on
  transitions drawn from the memory with priorities, for a
  :class:`~torchrl.trainers.Trainer`.

What the released code does (``stable_baselines/common/self_imitation.py`` and
``td3/td3_sil.py`` of MouseHu/GEM@a9f0c68), and what is kept here:

- loss: ``0.5 * w * sum_k sum_i W_i Q_k,i * sg(clip(Q_k,i - R_i, -c, 0)) / N`` over the
  two critics ``k``, with ``w = 0.1``, ``c = 1``, ``W`` the importance weights and
  ``N = max(number of samples with R > Q (mean over critics), 64)``. Its gradient
  on ``Q_k,i`` is ``-w W_i min(R_i - Q_k,i, c)_+ / (2 N)``: that of the
  :class:`SelfImitationLoss` below (a one-sided Huber loss of ``R - Q``, mean over
  critics, ``reduction="valid"``), which also has a meaningful value (>= 0).
  Kept: the weight, the clip, the normaliser, the mean over critics, and critics
  evaluated at the *current policy's* action ``Q(s, pi(s))`` rather than at the
  stored action (``action_source="policy"``; the stored action is fed but unused
  there).
- Not kept, two slips of the TF graph: the critic output ``[B, 1]`` is squeezed to
  ``[B]`` before ``Q - R`` is formed with ``R`` ``[B, 1]``, so the released term
  pairs every critic value with every return (a ``[B, B]`` broadcast); and the
  gradient is taken of ``loss * W`` (a ``[B, 1]`` tensor), which multiplies it by
  ``sum_i W_i``. :class:`SelfImitationHook` can reproduce the second one
  (``scale_by_weight_sum=True``); with the gradient clipped to a global norm of 0.5
  afterwards, as released, that decides how large a SIL step is.
- Schedule: 4 SIL steps after every 100 environment steps (after TD3's 100 gradient
  steps), batch 128 (TD3's), on the critic optimiser (Adam moments shared with the
  TD steps), gradients clipped to global norm 0.5.
- Sampling: a buffer of its own (100k transitions) with proportional priorities
  ``p^0.6``, importance weights ``beta = 0.1``, new entries at the highest priority,
  priority ``max(mean_k clip(R - Q_k, 0, c), 1e-6)`` after each step. Here the
  transitions come from the episodic memory itself (no second copy); the
  priorities are kept per memory slot by the hook.
- Returns: ``discount_with_dones`` with ``gamma = 0.99`` over whole episodes, no
  bootstrap. Episodes enter at their end, only if some reward was positive. The
  episode is closed on ``truly_done`` only (termination before the time limit), so
  a time-limit truncation does not end it: its returns run on into the next
  episode's rewards, and on a task that never terminates (HalfCheetah) no episode
  ever ends and the SIL term never trains. Here (:class:`MonteCarloReturn`) a
  return stops at the episode's end, terminated or truncated, without a bootstrap
  (an underestimate near a time limit, which a term that only pushes up ignores),
  and running episodes get no return until they end. The positive-reward filter is
  not kept (MuJoCo rewards are almost always positive).
- The released SIL also trains during the warm-up (from its 101st stored step);
  :class:`SelfImitationHook` starts at ``start_frames``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from tensordict import NestedKey, TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule, dispatch
from torch import Tensor
from torchrl import timeit
from torchrl.objectives import LossModule
from torchrl.trainers import Trainer, TrainerHookBase

from torchrl_gem._ensemble import call_ensemble
from torchrl_gem.functional import discounted_returns
from torchrl_gem.memory import STAMP
from torchrl_gem.precision import Precision, autocast

__all__ = ["MonteCarloReturn", "SelfImitationHook", "SelfImitationLoss"]


# ---------------------------------------------------------------------------
# Monte-Carlo returns of stored episodes
# ---------------------------------------------------------------------------
class MonteCarloReturn:
    """Discounted returns-to-go of stored episodes, for ``EpisodicMemory.refresh``.

    ``G_t = r_t + gamma * G_{t+1}`` within an episode, ``0`` after its last step:
    no bootstrap, neither at a termination nor at a time-limit truncation (there
    the return is the rewards up to the limit). The steps of an episode still
    running (its newest stored step is not ``done``) get ``NaN``: their return is
    not known yet, and :class:`SelfImitationLoss` ignores them.

    It offers the part of :class:`~torchrl_gem.TwinBackPropEstimator` that
    :meth:`EpisodicMemory.refresh <torchrl_gem.EpisodicMemory.refresh>` calls
    (``in_keys`` and ``twin_returns``) and writes the return in both columns of the
    memory's ``memory_return`` entry.

    Keyword Args:
        gamma (float): discount factor. Defaults to ``0.99`` (the released SIL's).
        reward_key (NestedKey): Defaults to ``("next", "reward")``.
        done_key (NestedKey): Defaults to ``("next", "done")``.

    Examples:
        >>> import torch
        >>> returns = MonteCarloReturn(gamma=0.5)
        >>> reward = torch.tensor([1.0, 2.0, 4.0, 1.0, 1.0])
        >>> done = torch.tensor([False, False, True, False, False])
        >>> returns.returns(reward, done)  # an episode of 3, then one still running
        tensor([3., 4., 4., nan, nan])
    """

    def __init__(
        self,
        *,
        gamma: float = 0.99,
        reward_key: NestedKey = ("next", "reward"),
        done_key: NestedKey = ("next", "done"),
    ) -> None:
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma}.")
        self.gamma = float(gamma)
        self.reward_key = reward_key
        self.done_key = done_key

    @property
    def in_keys(self) -> list[NestedKey]:
        return [self.reward_key, self.done_key]

    def returns(
        self, reward: Tensor, done: Tensor, cut: Tensor | None = None
    ) -> Tensor:
        """``[T]`` returns of ``[T]`` steps laid end to end in time order.

        An episode ends after a ``done`` step or a ``cut`` one (a running episode's
        newest step); the last step always ends one. Episodes that did not end with
        ``done`` get ``NaN``.
        """
        return discounted_returns(self.gamma, reward, done, cut)

    def twin_returns(self, data: TensorDictBase, cut: Tensor | None = None) -> Tensor:
        """``[T, 2]``: the return of each step of ``data`` in both columns."""
        returns = self.returns(data.get(self.reward_key), data.get(self.done_key), cut)
        return returns.unsqueeze(-1).expand(-1, 2).clone()


# ---------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------
class SelfImitationLoss(LossModule):
    """Critics pushed up towards the Monte-Carlo returns that exceed them.

    Per sample ``i`` and critic ``k``, with ``u = max(R_i - Q_k(s_i, a_i), 0)``:
    ``l_k,i = u^2 / 2`` where ``u <= clip`` and ``clip * (u - clip / 2)`` above (a
    one-sided Huber loss; ``clip=None``: ``u^2 / 2`` throughout). Its gradient on
    ``Q`` is ``-min(u, clip)``: the clipped positive advantage. The per-sample loss
    is ``coeff * W_i * mean_k l_k,i`` (``W``: importance weights, when the batch has
    them). Samples whose return is not finite (episodes still running) contribute
    nothing. The returns are data: no gradient flows into them, nor into the actor.

    Args:
        qvalue_network (TensorDictModule or list of them): critic template, or a list
            of independently initialised critics (then ``num_qvalue_nets`` is its
            length). Use :meth:`attached_to` to train the critics of another loss.

    Keyword Args:
        num_qvalue_nets (int): number of critics. Defaults to ``2``.
        actor_network (TensorDictModule, optional): the deterministic actor, needed
            for ``action_source="policy"``.
        action_source (str): where the critics are evaluated: ``"data"`` (default,
            ``Q(s, a)`` at the stored action, the action whose return ``R`` is) or
            ``"policy"`` (``Q(s, pi(s))``, the released TD3+SIL: a value of the state,
            as SIL's ``V(s)``).
        clip (float, optional): the advantage clip. Defaults to ``1.0`` (released).
        coeff (float): weight of the term. Defaults to ``1.0`` (released TD3+SIL:
            ``0.1``).
        reduction (str): ``"mean"`` (default), ``"sum"``, ``"none"`` or ``"valid"``:
            the sum over the batch divided by ``max(n, min_valid)``, ``n`` the number
            of samples with ``R > Q`` averaged over critics (the released one).
        min_valid (int): the floor of that divisor. Defaults to ``64`` (released).

    :meth:`forward` returns ``loss_sil``, ``sil_advantage`` (the batch mean of the
    per-sample advantage) and ``sil_valid`` (``n``), and writes the per-sample
    advantage ``mean_k min(u_k, clip)`` into the batch (``priority`` key), the
    priority of the released prioritized sampling.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_gem import make_gem_critics
        >>> (critic,) = make_gem_critics(2, 1, num_critics=1, hidden_sizes=(4,))
        >>> _ = torch.nn.init.zeros_(critic.module.head.weight)  # Q = 0 everywhere
        >>> loss = SelfImitationLoss(critic, num_qvalue_nets=1, clip=None)
        >>> batch = TensorDict(observation=torch.zeros(3, 2), action=torch.zeros(3, 1),
        ...                    mc_return=torch.tensor([[2.0], [-1.0], [1.0]]),
        ...                    batch_size=[3])
        >>> out = loss(batch)
        >>> out["loss_sil"]  # (2^2/2 + 0 + 1^2/2) / 3
        tensor(0.8333, grad_fn=<MeanBackward0>)
        >>> batch["sil_advantage"]
        tensor([2., 0., 1.])
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys read and written, renamed with :meth:`set_keys`.

        Attributes:
            action (NestedKey): the action. Defaults to ``"action"``.
            state_action_value (NestedKey): critic output.
            mc_return (NestedKey): the Monte-Carlo return ``[*B]`` or ``[*B, 1]``.
            priority (NestedKey): where the per-sample advantage is written.
                Defaults to ``"sil_advantage"``.
            priority_weight (NestedKey): importance weights, used when present.
        """

        action: NestedKey = "action"
        state_action_value: NestedKey = "state_action_value"
        mc_return: NestedKey = "mc_return"
        priority: NestedKey = "sil_advantage"
        priority_weight: NestedKey = "priority_weight"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    out_keys = ["loss_sil", "sil_advantage", "sil_valid"]

    qvalue_network: TensorDictModule
    qvalue_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams
    actor_network: TensorDictModule
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams

    def __init__(
        self,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        *,
        num_qvalue_nets: int = 2,
        actor_network: TensorDictModule | None = None,
        action_source: Literal["data", "policy"] = "data",
        clip: float | None = 1.0,
        coeff: float = 1.0,
        reduction: Literal["mean", "sum", "none", "valid"] | None = None,
        min_valid: int = 64,
    ) -> None:
        super().__init__()
        if isinstance(qvalue_network, (list, tuple)):
            num_qvalue_nets = len(qvalue_network)
        if num_qvalue_nets < 1:
            raise ValueError(f"num_qvalue_nets must be >= 1, got {num_qvalue_nets}.")
        if action_source not in ("data", "policy"):
            raise ValueError(
                f"action_source must be 'data' or 'policy', got {action_source!r}."
            )
        if action_source == "policy" and actor_network is None:
            raise ValueError("action_source='policy' needs the actor_network.")
        if clip is not None and clip <= 0:
            raise ValueError(f"clip must be > 0 or None, got {clip}.")
        reduction = "mean" if reduction is None else reduction
        if reduction not in ("mean", "sum", "none", "valid"):
            raise ValueError(
                "reduction must be 'mean', 'sum', 'none' or 'valid', got "
                f"{reduction!r}."
            )
        if min_valid < 1:
            raise ValueError(f"min_valid must be >= 1, got {min_valid}.")
        self.num_qvalue_nets = int(num_qvalue_nets)
        self.action_source = action_source
        self.clip = None if clip is None else float(clip)
        self.coeff = float(coeff)
        self.reduction = reduction
        self.min_valid = int(min_valid)
        self.convert_to_functional(
            qvalue_network, "qvalue_network", self.num_qvalue_nets
        )
        self.has_actor = actor_network is not None
        if self.has_actor:
            self.convert_to_functional(actor_network, "actor_network")

    @classmethod  # (not *_loss: LossModule wraps methods named so as forward)
    def attached_to(cls, loss: LossModule, **kwargs) -> SelfImitationLoss:
        """A SIL term on the online critics (and actor) of ``loss``, by reference.

        ``loss`` is an actor-critic loss with ``qvalue_network`` and
        ``qvalue_network_params`` (``TD3Loss``, :class:`~torchrl_gem.GEMLoss`,
        ``SACLoss``); its ``actor_network`` is shared too. The SIL gradients then
        reach ``loss``'s critic parameters, which ``loss``'s critic optimiser holds.
        """
        params = loss.qvalue_network_params
        kwargs.setdefault("num_qvalue_nets", params.batch_size[0])
        kwargs.setdefault("actor_network", getattr(loss, "actor_network", None))
        out = cls(loss.qvalue_network, **kwargs)
        out.qvalue_network_params = params
        if out.has_actor:
            out.actor_network_params = loss.actor_network_params
        return out

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = [self.tensor_keys.mc_return, *self.qvalue_network.in_keys]
        if self.action_source == "policy":
            keys += self.actor_network.in_keys
        return list(dict.fromkeys(keys))

    def critic_values(self, tensordict: TensorDictBase) -> Tensor:
        """``[K, *B]`` critic values at the stored or the policy's actions."""
        critic_input = tensordict.select(*self.qvalue_network.in_keys, strict=False)
        if self.action_source == "policy":
            actor_input = tensordict.select(*self.actor_network.in_keys, strict=True)
            with (
                torch.no_grad(),
                self.actor_network_params.to_module(
                    self.actor_network, preserve_module_state=False
                ),
            ):
                action = self.actor_network(actor_input).get(self.tensor_keys.action)
            critic_input.set(self.tensor_keys.action, action)
        values = call_ensemble(
            self.qvalue_network, self.qvalue_network_params, critic_input
        ).get(self.tensor_keys.state_action_value)
        return values.squeeze(-1)

    def sil_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """The reduced loss, and detached ``advantage`` ``[*B]`` and ``valid``."""
        key = self.tensor_keys.mc_return
        returns = tensordict.get(key, None)
        if returns is None:
            raise KeyError(
                f"The batch has no {key!r} entry: the Monte-Carlo returns "
                "(MonteCarloReturn writes them into an EpisodicMemory)."
            )
        batch = tensordict.batch_size
        if returns.shape == (*batch, 1):
            returns = returns.squeeze(-1)
        if returns.shape != batch:
            raise ValueError(
                f"{key!r} must have shape {tuple(batch)} or {(*batch, 1)}, got "
                f"{tuple(returns.shape)}."
            )
        returns = returns.detach()
        values = self.critic_values(tensordict)  # [K, *B]
        known = torch.isfinite(returns)
        gap = torch.where(known, torch.where(known, returns, 0.0) - values, 0.0)
        excess = gap.clamp_min(0.0)
        if self.clip is None:
            per_critic = excess.pow(2) / 2
            advantage = excess.detach()
        else:
            per_critic = torch.where(
                excess <= self.clip,
                excess.pow(2) / 2,
                self.clip * (excess - self.clip / 2),
            )
            advantage = excess.detach().clamp_max(self.clip)
        per_sample = self.coeff * per_critic.mean(0)
        weights = tensordict.get(self.tensor_keys.priority_weight, None)
        if weights is not None:
            per_sample = per_sample * weights.detach().reshape(batch)
        num_valid = (gap > 0).to(per_sample.dtype).sum() / self.num_qvalue_nets
        if self.reduction == "none":
            loss = per_sample
        elif self.reduction == "sum":
            loss = per_sample.sum()
        elif self.reduction == "mean":
            loss = per_sample.mean()
        else:
            loss = per_sample.sum() / num_valid.clamp_min(self.min_valid)
        return loss, {"advantage": advantage.mean(0), "valid": num_valid.detach()}

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """The loss on one batch; writes the per-sample advantage into it."""
        loss, metadata = self.sil_loss(tensordict)
        advantage = metadata["advantage"]
        tensordict.set(self.tensor_keys.priority, advantage)
        return TensorDict(
            loss_sil=loss,
            sil_advantage=advantage.mean(),
            sil_valid=metadata["valid"],
        )


# ---------------------------------------------------------------------------
# The trainer hook: SIL steps on prioritized samples of the memory
# ---------------------------------------------------------------------------
class SelfImitationHook(TrainerHookBase):
    """A few SIL gradient steps per collected batch, after the trainer's own steps.

    Each call (``"post_steps"``, once per collected batch) takes ``num_updates``
    steps of ``loss`` (a :class:`SelfImitationLoss`) on batches of ``batch_size``
    transitions drawn from ``memory`` (an :class:`~torchrl_gem.EpisodicMemory`
    refreshed with :class:`MonteCarloReturn`, so its ``memory_return`` column holds
    Monte-Carlo returns; transitions without a finite return are not drawn).

    Sampling is proportional to ``p^priority_alpha``, with importance weights
    ``(n P(i))^-priority_beta`` normalised by their largest possible value, as in
    the released TD3+SIL (``alpha = 0.6``, ``beta = 0.1``): a transition seen for the
    first time gets the highest priority so far, a sampled one
    ``max(advantage, 1e-6)`` afterwards. ``priority_alpha=0`` samples uniformly.

    Each step zeroes ``optimizer``'s gradients, back-propagates the loss (times the
    sum of the importance weights with ``scale_by_weight_sum``, as the released
    code's gradient), clips the gradients of the optimiser's parameters to a global
    norm of ``max_grad_norm`` and steps. Pass the critic optimiser of the main loss,
    as the released code does (its Adam moments are then shared with the TD steps).

    Args:
        memory: the episodic memory.
        loss (SelfImitationLoss): the term; its critics are ``optimizer``'s.
        optimizer (torch.optim.Optimizer): the critic optimiser.

    Keyword Args:
        num_updates (int): SIL steps per call. Defaults to ``4``.
        batch_size (int): transitions per step. Defaults to ``128``.
        priority_alpha (float): priority exponent. Defaults to ``0.6``.
        priority_beta (float): importance-weight exponent. Defaults to ``0.1``.
        max_grad_norm (float, optional): global gradient-norm clip. Defaults to
            ``0.5``.
        scale_by_weight_sum (bool): multiply the gradient by the sum of the batch's
            importance weights (the released graph's). Defaults to ``False``.
        start_frames (int): no steps before the trainer has collected this many
            frames (the warm-up). Defaults to ``0``.
        precision (str): ``"fp32"`` or ``"bf16"`` autocast for the loss.
        device (torch.device): the device the loss runs on, for autocast.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl.objectives import TD3Loss
        >>> from torchrl_gem import EpisodicMemory, make_gem_actor, make_gem_critics
        >>> spec = Bounded(-1.0, 1.0, shape=(2,))
        >>> td3 = TD3Loss(make_gem_actor(3, spec, hidden_sizes=(8,)),
        ...               make_gem_critics(3, 2, num_critics=2, hidden_sizes=(8,)),
        ...               action_spec=spec)
        >>> sil = SelfImitationLoss.attached_to(td3, coeff=0.1, reduction="valid")
        >>> memory = EpisodicMemory(capacity=100)
        >>> T = 6
        >>> _ = memory.extend(TensorDict(
        ...     observation=torch.randn(T, 3), action=torch.rand(T, 2),
        ...     collector=TensorDict(traj_ids=torch.zeros(T, dtype=torch.long)),
        ...     next=TensorDict(observation=torch.randn(T, 3), reward=torch.ones(T, 1),
        ...                     done=torch.arange(T).eq(T - 1).unsqueeze(-1),
        ...                     terminated=torch.zeros(T, 1, dtype=torch.bool)),
        ...     batch_size=[T]))
        >>> memory.refresh(MonteCarloReturn(gamma=0.99))
        >>> optim = torch.optim.Adam(td3.qvalue_network_params.values(True, True))
        >>> hook = SelfImitationHook(memory, sil, optim, batch_size=4)
        >>> hook()  # in a Trainer: hook.register(trainer), once per collected batch
        >>> hook.num_steps, sorted(hook.last_metrics)
        (4, ['sil/advantage', 'sil/loss', 'sil/valid'])
    """

    def __init__(
        self,
        memory,
        loss: SelfImitationLoss,
        optimizer: torch.optim.Optimizer,
        *,
        num_updates: int = 4,
        batch_size: int = 128,
        priority_alpha: float = 0.6,
        priority_beta: float = 0.1,
        max_grad_norm: float | None = 0.5,
        scale_by_weight_sum: bool = False,
        start_frames: int = 0,
        precision: Precision = "fp32",
        device: torch.device | str = "cpu",
    ) -> None:
        if num_updates < 1 or batch_size < 1:
            raise ValueError(
                "num_updates and batch_size must be >= 1, got "
                f"{num_updates} and {batch_size}."
            )
        if priority_alpha < 0 or priority_beta < 0:
            raise ValueError("priority_alpha and priority_beta must be >= 0.")
        self.memory = memory
        self.loss = loss
        self.optimizer = optimizer
        self.num_updates = int(num_updates)
        self.batch_size = int(batch_size)
        self.priority_alpha = float(priority_alpha)
        self.priority_beta = float(priority_beta)
        self.max_grad_norm = max_grad_norm
        self.scale_by_weight_sum = scale_by_weight_sum
        self.start_frames = int(start_frames)
        self.precision, self.device = precision, device
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        capacity = memory.storage.max_size
        # per memory slot: its priority, and the stamp of the transition it is for
        self.priority = torch.zeros(capacity, dtype=torch.float64)
        self.priority_stamp = torch.full((capacity,), -1, dtype=torch.long)
        self.max_priority = 1.0
        self.num_steps = 0
        self.last_metrics: dict[str, float] = {}
        self._trainer: Trainer | None = None

    # ------------------------------------------------------------- sampling
    def candidates(self) -> Tensor:
        """Slots holding a transition with a finite return; new ones get priority."""
        key = self.memory.memory_return_key
        slots, stored = self.memory.sampleable(key, STAMP)
        if not len(slots):
            return slots
        returns = stored.get(key)[..., 0]
        keep = torch.isfinite(returns)
        slots = slots[keep].cpu()
        stamp = stored.get(STAMP)[keep].cpu()
        fresh = self.priority_stamp[slots] != stamp
        self.priority[slots[fresh]] = self.max_priority
        self.priority_stamp[slots[fresh]] = stamp[fresh]
        return slots

    def sample(self, slots: Tensor) -> tuple[Tensor, TensorDictBase]:
        """``(chosen slots, batch)``: a prioritized draw with importance weights."""
        scaled = self.priority[slots].pow(self.priority_alpha)
        pick = torch.multinomial(scaled, self.batch_size, replacement=True)
        chosen = slots[pick]
        probability = scaled / scaled.sum()
        weights = (len(slots) * probability).pow(-self.priority_beta)
        weights = weights[pick] / weights.max()
        batch = self.memory.storage.get(chosen.to(self._storage_device()))
        returns = batch.get(self.memory.memory_return_key)[..., :1]
        batch.set(self.loss.tensor_keys.mc_return, returns)
        batch.set(
            self.loss.tensor_keys.priority_weight,
            weights.to(returns.dtype).to(returns.device),
        )
        return chosen, batch

    def _storage_device(self) -> torch.device:
        return getattr(self.memory.storage, "device", torch.device("cpu"))

    # ---------------------------------------------------------------- steps
    def step(self, slots: Tensor) -> dict[str, float]:
        """One SIL gradient step on a batch drawn from ``slots``."""
        chosen, batch = self.sample(slots)
        with autocast(self.precision, self.device):
            out = self.loss(batch)
        loss = out.get("loss_sil")
        if self.scale_by_weight_sum:
            loss = loss * batch.get(self.loss.tensor_keys.priority_weight).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        advantage = batch.get(self.loss.tensor_keys.priority).detach().double().cpu()
        new = advantage.clamp_min(1e-6)
        self.priority[chosen] = new
        self.max_priority = max(self.max_priority, float(new.max()))
        self.num_steps += 1
        return {
            "sil/loss": float(out.get("loss_sil").detach()),
            "sil/advantage": float(out.get("sil_advantage")),
            "sil/valid": float(out.get("sil_valid")),
        }

    def __call__(self) -> None:
        if self._trainer is not None and (
            self._trainer.collected_frames < self.start_frames
        ):
            return
        with timeit("sil"):
            slots = self.candidates()
            if not len(slots):
                return
            for _ in range(self.num_updates):
                self.last_metrics = self.step(slots)

    def log(self, batch: TensorDictBase | None = None) -> dict[str, float] | None:
        """The latest step's loss, mean advantage and valid count (to log)."""
        return dict(self.last_metrics) if self.last_metrics else None

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "priority": self.priority.clone(),
            "priority_stamp": self.priority_stamp.clone(),
            "max_priority": self.max_priority,
            "num_steps": self.num_steps,
            "last_metrics": dict(self.last_metrics),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.priority.copy_(state_dict["priority"])
        self.priority_stamp.copy_(state_dict["priority_stamp"])
        self.max_priority = float(state_dict["max_priority"])
        self.num_steps = int(state_dict["num_steps"])
        self.last_metrics = {k: float(v) for k, v in state_dict["last_metrics"].items()}

    def register(self, trainer: Trainer, name: str = "self_imitation") -> None:
        self._trainer = trainer
        trainer.register_module(name, self)
        trainer.register_op("post_steps", self)
        trainer.register_op("post_steps_log", self.log)
