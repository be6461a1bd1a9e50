"""Environments and the collectors that step them, for both recipes.

Environments: the MuJoCo tasks (:func:`make_env`: float32 observations, a step
counter, the episode return) and the ALE games with DQN's standard preprocessing
(:func:`make_atari_env`).

``collector.backend`` picks the engine that steps them (:func:`make_collector`, one
factory for every layout):

- ``single``: :class:`torchrl.collectors.Collector` in the learner's process (one
  env, or a ``SerialEnv`` of ``collector.envs_per_worker``);
- ``process``: ``Collector(backend="process", sync=True)``, i.e. TorchRL's
  ``MultiSyncCollector``: ``collector.num_workers`` processes, each stepping a
  ``SerialEnv`` of ``collector.envs_per_worker`` environments;
- ``ray``: ``Collector(backend="ray", sync=True)``, i.e. TorchRL's ``RayCollector``:
  one Ray actor per worker (on this machine or a cluster), same layout.

Every cycle gathers ``collector.frames_per_batch`` frames split evenly over all
environments, then the learner (networks, memory, refresh, gradient steps) runs in
this process and pushes the new policy weights through the collector's
``update_policy_weights_`` (TorchRL's weight-sync schemes: shared memory for
processes, the Ray object store for actors).

What the recipes adapt, in :class:`WorkerBatches` (the worker backends' ``postproc``):
the stacked ``[workers, envs, T]`` batch becomes ``[workers * envs, T]`` rows, one
contiguous time series per environment, the layout ``EpisodicMemory.extend`` reads.
Trajectory ids: the process collector draws them from one shared pool (unique
already); Ray actors each count from 0, so their ids are made unique by interleaving
(``id * workers + worker``). Episode boundaries are the environments' own
``done``/``terminated``/``truncated`` flags, untouched.

This module imports nothing of the recipes but ``config`` (for ``ConfigError``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from omegaconf import DictConfig
from tensordict import TensorDictBase
from torchrl import timeit
from torchrl.collectors import Collector
from torchrl.data import Bounded
from torchrl.envs import (
    CatFrames,
    Compose,
    DoubleToFloat,
    GymEnv,
    GymWrapper,
    RenameTransform,
    RewardClipping,
    RewardSum,
    SerialEnv,
    StepCounter,
    TransformedEnv,
    UnsqueezeTransform,
)

from config import ConfigError

HERE = Path(__file__).resolve().parent
TRAJ_KEY = ("collector", "traj_ids")
EVAL_SEED_OFFSET = 10_000  # evaluation episodes use their own seed stream
PIXELS = "pixels"  # the Atari stacked-frame observation key, what the Q-networks read


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
    if not (
        isinstance(spec, Bounded)
        and bool(torch.isfinite(spec.space.low).all())
        and bool(torch.isfinite(spec.space.high).all())
    ):
        raise ConfigError(
            f"env.name: {name} needs a bounded continuous action space, got "
            f"{type(spec).__name__}"
        )
    if env.observation_spec["observation"].ndim != 1:
        raise ConfigError(f"env.name: {name} needs a flat 'observation'")
    half_range = (spec.space.high - spec.space.low) / 2
    if not bool((half_range == half_range[0]).all()):
        raise ConfigError(
            f"env.name: {name} has action bounds of different widths; the "
            "normalised noise settings need equal half-ranges"
        )
    return spec, half_range


def make_atari_env(cfg: DictConfig, seed: int, *, clip_rewards: bool) -> TransformedEnv:
    """An ALE game with DQN's standard preprocessing, as a TorchRL env.

    Gymnasium's ``AtariPreprocessing`` does what TorchRL's transforms cannot (frame
    skip with a max-pool over the last two frames, INTER_AREA resize) on an id made
    with frame skip 1 and the sticky-action probability of ``env``; TorchRL's
    transforms then stack frames (``CatFrames``, padded at reset with the first
    frame), count steps, sum the raw rewards (``episode_reward``) and, for the
    training env, clip the learning reward to [-1, 1] after that sum.
    ``done``/``terminated``/``truncated`` stay distinct: the 27k-step cap (ALE's
    ``max_num_frames_per_episode``) is a truncation. The released GEM code keeps the
    last frame of each skip instead of the max-pool (``<Game>Deterministic-v4``) and
    converts it with OpenCV's RGB-to-gray, where ALE's grayscale is used here.
    """
    import ale_py
    import gymnasium

    gymnasium.register_envs(ale_py)
    env_cfg = cfg.env
    game = gymnasium.make(
        env_cfg.name,
        frameskip=1,  # AtariPreprocessing skips, with the max-pool
        repeat_action_probability=env_cfg.repeat_action_probability,
        max_num_frames_per_episode=env_cfg.max_episode_steps * env_cfg.frame_skip,
    )
    game = gymnasium.wrappers.AtariPreprocessing(
        game,
        noop_max=env_cfg.noop_max,
        frame_skip=env_cfg.frame_skip,
        screen_size=env_cfg.screen_size,
        terminal_on_life_loss=False,  # an episode is the whole game, as released
        grayscale_obs=True,
        scale_obs=False,  # uint8 frames: the Q-networks scale by 1/255
    )
    transforms = [
        RenameTransform(["observation"], [PIXELS]),
        UnsqueezeTransform(-3, in_keys=[PIXELS]),  # [84, 84] -> [1, 84, 84]
        CatFrames(N=env_cfg.frame_stack, dim=-3, in_keys=[PIXELS]),
        StepCounter(),
        RewardSum(),  # raw game score, before the clipping below
    ]
    if clip_rewards and env_cfg.clip_rewards:
        transforms.append(RewardClipping(-1.0, 1.0))
    env = TransformedEnv(GymWrapper(game), Compose(*transforms))
    env.set_seed(seed)
    return env


def collector_step(env, policy) -> TensorDictBase:
    """One transition as the collector delivers it, zeros: the entries of ``env``'s
    step, those ``policy`` writes but private ones (``_``-prefixed, which collectors
    drop) and the trajectory id; what a replay memory stores per step. The random
    numbers the policy draws are given back."""
    step = env.fake_tensordict()
    params = next(policy.parameters(), None)
    with torch.random.fork_rng(), torch.no_grad():
        step = policy(step if params is None else step.to(params.device))
    parts = [(key,) if isinstance(key, str) else key for key in step.keys(True)]
    step = step.exclude(*[p for p in parts if any(n.startswith("_") for n in p)])
    step.set(TRAJ_KEY, torch.zeros((), dtype=torch.long, device=step.device))
    return step


# ---------------------------------------------------------------------------
# Environments of the workers
# ---------------------------------------------------------------------------
def env_seed(cfg: DictConfig, worker: int, env: int) -> int:
    """Seed of env ``env`` of worker ``worker``: ``seed``, ``seed+1``, ... in order."""
    return cfg.seed + worker * cfg.collector.envs_per_worker + env


def make_worker_env(cfg: DictConfig, worker: int):
    """The environment(s) one worker steps: an env, or a SerialEnv of several."""
    count = cfg.collector.envs_per_worker
    if count == 1:
        return make_env(cfg, env_seed(cfg, worker, 0))
    makers = [
        functools.partial(make_env, cfg, env_seed(cfg, worker, env))
        for env in range(count)
    ]
    return SerialEnv(count, makers)


def worker_env_makers(cfg: DictConfig) -> list:
    """One picklable constructor per worker (each env seeded apart)."""
    return [
        functools.partial(make_worker_env, cfg, worker)
        for worker in range(cfg.collector.num_workers)
    ]


# ---------------------------------------------------------------------------
# The batches the memory reads
# ---------------------------------------------------------------------------
class WorkerBatches:
    """Collector ``postproc``: ``[..., T]`` batches as ``[rows, T]``, ids unique.

    Args:
        num_workers (int): leading size of a stacked multi-worker batch.
        interleave_ids (bool): make per-worker trajectory ids unique as
            ``id * num_workers + worker`` (Ray actors each count from 0).
    """

    def __init__(self, *, num_workers: int, interleave_ids: bool) -> None:
        self.num_workers = num_workers
        self.interleave_ids = interleave_ids

    def __call__(self, batch: TensorDictBase) -> TensorDictBase:
        if self.interleave_ids:
            if batch.shape[0] != self.num_workers:
                raise RuntimeError(
                    f"expected a batch stacked over {self.num_workers} workers, got "
                    f"shape {tuple(batch.shape)}"
                )
            ids = batch.get(TRAJ_KEY)
            worker = torch.arange(self.num_workers, device=ids.device)
            worker = worker.view(-1, *([1] * (ids.ndim - 1)))
            batch.set(TRAJ_KEY, ids * self.num_workers + worker)
        if batch.ndim > 2:
            batch = batch.reshape(-1, batch.shape[-1])
        return batch


# ---------------------------------------------------------------------------
# Collectors
# ---------------------------------------------------------------------------
def _mark_start() -> None:
    timeit.mark_start("collect")


def _mark_end(batch) -> None:
    timeit.mark_end("collect")


def ray_init_config(cfg: DictConfig) -> dict:
    """``ray.init`` arguments (when Ray is not running yet): ``collector.ray_address``,
    else a local instance with one CPU per worker, no dashboard, worker logs kept in
    Ray's log folder."""
    if cfg.collector.ray_address is not None:
        return {"address": cfg.collector.ray_address}
    return {
        "num_cpus": cfg.collector.num_workers,
        "include_dashboard": False,
        "log_to_driver": False,
    }


def ray_actor_options() -> dict:
    """Options of each collector actor: one CPU, the recipes folder importable.

    On a cluster the repository must sit at the same path on every node (a shared
    filesystem, or the same checkout), installed as on the head node.
    """
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    return {"num_cpus": 1, "runtime_env": {"env_vars": {"PYTHONPATH": path}}}


def make_collector(cfg: DictConfig, env, policy) -> Collector:
    """The collector of ``collector.backend``: uniform random actions for the warm-up,
    then ``policy``.

    ``env`` (the learner's own env) is stepped by the single backend with one env per
    worker; the other layouts build theirs (:func:`worker_env_makers`). The networks
    may sit off the CPU: the envs step on the CPU with a CPU copy of the policy,
    synced each cycle. The Atari recipe's collector section has no layout fields:
    the single backend with one env.
    """
    col = cfg.collector
    backend = col.get("backend", "single")
    common = {
        "frames_per_batch": col.frames_per_batch,
        "total_frames": col.total_frames,
        "init_random_frames": col.init_random_frames or None,
    }
    on_cpu = {"policy_device": "cpu", "env_device": "cpu", "storing_device": "cpu"}
    feed_forward = {"auto_register_policy_transforms": False}  # nothing to add
    if backend == "single":
        if col.get("envs_per_worker", 1) > 1:
            env = make_worker_env(cfg, 0)
        collector = Collector(
            env,
            policy,
            **common,
            pre_collect_hook=_mark_start,  # the learner waits for the batch: timed
            post_collect_hook=_mark_end,
            **on_cpu,
            **feed_forward,
        )
    elif backend == "process":  # the workers' time is not the learner's: untimed
        collector = Collector(
            worker_env_makers(cfg),
            policy,
            backend="process",
            sync=True,  # every worker delivers its share of each batch
            **common,
            postproc=WorkerBatches(num_workers=col.num_workers, interleave_ids=False),
            cat_results="stack",
            **on_cpu,
            **feed_forward,
        )
    else:  # ray
        common["init_random_frames"] = col.init_random_frames  # split over actors
        collector = Collector(
            worker_env_makers(cfg),
            policy,
            backend="ray",
            sync=True,
            **common,
            postproc=WorkerBatches(num_workers=col.num_workers, interleave_ids=True),
            ray_init_config=ray_init_config(cfg),
            remote_configs=ray_actor_options(),
            collector_kwargs=feed_forward,
            device="cpu",
        )
    collector.update_policy_weights_()  # the copies start from the learner's actor
    return collector


def collector_steps(cfg: DictConfig) -> bool:
    """Whether the collector steps the learner's ``env`` (exact resume restores it)."""
    col = cfg.collector
    return col.backend == "single" and col.envs_per_worker == 1
