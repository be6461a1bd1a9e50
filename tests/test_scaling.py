"""Scale-out: collector backends (process, Ray), a joblib sweep, device checks.

Each run is a few hundred frames of Hopper-v5 with 16-unit networks. After a run,
the episodic memory of its final checkpoint must hold whole, correct trajectories:
within every stored episode the step counts are consecutive and each next
observation is the following step's observation (two workers or envs sharing a
trajectory id would interleave two time series and break both).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_mujoco_run

pytest.importorskip("mujoco")
pytest.importorskip("hydra")

from tensordict import TensorDict  # noqa: E402

import config  # noqa: E402
import gem_mujoco as recipe  # noqa: E402 - recipes/ is on pytest's pythonpath
import interaction  # noqa: E402
from config import ConfigError  # noqa: E402
from torchrl_gem.checkpoint import CheckpointError, read_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RAY_SKIP = 'collector.backend=ray needs the ray extra: pip install -e ".[ray]"'


def tiny(run_dir: Path, *extra: str) -> list[str]:
    """A tiny GEM run, 30-step episodes (many trajectories to check), 1 eval episode."""
    return tiny_mujoco_run(
        "gem", run_dir, "env.max_episode_steps=30", "logger.eval_episodes=1", *extra
    )


def run(overrides: list[str]) -> dict:
    return recipe.train(recipe.load_config(overrides))


def stored(run_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The final checkpoint and its memory's written rows, in storage order."""
    payload = read_checkpoint(run_dir / "checkpoints" / "last.pt")
    storage = payload["trainer"]["replay_buffer"]["replay_buffer"]["_storage"]
    rows = storage["_len"]
    return payload, {key: value[:rows] for key, value in storage["_storage"].items()}


def check_trajectories(columns: dict[str, torch.Tensor]) -> int:
    """Every stored episode is one contiguous time series; returns their number."""
    episodes = columns["_memory.episode"].reshape(-1)
    steps = columns["step_count"].reshape(-1)
    done = columns["next.done"].reshape(-1)
    obs, next_obs = columns["observation"], columns["next.observation"]
    ids = columns["collector.traj_ids"].reshape(-1)
    for episode in episodes.unique().tolist():
        rows = (episodes == episode).nonzero().squeeze(-1)
        assert ids[rows].unique().numel() == 1, f"episode {episode}: several ids"
        expected = torch.arange(len(rows)) + steps[rows[0]]
        assert torch.equal(steps[rows], expected), f"episode {episode}: {steps[rows]}"
        assert torch.equal(next_obs[rows[:-1]], obs[rows[1:]]), f"episode {episode}"
        assert not done[rows[:-1]].any(), f"episode {episode} continues past done"
    starts = (steps == 0).sum().item()
    assert starts >= episodes.unique().numel() - 4  # at most the running ones cut
    return episodes.unique().numel()


def check_trained(summary: dict, payload: dict, columns: dict) -> None:
    assert summary["status"] == "finished" and summary["frames"] == 400
    assert [frame for frame, _ in summary["evaluations"]] == [0, 200, 400]
    assert payload["trainer"]["state"]["_optim_count"] > 0  # gradient steps ran
    assert summary["timing"]["memory refresh"] > 0
    assert len(columns["step_count"]) == 400
    writer = payload["trainer"]["replay_buffer"]["replay_buffer"]["_writer"]
    fresh = columns["_memory.stamp"].reshape(-1) < writer["refreshed_stamp"]
    refreshed = columns["memory_return"][fresh]
    assert refreshed.numel() and torch.isfinite(refreshed).all()


# ------------------------------------------------------------------ unit parts
def test_worker_batches_flatten_rows_and_interleave_ids():
    time = 5
    ids = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 1, 1]])  # both workers count from 0
    batch = TensorDict(
        {"collector": {"traj_ids": ids.clone()}, "step_count": torch.zeros(2, time)},
        batch_size=[2, time],
    )
    out = interaction.WorkerBatches(num_workers=2, interleave_ids=True)(batch)
    assert out.get(("collector", "traj_ids")).tolist() == [
        [0, 0, 2, 2, 2],
        [1, 1, 1, 3, 3],
    ]
    stacked = TensorDict({"x": torch.arange(24).view(2, 3, 4)}, batch_size=[2, 3, 4])
    flat = interaction.WorkerBatches(num_workers=2, interleave_ids=False)(stacked)
    assert flat.shape == (6, 4) and torch.equal(flat["x"][4], torch.arange(16, 20))


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (["collector.num_workers=2"], "collector.num_workers"),
        (
            ["collector.backend=process", "collector.num_workers=3"],
            "collector.frames_per_batch",
        ),
        (["network.device=tpu"], "network.device"),
        (["collector.ray_address=auto"], "collector.ray_address"),
    ],
)
def test_config_errors_name_the_field(tmp_path, extra, field):
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        run(tiny(tmp_path, *extra))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_a_gpu(tmp_path):
    with pytest.raises(ConfigError, match=r"^network.device: cuda is requested"):
        run(tiny(tmp_path, "network.device=cuda", "memory.device=cuda"))
    with pytest.raises(ConfigError, match=r"^memory.device: "):
        run(tiny(tmp_path, "memory.device=cuda"))


def test_missing_ray_names_the_extra(tmp_path, monkeypatch):
    find_spec = config.importlib.util.find_spec
    monkeypatch.setattr(
        config.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ray" else find_spec(name, *a),
    )
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[ray\]"'):
        run(tiny(tmp_path, "collector.backend=ray"))


def test_single_backend_with_two_envs(tmp_path):
    summary = run(tiny(tmp_path, "collector.envs_per_worker=2"))
    payload, columns = stored(tmp_path)
    check_trained(summary, payload, columns)
    assert check_trajectories(columns) >= 2


# ------------------------------------------------------------------ backends
def test_process_backend_two_workers_trains_and_resumes(tmp_path):
    """2 worker processes x 2 envs; stopped at 200 frames, resumed (new episodes)."""
    extra = (
        "collector.backend=process",
        "collector.num_workers=2",
        "collector.envs_per_worker=2",
    )
    stopped = run(tiny(tmp_path, *extra, "checkpoint.stop_after=200"))
    assert stopped["frames"] == 200 and stopped["status"].startswith("stopped")
    # the collector layout is part of the run's identity: another one is refused
    with pytest.raises(CheckpointError, match="collector.backend: checkpoint has"):
        run(tiny(tmp_path, "checkpoint.resume=auto"))
    with pytest.warns(UserWarning, match="new episode"):
        summary = run(tiny(tmp_path, *extra, "checkpoint.resume=auto"))
    payload, columns = stored(tmp_path)
    check_trained(summary, payload, columns)
    assert payload["env"] is None and payload["carrier"] is None
    assert check_trajectories(columns) >= 8  # 4 envs, 30-step time limit


@pytest.fixture
def local_ray():
    """A Ray instance on the loopback interface, 2 CPUs, stopped afterwards."""
    ray = pytest.importorskip("ray", reason=RAY_SKIP)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    yield ray
    ray.shutdown()


def test_ray_backend_two_workers_trains(tmp_path, local_ray):
    summary = run(tiny(tmp_path, "collector.backend=ray", "collector.num_workers=2"))
    payload, columns = stored(tmp_path)
    check_trained(summary, payload, columns)
    ids = columns["collector.traj_ids"].reshape(-1)
    assert (ids % 2 == 0).any() and (ids % 2 == 1).any()  # both actors' episodes
    assert check_trajectories(columns) >= 4


# ------------------------------------------------------------------ sweeps
def test_joblib_sweep_runs_in_parallel_and_skips_finished_runs(tmp_path):
    """``-m seed=0,1 hydra/launcher=local``: two runs at once, each its own run dir."""
    run_dir = tmp_path / "seed${seed}"
    command = [
        sys.executable,
        str(ROOT / "recipes" / "gem_mujoco.py"),
        "-m",
        *tiny(run_dir, "checkpoint.resume=auto", "optim.num_threads=null"),
        "seed=0,1",
        "hydra/launcher=local",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    for seed in (0, 1):
        payload, columns = stored(tmp_path / f"seed{seed}")
        assert payload["frames"] == 400
        assert payload["identity"]["seed"] == seed
        check_trajectories(columns)
        config = (tmp_path / f"seed{seed}" / "config.yaml").read_text()
        assert f"seed: {seed}" in config
    # a re-launched sweep skips finished runs (checkpoint.resume=auto), as in-process
    again = run(tiny(tmp_path / "seed1", "checkpoint.resume=auto", "seed=1"))
    assert again["status"] == "already finished" and again["frames"] == 400
