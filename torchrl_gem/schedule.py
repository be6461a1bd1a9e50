"""GEM's training schedule as hooks of :class:`torchrl.trainers.Trainer`.

GEM (Hu et al., ICML 2021) trains like TD3 with three changes to the schedule, each a
hook here so that the algorithm drops into the TorchRL trainer:

- :class:`BulkTargetUpdateHook`: the target networks move once per collected batch,
  with the weight of ``G`` consecutive Polyak steps, ``1 - (1 - tau)^G``
  (:func:`bulk_tau`);
- :class:`MemoryRefreshHook`: the episodic memory recomputes the twin returns of
  everything it stores before the gradient steps;
- :class:`DelayedActorStepper`: critic step on every sampled batch, actor step on
  every ``policy_delay``-th one, with separate optimisers.

For DQN-style schedules, :class:`HardTargetUpdateHook` copies the online networks
into their targets every ``N`` batches (GEM's Atari agent refreshes its memory right
after). What watches a run (evaluation, checks, timing, progress) is in
:mod:`torchrl_gem.monitoring`; both are re-exported by :mod:`torchrl_gem.trainer`.
"""

from __future__ import annotations

import copy
import warnings
from inspect import signature
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl import timeit
from torchrl.objectives import HardUpdate, LossModule, SoftUpdate
from torchrl.objectives.utils import TargetNetUpdater
from torchrl.trainers import OptimizationStepper, Trainer, TrainerHookBase

from torchrl_gem.compiling import CompiledCall
from torchrl_gem.precision import Precision, autocast

__all__ = [
    "BulkTargetUpdateHook",
    "DelayedActorStepper",
    "HardTargetUpdateHook",
    "MemoryRefreshHook",
    "PolicyAverageHook",
    "bulk_tau",
]


def bulk_tau(tau: float, num_updates: int) -> float:
    """Weight of one Polyak step equal to ``num_updates`` steps of weight ``tau``.

    With frozen online parameters, ``num_updates`` updates
    ``p' <- (1 - tau) p' + tau p`` compose to a single one of weight
    ``1 - (1 - tau)^num_updates`` (``0.6330`` for GEM's ``tau=0.005``, ``G=200``).

    Examples:
        >>> round(bulk_tau(0.005, 200), 4)
        0.633
    """
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must lie in (0, 1], got {tau}.")
    if num_updates < 1:
        raise ValueError(f"num_updates must be >= 1, got {num_updates}.")
    return 1.0 - (1.0 - tau) ** num_updates


class BulkTargetUpdateHook(TrainerHookBase):
    """One target-network update per collected batch, worth ``num_updates`` steps.

    The released GEM code updates every target network (actor and all critics) once
    per 100 environment steps, *before* the memory refresh and the 200 gradient steps
    of that cycle, with weight ``1 - (1 - tau)^200``. This hook steps a
    :class:`~torchrl.objectives.SoftUpdate` of that weight each time it is called;
    :meth:`register` places it at ``"pre_optim_steps"``, which the trainer runs once
    per batch before the optimisation steps. Register it *before* a
    :class:`MemoryRefreshHook`, so that the refresh sees the updated targets.

    Args:
        loss_module (LossModule): the loss that owns the target parameters.

    Keyword Args:
        tau (float): per-step Polyak weight. Defaults to ``0.005``.
        num_updates (int): how many per-step updates one call stands for, usually
            the number of gradient steps per batch. Defaults to ``200``.

    Examples:
        >>> import torch
        >>> from torchrl.data import Bounded
        >>> from torchrl_gem import GEMLoss, make_gem_actor, make_gem_critics
        >>> spec = Bounded(-1.0, 1.0, shape=(2,))
        >>> loss = GEMLoss(make_gem_actor(3, spec, hidden_sizes=(8,)),
        ...                make_gem_critics(3, 2, hidden_sizes=(8,)), action_spec=spec)
        >>> hook = BulkTargetUpdateHook(loss, tau=0.005, num_updates=200)
        >>> round(hook.tau, 3)
        0.633
        >>> with torch.no_grad():
        ...     _ = loss.actor_network_params.apply(lambda p: p.add_(1.0))
        >>> hook()  # trainer.register_op("pre_optim_steps", hook) calls it per batch
        >>> online = loss.actor_network_params.flatten_keys()
        >>> target = loss.target_actor_network_params.flatten_keys()
        >>> key = next(iter(online.keys()))
        >>> gap = (online[key] - target[key]).abs().max().item()
        >>> round(gap, 3)  # the target moved 63.3% of the way
        0.367
    """

    def __init__(
        self, loss_module: LossModule, *, tau: float = 0.005, num_updates: int = 200
    ) -> None:
        self.tau = bulk_tau(tau, num_updates)
        self.updater = _soft_update(loss_module, self.tau)

    def __call__(self) -> None:
        self.updater.step()

    def state_dict(self) -> dict[str, Any]:
        return {"tau": self.tau}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass

    def register(self, trainer: Trainer, name: str = "bulk_target_update") -> None:
        trainer.register_module(name, self)
        trainer.register_op("pre_optim_steps", self)


class MemoryRefreshHook(TrainerHookBase):
    """Refresh an episodic memory's returns every ``every`` collected batches.

    Calls ``memory.refresh(estimator)``: with an
    :class:`~torchrl_gem.EpisodicMemory` and a
    :class:`~torchrl_gem.TwinBackPropEstimator` this recomputes the twin
    back-propagated return of every stored transition with the current target
    networks. :meth:`register` places it at ``"pre_optim_steps"``, which the trainer
    runs once per collected batch after warm-up, before the optimisation steps that
    read the returns. The first call refreshes, then every ``every``-th call: the
    interval is a whole number of batches, so a refresh always falls between the
    write of a batch and the gradient steps that follow it.

    Args:
        memory: any object with a ``refresh(estimator)`` method.
        estimator: the value estimator passed to ``refresh``; usually
            ``loss.value_estimator``.

    Keyword Args:
        every (int): collected batches (calls) between two refreshes. Defaults to
            ``1``: every batch, as the released code (once per ``train_freq`` steps).
        incremental (bool): on the calls in between, refresh only what was written
            since the last refresh, ``memory.refresh(estimator, full=False)`` (a
            :class:`~torchrl_gem.frames.FrameEpisodicMemory`, whose cached values
            stay valid until the next target update). Defaults to ``False``.
        diagnostics (bool): refresh with ``diagnostics=True`` (an
            :class:`~torchrl_gem.EpisodicMemory` and a ``TwinBackPropEstimator``)
            and hand the ``memory/*`` scalars of the latest refresh to the trainer's
            log (:meth:`register` adds a ``"post_steps_log"`` op). Defaults to
            ``False``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl_gem import EpisodicMemory, GEMLoss
        >>> from torchrl_gem import make_gem_actor, make_gem_critics
        >>> spec = Bounded(-1.0, 1.0, shape=(2,))
        >>> loss = GEMLoss(make_gem_actor(3, spec, hidden_sizes=(8,)),
        ...                make_gem_critics(3, 2, hidden_sizes=(8,)), action_spec=spec)
        >>> _ = loss.make_value_estimator(gamma=0.99)
        >>> memory = EpisodicMemory(capacity=100, batch_size=4)
        >>> T = 5
        >>> _ = memory.extend(TensorDict(
        ...     observation=torch.randn(T, 3), action=torch.rand(T, 2),
        ...     collector=TensorDict(traj_ids=torch.zeros(T, dtype=torch.long)),
        ...     step_count=torch.arange(T).unsqueeze(-1),
        ...     next=TensorDict(observation=torch.randn(T, 3), reward=torch.ones(T, 1),
        ...                     done=torch.zeros(T, 1, dtype=torch.bool),
        ...                     terminated=torch.zeros(T, 1, dtype=torch.bool)),
        ...     batch_size=[T]))
        >>> hook = MemoryRefreshHook(memory, loss.value_estimator, every=2)
        >>> for batch in range(3):  # in a Trainer: one call per collected batch
        ...     hook()
        ...     print(batch, hook.num_refreshes)
        0 1
        1 1
        2 2
    """

    def __init__(
        self,
        memory,
        estimator,
        *,
        every: int = 1,
        incremental: bool = False,
        diagnostics: bool = False,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1 batch, got {every!r}.")
        if diagnostics and "diagnostics" not in signature(memory.refresh).parameters:
            raise ValueError(
                f"diagnostics=True needs a memory whose refresh reports them (an "
                f"EpisodicMemory); {type(memory).__name__}.refresh has no "
                "'diagnostics' option."
            )
        self.memory = memory
        self.estimator = estimator
        self.every = every
        self.incremental = incremental
        self.diagnostics = diagnostics
        self.last_diagnostics: dict[str, float] | None = None  # not yet logged
        self.num_batches = 0  # calls so far; the refresh falls on multiples of every
        self.num_refreshes = 0

    def __call__(self) -> None:
        due = self.num_batches % self.every == 0
        self.num_batches += 1
        if due and self.diagnostics:
            self.last_diagnostics = self.memory.refresh(
                self.estimator, diagnostics=True
            )
            self.num_refreshes += 1
        elif due:
            self.memory.refresh(self.estimator)
            self.num_refreshes += 1
        elif self.incremental:
            self.memory.refresh(self.estimator, full=False)

    def log(self, batch: TensorDictBase | None = None) -> dict[str, float] | None:
        """The ``memory/*`` scalars of the latest refresh, once (else ``None``)."""
        stats, self.last_diagnostics = self.last_diagnostics, None
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"num_batches": self.num_batches, "num_refreshes": self.num_refreshes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_batches = int(state_dict["num_batches"])
        self.num_refreshes = int(state_dict["num_refreshes"])

    def register(self, trainer: Trainer, name: str = "memory_refresh") -> None:
        trainer.register_module(name, self)
        trainer.register_op("pre_optim_steps", self)
        if self.diagnostics:
            trainer.register_op("post_steps_log", self.log)


class HardTargetUpdateHook(TrainerHookBase):
    """Copy the online networks into their targets every ``every`` collected batches.

    DQN's and GEM-DQN's target update (every 8,000 gradient steps in the released
    Atari code), at batch granularity: :meth:`register` places it at
    ``"pre_optim_steps"``, before a :class:`MemoryRefreshHook` registered after it,
    so that the memory is refreshed with the new targets. The first call copies
    (a no-op right after construction), then every ``every``-th.

    It steps TorchRL's :class:`~torchrl.objectives.HardUpdate`, which copies on the
    step *after* ``value_network_update_interval`` steps; built with an interval of
    ``0`` it copies on every step, so the period is this hook's alone.

    Args:
        loss_module (LossModule): the loss that owns the target parameters.

    Keyword Args:
        every (int): collected batches between two copies.

    Examples:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl_gem import GEMDQNLoss
        >>> qnet = lambda: TensorDictModule(torch.nn.Linear(3, 2), ["observation"],
        ...                                 ["action_value"])
        >>> loss = GEMDQNLoss(qnet(), qnet())
        >>> hook = HardTargetUpdateHook(loss, every=3)
        >>> with torch.no_grad():
        ...     _ = loss.sub_qvalue_network_params.apply(lambda p: p.add_(1.0))
        >>> online = loss.sub_qvalue_network_params.flatten_keys()
        >>> target = loss.target_sub_qvalue_network_params.flatten_keys()
        >>> key = next(iter(online.keys()))
        >>> copied = []
        >>> for batch in range(4):
        ...     hook()
        ...     copied.append(torch.equal(online[key], target[key]))
        ...     with torch.no_grad():
        ...         _ = loss.sub_qvalue_network_params.apply(lambda p: p.add_(1.0))
        >>> copied  # copies at batches 0 and 3
        [True, False, False, True]
    """

    def __init__(self, loss_module: LossModule, *, every: int) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1 batch, got {every!r}.")
        self.every = every
        self.updater = HardUpdate(loss_module, value_network_update_interval=0)
        self.num_batches = 0
        self.num_updates = 0

    def __call__(self) -> None:
        due = self.num_batches % self.every == 0
        self.num_batches += 1
        if due:
            self.updater.step()
            self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"num_batches": self.num_batches, "num_updates": self.num_updates}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_batches = int(state_dict["num_batches"])
        self.num_updates = int(state_dict["num_updates"])

    def register(self, trainer: Trainer, name: str = "hard_target_update") -> None:
        trainer.register_module(name, self)
        trainer.register_op("pre_optim_steps", self)


class DelayedActorStepper(OptimizationStepper):
    """TD3-style optimisation step: critics every step, actor every ``policy_delay``.

    Each :meth:`step` takes one critic step on the sampled batch; every
    ``policy_delay``-th step (the first, then every ``policy_delay``) it then takes an
    actor step on the *same* batch, against the critics just updated, and steps
    ``target_updater`` if one is given (TD3's per-actor-step Polyak update; leave it
    out when a :class:`BulkTargetUpdateHook` moves the targets). The losses come from
    ``trainer.compute_loss(batch, method=...)``, so any loss with separate critic
    and actor methods returning ``(loss, metadata)`` works:
    :class:`~torchrl_gem.GEMLoss`, :class:`~torchrl.objectives.TD3Loss`.

    Returns ``loss_qvalue`` and ``loss_actor`` (the latest actor loss, so that the
    trainer's running average always sees both keys). Each step is timed under
    ``timeit("update")``. Pass it to the trainer as ``optimization_stepper=``; it then
    lands in ``trainer.state_dict()`` with both optimiser states and its step count.

    Args:
        actor_optimizer (torch.optim.Optimizer): optimiser of the actor parameters.
        critic_optimizer (torch.optim.Optimizer): optimiser of the critic parameters.

    Keyword Args:
        policy_delay (int): critic steps per actor step. Defaults to ``2``.
        target_updater (TargetNetUpdater, optional): stepped after each actor step.
        critic_method (str): loss method of the critic loss. Defaults to
            ``"value_loss"``.
        actor_method (str): loss method of the actor loss. Defaults to
            ``"actor_loss"``.
        precision (str): ``"fp32"`` (default) or ``"bf16"``: the losses are computed
            under bf16 autocast (:mod:`torchrl_gem.precision`); parameters, gradients
            and optimiser states stay fp32. Pass a resolved value
            (:func:`torchrl_gem.precision.resolve`).
        device (torch.device): the device the losses run on, for autocast.
        compile (bool): call both loss methods through ``torch.compile``
            (:class:`~torchrl_gem.compiling.CompiledCall`: compiled on the first
            step, eager if the compiler fails). Defaults to ``False``.
        grad_norms (bool): also return ``grad_norm_qvalue`` and ``grad_norm_actor``,
            the total 2-norms of the gradients each optimiser stepped with (before
            any clip; the latest actor one, as ``loss_actor``). Defaults to
            ``False``.
        critic_max_grad_norm (float, optional): clip the critics' gradients to this
            total 2-norm before their step. Defaults to ``None`` (no clip).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl_gem import GEMLoss, make_gem_actor, make_gem_critics
        >>> spec = Bounded(-1.0, 1.0, shape=(2,))
        >>> loss = GEMLoss(make_gem_actor(3, spec, hidden_sizes=(8,)),
        ...                make_gem_critics(3, 2, hidden_sizes=(8,)), action_spec=spec)
        >>> stepper = DelayedActorStepper(
        ...     torch.optim.Adam(loss.actor_network_params.values(True, True)),
        ...     torch.optim.Adam(loss.qvalue_network_params.values(True, True)),
        ...     policy_delay=2)
        >>> class Host:  # the part of a Trainer the stepper uses
        ...     def compute_loss(self, batch, method):
        ...         return getattr(loss, method)(batch)
        >>> batch = TensorDict(observation=torch.randn(8, 3), action=torch.rand(8, 2),
        ...                    memory_return=torch.randn(8, 2), batch_size=[8])
        >>> sorted(stepper.step(Host(), batch).keys())
        ['loss_actor', 'loss_qvalue']
        >>> _ = stepper.step(Host(), batch)
        >>> stepper.num_steps, stepper.num_actor_steps
        (2, 1)
    """

    def __init__(
        self,
        actor_optimizer: torch.optim.Optimizer,
        critic_optimizer: torch.optim.Optimizer,
        *,
        policy_delay: int = 2,
        target_updater: TargetNetUpdater | None = None,
        critic_method: str = "value_loss",
        actor_method: str = "actor_loss",
        precision: Precision = "fp32",
        device: torch.device | str = "cpu",
        compile: bool = False,
        grad_norms: bool = False,
        critic_max_grad_norm: float | None = None,
    ) -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}.")
        if policy_delay < 1:
            raise ValueError(f"policy_delay must be >= 1, got {policy_delay}.")
        if critic_max_grad_norm is not None and not critic_max_grad_norm > 0:
            raise ValueError(
                f"critic_max_grad_norm must be > 0 or None, got {critic_max_grad_norm}."
            )
        self.actor_optimizer = actor_optimizer
        self.critic_optimizer = critic_optimizer
        self.policy_delay = int(policy_delay)
        self.target_updater = target_updater
        self.critic_method = critic_method
        self.actor_method = actor_method
        self.precision, self.device = precision, device
        self.compile = compile
        self._compiled: dict[str, CompiledCall] = {}
        self.grad_norms = grad_norms
        self.critic_max_grad_norm = critic_max_grad_norm
        self.num_steps = 0
        self.num_actor_steps = 0
        self._last_actor_loss = torch.full((), float("nan"))
        self._last_actor_grad_norm = torch.full((), float("nan"))

    def step(self, trainer: Trainer, sub_batch: TensorDictBase) -> TensorDictBase:
        with timeit("update"):
            with autocast(self.precision, self.device):
                critic_loss, _ = self._loss(trainer, sub_batch, self.critic_method)
            self.critic_optimizer.zero_grad(set_to_none=True)
            critic_loss.backward()
            out = TensorDict(loss_qvalue=critic_loss.detach())
            if self.critic_max_grad_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(
                    _params(self.critic_optimizer), self.critic_max_grad_norm
                )
                if self.grad_norms:  # the norm before the clip
                    out["grad_norm_qvalue"] = norm.detach()
            elif self.grad_norms:
                out["grad_norm_qvalue"] = _grad_norm(self.critic_optimizer)
            self.critic_optimizer.step()
            if self.num_steps % self.policy_delay == 0:
                with autocast(self.precision, self.device):
                    actor_loss, _ = self._loss(trainer, sub_batch, self.actor_method)
                self.actor_optimizer.zero_grad(set_to_none=True)
                actor_loss.backward()
                if self.grad_norms:
                    self._last_actor_grad_norm = _grad_norm(self.actor_optimizer)
                self.actor_optimizer.step()
                if self.target_updater is not None:
                    self.target_updater.step()
                self._last_actor_loss = actor_loss.detach()
                self.num_actor_steps += 1
            self.num_steps += 1
            out["loss_actor"] = self._last_actor_loss
            if self.grad_norms:
                out["grad_norm_actor"] = self._last_actor_grad_norm
            return out

    def _loss(self, trainer: Trainer, batch: TensorDictBase, method: str):
        if not self.compile:
            return trainer.compute_loss(batch, method=method)
        call = self._compiled.get(method)
        if call is None:
            loss = trainer.loss_module
            call = CompiledCall(
                getattr(loss, method), name=f"{type(loss).__name__}.{method}"
            )
            self._compiled[method] = call
        return call(batch)

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "num_steps": self.num_steps,
            "num_actor_steps": self.num_actor_steps,
            "last_actor_loss": self._last_actor_loss.clone(),
            "last_actor_grad_norm": self._last_actor_grad_norm.clone(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.actor_optimizer.load_state_dict(state_dict["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state_dict["critic_optimizer"])
        self.num_steps = int(state_dict["num_steps"])
        self.num_actor_steps = int(state_dict["num_actor_steps"])
        self._last_actor_loss = state_dict["last_actor_loss"].clone()
        nan = torch.full((), float("nan"))  # checkpoints from before grad_norms
        self._last_actor_grad_norm = state_dict.get("last_actor_grad_norm", nan).clone()


class PolicyAverageHook(TrainerHookBase):
    """An exponential moving average of a policy's weights, after every batch.

    ``average <- decay * average + (1 - decay) * online`` once per collected batch
    (at ``"post_steps"``, after the gradient steps). :attr:`policy` is a copy of
    the policy that carries the averaged weights: evaluate it (or act with it) in
    place of the online one, whose every gradient step it smooths over about
    ``1 / (1 - decay)`` batches. Its state (the averaged weights) is saved with the
    trainer's.

    Args:
        policy (nn.Module): the online policy (its weights are read, not changed).

    Keyword Args:
        decay (float): in ``[0, 1)``; ``0`` follows the online policy.

    Examples:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule
        >>> online = TensorDictModule(torch.nn.Linear(1, 1, bias=False), ["x"], ["y"])
        >>> _ = torch.nn.init.zeros_(online.module.weight)
        >>> hook = PolicyAverageHook(online, decay=0.5)
        >>> with torch.no_grad():
        ...     _ = online.module.weight.fill_(4.0)
        >>> hook()
        >>> hook.policy.module.weight.item()
        2.0
    """

    def __init__(self, policy: torch.nn.Module, *, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}.")
        self.decay = float(decay)
        self.policy = copy.deepcopy(policy)
        self._online = TensorDict.from_module(policy)
        self._average = TensorDict.from_module(self.policy)

    @torch.no_grad()
    def __call__(self, batch: TensorDictBase | None = None) -> None:
        self._average.lerp_(self._online, 1.0 - self.decay)

    def state_dict(self) -> dict[str, Any]:
        return {"average": self._average.clone().to_dict()}

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._average.update_(TensorDict(state_dict["average"], []))

    def register(self, trainer: Trainer, name: str = "policy_average") -> None:
        trainer.register_module(name, self)
        trainer.register_op("post_steps", self)


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _grad_norm(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """Total 2-norm of the gradients of ``optimizer``'s parameters."""
    grads = [p.grad for p in _params(optimizer) if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads).detach()


def _soft_update(loss_module: LossModule, tau: float) -> SoftUpdate:
    """A SoftUpdate of weight ``tau`` (TorchRL warns below eps=0.5; bulk is meant)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Found an eps value < 0.5")
        return SoftUpdate(loss_module, tau=tau)
