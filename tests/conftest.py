"""Small shared builders: tiny networks, trajectory batches, collector-like batches,
run directories as the recipes leave them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

# Target networks without an updater warn on every call; silence that here.
os.environ.setdefault("RL_WARNINGS", "0")

import pytest  # noqa: E402
import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from torchrl.data import Bounded  # noqa: E402

from torchrl_gem import GEMLoss, make_gem_actor, make_gem_critics  # noqa: E402

# pytest-xdist (`-n auto`, pyproject's addopts): each worker its share of the cores,
# as OpenMP threads that wait for a busy core spin (benchmarks/threads.py: 7-50x)
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // _workers))

OBS, ACT = 3, 2
SPEC = Bounded(-1.0, 1.0, shape=(ACT,))


# Inductor builds its CPU kernels with a C++ compiler; without one, compiled calls
# fall back to eager (tested on its own) and the compiled-path tests cannot run.
needs_cpp_compiler = pytest.mark.skipif(
    not any(shutil.which(name) for name in (os.environ.get("CXX", "g++"), "c++")),
    reason="no C++ compiler: torch.compile's CPU backend cannot build kernels",
)


# Devices: the CPU always, CUDA where this machine has it (skipped elsewhere).
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CPU = pytest.param(torch.device("cpu"), id="cpu")
CUDA = pytest.param(torch.device("cuda"), id="cuda", marks=needs_cuda)


@pytest.fixture(params=(CPU, CUDA))
def device(request) -> torch.device:
    """Each device a test runs on (``parametrize("device", [CUDA])``: CUDA only)."""
    return request.param


@pytest.fixture
def torchrl_log(monkeypatch, caplog):
    """``caplog`` that also sees torchrl's logger (which does not propagate)."""
    from torchrl._utils import logger

    monkeypatch.setattr(logger, "propagate", True)
    caplog.set_level("WARNING", logger=logger.name)
    return caplog


def write_log(path: Path, rows) -> Path:
    """A scalar's CSV log as the recipes' CSV logger writes it: ``step,value`` rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{step},{value}\n" for step, value in rows))
    return path


def write_run(root: Path, env: str, algo: str, seed: int, total_frames: int, scalars):
    """A run directory ``root/env/algo/seed<seed>`` as the recipes leave it: its
    ``run_info.json`` and a CSV log per scalar (``scalars``: ``{"eval/return_mean":
    [(frame, value), ...], ...}``)."""
    run_dir = root / env / algo / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in scalars.items():
        write_log(run_dir / "logs" / "scalars" / f"{name}.csv", rows)
    info = {"env": env, "algo": algo, "seed": seed, "total_frames": total_frames}
    (run_dir / "run_info.json").write_text(json.dumps(info))
    return run_dir


class LossHost:
    """What the steppers (``DelayedActorStepper``, TorchRL's) use of a Trainer."""

    def __init__(self, loss):
        self.loss_module = loss

    def compute_loss(self, batch, method=None):
        if method is None:  # the loss's forward, as Trainer.compute_loss
            return self.loss_module(batch)
        return getattr(self.loss_module, method)(batch)


def tiny_actor():
    return make_gem_actor(OBS, SPEC, hidden_sizes=(8, 8))


def tiny_critics(num=4, **kwargs):
    return make_gem_critics(OBS, ACT, num_critics=num, hidden_sizes=(8, 8), **kwargs)


def tiny_loss(**kwargs):
    return GEMLoss(
        tiny_actor(), tiny_critics(kwargs.pop("num", 4)), action_spec=SPEC, **kwargs
    )


def trajectory_batch(*batch, generator=None, p_done=0.2, memory_return=False):
    """A [*batch] tensordict of transitions; the last dim is time.

    Each row holds consecutive episodes (a new one after every done), with
    collector-style trajectory ids, unique across rows, and step counts.
    """
    shape = tuple(batch)
    rand = lambda *s: torch.randn(*s, generator=generator)  # noqa: E731
    done = torch.rand(*shape, 1, generator=generator) < p_done
    terminated = done & (torch.rand(*shape, 1, generator=generator) < 0.5)
    trajectory, step_count = episode_bookkeeping(done.squeeze(-1))
    td = TensorDict(
        observation=rand(*shape, OBS),
        action=torch.rand(*shape, ACT, generator=generator) * 2 - 1,
        collector=TensorDict(traj_ids=trajectory, batch_size=shape),
        step_count=step_count.unsqueeze(-1),
        next=TensorDict(
            observation=rand(*shape, OBS),
            reward=rand(*shape, 1),
            done=done,
            terminated=terminated,
            truncated=done & ~terminated,
        ),
        batch_size=shape,
    )
    if memory_return:
        td["memory_return"] = rand(*shape, 2)
    return td


class ConstantValue(torch.nn.Module):
    """A critic whose every output is its one parameter, ``value``."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(value))

    def forward(self, observation):
        return self.value.expand(*observation.shape[:-1], 1)


def constant_value_estimator(value: float, **kwargs):
    """A discrete-mode estimator whose bootstrap values all equal ``value``."""
    from tensordict.nn import TensorDictModule

    from torchrl_gem import TwinBackPropEstimator

    critic = TensorDictModule(
        ConstantValue(value), in_keys=["observation"], out_keys=["action_value"]
    )
    params = TensorDict.from_module(critic).expand(2).clone()
    estimator = TwinBackPropEstimator(
        qvalue_network=critic,
        qvalue_params=params,
        action_space="discrete",
        **kwargs,
    )
    estimator.set_keys(value="action_value")
    return estimator


def episode_bookkeeping(done):
    """Trajectory ids and step counts of ``[*B, T]`` rows of consecutive episodes."""
    rows = done.reshape(-1, done.shape[-1])
    starts = torch.zeros_like(rows)
    starts[:, 1:] = rows[:, :-1]
    trajectory = starts.long().cumsum(-1)
    trajectory += (trajectory[:, -1:] + 1).cumsum(0) - trajectory[:, -1:] - 1
    step = torch.zeros_like(trajectory)
    for row, start in zip(step, starts, strict=True):
        for t in range(1, len(row)):
            row[t] = 0 if start[t] else row[t - 1] + 1
    return trajectory.reshape(done.shape), step.reshape(done.shape)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


def merge_overrides(base: list[str], extra) -> list[str]:
    """Hydra-style ``key=value`` overrides: ``extra`` replaces ``base``'s same keys."""
    merged = {item.split("=", 1)[0]: item for item in [*base, *extra]}
    return list(merged.values())


def tiny_mujoco_run(algo: str, run_dir, *extra: str) -> list[str]:
    """Overrides of a ~1 s MuJoCo recipe run: 400 frames, 16-unit nets, eval every 200.

    ``extra`` overrides come last and replace base entries of the same key.
    """
    base = [
        f"algo={algo}",
        "env.name=Hopper-v5",
        "env.max_episode_steps=50",  # time-limit truncations happen, too
        "collector.total_frames=400",
        "collector.init_random_frames=200",
        "network.hidden_sizes=[16,16]",
        "algo.updates_per_batch=4",
        "optim.batch_size=16",
        "sil.batch_size=16",
        "optim.num_threads=1",
        "optim.compile=false",  # compiled steps: test_compiled_gem_run_trains
        "memory.capacity=1000",
        "logger.eval_interval=200",
        "logger.eval_episodes=2",
        "logger.log_interval=0",
        "logger.progress_bar=false",
        "logger.plot=false",
        "checkpoint.interval=0",
        f"logger.run_dir={run_dir}",
    ]
    return merge_overrides(base, extra)


@pytest.fixture(autouse=True)
def _restore_threads():
    """Recipe runs set torch's thread count (optim.num_threads): undo it after each."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# A recipe run that dies by SIGKILL at the end of the batch that reaches ``kill_at``
# frames (its logs written, its checkpoints as the config says), in a subprocess.
_KILLED_RUN = """
import os, signal, sys
import {module} as recipe
from torchrl_gem.checkpoint import CheckpointHook

save_or_stop = CheckpointHook.__call__

def then_die(self, batch=None):  # the last hook of a batch
    save_or_stop(self, batch)
    if self._trainer.collected_frames >= {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)

CheckpointHook.__call__ = then_die
recipe.train(recipe.load_config(sys.argv[1:]))
"""


def run_killed(module: str, overrides: list[str], kill_at: int, cwd) -> None:
    """Run recipe ``module`` (``gem_mujoco``, ``gem_atari``) with ``overrides`` until
    it is killed (``kill -9``) after the batch reaching ``kill_at`` frames."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(recipes), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    )
    code = _KILLED_RUN.format(module=module, kill_at=kill_at)
    done = subprocess.run(
        [sys.executable, "-c", code, *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
