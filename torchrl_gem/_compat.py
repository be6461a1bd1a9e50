"""Every private TorchRL and Gymnasium attribute this package touches, in one place.

Exact resume needs state that neither library exposes publicly: the collector's
current step (its "carrier": observation, step counter, episode return, trajectory
id) and its trajectory-id pool, and Gymnasium's ``TimeLimit`` step count inside a
TorchRL ``GymEnv``. Each accessor names the attribute, and the versions it was
written for, when an upgrade removes it; ``tests/test_compat.py`` exercises all of
them against the installed versions.
"""

from __future__ import annotations

import warnings
from importlib.metadata import version
from typing import Any

__all__ = [
    "WRITTEN_FOR",
    "check_versions",
    "collector_carrier",
    "collector_trajectory_pool",
    "elapsed_steps",
    "gym_env",
    "set_elapsed_steps",
]

# major.minor of each library these accessors were written and tested against
WRITTEN_FOR = {"torchrl": "0.14", "gymnasium": "1.4"}


def check_versions() -> list[str]:
    """Warn once per library whose installed major.minor differs from WRITTEN_FOR."""
    drift = []
    for package, written in WRITTEN_FOR.items():
        installed = ".".join(version(package).split(".")[:2])
        if installed != written:
            drift.append(f"{package} {installed} (written for {written})")
    if drift:
        warnings.warn(
            "torchrl_gem's exact-resume shim (torchrl_gem._compat) reads private "
            f"attributes of {', '.join(drift)}; run tests/test_compat.py to check "
            "them.",
            stacklevel=2,
        )
    return drift


def _private(obj: Any, name: str, package: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError as err:
        raise AttributeError(
            f"{type(obj).__name__}.{name} is missing: torchrl_gem._compat reads this "
            f"private {package} attribute for exact resume and was written for "
            f"{package} {WRITTEN_FOR[package]}, found {version(package)}."
        ) from err


def collector_carrier(collector) -> Any:
    """The tensordict a ``Collector`` steps from next (its running episode)."""
    return _private(collector, "_carrier", "torchrl")


def collector_trajectory_pool(collector) -> Any:
    """The pool that hands out the ``Collector``'s trajectory ids."""
    return _private(collector, "_traj_pool", "torchrl")


def gym_env(env) -> Any:
    """The Gymnasium env inside a TorchRL ``GymEnv``, transformed or not."""
    base = getattr(env, "base_env", env)
    return _private(base, "_env", "torchrl")


def elapsed_steps(wrapper) -> int | None:
    """A ``TimeLimit`` wrapper's step count in its episode; ``None`` elsewhere."""
    if type(wrapper).__name__ != "TimeLimit":
        return None
    return _private(wrapper, "_elapsed_steps", "gymnasium")


def set_elapsed_steps(wrapper, steps: int) -> None:
    _private(wrapper, "_elapsed_steps", "gymnasium")  # fail loudly if renamed
    wrapper._elapsed_steps = steps
