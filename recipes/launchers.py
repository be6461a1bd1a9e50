"""Hydra launchers of the recipes' sweeps: torch threads per run, plugin checks.

The launcher configs live in ``hydra/launcher/`` (``local``: joblib on this machine,
``ray_cluster``, ``slurm``); ``docs/scaling.md`` says when to use which.
"""

from __future__ import annotations

import importlib.util
import os

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode


def sweep_threads() -> int | None:
    """Torch threads of one run in a Hydra joblib sweep: cores // n_jobs, else None.

    Parallel runs on one machine each get their share of the cores
    (``optim.num_threads`` set explicitly wins).
    """
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
