"""The MuJoCo recipe end to end on tiny budgets, its trainer hooks, the plot command.

Every training run here is a few hundred frames of Hopper-v5 with 16-unit networks,
run in-process through ``train(cfg)``; one test drives the command line (Hydra
overrides, SIGINT) in a subprocess.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import needs_cpp_compiler, write_run
from conftest import tiny_mujoco_run as tiny

pytest.importorskip("mujoco")
pytest.importorskip("hydra")
pytest.importorskip("matplotlib")

from tensordict import TensorDict  # noqa: E402
from torchrl.data import Bounded  # noqa: E402
from torchrl.envs import Transform  # noqa: E402
from torchrl.envs.utils import ExplorationType, set_exploration_type  # noqa: E402
from torchrl.modules import TanhNormal  # noqa: E402
from torchrl.objectives import DDPGLoss, SACLoss, TD3Loss  # noqa: E402

import builders  # noqa: E402 - recipes/ is on pytest's pythonpath
import gem_mujoco as recipe  # noqa: E402
import runs  # noqa: E402
from analysis import plot  # noqa: E402
from torchrl_gem import GEMLoss, compiling, precision  # noqa: E402
from torchrl_gem.checkpoint import CheckpointError, read_checkpoint  # noqa: E402
from torchrl_gem.trainer import EvaluationHook  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ALGOS = (
    "gem",
    "td3",
    "bp",
    "bp_4critics",
    "gem_paired",
    "gem_nocross",
    "td3_tbp",
    "td3_sil",
    "sac",
    "ddpg",
    "sac_tbp",
    "td3_gemnets",
    "sac_gemnets",
)
EPISODIC = {
    *("gem", "bp", "bp_4critics", "gem_paired", "gem_nocross"),
    *("td3_tbp", "td3_sil", "sac_tbp"),
}


def run(overrides: list[str]) -> dict:
    return recipe.train(recipe.load_config(overrides))


def eval_csv(run_dir: Path, name: str = "return_mean") -> str:
    return (run_dir / "logs" / "scalars" / "eval" / f"{name}.csv").read_text()


# --------------------------------------------------------------------- smoke
@pytest.mark.parametrize("algo", ALGOS)
def test_smoke_run_logs_evaluations(algo, tmp_path):
    summary = run(tiny(algo, tmp_path))
    assert summary["status"] == "finished" and summary["frames"] == 400
    assert [frame for frame, _ in summary["evaluations"]] == [0, 200, 400]
    rows = [line.split(",") for line in eval_csv(tmp_path).splitlines()]
    assert [int(step) for step, _ in rows] == [0, 200, 400]
    assert all(torch.isfinite(torch.tensor(float(value))) for _, value in rows)
    assert (tmp_path / "logs" / "scalars" / "loss_qvalue.csv").is_file()
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info == {"env": "Hopper-v5", "algo": algo, "seed": 0, "total_frames": 400}
    assert set(summary["timing"]) >= {"collect", "update", "eval", "checkpoint"}
    if algo in EPISODIC:
        assert summary["timing"]["memory refresh"] > 0
    # the overestimation diagnostic, at every evaluation
    for name in ("q_estimate", "mc_return", "q_bias"):
        rows = [line.split(",") for line in eval_csv(tmp_path, name).splitlines()]
        assert [int(step) for step, _ in rows] == [0, 200, 400]
        assert all(math.isfinite(float(value)) for _, value in rows)
    groups = dict.fromkeys(EPISODIC - {"td3_sil"}, 2)  # tbp: the two twin groups
    groups["ddpg"] = 0  # one critic: the mean only; else the twin pair's min
    logged = list((tmp_path / "logs" / "scalars" / "eval").glob("q_bias_group*.csv"))
    assert len(logged) == groups.get(algo, 1)
    if algo == "td3_sil":
        assert summary["timing"]["self-imitation"] > 0
        assert (tmp_path / "logs" / "scalars" / "sil" / "loss.csv").is_file()
        payload = read_checkpoint(tmp_path / "checkpoints" / "last.pt")
        assert payload["trainer"]["self_imitation"]["num_steps"] == 3 * 4


@needs_cpp_compiler
def test_compiled_gem_run_trains(tmp_path, monkeypatch, torchrl_log):
    compiled = []

    def counting_compile(function, **kwargs):
        compiled.append(function.__name__)
        return real_compile(function, **kwargs)

    real_compile = compiling.torch.compile
    monkeypatch.setattr(compiling.torch, "compile", counting_compile)
    summary = run(tiny("gem", tmp_path, "optim.compile=null"))  # null: on for gem
    assert summary["status"] == "finished" and summary["frames"] == 400
    assert sorted(compiled) == ["_chunk_value", "actor_loss", "value_loss"]
    assert not [r for r in torchrl_log.records if "torch.compile" in r.message]


@pytest.mark.parametrize(
    "algo, setting, expected",
    [("gem", "null", True), ("bp", "null", True), ("td3", "null", False),
     ("sac", "null", False), ("td3", "true", True), ("gem", "false", False)],
)  # fmt: skip
def test_compile_defaults_to_gem_losses(tmp_path, algo, setting, expected):
    cfg = recipe.load_config(tiny(algo, tmp_path, f"optim.compile={setting}"))
    assert recipe.compile_enabled(cfg) is expected


@pytest.mark.parametrize("recipe_module", ["gem_mujoco", "gem_atari"])
def test_one_torch_thread_by_default_and_printed_at_the_start(recipe_module, capsys):
    import importlib

    import runs

    if recipe_module == "gem_atari":
        pytest.importorskip("ale_py")
    module = importlib.import_module(recipe_module)
    assert module.load_config([]).optim.num_threads == 1  # benchmarks/threads.py
    runs.seed_everything(0, None)  # null: every core of this process
    cores = len(os.sched_getaffinity(0))
    assert f"torch threads: {cores} " in capsys.readouterr().out
    runs.seed_everything(0, 1)
    assert torch.get_num_threads() == 1
    assert "torch threads: 1 " in capsys.readouterr().out


def test_smoke_covers_every_preset():
    assert set(ALGOS) == {path.stem for path in (ROOT / "recipes" / "algo").iterdir()}


# ------------------------------------------------------------------- presets
@pytest.mark.parametrize(
    "algo, num_critics, single, cross, memory_noise",
    [
        ("bp", 2, True, True, 0.0),  # TD3MemBackProp as released
        ("bp_4critics", 4, True, True, 0.2),  # one estimator over GEM's 4 critics
        ("gem_nocross", 4, False, False, 0.2),  # GEM less the cross-evaluation
        ("gem", 4, False, True, 0.2),
    ],
)
def test_preset_builds_its_agent(
    tmp_path, algo, num_critics, single, cross, memory_noise
):
    cfg = recipe.load_config(tiny(algo, tmp_path))
    recipe.check_config(cfg)
    spec = Bounded(-1.0, 1.0, shape=(3,))
    _, loss, per_step, bulk = builders.make_agent(cfg, 11, spec)
    assert isinstance(loss, GEMLoss) and per_step is None and bulk is not None
    assert loss.qvalue_network_params.batch_size[0] == num_critics
    assert loss.policy_noise == pytest.approx(0.2)  # the loss itself is unchanged
    estimator = loss.value_estimator
    assert estimator.qvalue_params.batch_size[0] == num_critics
    assert estimator.single_estimator is single
    assert estimator.cross_evaluation is cross
    assert estimator.policy_noise == pytest.approx(memory_noise)
    states = TensorDict(observation=torch.randn(64, 11), batch_size=[64])
    first = estimator.next_state_value(states)
    second = estimator.next_state_value(states)
    # without smoothing noise the memory values are a function of the state
    assert torch.equal(first, second) is (memory_noise == 0.0)
    # one estimator writes the same value in both columns
    assert torch.equal(first[:, 0], first[:, 1]) is single


def test_sac_policy_distribution_math_is_float32_under_bf16_autocast():
    """bf16 rounds tanh to 1 from about 3.7: computed in bf16, the log-probability of
    saturated actions was off by orders of magnitude (SAC diverged in bf16 runs)."""
    torch.manual_seed(0)
    features = (torch.randn(256, 6) * 4).bfloat16()  # from the bf16 layers: means
    head = builders.GaussianHead()  # up to about 12, saturated actions
    with precision.autocast("bf16"):
        loc, scale = head(features)
        assert loc.dtype == scale.dtype == torch.float32
        dist = TanhNormal(loc, scale, low=-1.0, high=1.0)
        action = dist.sample()
        log_prob = dist.log_prob(action)
    reference = TanhNormal(*head(features.float()), low=-1.0, high=1.0)
    torch.testing.assert_close(log_prob, reference.log_prob(action))


def test_baseline_presets_build_their_agents(tmp_path):
    spec = Bounded(-2.0, 2.0, shape=(3,))
    states = TensorDict(observation=torch.randn(64, 11), batch_size=[64])
    built = {}
    for algo in ("sac", "ddpg", "td3_sil"):
        cfg = recipe.load_config(tiny(algo, tmp_path))
        recipe.check_config(cfg)
        built[algo] = (cfg, *builders.make_agent(cfg, 11, spec))
    # SAC: TanhNormal policy, 2 critics, per-step targets, temperature trained
    cfg, actor, loss, per_step, bulk = built["sac"]
    assert isinstance(loss, SACLoss) and per_step is not None and bulk is None
    assert loss.qvalue_network_params.batch_size[0] == 2
    actor_optim, critic_optim = builders.make_optimizers(cfg, loss)
    assert any(p is loss.log_alpha for p in actor_optim.param_groups[0]["params"])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        first = actor(states.clone())["action"]
        second = actor(states.clone())["action"]
    loc = actor.module[0](states.clone())["loc"]  # the evaluation: tanh(mean)
    torch.testing.assert_close(first, torch.tanh(loc) * 2.0)
    assert torch.equal(first, second)
    with set_exploration_type(ExplorationType.RANDOM):
        assert not torch.equal(actor(states.clone())["action"], first)
    assert builders.STEP_METHODS["sac"] == ("qvalue_v2_loss", "actor_and_alpha_loss")
    # DDPG: one critic, a target actor, lr 1e-3
    cfg, actor, loss, per_step, bulk = built["ddpg"]
    assert isinstance(loss, DDPGLoss) and per_step is not None
    assert loss.delay_actor and loss.delay_value
    actor_optim, critic_optim = builders.make_optimizers(cfg, loss)
    assert actor_optim.param_groups[0]["lr"] == critic_optim.param_groups[0]["lr"]
    probe = builders.make_critic_probe(loss)
    assert probe(states.clone().set("action", torch.zeros(64, 3))).shape == (64, 1)
    # TD3+SIL: TD3Loss, and a SIL hook sharing its critics and critic optimiser
    cfg, actor, loss, per_step, bulk = built["td3_sil"]
    assert type(loss) is TD3Loss
    memory = builders.make_memory(cfg)
    _, critic_optim = builders.make_optimizers(cfg, loss)
    hook = builders.make_self_imitation(cfg, loss, memory, critic_optim)
    assert hook.loss.qvalue_network_params is loss.qvalue_network_params
    assert hook.loss.action_source == "policy" and hook.loss.coeff == 0.1
    assert hook.optimizer is critic_optim and hook.start_frames == 200
    probe = builders.make_critic_probe(loss)
    assert probe(states.clone().set("action", torch.zeros(64, 3))).shape == (64, 2)


def test_td3_sil_resume_equals_uninterrupted_run(tmp_path):
    extra = ("collector.total_frames=500",)
    straight, split = tmp_path / "straight", tmp_path / "split"
    run(tiny("td3_sil", straight, *extra))
    run(tiny("td3_sil", split, *extra, "checkpoint.stop_after=300"))
    resume = f"checkpoint.resume={split / 'checkpoints' / 'last.pt'}"
    assert run(tiny("td3_sil", split, *extra, resume))["frames"] == 500
    assert eval_csv(straight) == eval_csv(split)
    assert eval_csv(straight, "q_bias") == eval_csv(split, "q_bias")
    a = read_checkpoint(straight / "checkpoints" / "last.pt")["trainer"]
    b = read_checkpoint(split / "checkpoints" / "last.pt")["trainer"]
    for key, value in a["loss_module"].items():
        assert torch.equal(value, b["loss_module"][key]), key
    assert torch.equal(a["self_imitation"]["priority"], b["self_imitation"]["priority"])
    assert a["self_imitation"]["num_steps"] == b["self_imitation"]["num_steps"] == 16


def test_bf16_run_trains(tmp_path, monkeypatch, torchrl_log):
    """bf16 reaches the gradient steps and the refresh, on any CPU."""
    monkeypatch.setattr(precision, "bf16_is_fast", lambda device: True)
    used = []

    def spy(mode, device="cpu"):
        used.append(mode)
        return precision.autocast(mode, device)

    monkeypatch.setattr("torchrl_gem.schedule.autocast", spy)  # DelayedActorStepper
    monkeypatch.setattr("torchrl_gem.estimator.autocast", spy)  # the refresh
    summary = run(tiny("gem", tmp_path, "optim.precision=bf16"))
    assert summary["status"] == "finished"
    assert all(math.isfinite(value) for _, value in summary["evaluations"])
    assert used and set(used) == {"bf16"}
    assert not [r for r in torchrl_log.records if "running fp32" in r.message]


def test_tensorboard_alongside_csv(tmp_path):
    pytest.importorskip("tensorboard")
    run(tiny("gem", tmp_path, "logger.backends=[csv,tensorboard]"))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert eval_csv(tmp_path).count("\n") == 3


def test_seed_changes_the_curve(tmp_path):
    first = run(tiny("gem", tmp_path / "a", "seed=1"))["evaluations"]
    second = run(tiny("gem", tmp_path / "b", "seed=2"))["evaluations"]
    assert first != second


# -------------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory):
    """An uninterrupted run, and the same run stopped at frame 300 then resumed."""
    root = tmp_path_factory.mktemp("resume")
    straight, split = root / "straight", root / "split"
    extra = ("collector.total_frames=600",)
    run(tiny("gem", straight, *extra))
    stopped = run(tiny("gem", split, *extra, "checkpoint.stop_after=300"))
    stopped_payload = read_checkpoint(split / "checkpoints" / "last.pt")
    shutil.copy(split / "checkpoints" / "last.pt", root / "stopped.pt")
    resume = f"checkpoint.resume={split / 'checkpoints' / 'last.pt'}"
    resumed = run(tiny("gem", split, *extra, resume))
    return {
        "root": root,
        "straight": straight,
        "split": split,
        "stopped": stopped,
        "stopped_payload": stopped_payload,
        "resumed": resumed,
    }


def test_resume_equals_uninterrupted_run(resumed_runs):
    stopped, resumed = resumed_runs["stopped"], resumed_runs["resumed"]
    assert stopped["frames"] == 300 and stopped["status"].startswith("stopped")
    # the interruption fell inside an episode, which then continued exactly
    assert int(resumed_runs["stopped_payload"]["carrier"]["step_count"]) > 0
    assert resumed["frames"] == 600
    straight, split = resumed_runs["straight"], resumed_runs["split"]
    assert eval_csv(straight) == eval_csv(split)
    a = read_checkpoint(straight / "checkpoints" / "last.pt")
    b = read_checkpoint(split / "checkpoints" / "last.pt")
    for key, value in a["trainer"]["loss_module"].items():
        assert torch.equal(value, b["trainer"]["loss_module"][key]), key
    optim_a = a["trainer"]["optimization_stepper"]["critic_optimizer"]["state"]
    optim_b = b["trainer"]["optimization_stepper"]["critic_optimizer"]["state"]
    for index, state in optim_a.items():
        assert torch.equal(state["exp_avg_sq"], optim_b[index]["exp_avg_sq"])
    memory_a = a["trainer"]["replay_buffer"]["replay_buffer"]["_storage"]
    memory_b = b["trainer"]["replay_buffer"]["replay_buffer"]["_storage"]
    written = memory_a["_len"]
    assert written == memory_b["_len"]
    for key, value in memory_a["_storage"].items():
        assert torch.equal(value[:written], memory_b["_storage"][key][:written]), key
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert torch.equal(a["env"]["mujoco"], b["env"]["mujoco"])


def test_resumed_time_logs_carry_the_stopped_runs_totals(resumed_runs):
    """time/* at the end of a resumed run = the checkpoint's totals + this session's."""
    carried = resumed_runs["stopped_payload"]["trainer"]["log_timing"]["totals"]
    session = resumed_runs["resumed"]["timing"]
    logged = dict(plot.read_scalar(resumed_runs["split"], "time/update"))
    assert logged[300] == pytest.approx(carried["update"]) and carried["update"] > 0
    assert logged[600] == pytest.approx(carried["update"] + session["update"])
    assert session["update"] > 0


def test_refresh_every_two_batches_trains_and_resumes(tmp_path):
    """Refreshes at training batches 0, 2, 4: a stop after batch 1 must resume there."""
    extra = ("collector.total_frames=600", "memory.refresh_every=2")
    straight, split = tmp_path / "straight", tmp_path / "split"
    summary = run(tiny("gem", straight, *extra))
    assert summary["status"] == "finished" and summary["frames"] == 600
    assert all(math.isfinite(value) for _, value in summary["evaluations"])
    run(tiny("gem", split, *extra, "checkpoint.stop_after=300"))
    stopped = read_checkpoint(split / "checkpoints" / "last.pt")
    assert stopped["trainer"]["memory_refresh"] == {
        "num_batches": 2,
        "num_refreshes": 1,
    }
    resume = f"checkpoint.resume={split / 'checkpoints' / 'last.pt'}"
    run(tiny("gem", split, *extra, resume))
    a = read_checkpoint(straight / "checkpoints" / "last.pt")
    b = read_checkpoint(split / "checkpoints" / "last.pt")
    # 600 frames, 200 random: training batches at 200..600, a refresh every second one
    assert a["trainer"]["memory_refresh"] == {"num_batches": 5, "num_refreshes": 3}
    assert b["trainer"]["memory_refresh"] == a["trainer"]["memory_refresh"]
    assert eval_csv(straight) == eval_csv(split)
    for key, value in a["trainer"]["loss_module"].items():
        assert torch.equal(value, b["trainer"]["loss_module"][key]), key


def test_auto_resume_skips_finished_runs_and_continues_stopped_ones(tmp_path):
    auto = ("checkpoint.resume=auto",)
    first = run(tiny("gem", tmp_path, *auto, "checkpoint.stop_after=200"))
    assert first["frames"] == 200 and first["status"].startswith("stopped")
    assert run(tiny("gem", tmp_path, *auto))["frames"] == 400  # resumed
    again = run(tiny("gem", tmp_path, *auto))
    assert again["status"] == "already finished" and again["frames"] == 400
    with pytest.raises(recipe.ConfigError, match="^checkpoint.resume: auto"):
        run(tiny("gem", tmp_path, *auto, "logger.run_dir=null"))


def _resume_overrides(resumed_runs, checkpoint: Path, *extra: str) -> list[str]:
    return tiny(
        "gem",
        resumed_runs["root"] / "refused",
        "collector.total_frames=600",
        f"checkpoint.resume={checkpoint}",
        *extra,
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["env.name=Walker2d-v5"], "env.name: checkpoint has 'Hopper-v5'"),
        (
            ["algo=bp", "algo.updates_per_batch=4"],
            "algo: checkpoint has {'name': 'gem'",
        ),
        (["seed=7"], "seed: checkpoint has 0"),
        (["network.hidden_sizes=[8,8]"], "network.hidden_sizes"),
    ],
)
def test_mismatched_checkpoint_is_refused(resumed_runs, overrides, message):
    checkpoint = resumed_runs["root"] / "stopped.pt"
    with pytest.raises(CheckpointError, match="belongs to another run") as err:
        run(_resume_overrides(resumed_runs, checkpoint, *overrides))
    assert message in str(err.value)
    assert not (resumed_runs["root"] / "refused").exists()  # stopped before any work


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda blob: blob[: len(blob) // 2], "truncated"),
        (lambda blob: blob[:40], "truncated"),
        (lambda blob: blob[:-1] + bytes([blob[-1] ^ 1]), "checksum mismatch"),
        (lambda blob: b"PK\x03\x04" + blob[4:], "not a torchrl-gem"),
    ],
)
def test_damaged_checkpoint_is_refused(resumed_runs, tmp_path, damage, message):
    blob = (resumed_runs["root"] / "stopped.pt").read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(damage(blob))
    with pytest.raises(CheckpointError, match=message):
        run(_resume_overrides(resumed_runs, broken))
    assert not (resumed_runs["root"] / "refused").exists()


# ----------------------------------------------------------------- bad input
def test_a_config_error_stops_before_any_work(tmp_path):
    # every field's checks: tests/test_config.py; here, that train() runs them first
    with pytest.raises(recipe.ConfigError, match="^optim.gamma:"):
        run(tiny("gem", tmp_path / "run", "optim.gamma=1.5"))
    assert not (tmp_path / "run").exists()


# Hopper-v5 stores per transition: observation and next observation (2 x 11 x 4),
# action (3 x 4), reward, episode_reward x 2 (3 x 4), step_count x 2 (2 x 8), done,
# terminated, truncated x 2 (6 x 1), the trajectory id (8): 142 bytes. A TorchRL
# buffer adds its "index" (8); the episodic memory its twin returns (2 x 4), episode
# id and arrival stamp (2 x 8) and occupied flag (1).
@pytest.mark.parametrize("algo, per_transition", [("gem", 167), ("td3", 150)])
def test_a_memory_beyond_the_available_ram_stops_before_any_work(
    algo, per_transition, tmp_path, monkeypatch
):
    monkeypatch.setattr(runs, "available_ram_bytes", lambda: 100_000)
    needed = 1000 * per_transition  # tiny runs: memory.capacity=1000
    with pytest.raises(recipe.ConfigError) as err:
        run(tiny(algo, tmp_path / "run"))
    message = str(err.value)
    assert message.startswith(f"memory.capacity: 1000 transitions of {per_transition}")
    assert f"need {needed} bytes" in message and "100000 bytes" in message
    assert "memory.storage=memmap" in message
    assert not (tmp_path / "run").exists()
    # on disk, the capacity is not RAM's business
    memmap = recipe.load_config(tiny(algo, tmp_path, "memory.storage=memmap"))
    runs.check_memory_fits(memmap, memory=None, step=None)


def test_the_checked_size_is_what_a_memory_slot_holds(resumed_runs):
    """The size a run's check counts per transition is what its memory holds."""
    storage = resumed_runs["stopped_payload"]["trainer"]["replay_buffer"]
    rows = storage["replay_buffer"]["_storage"]["_storage"]
    assert sum(value[0].nbytes for value in rows.values()) == 167


class _NaNRewardAt(Transform):
    """Replaces the reward of the ``at``-th step (counted over the env's life)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.count = at, 0

    def _step(self, tensordict, next_tensordict):
        self.count += 1
        if self.count == self.at:
            reward = next_tensordict.get("reward")
            next_tensordict.set("reward", torch.full_like(reward, float("nan")))
        return next_tensordict


def test_nonfinite_env_output_stops_naming_the_step(tmp_path, monkeypatch):
    make_env = recipe.make_env

    def poisoned(cfg, seed):
        env = make_env(cfg, seed)
        if seed == cfg.seed:  # the training env, not the evaluation one
            env.append_transform(_NaNRewardAt(150))
        return env

    monkeypatch.setattr(recipe, "make_env", poisoned)
    with pytest.raises(FloatingPointError, match="'reward'.* environment step 150 "):
        run(tiny("gem", tmp_path))


# ---------------------------------------------------------- command line
def test_command_line_sigint_checkpoints_then_resumes(tmp_path):
    run_dir = tmp_path / "cli"
    overrides = tiny("gem", run_dir, "collector.total_frames=100000", "seed=3")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "recipes" / "gem_mujoco.py"), *overrides],
        cwd=tmp_path,  # Hydra's own output folder lands here
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        log = run_dir / "logs" / "scalars" / "eval" / "return_mean.csv"
        deadline = time.monotonic() + 90
        while not (log.is_file() and len(log.read_text().splitlines()) >= 2):
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "the run did not start in time"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0].decode()
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGINT, output
    assert "stopped (SIGINT)" in output and "resume with" in output
    payload = read_checkpoint(run_dir / "checkpoints" / "last.pt")
    frames = payload["frames"]
    assert 200 <= frames < 100_000
    assert payload["identity"]["seed"] == 3
    more = tiny(
        "gem",
        run_dir,
        f"collector.total_frames={frames + 100}",
        "seed=3",
        f"checkpoint.resume={run_dir}",  # a run directory resolves to its last.pt
    )
    summary = run(more)
    assert summary["status"] == "finished" and summary["frames"] == frames + 100
    assert summary["evaluations"][-1][0] == frames + 100


# --------------------------------------------------------------------- plot
def _fake_run(root: Path, env: str, algo: str, seed: int, curve) -> None:
    write_run(root, env, algo, seed, 20, {"eval/return_mean": curve})


def test_plot_command_writes_curves_and_table(tmp_path, capsys):
    runs = tmp_path / "runs"
    _fake_run(runs, "Hopper-v5", "gem", 0, [(0, 1.0), (10, 5.0), (20, 10.0)])
    _fake_run(runs, "Hopper-v5", "gem", 1, [(0, 3.0), (10, 7.0), (20, 30.0)])
    # a resumed run may log a frame twice: the last value counts
    _fake_run(runs, "Hopper-v5", "td3", 0, [(0, 2.0), (10, 4.0), (10, 6.0), (20, 8.0)])
    _fake_run(runs, "Walker2d-v5", "gem", 0, [(0, 0.0), (20, 50.0)])
    out = tmp_path / "figs" / "curves.png"
    plot.main([str(runs / "Hopper-v5"), str(runs / "Walker2d-v5"), "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    # final, mean of the last 5 (here all 3), best; mean ± std over seeds
    assert (
        "| Hopper-v5 | gem | 2 | 20 | 20.0 ± 10.0 | 9.3 ± 4.0 | 20.0 ± 10.0 |" in table
    )
    assert "| Hopper-v5 | td3 | 1 | 20 | 8.0 ± 0.0 | 5.3 ± 0.0 | 8.0 ± 0.0 |" in table
    assert (
        "| Walker2d-v5 | gem | 1 | 20 | 50.0 ± 0.0 | 25.0 ± 0.0 | 50.0 ± 0.0 |" in table
    )
    frames, mean, std = plot.aggregate(
        plot.collect(plot.find_runs([runs]))[("Hopper-v5", "td3")]
    )
    assert (frames, mean, std) == ([0, 10, 20], [2.0, 6.0, 8.0], [0.0, 0.0, 0.0])


def test_plot_labels_name_variants_of_one_algorithm(tmp_path, capsys):
    for folder, final in (("fp32", 10.0), ("bf16", 30.0)):
        _fake_run(tmp_path / folder, "Hopper-v5", "gem", 0, [(0, 1.0), (20, final)])
    out = tmp_path / "curves.png"
    plot.main(
        [f"fp32={tmp_path / 'fp32'}", f"bf16={tmp_path / 'bf16'}", "--out", str(out)]
    )
    table = capsys.readouterr().out
    assert "| Hopper-v5 | fp32 | 1 | 20 | 10.0 ± 0.0 |" in table
    assert "| Hopper-v5 | bf16 | 1 | 20 | 30.0 ± 0.0 |" in table
    assert "| gem |" not in table


def test_plot_curves_draws_some_algorithms_and_tabulates_all(
    tmp_path, capsys, monkeypatch
):
    runs = tmp_path / "runs"
    for algo, final in (("gem", 10.0), ("td3", 20.0), ("sac", 30.0)):
        _fake_run(runs, "Hopper-v5", algo, 0, [(0, 1.0), (20, final)])
    drawn = {}
    monkeypatch.setattr(plot, "plot_groups", lambda groups, *_: drawn.update(groups))
    plot.main([str(runs), "--curves", "gem,sac", "--out", str(tmp_path / "c.png")])
    assert sorted(drawn) == [("Hopper-v5", "gem"), ("Hopper-v5", "sac")]
    table = capsys.readouterr().out
    assert "| Hopper-v5 | td3 | 1 | 20 | 20.0 ± 0.0 |" in table
    with pytest.raises(SystemExit, match="--curves ddpg: none of these"):
        plot.main([str(runs), "--curves", "ddpg", "--out", str(tmp_path / "c.png")])


def test_plot_metric_picks_what_the_stats_score(tmp_path, capsys):
    runs = tmp_path / "runs"
    _fake_run(runs, "Hopper-v5", "gem", 0, [(0, 1.0), (20, 9.0)])
    online = runs / "Hopper-v5" / "gem" / "seed0" / "logs" / "scalars" / "eval_online"
    online.mkdir()
    (online / "return_mean.csv").write_text("0,1.0\n20,5.0\n")
    out = str(tmp_path / "c.png")
    plot.main(
        [
            str(runs),
            "--metric",
            "eval_online/return_mean",
            "--stats",
            "gem",
            "--out",
            out,
        ]
    )
    assert "| gem | 3 [3, 3]<br>3 ± 0 (1, ?) |" in capsys.readouterr().out  # (1+5)/2
    plot.main([str(runs), "--stats", "gem", "--out", out])
    assert "| gem | 5 [5, 5]<br>5 ± 0 (1, ?) |" in capsys.readouterr().out  # (1+9)/2
    # the time table counts only the runs that logged the metric (none timed here)
    _fake_run(runs, "Hopper-v5", "gem", 1, [(0, 1.0), (20, 9.0)])  # no online log
    plot.main([str(runs), "--metric", "eval_online/return_mean", "--out", out])
    assert "| Hopper-v5 | gem | 0 of 1 | - |" in capsys.readouterr().out


def test_plot_paired_scores_each_run_twice(tmp_path, capsys):
    runs = tmp_path / "runs"
    # (averaged, online) curves; scores are the mean of all (fewer than 5) evaluations
    logged = {
        0: ([(0, 2.0), (20, 10.0)], [(0, 2.0), (20, 4.0)]),  # 6 against 3
        1: ([(0, 4.0), (20, 2.0)], [(0, 4.0), (20, 4.0)]),  # 3 against 4
    }
    for seed, (averaged, online) in logged.items():
        _fake_run(runs, "Hopper-v5", "gem", seed, averaged)
        scalars = runs / "Hopper-v5" / "gem" / f"seed{seed}" / "logs" / "scalars"
        (scalars / "eval_online").mkdir()
        lines = "".join(f"{step},{value}\n" for step, value in online)
        (scalars / "eval_online" / "return_mean.csv").write_text(lines)
    _fake_run(runs, "Hopper-v5", "td3", 0, [(0, 1.0), (20, 9.0)])  # no online: left out
    plot.main([f"avg={runs}", "--paired", "eval_online/return_mean"])
    table = capsys.readouterr().out
    # differences +3 and -1: mean 1, bootstrap means of two values within [-1, 3];
    # drawdowns from frame 10: averaged 0 and (4-2)/4, online 0 and 0
    assert (
        "| Hopper-v5 | avg | 2 | 4.5 ± 1.5 | 3.5 ± 0.5 | 1.0 [-1.0, 3.0] | 1/2 | "
        "0.25 ± 0.25 | 0.00 ± 0.00 |" in table
    )
    assert "td3" not in table
    with pytest.raises(SystemExit, match="no run logged both"):
        plot.main([str(runs / "Hopper-v5" / "td3"), "--paired", "eval_online/x"])


def test_plot_stats_writes_its_figures_into_a_new_folder(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs, "Hopper-v5", "gem", 0, [(0, 1.0), (20, 9.0)])
    out = tmp_path / "new" / "folder" / "c.png"
    plot.main([str(runs), "--stats", "gem", "--out", str(out)])
    assert out.is_file() and out.with_name("c_profile.png").is_file()


def test_plot_draws_the_overestimation_rows(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed, bias in ((0, 2.0), (1, 4.0)):
        _fake_run(runs, "Hopper-v5", "gem", seed, [(0, 1.0), (20, 3.0)])
        scalars = runs / "Hopper-v5" / "gem" / f"seed{seed}" / "logs" / "scalars"
        for name, value in (("q_estimate", 10 + bias), ("mc_return", 10.0)):
            (scalars / "eval" / f"{name}.csv").write_text(f"0,1.0\n20,{value}\n")
        (scalars / "eval" / "q_bias.csv").write_text(f"0,0.0\n20,{bias}\n")
    _fake_run(runs, "Hopper-v5", "td3", 0, [(0, 1.0), (20, 2.0)])  # no diagnostic
    out = tmp_path / "curves.png"
    plot.main([str(runs), "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "| Hopper-v5 | gem | 2 | 13.0 ± 1.0 | 10.0 ± 0.0 | 3.0 ± 1.0 |" in table
    assert "| Hopper-v5 | td3 | 1 | 20 | 2.0 ± 0.0 |" in table


def test_plot_times_runs_from_their_top_level_timers(tmp_path, capsys):
    runs = tmp_path / "runs"
    logs = {
        0: {  # 2 + 10 + 3 s at frame 20; eval nests in hook/evaluation
            "collect": "10,1\n20,2\n",
            "update": "10,5\n20,10\n",
            "hook/evaluation": "20,3\n",
            "eval": "20,100\n",
        },
        # checkpoint at 10, killed after 20, resumed with timers restarted at zero
        # (before RunTiming carried them): what the frames cost is unknown
        1: {"update": "10,5\n20,10\n20,1\n"},
    }
    for seed, timers in logs.items():
        _fake_run(runs, "Hopper-v5", "gem", seed, [(0, 1.0), (20, 3.0)])
        time_dir = runs / "Hopper-v5" / "gem" / f"seed{seed}" / "logs" / "scalars"
        for name, text in timers.items():
            path = time_dir / "time" / f"{name}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    plot.main([str(runs), "--out", str(tmp_path / "curves.png")])
    # 15 s for 20 frames: 15 / 60 * 100000 / 20 minutes per 100k frames
    assert "| Hopper-v5 | gem | 1 of 2 | 1250.0 ± 0.0 |" in capsys.readouterr().out


class _ScriptedEnv:
    """Replays prepared episodes: what EvaluationHook needs of an environment."""

    def __init__(self, episodes) -> None:
        self.episodes = episodes

    def set_seed(self, seed):
        self.queue = list(self.episodes)

    def rollout(self, max_steps, policy, break_when_any_done=True):
        return self.queue.pop(0)


def _episode(obs, rewards, terminated, last_next_obs):
    steps = len(obs)
    next_obs = torch.tensor([*obs[1:], last_next_obs]).unsqueeze(-1)
    ended = torch.zeros(steps, 1, dtype=torch.bool)
    ended[-1] = True
    return TensorDict(
        observation=torch.tensor(obs).unsqueeze(-1),
        action=torch.zeros(steps, 1),
        next=TensorDict(
            observation=next_obs,
            reward=torch.tensor(rewards).unsqueeze(-1),
            done=ended,
            terminated=ended & terminated,
            truncated=ended & (not terminated),
            batch_size=[steps],
        ),
        batch_size=[steps],
    )


def test_overestimation_diagnostic_by_hand():
    """Two critics Q0 = x + a, Q1 = 2x + a; gamma 0.5.

    Episode A terminates: x = 1, 2, 3, rewards 1, 2, 3: G = 2.75, 3.5, 3.
    Episode B is truncated after x = 0, 1 (rewards 1, 1) at x' = 4, where the
    policy acts a = 1: Q0 = 5, Q1 = 9 bootstrap the returns of each estimate
    (mean 7: G = 3.25, 4.5; min 5: G = 2.75, 3.5).
    """
    env = _ScriptedEnv(
        [
            _episode([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], True, 9.0),
            _episode([0.0, 1.0], [1.0, 1.0], False, 4.0),
        ]
    )

    def policy(td):
        return td.set("action", torch.ones(*td.batch_size, 1))

    def critic(td):
        x, a = td["observation"], td["action"]
        return torch.cat([x + a, 2 * x + a], -1)

    hook = EvaluationHook(
        env,
        policy,
        num_episodes=2,
        seed=0,
        critic=critic,
        critic_groups=[(0, 1)],
        gamma=0.5,
    )
    result = hook.evaluate()
    # mean of the critics: [1.5, 3, 4.5] and [0, 1.5]; min: [1, 2, 3] and [0, 1]
    assert result["q_estimate"] == pytest.approx(10.5 / 5)
    assert result["mc_return"] == pytest.approx((2.75 + 3.5 + 3 + 3.25 + 4.5) / 5)
    assert result["q_bias"] == pytest.approx(2.1 - 3.4)
    assert result["q_estimate_group0"] == pytest.approx(7 / 5)
    assert result["mc_return_group0"] == pytest.approx(
        (2.75 + 3.5 + 3 + 2.75 + 3.5) / 5
    )
    assert result["q_bias_group0"] == pytest.approx(1.4 - 3.1)
    assert result["return_mean"] == pytest.approx(4.0)
    plain = EvaluationHook(env, policy, num_episodes=2, seed=0).evaluate()
    assert sorted(plain) == ["episode_length", "return_mean", "return_std"]


def test_finished_run_writes_its_plot(tmp_path):
    summary = run(tiny("gem", tmp_path, "logger.plot=true"))
    assert Path(summary["plot"]).read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------- diagnostics
def test_diagnostics_are_logged_and_actors_reevaluated(tmp_path, capsys):
    """memory/* targets, gradient norms, action saturation; saved actors evaluated
    again: the same episodes give the logged return, more episodes a table."""
    from analysis import reevaluate

    run(tiny("gem", tmp_path, "logger.snapshots=true"))
    for name in (
        "memory/target_mean",
        "memory/target_minus_mc",
        "memory/horizon_mean",
        "memory/multi_step_fraction",
        "grad_norm_qvalue",
        "grad_norm_actor",
        "eval/action_saturation",
    ):
        values = [value for _, value in plot.read_scalar(tmp_path, name)]
        assert values and all(math.isfinite(v) for v in values), name
    assert all(v >= 1 for _, v in plot.read_scalar(tmp_path, "memory/horizon_mean"))
    for name in ("memory/multi_step_fraction", "eval/action_saturation"):
        assert all(0 <= v <= 1 for _, v in plot.read_scalar(tmp_path, name)), name
    assert reevaluate.snapshot_frames(tmp_path) == [0, 200, 400]
    logged = dict(plot.read_scalar(tmp_path, "eval/return_mean"))
    (same,) = reevaluate.reevaluate(tmp_path, [400], episodes=2)  # as logged
    assert same["mean"] == pytest.approx(logged[400], rel=1e-6)
    reevaluate.main([str(tmp_path), "--episodes", "3"])
    out = capsys.readouterr().out
    assert "| frame | logged (2 episodes) | mean of 3 ± s.e." in out
    assert out.count("\n| ") == 4  # header row, then frames 0, 200, 400


def test_diagnostics_off_log_none_of_them(tmp_path):
    run(tiny("gem", tmp_path, "logger.diagnostics=false"))
    scalars = tmp_path / "logs" / "scalars"
    assert not (scalars / "memory").exists()
    assert not (scalars / "grad_norm_qvalue.csv").exists()
    assert not (scalars / "eval" / "action_saturation.csv").exists()


def test_stable_gem_candidates_train_and_resume(tmp_path):
    """The stable-GEM options together: the min twin target, the critics' gradient
    clip and the evaluated actor's moving average; a stopped run resumes to the
    uninterrupted run's evaluations (the average is in the checkpoint)."""
    extra = (
        "collector.total_frames=600",
        "algo.target_assignment=min",
        "optim.critic_max_grad_norm=1.0",
        "optim.actor_average=0.5",
    )
    straight = run(tiny("gem", tmp_path / "straight", *extra))
    split = tmp_path / "split"
    run(tiny("gem", split, *extra, "checkpoint.stop_after=300"))
    payload = read_checkpoint(split / "checkpoints" / "last.pt")
    assert "policy_average" in payload["trainer"]
    resumed = run(tiny("gem", split, *extra, "checkpoint.resume=auto"))
    assert resumed["evaluations"] == straight["evaluations"]
    assert all(math.isfinite(value) for _, value in straight["evaluations"])


def test_actor_average_also_evaluates_the_online_actor_of_an_unchanged_run(tmp_path):
    """The average is evaluated, not trained on: the online actor, evaluated beside
    it (eval_online/*), is the one of the same run without the option."""
    plain = tmp_path / "plain"
    run(tiny("gem", plain, "collector.total_frames=600"))
    averaged = tmp_path / "averaged"
    run(tiny("gem", averaged, "collector.total_frames=600", "optim.actor_average=0.9"))
    scalars = averaged / "logs" / "scalars"
    online = (scalars / "eval_online" / "return_mean.csv").read_text()
    assert (
        online == (plain / "logs" / "scalars" / "eval" / "return_mean.csv").read_text()
    )
    steps = [line.split(",")[0] for line in online.splitlines()]
    assert steps == [line.split(",")[0] for line in eval_csv(averaged).splitlines()]
    # the average differs from the online actor after the first batches
    assert (scalars / "eval" / "return_mean.csv").read_text() != online
