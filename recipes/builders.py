"""The ``make_*`` builders of the MuJoCo recipe: agents, memories, optimisers.

Each reads the composed config (``config.py``); ``cfg.algo`` is the chosen variant of
the ``algo`` config group. A new loss is one builder in :data:`LOSS_BUILDERS`, the
names of its critic and actor loss methods in :data:`STEP_METHODS`, a value of
``config.Loss`` and a file in ``algo/``.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from tensordict import TensorDictBase
from tensordict.nn import InteractionType, TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import (
    Bounded,
    RandomSampler,
    TensorDictReplayBuffer,
)
from torchrl.modules import AdditiveGaussianModule, ProbabilisticActor, TanhNormal
from torchrl.objectives import DDPGLoss, SACLoss, SoftUpdate, TD3Loss

from config import compile_enabled, network_precision
from torchrl_gem import (
    EpisodicMemory,
    GEMLoss,
    TwinBackPropEstimator,
    make_gem_actor,
    make_gem_critics,
)
from torchrl_gem._ensemble import call_ensemble
from torchrl_gem.estimator import default_twin_groups
from torchrl_gem.memory import replay_storage
from torchrl_gem.sil import SelfImitationHook, SelfImitationLoss
from torchrl_gem.trainer import BulkTargetUpdateHook


# ---------------------------------------------------------------------------
# Agent: networks, losses, value estimator, target updates
# ---------------------------------------------------------------------------
def make_networks(cfg: DictConfig, obs_dim: int, spec: Bounded):
    """The actor and the critics; GEM's reference nets or plain MLPs.

    The actor is deterministic, or a TanhNormal policy for ``loss=sac``.
    """
    algo, sizes = cfg.algo, tuple(cfg.network.hidden_sizes)
    if algo.loss == "sac":
        actor = make_sac_actor(cfg, obs_dim, spec)
    else:
        actor = make_gem_actor(
            obs_dim,
            spec,
            hidden_sizes=sizes,
            layer_norm=algo.layer_norm,
            init=cfg.network.init,
        )
    critics = make_gem_critics(
        obs_dim,
        spec.shape[-1],
        num_critics=algo.num_critics,
        hidden_sizes=sizes,
        layer_norm=algo.layer_norm,
        reinject_action=algo.reinject_action,
        init=cfg.network.init,
    )
    return actor, critics


class GaussianHead(nn.Module):
    """``[loc, log_std]`` -> ``(loc, exp(clamp(log_std, -20, 2)))``, in float32.

    The Gaussian parameters of stable-baselines' SAC policy (before the tanh). Under
    bf16 autocast the layers before it run in bf16; the distribution's math (the
    tanh, its log-determinant, the log-probability) must not: bf16 rounds tanh to 1
    from about 3.7 on, and the log-probability of a saturated action comes out
    wrong by orders of magnitude, which made SAC diverge.
    """

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_std = features.float().chunk(2, -1)
        return loc, log_std.clamp(-20.0, 2.0).exp()


def make_sac_actor(cfg: DictConfig, obs_dim: int, spec: Bounded) -> ProbabilisticActor:
    """SAC's policy: MLP -> (loc, std) -> TanhNormal squashed into the action bounds.

    Sampled during collection (plus the exploration noise); the deterministic
    evaluation takes ``tanh(loc)`` rescaled to the bounds (TanhNormal's
    ``deterministic_sample``), as stable-baselines' ``deterministic=True``.
    """
    layers: list[nn.Module] = []
    width = obs_dim
    for size in cfg.network.hidden_sizes:
        layers.append(nn.Linear(width, size))
        layers += [nn.LayerNorm(size)] if cfg.algo.layer_norm else []
        layers.append(nn.ReLU())
        width = size
    layers += [nn.Linear(width, 2 * spec.shape[-1]), GaussianHead()]
    net = nn.Sequential(*layers)
    if cfg.network.init == "glorot":
        for layer in net.modules():
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
        default_interaction_type=InteractionType.RANDOM,
    )


class SACLossWithTemperature(SACLoss):
    """TorchRL's SACLoss with one method for the actor step and the temperature step.

    :meth:`actor_and_alpha_loss` adds the temperature loss (its gradient reaches
    ``log_alpha`` only) to the actor loss (whose gradient reaches the actor only), so
    that :class:`~torchrl_gem.trainer.DelayedActorStepper` steps both with one
    optimiser holding the actor parameters and ``log_alpha``.
    """

    def actor_and_alpha_loss(self, tensordict: TensorDictBase):
        loss_actor, metadata = self.actor_loss(tensordict)
        loss_alpha = self.alpha_loss(metadata["log_prob"]).mean()
        return loss_actor + loss_alpha, metadata


def make_gem_loss(cfg, actor, critics, spec, noise_scale):
    return GEMLoss(
        actor,
        critics,
        action_spec=spec,
        target_assignment=cfg.algo.target_assignment,
        asymmetry=cfg.gem.asymmetry,
        actor_critics=cfg.gem.actor_critics,
        policy_noise=cfg.optim.policy_noise * noise_scale,
        noise_clip=cfg.optim.noise_clip * noise_scale,
    )


def make_td3_loss(cfg, actor, critics, spec, noise_scale):
    return TD3Loss(
        actor,
        critics,
        action_spec=spec,
        num_qvalue_nets=len(critics),
        policy_noise=cfg.optim.policy_noise * noise_scale,
        noise_clip=cfg.optim.noise_clip * noise_scale,
        loss_function="l2",  # stable-baselines' TD3 baseline: squared error
    )


def make_sac_loss(cfg, actor, critics, spec, noise_scale):
    return SACLossWithTemperature(
        actor,
        critics,
        num_qvalue_nets=len(critics),
        loss_function="l2",  # stable-baselines' SAC: squared error
        alpha_init=1.0,  # ent_coef="auto": log_ent_coef starts at 0
        target_entropy="auto",  # -|A|
        action_spec=spec,
    )


def make_ddpg_loss(cfg, actor, critics, spec, noise_scale):
    (critic,) = critics
    return DDPGLoss(
        actor,
        critic,
        loss_function="l2",
        delay_actor=True,  # stable-baselines' DDPG keeps a target actor
        delay_value=True,
    )


# `algo.loss` -> builder(cfg, actor, critics, action_spec, noise_scale).
LOSS_BUILDERS = {
    "gem": make_gem_loss,
    "td3": make_td3_loss,
    "td3_sil": make_td3_loss,  # the SIL steps are a hook: make_self_imitation
    "sac": make_sac_loss,
    "ddpg": make_ddpg_loss,
}

# `algo.loss` -> (critic loss method, actor loss method) for DelayedActorStepper.
STEP_METHODS = {
    "gem": ("value_loss", "actor_loss"),
    "td3": ("value_loss", "actor_loss"),
    "td3_sil": ("value_loss", "actor_loss"),
    "sac": ("qvalue_v2_loss", "actor_and_alpha_loss"),
    "ddpg": ("loss_value", "loss_actor"),
}


def attach_value_estimator(loss, cfg: DictConfig) -> None:
    """GEM returns (any loss, through ``TwinBackPropEstimator.for_loss``) or TD(0).

    The memory's target actions carry the loss's smoothing noise, or none with
    ``algo.memory_noise: false`` (the released BP agent). Call it after the target
    updater exists: the estimator reads target parameters.
    """
    if cfg.algo.returns != "tbp":
        loss.make_value_estimator(gamma=cfg.optim.gamma)
        return
    kwargs: dict[str, Any] = {
        "gamma": cfg.optim.gamma,
        "single_estimator": cfg.algo.single_estimator,
        "max_horizon": cfg.gem.max_horizon,
        "zero_tail": cfg.gem.zero_tail,
        "floor": cfg.gem.floor,
        "cross_evaluation": cfg.gem.cross_evaluation,
        "value_chunk_size": cfg.memory.value_chunk_size,
    }
    if not cfg.algo.memory_noise:
        kwargs["policy_noise"] = 0.0
    kwargs["precision"] = network_precision(cfg)
    kwargs["compile"] = compile_enabled(cfg)
    loss.make_value_estimator(TwinBackPropEstimator.for_loss(loss, **kwargs))


def make_agent(cfg: DictConfig, obs_dim: int, spec: Bounded):
    """The actor, the loss with its value estimator, and the target updater.

    Returns ``(actor, loss, per_step_target, bulk_target)``: one of the last two is
    ``None`` (``algo.target_update`` delayed: a SoftUpdate stepped with the actor;
    bulk: a hook run once per batch).
    """
    half_range = (spec.space.high - spec.space.low) / 2
    actor, critics = make_networks(cfg, obs_dim, spec)
    device = torch.device(cfg.network.device)
    actor, critics = actor.to(device), [critic.to(device) for critic in critics]
    loss = LOSS_BUILDERS[cfg.algo.loss](cfg, actor, critics, spec, half_range[0].item())
    loss = loss.to(device)
    per_step_target = bulk_target = None
    if cfg.algo.target_update == "delayed":
        per_step_target = SoftUpdate(loss, tau=cfg.optim.tau)
    else:
        bulk_target = BulkTargetUpdateHook(
            loss, tau=cfg.optim.tau, num_updates=cfg.algo.updates_per_batch
        )
    attach_value_estimator(loss, cfg)
    return actor, loss, per_step_target, bulk_target


def critic_parameters(loss):
    """The online critic parameters: ``qvalue_network_params`` (``[K, ...]``), or
    ``value_network_params`` for DDPGLoss's single critic."""
    params = getattr(loss, "qvalue_network_params", None)
    return loss.value_network_params if params is None else params


def make_optimizers(cfg: DictConfig, loss):
    """Adam for the actor (and SAC's temperature) and Adam for the critics."""
    actor_params = list(loss.actor_network_params.values(True, True))
    if isinstance(loss, SACLoss) and not loss.fixed_alpha:
        actor_params.append(loss.log_alpha)  # same lr as the actor, as released
    critic_params = list(critic_parameters(loss).values(True, True))
    # fused: one kernel per step instead of ~10 small ops per parameter tensor
    return (
        torch.optim.Adam(actor_params, lr=cfg.optim.actor_lr, fused=True),
        torch.optim.Adam(critic_params, lr=cfg.optim.critic_lr, fused=True),
    )


def make_self_imitation(cfg: DictConfig, loss, memory, critic_optim):
    """``loss=td3_sil``: the SIL term on ``loss``'s critics, stepped once per batch."""
    sil = cfg.sil
    term = SelfImitationLoss.attached_to(
        loss,
        action_source=str(sil.action_source),
        clip=sil.clip,
        coeff=sil.coeff,
        reduction="valid",
        min_valid=sil.min_valid,
    )
    return SelfImitationHook(
        memory,
        term,
        critic_optim,
        num_updates=sil.updates_per_batch,
        batch_size=sil.batch_size,
        priority_alpha=sil.priority_alpha,
        priority_beta=sil.priority_beta,
        max_grad_norm=sil.max_grad_norm,
        scale_by_weight_sum=sil.scale_by_weight_sum,
        start_frames=cfg.collector.init_random_frames,
        precision=network_precision(cfg),
        device=cfg.network.device,  # autocast where the critics run
    )


# ---------------------------------------------------------------------------
# Evaluation: the critics' view of the evaluation episodes
# ---------------------------------------------------------------------------
def make_critic_probe(loss):
    """``(observation, action)`` batch ``[N]`` -> ``[N, K]`` online critic values."""
    key = loss.tensor_keys.state_action_value
    params = getattr(loss, "qvalue_network_params", None)
    if params is not None:
        network = loss.qvalue_network

        def probe(batch: TensorDictBase) -> torch.Tensor:
            data = batch.select(*network.in_keys, strict=True)
            values = call_ensemble(network, params, data).get(key)  # [K, N, 1]
            return values.squeeze(-1).transpose(0, 1)

        return probe
    network, params = loss.value_network, loss.value_network_params

    def probe_one(batch: TensorDictBase) -> torch.Tensor:
        data = batch.select(*network.in_keys, strict=True).copy()
        with params.to_module(network, preserve_module_state=False):
            return network(data).get(key)  # [N, 1]

    return probe_one


def critic_groups(cfg: DictConfig) -> tuple[tuple[int, ...], ...]:
    """Critic groups whose ``min`` the evaluation reports besides the mean.

    GEM returns (tbp): the two twin groups; other losses with several critics: all of
    them (the clipped double-Q estimate); one critic: none.
    """
    num = cfg.algo.num_critics
    if cfg.algo.returns == "tbp":
        return default_twin_groups(num)
    return (tuple(range(num)),) if num > 1 else ()


# ---------------------------------------------------------------------------
# Interaction and memory
# ---------------------------------------------------------------------------
def make_exploration_policy(actor, spec: Bounded, sigma: torch.Tensor):
    """Actor + Gaussian noise of std ``sigma`` (env units), clipped to the bounds."""
    noise = AdditiveGaussianModule(
        spec=spec,
        sigma_init=1.0,
        sigma_end=1.0,
        annealing_num_steps=1,
        std=sigma.tolist(),
    )
    return TensorDictSequential(actor, noise)


def make_memory(cfg: DictConfig):
    """GEM's episodic memory (GEM, TD3+SIL), or a plain uniform TorchRL replay buffer.

    The memory's own NaN/inf guard is off: the recipes register
    :class:`~torchrl_gem.trainer.FiniteCheckHook` before it, which names the step.
    """
    if cfg.algo.memory == "episodic":
        return EpisodicMemory(
            capacity=cfg.memory.capacity,
            storage=cfg.memory.storage,
            batch_size=cfg.optim.batch_size,
            scratch_dir=cfg.memory.scratch_dir,
            check_finite=(),
            device=cfg.memory.device,
        )
    storage = replay_storage(  # checkpointed: the rows written, not the capacity
        cfg.memory.storage,
        cfg.memory.capacity,
        device=cfg.memory.device,
        scratch_dir=cfg.memory.scratch_dir,
    )
    return TensorDictReplayBuffer(
        storage=storage, sampler=RandomSampler(), batch_size=cfg.optim.batch_size
    )  # prefetch stays off: on 2 cores a prefetch thread competes with the update
