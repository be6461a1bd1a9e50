"""Scale-out of the recipes on TorchRL's own engines: collector backends, devices.

``collector.backend`` picks the engine that steps the environments:

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

What the recipe adapts, in :class:`WorkerBatches` (the collector's ``postproc``):
the stacked ``[workers, envs, T]`` batch becomes ``[workers * envs, T]`` rows, one
contiguous time series per environment, the layout ``EpisodicMemory.extend`` reads.
Trajectory ids: the process collector draws them from one shared pool (unique
already); Ray actors each count from 0, so their ids are made unique by interleaving
(``id * workers + worker``). Episode boundaries are the environments' own
``done``/``terminated``/``truncated`` flags, untouched.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from pathlib import Path

import torch
from config import ConfigError
from omegaconf import DictConfig
from tensordict import TensorDictBase
from torchrl import timeit
from torchrl.collectors import Collector
from torchrl.envs import SerialEnv

HERE = Path(__file__).resolve().parent
TRAJ_KEY = ("collector", "traj_ids")

# optional package -> the extra (pyproject.toml) that installs it
EXTRAS = {"ray": "ray"}


def require_extra(module: str, field_path: str, why: str) -> None:
    """A ``ConfigError`` naming ``field_path`` and the extra if ``module`` is absent."""
    if importlib.util.find_spec(module) is None:
        extra = EXTRAS.get(module, module)
        raise ConfigError(
            f"{field_path}: {why} needs the {module!r} package: "
            f'pip install -e ".[{extra}]"'
        )


# ---------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def check_device(name: str, field_path: str) -> torch.device:
    """``cpu`` | ``cuda`` | ``cuda:<n>``, present on this machine, as a device."""
    if not _DEVICE.match(str(name)):
        raise ConfigError(
            f"{field_path}: unknown device {name!r}; use cpu, cuda or cuda:<index>"
        )
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{field_path}: {name} is requested but this machine has no CUDA "
                f"device (torch {torch.__version__}); use {field_path}=cpu"
            )
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"{field_path}: {name} does not exist, this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def check_scaling(cfg: DictConfig) -> None:
    """Rules of the collector layout and the devices; raises ``ConfigError``."""
    col = cfg.collector
    envs = col.num_workers * col.envs_per_worker
    if col.backend == "single" and col.num_workers != 1:
        raise ConfigError(
            "collector.num_workers: the single backend runs one collector in this "
            f"process, got {col.num_workers}; use collector.backend=process or ray"
        )
    if col.frames_per_batch % envs:
        raise ConfigError(
            f"collector.frames_per_batch: {col.frames_per_batch} frames do not split "
            f"evenly over num_workers * envs_per_worker = {envs} environments; use a "
            "multiple of it"
        )
    if col.backend == "ray":
        require_extra("ray", "collector.backend", "collector.backend=ray")
    if col.ray_address is not None and col.backend != "ray":
        raise ConfigError(
            "collector.ray_address: only read by collector.backend=ray, got "
            f"backend={col.backend}"
        )
    network = check_device(cfg.network.device, "network.device")
    memory = check_device(cfg.memory.device, "memory.device")
    if cfg.algo.memory == "episodic" and memory != network:
        raise ConfigError(
            f"memory.device: the episodic memory's refresh runs the target networks "
            f"over the stored states, so it must sit with them on network.device="
            f"{cfg.network.device}, got {cfg.memory.device}"
        )
    if cfg.memory.storage == "memmap" and memory.type != "cpu":
        raise ConfigError(
            "memory.device: a memmap storage lives on disk (cpu); use "
            "memory.storage=tensor for a CUDA memory"
        )


# ---------------------------------------------------------------------------
# Environments of the workers
# ---------------------------------------------------------------------------
def env_seed(cfg: DictConfig, worker: int, env: int) -> int:
    """Seed of env ``env`` of worker ``worker``: ``seed``, ``seed+1``, ... in order."""
    return cfg.seed + worker * cfg.collector.envs_per_worker + env


def make_worker_env(cfg: DictConfig, worker: int):
    """The environment(s) one worker steps: an env, or a SerialEnv of several."""
    from builders import make_env  # here: runs inside the worker process / actor

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


def make_collector(cfg: DictConfig, env, policy):
    """The collector of ``collector.backend``; random warm-up, then ``policy``.

    ``env`` (the learner's own env) is stepped by the single backend only; the other
    backends build theirs in the workers (:func:`worker_env_makers`).
    """
    col = cfg.collector
    common = {
        "frames_per_batch": col.frames_per_batch,
        "total_frames": col.total_frames,
        "init_random_frames": col.init_random_frames or None,
        "pre_collect_hook": _mark_start,
        "post_collect_hook": _mark_end,
    }
    if col.backend == "single":
        if col.envs_per_worker > 1:
            env = make_worker_env(cfg, 0)
        collector = Collector(
            env,
            policy,
            **common,
            postproc=WorkerBatches(num_workers=1, interleave_ids=False),
            policy_device="cpu",  # a CPU copy of a CUDA policy, synced each cycle
            env_device="cpu",
            storing_device="cpu",
            auto_register_policy_transforms=False,  # feed-forward: nothing to add
        )
        collector.update_policy_weights_()
        return collector
    # worker backends: the hooks would time the workers, not the learner's wait
    common.pop("pre_collect_hook"), common.pop("post_collect_hook")
    makers = worker_env_makers(cfg)
    if col.backend == "process":
        collector = Collector(
            makers,
            policy,
            backend="process",
            sync=True,  # every worker delivers its share of each batch
            **common,
            postproc=WorkerBatches(num_workers=col.num_workers, interleave_ids=False),
            cat_results="stack",
            policy_device="cpu",
            env_device="cpu",
            storing_device="cpu",
            auto_register_policy_transforms=False,
        )
    else:
        common["init_random_frames"] = col.init_random_frames  # split over actors
        collector = Collector(
            makers,
            policy,
            backend="ray",
            sync=True,
            **common,
            postproc=WorkerBatches(num_workers=col.num_workers, interleave_ids=True),
            ray_init_config=ray_init_config(cfg),
            remote_configs=ray_actor_options(),
            collector_kwargs={"auto_register_policy_transforms": False},
            device="cpu",
        )
    collector.update_policy_weights_()  # the workers start from the learner's actor
    return collector


def collector_steps(cfg: DictConfig) -> bool:
    """Whether the collector steps the learner's ``env`` (exact resume restores it)."""
    col = cfg.collector
    return col.backend == "single" and col.envs_per_worker == 1


def sweep_threads() -> int | None:
    """Torch threads of one run in a Hydra joblib sweep: cores // n_jobs, else None.

    Parallel runs on one machine each get their share of the cores
    (``optim.num_threads`` set explicitly wins).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    launcher = hydra_cfg.launcher
    if hydra_cfg.mode != RunMode.MULTIRUN or "joblib" not in str(
        launcher.get("_target_", "")
    ):
        return None
    cores = len(os.sched_getaffinity(0))
    n_jobs = launcher.get("n_jobs") or -1
    n_jobs = cores if n_jobs < 1 else n_jobs  # -1: one job per core
    return max(1, cores // n_jobs)


# hydra/launcher choice -> (plugin module, how to install it)
LAUNCHER_PLUGINS = {
    "local": ("hydra_plugins.hydra_joblib_launcher", 'pip install -e ".[recipes]"'),
    "joblib": ("hydra_plugins.hydra_joblib_launcher", 'pip install -e ".[recipes]"'),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", 'pip install -e ".[slurm]"'),
    "ray_cluster": (
        "hydra_plugins.hydra_ray_launcher",
        "pip install hydra-ray-launcher, in an environment of its own (it pins "
        "cloudpickle<3): docs/scaling.md",
    ),
}


def check_launcher(argv: list[str]) -> None:
    """Exit naming the package to install when ``hydra/launcher=<x>`` lacks its plugin.

    Runs before Hydra, whose own message would only say that a target is missing.
    """
    for arg in argv:
        name = arg.partition("hydra/launcher=")[2]
        if name in LAUNCHER_PLUGINS:
            module, how = LAUNCHER_PLUGINS[name]
            if importlib.util.find_spec(module) is None:
                raise SystemExit(
                    f"error: hydra/launcher={name} needs Hydra's {module.split('.')[1]}"
                    f" plugin: {how}"
                )
