r"""GEM (Generalizable Episodic Memory, Hu et al. ICML 2021) on Gymnasium MuJoCo.

Built from TorchRL parts: ``GymEnv`` environments, a ``Collector`` (uniform random
warm-up, then the actor plus ``AdditiveGaussianModule`` noise), ``torchrl_gem``'s
``EpisodicMemory`` as the replay memory, and ``torchrl.trainers.Trainer`` with GEM's
schedule as hooks (``torchrl_gem.trainer``). Per collected batch of 100 frames the
trainer runs: bulk target update -> memory refresh (every ``memory.refresh_every``
batches) -> 200 critic steps with an actor step every 2nd -> evaluation every 10k
frames -> checkpoint.

Run from the repository root::

    python recipes/gem_mujoco.py                          # the paper's configuration
    python recipes/gem_mujoco.py env.name=Walker2d-v5 algo=td3 seed=3
    python recipes/gem_mujoco.py checkpoint.resume=runs/<...>/checkpoints/last.pt

README default: GEM on Hopper-v5 in about 10 minutes on 2 CPU cores, ending with
``curves.png`` in the run dir. It keeps GEM's schedule (200 critic steps per 100
frames, 4 critics, 100k memory) and shrinks the budget: 20k frames of which 4k
random warm-up (paper: 1M and 25k), 256-unit layers (paper: 400/300), an evaluation
every 2k frames. Expect a Hopper return of a few hundred, a demo, not a result::

    python recipes/gem_mujoco.py collector.total_frames=20000 \
        collector.init_random_frames=4000 'network.hidden_sizes=[256,256]' \
        logger.eval_interval=2000

The full paper budget is the default, ``collector.total_frames=1000000`` (15-20 h of
2 CPU cores for GEM). Every option is documented in ``gem_mujoco.yaml``; ``algo``
picks an entry of its ``algos`` table (gem, td3, bp, bp_4critics, gem_paired,
td3_tbp).
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from tensordict.nn import TensorDictSequential
from torchrl import timeit
from torchrl.collectors import Collector
from torchrl.data import (
    Bounded,
    LazyMemmapStorage,
    LazyTensorStorage,
    RandomSampler,
    TensorDictReplayBuffer,
)
from torchrl.envs import (
    Compose,
    DoubleToFloat,
    GymEnv,
    RewardSum,
    StepCounter,
    TransformedEnv,
)
from torchrl.modules import AdditiveGaussianModule
from torchrl.objectives import SoftUpdate, TD3Loss
from torchrl.record.loggers import get_logger
from torchrl.trainers import (
    LogTiming,
    ReplayBufferTrainer,
    Trainer,
)
from torchrl.trainers.trainers import UpdateWeights

from torchrl_gem import (
    EpisodicMemory,
    GEMLoss,
    TwinBackPropEstimator,
    make_gem_actor,
    make_gem_critics,
)
from torchrl_gem.checkpoint import (
    CheckpointError,
    CheckpointHook,
    StopSignal,
    capture_env_state,
    read_checkpoint,
    restore_env_state,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from torchrl_gem.trainer import (
    BulkTargetUpdateHook,
    DelayedActorStepper,
    EpisodeStats,
    EvaluationHook,
    FiniteCheckHook,
    MemoryRefreshHook,
    ProgressBar,
)

HERE = Path(__file__).resolve().parent
CONFIG_NAME = "gem_mujoco"
EVAL_SEED_OFFSET = 10_000  # evaluation episodes use their own seed stream


# ---------------------------------------------------------------------------
# Configuration checks: every error names its field, before any work is done
# ---------------------------------------------------------------------------
class ConfigError(ValueError):
    """An impossible or unknown setting; the message starts with the field name."""


PRESET_FIELDS = (
    "loss",
    "returns",
    "single_estimator",
    "memory_noise",
    "target_assignment",
    "memory",
    "num_critics",
    "layer_norm",
    "reinject_action",
    "updates_per_batch",
    "target_update",
)
PRESET_FLAGS = ("single_estimator", "memory_noise", "layer_norm", "reinject_action")
PRESET_CHOICES = {
    "returns": ("tbp", "td0"),
    "target_assignment": ("broadcast", "paired"),
    "memory": ("episodic", "replay"),
    "target_update": ("bulk", "delayed"),
}


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field}: {message}")


def _check_int(cfg: DictConfig, field: str, *, zero_ok: bool = False) -> None:
    """An integer > 0 (or >= 0 with ``zero_ok``)."""
    value = OmegaConf.select(cfg, field)
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (value >= 0 if zero_ok else value > 0)
    bound = ">= 0" if zero_ok else "> 0"
    _require(ok, field, f"must be an integer {bound}, got {value!r}")


def _in_range(cfg, field: str, low: float, high: float, *, open_low=False) -> None:
    value = OmegaConf.select(cfg, field)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (low < value if open_low else low <= value) and value <= high
    interval = f"{'(' if open_low else '['}{low}, {high}]"
    _require(ok, field, f"must lie in {interval}, got {value!r}")


def validate_config(cfg: DictConfig) -> DictConfig:
    """Check ``cfg`` and return the selected ``algos`` entry, or raise ConfigError."""
    _require(cfg.algo in cfg.algos, "algo", _unknown(cfg.algo, list(cfg.algos)))
    preset = cfg.algos[cfg.algo]
    field = f"algos.{cfg.algo}"
    for key in PRESET_FIELDS:
        _require(key in preset, f"{field}.{key}", "missing from the algos entry")
    _require(
        preset.loss in LOSS_BUILDERS,
        f"{field}.loss",
        _unknown(preset.loss, LOSS_BUILDERS),
    )
    for key, choices in PRESET_CHOICES.items():
        _require(
            preset[key] in choices, f"{field}.{key}", _unknown(preset[key], choices)
        )
    for key in PRESET_FLAGS:
        _require(
            isinstance(preset[key], bool),
            f"{field}.{key}",
            f"must be true or false, got {preset[key]!r}",
        )
    _check_int(cfg, f"{field}.updates_per_batch")
    _check_int(cfg, f"{field}.num_critics")
    if preset.returns == "tbp":
        _require(
            preset.memory == "episodic",
            f"{field}.memory",
            "twin back-propagated returns (returns=tbp) need memory=episodic",
        )
        _require(
            preset.num_critics % 2 == 0 and preset.num_critics >= 2,
            f"{field}.num_critics",
            f"returns=tbp needs an even number of critics, got {preset.num_critics}",
        )
    if preset.loss == "gem":
        _require(preset.returns == "tbp", f"{field}.returns", "GEMLoss needs tbp")
    if preset.target_assignment == "paired":
        _require(
            preset.loss == "gem", f"{field}.target_assignment", "paired is GEMLoss only"
        )

    _require(
        isinstance(cfg.seed, int) and cfg.seed >= 0,
        "seed",
        f"must be an integer >= 0, got {cfg.seed!r}",
    )
    _check_env_name(cfg.env.name)
    _check_int(cfg, "env.max_episode_steps")

    for name in ("total_frames", "frames_per_batch"):
        _check_int(cfg, f"collector.{name}")
    _check_int(cfg, "collector.init_random_frames", zero_ok=True)
    _in_range(cfg, "collector.exploration_sigma", 0.0, math.inf)

    _check_int(cfg, "memory.capacity")
    _require(
        cfg.memory.storage in ("tensor", "memmap"),
        "memory.storage",
        _unknown(cfg.memory.storage, ("tensor", "memmap")),
    )
    _check_int(cfg, "memory.refresh_every")  # whole batches: no refresh mid-batch
    if cfg.memory.value_chunk_size is not None:
        _check_int(cfg, "memory.value_chunk_size")
    _require(
        cfg.collector.frames_per_batch <= cfg.memory.capacity,
        "collector.frames_per_batch",
        f"a batch of {cfg.collector.frames_per_batch} frames does not fit in "
        f"memory.capacity={cfg.memory.capacity}",
    )

    _check_int(cfg, "optim.batch_size")
    _require(
        cfg.optim.batch_size <= cfg.memory.capacity,
        "optim.batch_size",
        f"{cfg.optim.batch_size} is larger than memory.capacity={cfg.memory.capacity}",
    )
    _in_range(cfg, "optim.actor_lr", 0.0, math.inf, open_low=True)
    _in_range(cfg, "optim.critic_lr", 0.0, math.inf, open_low=True)
    _in_range(cfg, "optim.gamma", 0.0, 1.0)
    _in_range(cfg, "optim.tau", 0.0, 1.0, open_low=True)
    _check_int(cfg, "optim.policy_delay")
    _in_range(cfg, "optim.policy_noise", 0.0, math.inf)
    _in_range(cfg, "optim.noise_clip", 0.0, math.inf)
    if cfg.optim.num_threads is not None:
        _check_int(cfg, "optim.num_threads")

    sizes = cfg.network.hidden_sizes
    _require(
        OmegaConf.is_list(sizes)
        and len(sizes) > 0
        and all(isinstance(s, int) and s > 0 for s in sizes),
        "network.hidden_sizes",
        f"must be a non-empty list of positive integers, got {sizes!r}",
    )
    _require(
        cfg.network.init in ("glorot", "torch"),
        "network.init",
        _unknown(cfg.network.init, ("glorot", "torch")),
    )

    _in_range(cfg, "gem.asymmetry", 0.0, 1.0, open_low=True)
    _require(
        cfg.gem.actor_critics in ("mean", "first"),
        "gem.actor_critics",
        _unknown(cfg.gem.actor_critics, ("mean", "first")),
    )
    if cfg.gem.max_horizon is not None:
        _check_int(cfg, "gem.max_horizon")
    _require(
        cfg.gem.floor in ("own", "selector"),
        "gem.floor",
        _unknown(cfg.gem.floor, ("own", "selector")),
    )

    backends = list(cfg.logger.backends)
    for backend, module in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        _require(
            backend not in backends or importlib.util.find_spec(module) is not None,
            "logger.backends",
            f"{backend} is selected but the {module!r} package is not installed",
        )
    for backend in backends:
        _require(
            backend in ("csv", "tensorboard", "wandb"),
            "logger.backends",
            _unknown(backend, ("csv", "tensorboard", "wandb")),
        )
    _require(
        not cfg.logger.plot or "csv" in backends,
        "logger.plot",
        "the plot reads the csv logs: add csv to logger.backends",
    )
    _check_int(cfg, "logger.eval_interval")
    _check_int(cfg, "logger.eval_episodes")
    _check_int(cfg, "logger.log_interval", zero_ok=True)

    _check_int(cfg, "checkpoint.interval", zero_ok=True)
    if cfg.checkpoint.stop_after is not None:
        _check_int(cfg, "checkpoint.stop_after")
    if cfg.checkpoint.resume is not None:
        resolve_checkpoint_path(cfg.checkpoint.resume)
    return preset


def _unknown(value, choices) -> str:
    choices = sorted(choices)
    hint = difflib.get_close_matches(str(value), choices, n=1)
    maybe = f" (did you mean {hint[0]!r}?)" if hint else ""
    return f"unknown value {value!r}{maybe}; choose one of {choices}"


def _check_env_name(name: str) -> None:
    import gymnasium

    if name in gymnasium.envs.registry:
        return
    hints = difflib.get_close_matches(str(name), list(gymnasium.envs.registry), n=3)
    maybe = f"; did you mean {', '.join(map(repr, hints))}?" if hints else ""
    raise ConfigError(f"env.name: unknown Gymnasium environment {name!r}{maybe}")


# ---------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------
def make_env(cfg: DictConfig, seed: int) -> TransformedEnv:
    """GymEnv + float32 observations + episode step counter + episode return.

    ``done``, ``terminated`` (no bootstrap) and ``truncated`` (the time limit) stay
    distinct, as Gymnasium reports them.
    """
    try:
        base = GymEnv(cfg.env.name, max_episode_steps=cfg.env.max_episode_steps)
    except Exception as err:  # noqa: BLE001 - any failure is reported with the field
        raise ConfigError(f"env.name: cannot create {cfg.env.name!r}: {err}") from err
    env = TransformedEnv(base, Compose(DoubleToFloat(), StepCounter(), RewardSum()))
    env.set_seed(seed)
    return env


def action_half_range(env: TransformedEnv, name: str) -> tuple[Bounded, torch.Tensor]:
    """The bounded action spec and its half-range (normalised noise -> env units)."""
    spec = env.action_spec
    _require(
        isinstance(spec, Bounded)
        and bool(torch.isfinite(spec.space.low).all())
        and bool(torch.isfinite(spec.space.high).all()),
        "env.name",
        f"{name} needs a bounded continuous action space, got {type(spec).__name__}",
    )
    _require(
        env.observation_spec["observation"].ndim == 1,
        "env.name",
        f"{name} needs a flat 'observation'",
    )
    return spec, (spec.space.high - spec.space.low) / 2


# ---------------------------------------------------------------------------
# Agent: networks, losses, memory
# ---------------------------------------------------------------------------
def make_networks(cfg: DictConfig, preset: DictConfig, obs_dim: int, spec: Bounded):
    """The deterministic actor and the critics; GEM's reference nets or plain MLPs."""
    sizes = tuple(cfg.network.hidden_sizes)
    actor = make_gem_actor(
        obs_dim,
        spec,
        hidden_sizes=sizes,
        layer_norm=preset.layer_norm,
        init=cfg.network.init,
    )
    critics = make_gem_critics(
        obs_dim,
        spec.shape[-1],
        num_critics=preset.num_critics,
        hidden_sizes=sizes,
        layer_norm=preset.layer_norm,
        reinject_action=preset.reinject_action,
        init=cfg.network.init,
    )
    return actor, critics


def _estimator_kwargs(cfg: DictConfig, preset: DictConfig) -> dict[str, Any]:
    return {
        "gamma": cfg.optim.gamma,
        "single_estimator": preset.single_estimator,
        "max_horizon": cfg.gem.max_horizon,
        "zero_tail": cfg.gem.zero_tail,
        "floor": cfg.gem.floor,
        "value_chunk_size": cfg.memory.value_chunk_size,
    }


def make_gem_loss(cfg, preset, actor, critics, spec, noise_scale):
    return GEMLoss(
        actor,
        critics,
        action_spec=spec,
        target_assignment=preset.target_assignment,
        asymmetry=cfg.gem.asymmetry,
        actor_critics=cfg.gem.actor_critics,
        policy_noise=cfg.optim.policy_noise * noise_scale,
        noise_clip=cfg.optim.noise_clip * noise_scale,
    )


def make_td3_loss(cfg, preset, actor, critics, spec, noise_scale):
    return TD3Loss(
        actor,
        critics,
        action_spec=spec,
        num_qvalue_nets=len(critics),
        policy_noise=cfg.optim.policy_noise * noise_scale,
        noise_clip=cfg.optim.noise_clip * noise_scale,
        loss_function="l2",  # stable-baselines' TD3 baseline: squared error
    )


def attach_value_estimator(loss, cfg: DictConfig, preset: DictConfig) -> None:
    """GEM returns (any loss, through ``TwinBackPropEstimator.for_loss``) or TD(0).

    The memory's target actions carry the loss's smoothing noise, or none with
    ``memory_noise: false`` (the released BP agent). Call it after the target updater
    exists: the estimator reads target parameters.
    """
    if preset.returns == "tbp":
        kwargs = _estimator_kwargs(cfg, preset)
        if not preset.memory_noise:
            kwargs["policy_noise"] = 0.0
        loss.make_value_estimator(TwinBackPropEstimator.for_loss(loss, **kwargs))
    else:
        loss.make_value_estimator(gamma=cfg.optim.gamma)


# `algos.<name>.loss` -> builder(cfg, preset, actor, critics, action_spec, noise_scale).
# A new loss (e.g. SAC with GEM returns) is one builder here plus an `algos` entry.
LOSS_BUILDERS = {"gem": make_gem_loss, "td3": make_td3_loss}


def make_agent(cfg: DictConfig, preset: DictConfig, obs_dim: int, spec: Bounded):
    """The actor, the loss with its value estimator, and the target updater.

    Returns ``(actor, loss, per_step_target, bulk_target)``: one of the last two is
    ``None`` (``target_update`` delayed: a SoftUpdate stepped with the actor; bulk: a
    hook run once per batch).
    """
    half_range = (spec.space.high - spec.space.low) / 2
    actor, critics = make_networks(cfg, preset, obs_dim, spec)
    loss = LOSS_BUILDERS[preset.loss](
        cfg, preset, actor, critics, spec, half_range[0].item()
    )
    per_step_target = bulk_target = None
    if preset.target_update == "delayed":
        per_step_target = SoftUpdate(loss, tau=cfg.optim.tau)
    else:
        bulk_target = BulkTargetUpdateHook(
            loss, tau=cfg.optim.tau, num_updates=preset.updates_per_batch
        )
    attach_value_estimator(loss, cfg, preset)
    return actor, loss, per_step_target, bulk_target


def make_memory(cfg: DictConfig, preset: DictConfig):
    """GEM's episodic memory, or a plain uniform TorchRL replay buffer (TD3)."""
    if preset.memory == "episodic":
        return EpisodicMemory(
            capacity=cfg.memory.capacity,
            storage=cfg.memory.storage,
            batch_size=cfg.optim.batch_size,
            scratch_dir=cfg.memory.scratch_dir,
        )
    storage = (
        LazyTensorStorage(cfg.memory.capacity)
        if cfg.memory.storage == "tensor"
        else LazyMemmapStorage(cfg.memory.capacity, scratch_dir=cfg.memory.scratch_dir)
    )
    return TensorDictReplayBuffer(
        storage=storage, sampler=RandomSampler(), batch_size=cfg.optim.batch_size
    )  # prefetch stays off: on 2 cores a prefetch thread competes with the update


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


def make_optimizers(cfg: DictConfig, loss):
    actor_params = list(loss.actor_network_params.values(True, True))
    critic_params = list(loss.qvalue_network_params.values(True, True))
    # fused: one kernel per step instead of ~10 small ops per parameter tensor
    return (
        torch.optim.Adam(actor_params, lr=cfg.optim.actor_lr, fused=True),
        torch.optim.Adam(critic_params, lr=cfg.optim.critic_lr, fused=True),
    )


# ---------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------
class FanOutLogger:
    """Forwards every call to several TorchRL loggers (e.g. csv + wandb)."""

    def __init__(self, loggers: list) -> None:
        self.loggers = loggers

    def __getattr__(self, name: str):
        methods = [getattr(logger, name) for logger in self.loggers]
        return lambda *args, **kwargs: [method(*args, **kwargs) for method in methods]


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The config as a flat ``{"optim.actor_lr": 3e-4, ...}`` of scalars.

    TensorBoard's hparams accept nothing else; of ``algos`` only the chosen entry.
    """
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree["algos"] = {cfg.algo: tree["algos"][cfg.algo]}
    flat, stack = {}, [("", tree)]
    while stack:
        prefix, node = stack.pop()
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                stack.append((f"{name}.", value))
            else:
                keep = isinstance(value, (int, float, str, bool))
                flat[name] = value if keep else str(value)
    return dict(sorted(flat.items()))


def make_logger(cfg: DictConfig, run_dir: Path):
    name = f"{cfg.algo}_{cfg.env.name}_seed{cfg.seed}"
    loggers = []
    for backend in cfg.logger.backends:
        experiment = {"csv": "logs", "tensorboard": "tensorboard"}.get(backend, name)
        wandb_kwargs = {
            "project": cfg.logger.project_name,
            "mode": cfg.logger.wandb_mode,
            "config": OmegaConf.to_container(cfg, resolve=True),
        }
        loggers.append(
            get_logger(
                backend,
                logger_name=str(run_dir),
                experiment_name=experiment,
                wandb_kwargs=wandb_kwargs,
            )
        )
    if not loggers:
        return None
    return loggers[0] if len(loggers) == 1 else FanOutLogger(loggers)


# ---------------------------------------------------------------------------
# Checkpoints (file format and hooks: torchrl_gem.checkpoint): what must match
# ---------------------------------------------------------------------------
CHECKPOINT_KEYS = ("identity", "run_dir", "frames", "trainer", "env", "carrier", "rng")


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    _require(
        path.is_file(), "checkpoint.resume", f"no checkpoint file at {str(path)!r}"
    )
    return path


def run_identity(cfg: DictConfig, preset: DictConfig) -> dict[str, Any]:
    """The settings a checkpoint must share with the run that resumes it."""
    return {
        "env.name": cfg.env.name,
        "algo": cfg.algo,
        "seed": cfg.seed,
        f"algos.{cfg.algo}": OmegaConf.to_container(preset, resolve=True),
        "network.hidden_sizes": list(cfg.network.hidden_sizes),
        "collector.frames_per_batch": cfg.collector.frames_per_batch,
        "memory.capacity": cfg.memory.capacity,
        "memory.storage": cfg.memory.storage,
    }


def check_identity(path: Path, saved: dict, current: dict) -> None:
    problems = [
        f"{key}: checkpoint has {saved.get(key)!r}, this run has {value!r}"
        for key, value in current.items()
        if saved.get(key) != value
    ]
    if problems:
        raise CheckpointError(
            f"{path} belongs to another run and was not loaded:\n  "
            + "\n  ".join(problems)
        )


def _structure(tree, prefix: str = "") -> dict[str, Any]:
    """Flattened key -> shape (tensors) / type name (leaves) of a state dict."""
    out = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(_structure(value, f"{prefix}/{key}"))
    elif isinstance(tree, torch.Tensor):
        out[prefix] = tuple(tree.shape)
    else:
        out[prefix] = type(tree).__name__
    return out


def check_structure(path: Path, payload: dict, trainer: Trainer, env) -> None:
    """Same components, parameter shapes, optimiser layout and env state layout."""
    saved, current = payload["trainer"], trainer.state_dict()
    problems = []
    env_now, env_saved = capture_env_state(env), payload["env"]
    if (env_now is None) != (env_saved is None) or (
        env_now is not None
        and (
            env_now["mujoco"].shape != env_saved["mujoco"].shape
            or len(env_now["elapsed_steps"]) != len(env_saved["elapsed_steps"])
        )
    ):
        problems.append("the environment's state layout differs")
    if set(saved) != set(current):
        problems.append(f"components {sorted(saved)} != {sorted(current)}")
    else:
        want = _structure(current["loss_module"])
        have = _structure(saved["loss_module"])
        if want != have:
            diff = sorted(set(want.items()) ^ set(have.items()))[:5]
            problems.append(f"network parameters differ, e.g. {diff}")
        for name in ("actor_optimizer", "critic_optimizer"):
            groups = [
                len(group["params"])
                for group in saved["optimization_stepper"][name]["param_groups"]
            ]
            expected = [
                len(group["params"])
                for group in current["optimization_stepper"][name]["param_groups"]
            ]
            if groups != expected:
                problems.append(f"{name} has {groups} parameters, expected {expected}")
    if problems:
        raise CheckpointError(
            f"{path} does not fit this run and was not loaded: " + "; ".join(problems)
        )


# ---------------------------------------------------------------------------
# Progress and summary
# ---------------------------------------------------------------------------


TIMERS = (
    ("collect", "collect"),
    ("memory write", "hook/extend"),
    ("target update", "hook/bulk_target_update"),
    ("memory refresh", "memory/refresh"),
    ("sample", "hook/sample"),
    ("update", "update"),
    ("eval", "eval"),
    ("checkpoint", "checkpoint"),
)


def timing_breakdown() -> dict[str, float]:
    """Total seconds per phase, from TorchRL's ``timeit`` registry."""
    registry = timeit._REG
    return {label: registry[key][1] for label, key in TIMERS if key in registry}


def print_summary(summary: dict[str, Any]) -> None:
    evals = summary["evaluations"]
    lines = [
        "=" * 72,
        f"{summary['algo']} on {summary['env']} (seed {summary['seed']}): "
        f"{summary['status']} at {summary['frames']} / {summary['total_frames']} "
        "frames",
        f"run dir      {summary['run_dir']}",
        f"wall-clock   {summary['wall_s']:.1f} s this session, "
        f"{summary['frames_per_s']:.0f} frames/s",
    ]
    if evals:
        best = max(evals, key=lambda item: item[1])
        lines.append(
            f"evaluation   last {evals[-1][1]:.1f} (frame {evals[-1][0]}), best "
            f"{best[1]:.1f} (frame {best[0]}), {len(evals)} evaluations"
        )
    timing = summary["timing"]
    if timing:
        total = summary["wall_s"]
        parts = [
            f"{k} {v:.1f}s ({100 * v / max(total, 1e-9):.0f}%)"
            for k, v in timing.items()
        ]
        lines.append("time         " + ", ".join(parts[:4]))
        if parts[4:]:
            lines.append("             " + ", ".join(parts[4:]))
    if summary["checkpoint"]:
        lines.append(f"checkpoint   {summary['checkpoint']}")
    if summary.get("resume_hint"):
        lines.append(f"resume with  {summary['resume_hint']}")
    if summary.get("plot"):
        lines.append(f"plot         {summary['plot']}")
    lines.append("=" * 72)
    print("\n".join(lines))


def _load_plot_module():
    spec = importlib.util.spec_from_file_location("gem_recipe_plot", HERE / "plot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def restore_run(trainer, collector, memory, env, payload: dict) -> None:
    """Load a verified checkpoint into a freshly built, identical run."""
    trainer.load_state_dict(payload["trainer"])
    if payload["env"] is not None:
        restore_env_state(env, payload["env"])
        carrier = TensorDict(
            payload["carrier"], batch_size=collector._carrier.batch_size
        )
        collector._carrier.update(carrier)
        # Collector.load_state_dict drew a fresh trajectory id; continue the old one.
        collector._traj_pool.load_state_dict(
            payload["trainer"]["collector"]["traj_pool"]
        )
    else:
        warnings.warn(
            "This environment's state cannot be saved: the run resumes with a new "
            "episode and is not bit-identical to an uninterrupted one.",
            stacklevel=2,
        )
        if hasattr(memory, "close_open_episodes"):
            memory.close_open_episodes()
    set_rng_state(payload["rng"])


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
def resume_command(path: Path | None) -> str:
    """The command line that continues this run from ``path``."""
    from hydra.core.hydra_config import HydraConfig

    overrides = ["<same overrides>"]
    if HydraConfig.initialized():
        overrides = [
            item
            for item in HydraConfig.get().overrides.task
            if not item.startswith("checkpoint.resume=")
        ]
    return " ".join(
        ["python recipes/gem_mujoco.py", *overrides, f"checkpoint.resume={path}"]
    )


def resolve_run_dir(cfg: DictConfig, resumed: dict | None) -> Path:
    if cfg.logger.run_dir:
        return Path(cfg.logger.run_dir)
    if resumed is not None and Path(resumed["run_dir"]).is_dir():
        return Path(resumed["run_dir"])  # keep appending to the interrupted run's logs
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / cfg.env.name / cfg.algo / f"seed{cfg.seed}_{stamp}"


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) one training run described by ``cfg``; returns its summary."""
    wall_start = time.perf_counter()
    preset = validate_config(cfg)
    identity = run_identity(cfg, preset)
    resumed = None
    if cfg.checkpoint.resume is not None:
        path = resolve_checkpoint_path(cfg.checkpoint.resume)
        resumed = read_checkpoint(path, required=CHECKPOINT_KEYS)
        check_identity(path, resumed["identity"], identity)

    torch.set_num_threads(cfg.optim.num_threads or len(os.sched_getaffinity(0)))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    timeit.erase()

    train_env = make_env(cfg, cfg.seed)
    eval_env = make_env(cfg, cfg.seed + EVAL_SEED_OFFSET)
    spec, half_range = action_half_range(train_env, cfg.env.name)
    _require(
        bool((half_range == half_range[0]).all()),
        "env.name",
        f"{cfg.env.name} has action bounds of different widths; the normalised "
        "noise settings need equal half-ranges",
    )
    obs_dim = train_env.observation_spec["observation"].shape[-1]

    actor, loss, per_step_target, bulk_target = make_agent(cfg, preset, obs_dim, spec)
    memory = make_memory(cfg, preset)
    policy = make_exploration_policy(
        actor, spec, cfg.collector.exploration_sigma * half_range
    )
    collector = Collector(
        train_env,
        policy,
        frames_per_batch=cfg.collector.frames_per_batch,
        total_frames=cfg.collector.total_frames,
        init_random_frames=cfg.collector.init_random_frames or None,
        pre_collect_hook=lambda: timeit.mark_start("collect"),
        post_collect_hook=lambda batch: timeit.mark_end("collect"),
        auto_register_policy_transforms=False,  # no recurrent policy: nothing to add
    )
    actor_optim, critic_optim = make_optimizers(cfg, loss)
    stepper = DelayedActorStepper(
        actor_optim,
        critic_optim,
        policy_delay=cfg.optim.policy_delay,
        target_updater=per_step_target,
    )
    run_dir = resolve_run_dir(cfg, resumed)
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = make_logger(cfg, run_dir)
    trainer = Trainer(
        collector=collector,
        total_frames=cfg.collector.total_frames,
        frame_skip=1,
        optim_steps_per_batch=preset.updates_per_batch,
        loss_module=loss,
        optimization_stepper=stepper,
        logger=logger,
        progress_bar=False,  # ours below also shows frames/s and the last evaluation
        log_interval=cfg.logger.log_interval,
    )

    # GEM's schedule as hooks, in the order the trainer runs them within a batch.
    FiniteCheckHook().register(trainer)  # batch_process: NaN/inf guard, first
    memory_hook = ReplayBufferTrainer(memory, batch_size=cfg.optim.batch_size)
    trainer.register_module("replay_buffer", memory_hook)
    trainer.register_op("batch_process", memory_hook.extend)
    trainer.register_op("process_optim_batch", memory_hook.sample)
    stats = EpisodeStats()
    stats.register(trainer)  # pre_steps_log
    if bulk_target is not None:
        bulk_target.register(trainer)  # pre_optim_steps, before the refresh
    if preset.returns == "tbp":
        MemoryRefreshHook(
            memory, loss.value_estimator, every=cfg.memory.refresh_every
        ).register(trainer)  # pre_optim_steps
    UpdateWeights(collector, update_weights_interval=1).register(trainer)  # post_steps
    evaluation = EvaluationHook(
        eval_env,
        actor,
        interval=cfg.logger.eval_interval,
        num_episodes=cfg.logger.eval_episodes,
        max_steps=cfg.env.max_episode_steps,
        seed=cfg.seed + EVAL_SEED_OFFSET,
    )
    evaluation.register(trainer)  # setup + post_steps_log
    LogTiming(prefix="time", percall=False).register(trainer)  # post_steps_log
    progress = ProgressBar(trainer, stats, evaluation, cfg.logger.progress_bar)
    trainer.register_op("post_steps_log", progress)
    stop_signal = StopSignal()
    checkpoint_path = run_dir / "checkpoints" / "last.pt"

    def save() -> Path:
        payload = {
            "identity": identity,
            "run_dir": str(run_dir),
            "frames": trainer.collected_frames,
            "trainer": trainer.state_dict(),
            "env": capture_env_state(train_env),
            "carrier": collector._carrier.clone().to_dict(),
            "rng": rng_state(),
        }
        write_checkpoint(checkpoint_path, payload)
        return checkpoint_path

    checkpointer = CheckpointHook(
        save,
        interval=cfg.checkpoint.interval,
        stop_after=cfg.checkpoint.stop_after,
        stop_signal=stop_signal,
    )
    checkpointer.register(trainer)  # post_steps_log, last

    if resumed is not None:
        check_structure(path, resumed, trainer, train_env)
        restore_run(trainer, collector, memory, train_env, resumed)
        print(f"Resumed {path} at frame {trainer.collected_frames}.")
    else:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        if logger is not None:
            logger.log_hparams(flat_hparams(cfg))
    info = {
        "env": cfg.env.name,
        "algo": cfg.algo,
        "seed": cfg.seed,
        "total_frames": cfg.collector.total_frames,
    }
    (run_dir / "run_info.json").write_text(json.dumps(info, indent=2))

    start_frames = trainer.collected_frames
    train_start = time.perf_counter()
    with stop_signal:
        progress.start()
        try:
            trainer.train()
        finally:
            progress.close()
    train_time = time.perf_counter() - train_start

    frames = trainer.collected_frames
    timing = timing_breakdown()
    if logger is not None:
        logger.log_metrics(timeit.todict(percall=False, prefix="time"), step=frames)
    finished = frames >= cfg.collector.total_frames
    summary = {
        "algo": cfg.algo,
        "env": cfg.env.name,
        "seed": cfg.seed,
        "status": "finished" if finished else f"stopped ({checkpointer.stopped_by})",
        "signal": stop_signal.signum,
        "frames": frames,
        "total_frames": cfg.collector.total_frames,
        "run_dir": str(run_dir),
        "wall_s": time.perf_counter() - wall_start,
        "frames_per_s": (frames - start_frames) / max(train_time, 1e-9),
        "evaluations": list(evaluation.history),
        "final_return": evaluation.last_return,
        "timing": timing,
        "checkpoint": str(checkpointer.path) if checkpointer.path else None,
        "plot": None,
        "resume_hint": None if finished else resume_command(checkpointer.path),
    }
    if cfg.logger.plot and finished:
        plot = _load_plot_module()
        out = run_dir / "curves.png"
        plot.plot_runs([run_dir], out, quiet=True)
        summary["plot"] = str(out)
    print_summary(summary)
    return summary


def load_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose the recipe's config with command-line style overrides (for tests)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(HERE), version_base="1.3"):
        return compose(config_name=CONFIG_NAME, overrides=list(overrides))


@hydra.main(version_base="1.3", config_path=".", config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> None:
    try:
        summary = train(cfg)
    except (ConfigError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None
    if summary["signal"] is not None:
        raise SystemExit(128 + summary["signal"])


if __name__ == "__main__":
    main()
