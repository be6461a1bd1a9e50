"""The Atari half: the frame memory, the ALE environment and the recipe end to end.

The frame memory is checked against stacks that an environment produced (synthetic
CatFrames-style episodes, then a real ALE game through a collector); the recipe runs
on ALE/Pong-v5 for a few hundred agent steps with tiny budgets.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import OneHot

from conftest import merge_overrides

pytest.importorskip("ale_py", reason="the atari extra (ale-py) is not installed")
pytest.importorskip("cv2", reason="the atari extra (opencv) is not installed")
pytest.importorskip("hydra")

import atari_builders  # noqa: E402 - recipes/ is on pytest's pythonpath
import atari_config  # noqa: E402
import gem_atari as recipe  # noqa: E402
import runs  # noqa: E402
from config import ConfigError, field_comments  # noqa: E402
from interaction import PIXELS, make_atari_env, make_collector  # noqa: E402
from torchrl_gem import EpisodicMemory  # noqa: E402
from torchrl_gem.checkpoint import read_checkpoint  # noqa: E402
from torchrl_gem.frames import FrameEpisodicMemory  # noqa: E402

GAME = "ALE/Pong-v5"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------- frame memory
def synthetic_batches(
    num_envs, steps, batches, padding, generator, p_done=0.15, frame_shape=(2, 3)
):
    """Collector-like ``[num_envs, steps]`` batches of 4-stacks of frames (2x3).

    Each env runs episodes that end at random (done, half of them terminated);
    stacks are what CatFrames makes: at reset the first frame repeated
    (``"same"``) or zeros then the frame (``"constant"``).
    """
    state = {}  # env -> (stack, trajectory id)
    next_id = 0
    out = []

    def reset_stack(frame):
        if padding == "same":
            return frame.expand(4, *frame.shape).clone()
        return torch.cat([torch.zeros(3, *frame.shape, dtype=frame.dtype), frame[None]])

    def new_frame():
        return torch.randint(
            0, 256, frame_shape, dtype=torch.uint8, generator=generator
        )

    for _ in range(batches):
        rows = []
        for env in range(num_envs):
            if env not in state:
                state[env] = (reset_stack(new_frame()), next_id)
                next_id += 1
            steps_td = []
            for _ in range(steps):
                stack, traj = state[env]
                nxt = torch.cat([stack[1:], new_frame()[None]])
                done = bool(torch.rand((), generator=generator) < p_done)
                terminated = done and bool(torch.rand((), generator=generator) < 0.5)
                steps_td.append(
                    TensorDict(
                        pixels=stack,
                        action=torch.randint(3, (), generator=generator),
                        collector=TensorDict(traj_ids=torch.tensor(traj)),
                        next=TensorDict(
                            pixels=nxt,
                            reward=torch.randn(1, generator=generator),
                            done=torch.tensor([done]),
                            terminated=torch.tensor([terminated]),
                        ),
                    )
                )
                if done:
                    state[env] = (reset_stack(new_frame()), next_id)
                    next_id += 1
                else:
                    state[env] = (nxt, traj)
            rows.append(torch.stack(steps_td))
        out.append(torch.stack(rows))
    return out


def check_stacks(memory, written):
    """Every stored slot rebuilds the stacks it was written with."""
    slots = memory._writer.occupied_slots()
    obs, nxt = memory.stacks(slots)
    for index, slot in enumerate(slots.tolist()):
        assert torch.equal(obs[index], written[slot]["pixels"]), slot
        assert torch.equal(nxt[index], written[slot]["next", "pixels"]), slot


@pytest.mark.parametrize("padding", ["same", "constant"])
def test_frame_memory_rebuilds_stacks_across_batches_and_evictions(padding):
    generator = torch.Generator().manual_seed(0)
    memory = FrameEpisodicMemory(capacity=40, batch_size=16, sample_unrefreshed=True)
    written = {}
    for batch in synthetic_batches(2, 6, 12, padding, generator):
        slots = memory.extend(batch)
        for slot, step in zip(slots.tolist(), batch.reshape(-1).unbind(0), strict=True):
            written[slot] = step  # the slot's latest content
        check_stacks(memory, written)
    assert memory.num_episodes > 1 and len(memory) <= 40
    # the evicted episodes' start stacks are gone with them
    assert len(memory._start_stacks) == memory.num_episodes
    sample = memory.sample()
    for row, slot in zip(sample.unbind(0), sample["index"].tolist(), strict=True):
        assert torch.equal(row["pixels"], written[slot]["pixels"])
        assert torch.equal(row["next", "pixels"], written[slot]["next", "pixels"])
    assert "_frames" not in sample.keys()


def test_frame_memory_refresh_equals_stacked_memory_and_incremental():
    """Same returns as an EpisodicMemory of whole stacks; incremental == full."""
    generator = torch.Generator().manual_seed(1)
    batches = synthetic_batches(2, 5, 8, "same", generator)

    class PixelValue(torch.nn.Module):  # a value that depends on the whole stack
        def __init__(self):
            super().__init__()
            self.weights = torch.nn.Parameter(torch.arange(4.0).reshape(4, 1, 1) + 1)

        def forward(self, pixels):
            value = (pixels.float() * self.weights).mean((-3, -2, -1))
            return torch.stack([value, -value, value / 2], -1) / 100

    def estimator():
        from tensordict.nn import TensorDictModule

        net = TensorDictModule(PixelValue(), ["pixels"], ["action_value"])
        params = TensorDict.from_module(net).expand(2).clone()
        # two different critics: the twin columns differ, the cross-evaluation and
        # the floor act
        params["module", "weights"][1] = torch.tensor([3.0, -1.0, 2.0, 0.5])[
            :, None, None
        ]
        from torchrl_gem import TwinBackPropEstimator

        est = TwinBackPropEstimator(
            gamma=0.9,
            qvalue_network=net,
            qvalue_params=params,
            action_space="discrete",
            value_chunk_size=7,
        )
        est.set_keys(value="action_value")
        return est

    frames = FrameEpisodicMemory(capacity=1000, batch_size=4)
    incremental = FrameEpisodicMemory(capacity=1000, batch_size=4)
    stacked = EpisodicMemory(capacity=1000, batch_size=4, check_finite=())
    est = estimator()
    for batch in batches:
        for memory in (frames, incremental, stacked):
            memory.extend(batch)
        incremental.refresh(est, full=False)  # values of new states only
    frames.refresh(est)
    stacked.refresh(est)
    got = frames._writer.written().get("memory_return")
    want = stacked._writer.written().get("memory_return")
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got[:, 0], got[:, 1])
    assert torch.equal(incremental._writer.written().get("memory_return"), got)


def test_frame_memory_state_round_trips(tmp_path):
    generator = torch.Generator().manual_seed(2)
    batches = synthetic_batches(1, 7, 4, "same", generator)
    memory = FrameEpisodicMemory(capacity=100, batch_size=4, sample_unrefreshed=True)
    for batch in batches[:3]:
        memory.extend(batch)
    copy = FrameEpisodicMemory(capacity=100, batch_size=4, sample_unrefreshed=True)
    copy.load_state_dict(memory.state_dict())
    disk = FrameEpisodicMemory(capacity=100, batch_size=4, sample_unrefreshed=True)
    memory.dumps(tmp_path / "memory")
    disk.loads(tmp_path / "memory")
    for other in (copy, disk):  # a running episode continues across the reload
        for target in (memory, other):
            target.extend(batches[3])
        slots = memory._writer.occupied_slots()
        for mine, theirs in zip(memory.stacks(slots), other.stacks(slots), strict=True):
            assert torch.equal(mine, theirs)
        memory = FrameEpisodicMemory(
            capacity=100, batch_size=4, sample_unrefreshed=True
        )
        for batch in batches[:3]:
            memory.extend(batch)


def test_frame_memory_memmap_and_bytes(tmp_path):
    generator = torch.Generator().manual_seed(3)
    (batch,) = synthetic_batches(1, 10, 1, "same", generator, p_done=0.0)
    memory = FrameEpisodicMemory(
        capacity=20, storage="memmap", scratch_dir=str(tmp_path), batch_size=2
    )
    memory.extend(batch)
    obs, _ = memory.stacks(memory._writer.occupied_slots())
    assert torch.equal(obs, batch.reshape(-1)["pixels"])
    assert memory.stored_pixels_bytes() == 10 * 6 + 4 * 6  # frames + 1 start stack


def test_frame_memory_refuses_wrong_stacks():
    generator = torch.Generator().manual_seed(4)
    (batch,) = synthetic_batches(1, 3, 1, "same", generator)
    with pytest.raises(ValueError, match="num_frames=3 frames along dim -3"):
        FrameEpisodicMemory(num_frames=3).extend(batch)
    with pytest.raises(KeyError, match="pixels"):
        FrameEpisodicMemory().extend(batch.exclude("pixels"))


# ------------------------------------------------------------ environment
def config(*overrides):
    return atari_config.load_atari_config([f"env.name={GAME}", *overrides])


def test_memory_rebuilds_what_the_ale_env_stacked():
    """A real game through a collector: short episodes, batches cut them, eviction."""
    cfg = config(
        "env.max_episode_steps=13",  # ALE truncations, mid-batch
        "collector.total_frames=90",
        "collector.init_random_frames=90",
        "collector.frames_per_batch=9",
    )
    env = make_atari_env(cfg, 0, clip_rewards=True)
    loss, greedy = atari_builders.make_agent(cfg, env.action_spec)
    policy = atari_builders.make_exploration_policy(cfg, greedy, env.action_spec)
    memory = FrameEpisodicMemory(capacity=40, sample_unrefreshed=True, check_finite=())
    written = {}
    truncated = 0
    for batch in make_collector(cfg, env, policy):
        truncated += int(batch["next", "truncated"].sum())
        slots = memory.extend(batch)
        for slot, step in zip(slots.tolist(), batch.reshape(-1).unbind(0), strict=True):
            written[slot] = step
        check_stacks(memory, written)
    assert truncated >= 5  # episodes started over and over
    pixels = written[0]["pixels"]
    assert pixels.shape == (4, 84, 84) and pixels.dtype == torch.uint8


def test_learning_rewards_clipped_raw_scores_kept():
    cfg = config("env.name=ALE/SpaceInvaders-v5")
    train_env = make_atari_env(cfg, 0, clip_rewards=True)
    eval_env = make_atari_env(cfg, 0, clip_rewards=False)
    torch.manual_seed(0)
    actions = [train_env.action_spec.rand() for _ in range(250)]

    def play(env):
        td, rewards = env.reset(), []
        for action in actions:
            td = env.step(td.set("action", action))
            rewards.append(td["next", "reward"].item())
            td = td["next"]
        return torch.tensor(rewards), td["episode_reward"].item()

    clipped, train_score = play(train_env)
    raw, eval_score = play(eval_env)
    assert raw.max() > 1  # the game scores more than 1 per hit
    assert torch.equal(clipped, raw.clamp(-1, 1))
    assert train_score == eval_score == raw.sum().item()
    spec = train_env.full_done_spec
    assert {"done", "terminated", "truncated"} <= set(spec.keys())


def stacked_batch(batch_size, num_actions, generator, size=84):
    """A sampled batch of uint8 4-stacks, one-hot actions and twin memory returns."""

    def pixels():
        shape = (batch_size, 4, size, size)
        return torch.randint(0, 256, shape, generator=generator).to(torch.uint8)

    actions = torch.randint(0, num_actions, (batch_size,), generator=generator)
    return TensorDict(
        {
            PIXELS: pixels(),
            "action": torch.nn.functional.one_hot(actions, num_actions),
            "memory_return": torch.randn(batch_size, 2, generator=generator),
            "next": {
                PIXELS: pixels(),
                "reward": torch.randn(batch_size, 1, generator=generator),
                "done": torch.zeros(batch_size, 1, dtype=torch.bool),
                "terminated": torch.zeros(batch_size, 1, dtype=torch.bool),
            },
        },
        batch_size=[batch_size],
    )


@pytest.mark.parametrize("algo", ["gem", "dqn", "ddqn"])
def test_losses_are_summed_over_the_batch_as_released(algo):
    """optim.loss_reduction (default sum, as released) reaches every loss term: on
    one batch, each term summed is batch_size times its mean."""
    assert config().optim.loss_reduction == "sum"
    spec = make_atari_env(config(), 0, clip_rewards=True).action_spec
    batch_size = 5
    batch = stacked_batch(batch_size, spec.shape[-1], torch.Generator().manual_seed(0))
    losses = {}
    for reduction in ("sum", "mean"):
        torch.manual_seed(0)  # the same networks for both
        cfg = config(f"algo={algo}", f"optim.loss_reduction={reduction}")
        loss, _ = atari_builders.make_agent(cfg, spec)
        losses[reduction] = loss(batch.clone())
    names = ["loss_sub", "loss_meta"] if algo == "gem" else ["loss"]
    for name in names:
        summed, mean = losses["sum"][name], losses["mean"][name]
        assert summed.item() > 0
        torch.testing.assert_close(summed, batch_size * mean, msg=name)


@pytest.mark.parametrize("algo, compiled", [("gem", True), ("dqn", False)])
def test_gradient_steps_compile_by_default_for_gem_only(algo, compiled):
    """optim.compile unset: GEM-DQN's loss compiled (faster), DQN's eager (not)."""
    cfg = config(f"algo={algo}", "env.screen_size=36")
    loss, _ = atari_builders.make_agent(cfg, OneHot(3))
    stepper = atari_builders.make_stepper(cfg, loss)
    assert (stepper.compiled_loss is not None) == compiled


# ----------------------------------------------------------------- config
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["env.name=ALE/Frostbyte-v5"], r"^env.name: unknown .*'ALE/Frostbite-v5'"),
        (["env.name=CartPole-v1"], r"^env.name: 'CartPole-v1' is not an Atari"),
        (["algo.target_update_interval=8001"], r"^algo.target_update_interval: "),
        (["algo=gem", "algo.double_dqn=true"], r"^algo.double_dqn: double DQN"),
        (["explore.eps_end=0.9", "explore.eps_init=0.5"], r"^explore.eps_end: "),
        (["optim.batch_size=0"], r"^optim.batch_size: must be an integer > 0"),
        (["collector.num_workers=2"], r"^collector.num_workers: "),
    ],
)
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        atari_config.check_atari_config(config(*overrides))


def test_unknown_variant_and_field_are_refused():
    with pytest.raises(ConfigError, match=r"^algo: unknown value 'dqnn'"):
        config("algo=dqnn")
    with pytest.raises(ConfigError, match=r"^explore.eps: unknown field"):
        config("explore.eps=0.3")


def test_missing_extra_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ale_py" else real(name, *a),
    )
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[atari\]"'):
        atari_config.check_atari_env(GAME)


# ----------------------------------------------------------------- recipe
def tiny(algo: str, run_dir: Path, *extra: str) -> list[str]:
    """Overrides of a few-second run: 300 agent steps of Pong, tiny memory."""
    base = [
        f"algo={algo}",
        f"env.name={GAME}",
        "env.max_episode_steps=60",  # truncations happen, evaluations stay short
        "collector.total_frames=300",
        "collector.init_random_frames=100",
        "collector.frames_per_batch=50",
        "algo.updates_per_batch=2",
        "algo.target_update_interval=4",  # a target copy every 2 batches
        "optim.batch_size=8",
        "optim.num_threads=1",
        "optim.compile=false",  # the compiled refresh: test_compiling.py
        "memory.capacity=250",  # evicts episodes
        "memory.value_chunk_size=64",
        "logger.eval_interval=150",
        "logger.eval_episodes=1",
        "logger.log_interval=0",
        "logger.progress_bar=false",
        "logger.plot=false",
        "checkpoint.interval=0",
        f"logger.run_dir={run_dir}",
    ]
    return merge_overrides(base, extra)


def run(overrides: list[str]) -> dict:
    return recipe.train(recipe.load_config(overrides))


def eval_csv(run_dir: Path) -> str:
    return (run_dir / "logs" / "scalars" / "eval" / "return_mean.csv").read_text()


@pytest.mark.parametrize("algo", ["gem", "dqn", "ddqn"])
def test_smoke_run(algo, tmp_path):
    summary = run(tiny(algo, tmp_path, "logger.plot=true"))
    assert summary["status"] == "finished" and summary["frames"] == 300
    assert [frame for frame, _ in summary["evaluations"]] == [0, 150, 300]
    assert (tmp_path / "curves.png").is_file()
    losses = {"gem": ["loss_sub", "loss_meta"], "dqn": ["loss"], "ddqn": ["loss"]}
    for name in losses[algo]:
        assert (tmp_path / "logs" / "scalars" / f"{name}.csv").is_file(), name
    assert summary["timing"]["update"] > 0
    if algo == "gem":
        assert summary["timing"]["memory refresh"] > 0
    payload = read_checkpoint(tmp_path / "checkpoints" / "last.pt")
    trainer = payload["trainer"]
    # 5 training batches (frames 100 to 300), a target copy every 2: 0, 2, 4
    assert trainer["hard_target_update"]["num_updates"] == 3
    if algo == "gem":  # each followed by a full refresh (incremental in between)
        assert trainer["memory_refresh"]["num_refreshes"] == 3
    assert "ale" in payload["env"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_equals_uninterrupted_run(precision, tmp_path, monkeypatch):
    from torchrl_gem import precision as precision_module

    # bf16 forced on (the study's Atari runs are bf16, resumed through the
    # mixed-precision stepper), whatever this CPU
    monkeypatch.setattr(precision_module, "bf16_is_fast", lambda device: True)
    straight, split = tmp_path / "straight", tmp_path / "split"
    chosen = f"optim.precision={precision}"
    run(tiny("gem", straight, chosen))
    stopped = run(tiny("gem", split, chosen, "checkpoint.stop_after=200"))
    assert stopped["frames"] == 200 and stopped["status"].startswith("stopped")
    shutil.copy(split / "checkpoints" / "last.pt", tmp_path / "stopped.pt")
    resume = f"checkpoint.resume={split / 'checkpoints' / 'last.pt'}"
    assert run(tiny("gem", split, chosen, resume))["frames"] == 300
    assert eval_csv(straight) == eval_csv(split)
    a = read_checkpoint(straight / "checkpoints" / "last.pt")
    b = read_checkpoint(split / "checkpoints" / "last.pt")
    for key, value in a["trainer"]["loss_module"].items():
        assert torch.equal(value, b["trainer"]["loss_module"][key]), key
    assert torch.equal(a["env"]["ale"], b["env"]["ale"])
    memory_a = a["trainer"]["replay_buffer"]["replay_buffer"]["_storage"]["_storage"]
    memory_b = b["trainer"]["replay_buffer"]["replay_buffer"]["_storage"]["_storage"]
    for key, value in memory_a.items():
        assert torch.equal(value, memory_b[key]), key
    # the interruption fell inside an episode, which then continued exactly
    stopped_payload = read_checkpoint(tmp_path / "stopped.pt")
    assert int(stopped_payload["carrier"]["step_count"]) > 0


def test_a_memory_beyond_the_available_ram_stops_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "available_ram_bytes", lambda: 10**6)
    # Pong per transition: one 84x84 frame (7056); action one-hot and action_value
    # over 6 actions (48 + 24), chosen_action_value, reward, episode_reward x 2
    # (16), step_count x 2, trajectory id (24), done, terminated, truncated x 2 (6);
    # the memory's returns and cached values (16), previous slot, depth, episode,
    # stamp (32), occupied (1): 7223 bytes, what a stored slot holds
    with pytest.raises(ConfigError) as err:
        run(tiny("gem", tmp_path / "run"))  # memory.capacity=250
    message = str(err.value)
    assert message.startswith("memory.capacity: 250 transitions of 7223 bytes")
    assert "need 1805750 bytes" in message and "1000000 bytes" in message
    assert "memory.storage=memmap" in message
    assert not (tmp_path / "run").exists()


def test_resume_of_another_game_is_refused(tmp_path):
    run(tiny("dqn", tmp_path, "checkpoint.stop_after=150"))
    resume = f"checkpoint.resume={tmp_path / 'checkpoints' / 'last.pt'}"
    other = tiny("dqn", tmp_path / "other", resume, "env.name=ALE/Breakout-v5")
    with pytest.raises(Exception, match="belongs to another run"):
        run(other)


def test_every_schema_field_and_yaml_value_has_a_comment():
    import dataclasses

    classes = [
        obj
        for obj in vars(atari_config).values()
        if dataclasses.is_dataclass(obj) and obj.__module__ == "atari_config"
    ]
    assert len(classes) >= 7
    for cls in classes:
        comments = field_comments(cls)  # inherited fields: config.py's
        for item in dataclasses.fields(cls):
            assert comments.get(item.name), f"{cls.__name__}.{item.name}"
    atari_dir = atari_config.ATARI_DIR
    for path in [atari_dir / "gem_atari.yaml", *(atari_dir / "algo").glob("*.yaml")]:
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                assert " # " in line, f"{path.name}: {line!r}"


def test_bf16_run_acts_steps_and_refreshes_under_autocast(tmp_path, monkeypatch):
    """optim.precision=bf16 (forced on, whatever the CPU): the gradient steps' losses
    and the refresh's target passes run under bf16 autocast; acting stays fp32."""
    from torchrl_gem import GEMDQNLoss, estimator, precision

    monkeypatch.setattr(precision, "bf16_is_fast", lambda device: True)
    seen = {"refresh": set(), "loss": set(), "acting": set()}

    def spy(part, real):
        def wrapped(mode, device="cpu"):
            seen[part].add(mode)
            return real(mode, device)

        return wrapped

    monkeypatch.setattr(estimator, "autocast", spy("refresh", estimator.autocast))
    forward = atari_builders.make_gem_dqn_policy

    def acting_spy(*args, **kwargs):
        policy = forward(*args, **kwargs)
        call = policy.forward

        def recorded(tensordict):
            seen["acting"].add(torch.is_autocast_enabled("cpu"))
            return call(tensordict)

        policy.forward = recorded
        return policy

    monkeypatch.setattr(atari_builders, "make_gem_dqn_policy", acting_spy)
    sub_loss = GEMDQNLoss.sub_loss

    def loss_spy(self, tensordict):
        seen["loss"].add(torch.is_autocast_enabled("cpu"))
        return sub_loss(self, tensordict)

    monkeypatch.setattr(GEMDQNLoss, "sub_loss", loss_spy)
    summary = run(tiny("gem", tmp_path, "optim.precision=bf16"))
    assert summary["status"] == "finished"
    assert all(torch.isfinite(torch.tensor(r)) for _, r in summary["evaluations"])
    assert seen == {"refresh": {"bf16"}, "loss": {True}, "acting": {False}}


def test_fp32_runs_no_autocast(tmp_path, monkeypatch):
    from torchrl_gem import GEMDQNLoss

    sub_loss = GEMDQNLoss.sub_loss
    seen = set()

    def loss_spy(self, tensordict):
        seen.add(torch.is_autocast_enabled("cpu"))
        return sub_loss(self, tensordict)

    monkeypatch.setattr(GEMDQNLoss, "sub_loss", loss_spy)
    recipe.train(recipe.load_config(tiny("gem", tmp_path, "optim.precision=fp32")))
    assert seen == {False}


def test_bf16_is_the_default():
    assert config().optim.precision == "bf16"


def test_bf16_parity_on_a_trained_checkpoint(tmp_path):
    """benchmarks/atari_parity.py on a (barely) trained run: every quantity of the
    parity report, finite, and bf16 within a few percent of fp32 at the median."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import atari_parity

    run(tiny("gem", tmp_path))
    rows = atari_parity.parity(tmp_path, states=64)
    assert set(rows) == {
        "Q-values, sub networks (4)",
        "Q-values, meta networks (2)",
        "refreshed memory returns",
        "gradient step's losses",
    }
    for name, (median, p99) in rows.items():
        assert 0 < median < 0.05 and median <= p99 < 1.0, name
