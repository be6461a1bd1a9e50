"""The learner on each device: its numbers against the CPU's, the recipes on CUDA,
checkpoints moved between devices, and the prepared GPU check.

``device`` (``conftest.py``) is the CPU, and CUDA where this machine has one (skipped
elsewhere, with the reason). The tests that hold a device's results against the same
computation on the CPU also run with ``device=cpu``, where they compare the CPU with
itself on tiny inputs: CI, which has no GPU, keeps their code working. The recipe runs
and the resumes from one device to another are CUDA only (their CPU runs are in
``test_recipe.py`` and ``test_atari.py``), but for a checkpoint written on a GPU and
resumed on a CPU, which is simulated on any machine. ``benchmarks/gpu_check.sh``
runs this file on a GPU machine.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn

from conftest import (
    CUDA,
    LossHost,
    needs_cuda,
    tiny_loss,
    trajectory_batch,
)
from conftest import tiny_mujoco_run as tiny
from torchrl_gem import (
    EpisodicMemory,
    FrameEpisodicMemory,
    GEMDQNLoss,
    TwinBackPropEstimator,
    make_nature_cnn_qnet,
    precision,
    twin_backprop_return,
)
from torchrl_gem.checkpoint import RunCheckpoint, read_checkpoint, write_checkpoint
from torchrl_gem.functional import discounted_returns
from torchrl_gem.trainer import DelayedActorStepper

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def assert_same(got, want, **tolerance) -> None:
    """``got`` equals ``want``, wherever each is: tensors, or mappings of them (state
    dicts, tensordicts) key by key, within ``tolerance``."""
    if isinstance(want, torch.Tensor):
        torch.testing.assert_close(got.cpu(), want.cpu(), **tolerance)
        return
    assert set(got.keys()) == set(want.keys())
    for key in want.keys():
        assert_same(got[key], want[key], **tolerance)


def seeded_loss():
    """The same tiny GEMLoss on every call (4 critics, 8-unit layers)."""
    torch.manual_seed(0)
    return tiny_loss()


def on(device) -> tuple[str, str]:
    """The recipes' overrides that put the learner on ``device``."""
    kind = torch.device(device).type
    return f"network.device={kind}", f"memory.device={kind}"


# ------------------------------------------------------------ twin returns
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"zero_tail": True, "floor": "selector"},
        {"cross_evaluation": False},
        {"max_horizon": 3, "zero_tail": True},  # the O(T * H) form
    ],
    ids=["default", "zero_tail", "no_cross", "max_horizon"],
)
def test_twin_backprop_return_equals_the_cpus(device, options):
    """The scan runs in torch on an accelerator, in NumPy on the CPU."""
    generator = torch.Generator().manual_seed(0)
    shape = (3, 40)
    done = torch.rand(*shape, 1, generator=generator) < 0.1
    inputs = {
        "next_state_value": torch.randn(*shape, 2, generator=generator),
        "reward": torch.randn(*shape, 1, generator=generator),
        "done": done,
        "terminated": done & (torch.rand(*shape, 1, generator=generator) < 0.5),
        "cut": torch.rand(*shape, 1, generator=generator) < 0.05,
    }

    def returns(where):
        moved = {key: value.to(where) for key, value in inputs.items()}
        return twin_backprop_return(0.97, **moved, return_horizon=True, **options)

    want, want_horizon = returns(CPU)
    got, horizon = returns(device)
    assert got.device.type == horizon.device.type == device.type
    assert_same(got, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(horizon.cpu(), want_horizon)


def test_discounted_returns_equal_the_cpus(device):
    generator = torch.Generator().manual_seed(1)
    reward = torch.randn(50, generator=generator)
    done = torch.rand(50, generator=generator) < 0.1
    cut = torch.rand(50, generator=generator) < 0.05
    want = discounted_returns(0.9, reward, done, cut)
    got = discounted_returns(0.9, reward.to(device), done.to(device), cut.to(device))
    assert got.device.type == device.type
    torch.testing.assert_close(got.cpu(), want, equal_nan=True)


def test_estimator_equals_the_cpus_also_built_before_the_loss_moved(device):
    """Target actor and 4 target critics on trajectories (one batched matmul per
    layer for the critics on a GPU, a loop on the CPU). An estimator built before
    ``loss.to(device)`` follows the loss there (its action bounds too)."""
    batch = trajectory_batch(3, 20, generator=torch.Generator().manual_seed(1))
    returns = []
    for where, moved_after in ((CPU, False), (device, False), (device, True)):
        loss = seeded_loss() if moved_after else seeded_loss().to(where)
        loss.make_value_estimator(gamma=0.9, policy_noise=0.0)  # deterministic
        out = loss.to(where).value_estimator(batch.clone().to(where))
        assert out["memory_return"].device.type == where.type
        returns.append(out["memory_return"])
    want, *others = returns
    for got in others:
        assert_same(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ losses
def test_gem_loss_steps_equal_the_cpus(device):
    """Critic steps and an actor step of GEMLoss through DelayedActorStepper, from
    the same weights (SGD: Adam would magnify the rounding of near-zero gradients)."""
    generator = torch.Generator().manual_seed(2)
    batches = [trajectory_batch(16, generator=generator, memory_return=True)] * 3

    def steps(where):
        loss = seeded_loss().to(where)
        stepper = DelayedActorStepper(
            torch.optim.SGD(loss.actor_network_params.values(True, True), lr=0.1),
            torch.optim.SGD(loss.qvalue_network_params.values(True, True), lr=0.1),
            device=where,
        )
        logs = [stepper.step(LossHost(loss), b.clone().to(where)) for b in batches]
        return logs, loss.state_dict()

    (want_logs, want_state), (logs, state) = steps(CPU), steps(device)
    for got, want in zip(logs, want_logs, strict=True):
        assert_same(got, want, rtol=1e-5, atol=1e-6)
    assert_same(state, want_state, rtol=1e-5, atol=1e-6)


def pixel_batch(size, num_actions, generator, n=6):
    """A sampled batch of uint8 4-stacks, one-hot actions and twin memory returns."""

    def pixels():
        return torch.randint(0, 256, (n, 4, size, size), generator=generator).byte()

    action = torch.randint(0, num_actions, (n,), generator=generator)
    return TensorDict(
        pixels=pixels(),
        action=nn.functional.one_hot(action, num_actions),
        memory_return=torch.randn(n, 2, generator=generator),
        next=TensorDict(
            pixels=pixels(),
            reward=torch.randn(n, 1, generator=generator),
            done=torch.zeros(n, 1, dtype=torch.bool),
            terminated=torch.rand(n, 1, generator=generator) < 0.3,
        ),
        batch_size=[n],
    )


def test_gem_dqn_loss_step_equals_the_cpus(device, monkeypatch):
    """GEM-DQN's both losses and an SGD step, on small Nature CNNs (36x36 frames)."""
    # fp32 convolutions on the GPU, as on the CPU (cuDNN may use TF32 otherwise)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    size, num_actions = 36, 3
    batch = pixel_batch(size, num_actions, torch.Generator().manual_seed(3))

    def step(where):
        torch.manual_seed(0)
        nets = [
            make_nature_cnn_qnet(num_actions, height=size, width=size) for _ in range(6)
        ]
        loss = GEMDQNLoss(nets[:4], nets[4:]).to(where)
        loss.make_value_estimator(gamma=0.99)
        optimizer = torch.optim.SGD(loss.parameters(), lr=0.01)
        out = loss(batch.clone().to(where))
        (out["loss_sub"] + out["loss_meta"]).backward()
        optimizer.step()
        return out.select("loss_sub", "loss_meta"), loss.state_dict()

    (want_out, want_state), (out, state) = step(CPU), step(device)
    assert out["loss_sub"].device.type == device.type
    assert_same(out, want_out, rtol=1e-5, atol=1e-5)
    assert_same(state, want_state, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- memories
def test_episodic_memory_on_the_device_equals_the_cpus(device):
    """extend (with evictions), refresh (with its diagnostics) and sample on a memory
    stored on ``device``, against a memory on the CPU fed the same CPU batches (what
    the recipe's trainer hands over)."""
    from test_memory import FakeCollector

    collector = FakeCollector(num_envs=2, seed=3)
    batches = [collector.batch(6) for _ in range(6)]
    memories, stats = [], []
    for where in (CPU, device):
        loss = seeded_loss().to(where)
        loss.make_value_estimator(gamma=0.9, policy_noise=0.0)
        memory = EpisodicMemory(capacity=40, batch_size=8, device=where)
        for batch in batches:
            memory.extend(batch)
            stats.append(memory.refresh(loss.value_estimator, diagnostics=True))
        memories.append(memory)
    cpu, memory = memories
    slots = cpu._writer.occupied_slots()
    assert len(slots) < 6 * 12  # episodes were evicted
    assert torch.equal(memory._writer.occupied_slots().cpu(), slots)
    stored = memory._writer.written()
    assert stored.get("memory_return").device.type == device.type
    want = cpu._writer.written()
    assert_same(stored[slots], want[slots], rtol=1e-5, atol=1e-6)
    for got, expected in zip(stats[len(batches) :], stats[: len(batches)], strict=True):
        for key, value in expected.items():
            assert math.isclose(got[key], value, rel_tol=1e-5, abs_tol=1e-6) or (
                math.isnan(got[key]) and math.isnan(value)
            ), key
    sample, info = memory.sample(return_info=True)
    index = torch.as_tensor(info["index"]).cpu()
    assert sample["memory_return"].device.type == device.type
    assert_same(sample.select(*want.keys()), want[index], rtol=0, atol=0)


class PixelValue(nn.Module):
    """Three action values, each reading every frame of the stack."""

    def __init__(self) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.arange(1.0, 5.0).reshape(4, 1, 1))

    def forward(self, pixels):
        value = (pixels.float() * self.weights).mean((-3, -2, -1)) / 100
        return torch.stack([value, -value, value / 2], -1)


def pixel_estimator(device) -> TwinBackPropEstimator:
    """A discrete-mode estimator on pixels with two different critics; its network
    template stays on the CPU, its parameters sit on ``device``."""
    network = TensorDictModule(PixelValue(), ["pixels"], ["action_value"])
    params = TensorDict.from_module(network).expand(2).clone()
    params["module", "weights"][1] = torch.tensor([3.0, -1.0, 2.0, 0.5])[:, None, None]
    estimator = TwinBackPropEstimator(
        gamma=0.9,
        qvalue_network=network,
        qvalue_params=params.to(device),
        action_space="discrete",
        value_chunk_size=7,
    )
    estimator.set_keys(value="action_value")
    return estimator


def test_frame_memory_on_the_device_equals_the_cpus(device):
    """The Atari memory on ``device``: stacks rebuilt across batches and evictions,
    incremental and full refreshes (chunked target passes), samples."""
    from test_atari import synthetic_batches  # (skipped without the atari extra)

    batches = synthetic_batches(2, 6, 8, "same", torch.Generator().manual_seed(5))
    memories = []
    for where in (CPU, device):
        estimator = pixel_estimator(where)
        memory = FrameEpisodicMemory(capacity=40, batch_size=8, device=where)
        for batch in batches:
            memory.extend(batch)
            memory.refresh(estimator, full=False)  # the Atari recipe's in-between
        memory.refresh(estimator)
        memories.append(memory)
    cpu, memory = memories
    slots = cpu._writer.occupied_slots()
    assert len(slots) < 2 * 6 * 8  # episodes were evicted
    assert torch.equal(memory._writer.occupied_slots().cpu(), slots)
    for got, want in zip(memory.stacks(slots), cpu.stacks(slots), strict=True):
        assert got.device.type == device.type
        assert torch.equal(got.cpu(), want)
    returns = memory._writer.written().get("memory_return")
    want = cpu._writer.written().get("memory_return")
    assert returns.device.type == device.type
    assert_same(returns[slots], want[slots], rtol=1e-5, atol=1e-6)
    sample, info = memory.sample(return_info=True)
    obs, nxt = cpu.stacks(torch.as_tensor(info["index"]).cpu())
    assert sample["pixels"].device.type == device.type
    assert torch.equal(sample["pixels"].cpu(), obs)
    assert torch.equal(sample["next", "pixels"].cpu(), nxt)


# ------------------------------------------------------------- checkpoints
def written_on_a_gpu():
    """``torch.save`` as a GPU process writes its CUDA tensors: tagged ``cuda:0``, so
    that loading them needs CUDA, or a ``map_location``."""
    return mock.patch("torch.serialization.location_tag", lambda storage: "cuda:0")


def test_a_frame_memory_dumped_on_a_gpu_loads_anywhere(tmp_path):
    from test_atari import synthetic_batches

    (batch,) = synthetic_batches(1, 9, 1, "same", torch.Generator().manual_seed(6))
    memory = FrameEpisodicMemory(capacity=20, sample_unrefreshed=True)
    memory.extend(batch)
    with written_on_a_gpu():
        memory.dumps(tmp_path / "memory")
    loaded = FrameEpisodicMemory(capacity=20, sample_unrefreshed=True)
    loaded.loads(tmp_path / "memory")
    slots = memory._writer.occupied_slots()
    for got, want in zip(loaded.stacks(slots), memory.stacks(slots), strict=True):
        assert torch.equal(got, want)


def mujoco_recipe():
    pytest.importorskip("mujoco")
    pytest.importorskip("hydra")
    import gem_mujoco

    return gem_mujoco


def run(overrides: list[str]) -> dict:
    recipe = mujoco_recipe()
    return recipe.train(recipe.load_config(overrides))


def eval_csv(run_dir: Path) -> str:
    return (run_dir / "logs" / "scalars" / "eval" / "return_mean.csv").read_text()


@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="a CUDA machine resumes real GPU checkpoints (test_resume_moves_across_"
    "devices)",
)
def test_a_checkpoint_written_on_a_gpu_resumes_on_the_cpu(tmp_path):
    """Its tensors come back on the CPU; the CUDA generator's state cannot be
    restored here, which the resume says."""
    total = "collector.total_frames=400"
    run(tiny("gem", tmp_path, total, "checkpoint.stop_after=200"))
    path = tmp_path / "checkpoints" / "last.pt"
    payload = read_checkpoint(path)
    payload["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    with written_on_a_gpu():
        write_checkpoint(path, payload)
    with pytest.warns(UserWarning, match="CUDA generators are not restored"):
        summary = run(tiny("gem", tmp_path, total, f"checkpoint.resume={path}"))
    assert summary["status"] == "finished" and summary["frames"] == 400


@needs_cuda
@pytest.mark.parametrize("saved, resumed", [("cpu", "cuda"), ("cuda", "cpu")])
def test_resume_moves_across_devices(saved, resumed, tmp_path, monkeypatch):
    """A run stopped on one device resumes on the other, its networks, optimisers and
    memory placed there, and trains to its end."""
    restore, placed = RunCheckpoint.restore, {}

    def placing(self, payload, path):
        restore(self, payload, path)
        placed["memory"] = self.memory.storage[0]["next", "reward"].device.type
        params = self.trainer.loss_module.parameters()
        placed["networks"] = {param.device.type for param in params}

    monkeypatch.setattr(RunCheckpoint, "restore", placing)
    total = "collector.total_frames=400"
    run(tiny("gem", tmp_path, total, *on(saved), "checkpoint.stop_after=200"))
    resume = f"checkpoint.resume={tmp_path / 'checkpoints' / 'last.pt'}"
    summary = run(tiny("gem", tmp_path, total, *on(resumed), resume))
    assert summary["status"] == "finished" and summary["frames"] == 400
    assert all(math.isfinite(value) for _, value in summary["evaluations"])
    assert placed == {"memory": resumed, "networks": {resumed}}


@pytest.mark.parametrize("device", [CUDA])
def test_resume_on_the_device_equals_an_uninterrupted_run(device, tmp_path):
    """With deterministic kernels (``torch.use_deterministic_algorithms``; the GPU
    check sets ``CUBLAS_WORKSPACE_CONFIG``), a stopped and resumed CUDA run ends as
    the uninterrupted one, as on the CPU (``test_recipe.py``)."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        total = ("collector.total_frames=400", *on(device))
        straight, split = tmp_path / "straight", tmp_path / "split"
        run(tiny("gem", straight, *total))
        run(tiny("gem", split, *total, "checkpoint.stop_after=200"))
        resume = f"checkpoint.resume={split / 'checkpoints' / 'last.pt'}"
        assert run(tiny("gem", split, *total, resume))["frames"] == 400
    finally:
        torch.use_deterministic_algorithms(was)
    assert eval_csv(straight) == eval_csv(split)
    a = read_checkpoint(straight / "checkpoints" / "last.pt")["trainer"]
    b = read_checkpoint(split / "checkpoints" / "last.pt")["trainer"]
    for key, value in a["loss_module"].items():
        assert torch.equal(value, b["loss_module"][key]), key


# ----------------------------------------------------------------- recipes
def spy_on(monkeypatch, module, *names) -> dict:
    """Record what ``module``'s builders ``names`` return."""
    built = {}

    def recording(name, make):
        def wrapped(*args, **kwargs):
            built[name] = make(*args, **kwargs)
            return built[name]

        return wrapped

    for name in names:
        monkeypatch.setattr(module, name, recording(name, getattr(module, name)))
    return built


def spy_on_autocast(monkeypatch) -> set:
    """The (precision, device type) of every autocast the package opens."""
    used = set()

    def spy(mode, device="cpu"):
        used.add((mode, torch.device(device).type))
        return precision.autocast(mode, device)

    for module in ("schedule", "sil", "estimator"):
        monkeypatch.setattr(f"torchrl_gem.{module}.autocast", spy)
    return used


@pytest.mark.parametrize("device", [CUDA])
@pytest.mark.parametrize("algo", ["gem", "td3", "sac", "td3_sil"])
def test_mujoco_recipe_runs_on_the_device(algo, device, tmp_path, monkeypatch):
    """400 frames with the learner on ``device`` in bf16 (the default, fast there):
    networks, memory and every autocast (gradient, refresh, self-imitation steps)
    there."""
    recipe = mujoco_recipe()
    built = spy_on(monkeypatch, recipe, "make_agent", "make_memory")
    used = spy_on_autocast(monkeypatch)
    summary = run(tiny(algo, tmp_path, *on(device)))
    assert summary["status"] == "finished" and summary["frames"] == 400
    assert all(math.isfinite(value) for _, value in summary["evaluations"])
    loss = built["make_agent"][1]
    assert {param.device.type for param in loss.parameters()} == {device.type}
    memory = built["make_memory"]
    assert memory.storage[0]["next", "reward"].device.type == device.type
    assert used == {("bf16", device.type)}


@pytest.mark.parametrize("device", [CUDA])
def test_atari_recipe_runs_on_the_device(device, tmp_path, monkeypatch):
    """GEM-DQN's 300 agent steps with the Q-networks and the frame memory on
    ``device``: bf16 gradient steps and refreshes there, evaluation there."""
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    import atari_builders
    import gem_atari
    from test_atari import tiny as atari_tiny

    built = spy_on(monkeypatch, gem_atari, "make_agent", "make_memory", "make_stepper")
    used = spy_on_autocast(monkeypatch)
    cfg = gem_atari.load_config(atari_tiny("gem", tmp_path, *on(device)))
    summary = gem_atari.train(cfg)
    assert summary["status"] == "finished" and summary["frames"] == 300
    assert all(math.isfinite(value) for _, value in summary["evaluations"])
    loss = built["make_agent"][0]
    assert {param.device.type for param in loss.parameters()} == {device.type}
    frames = built["make_memory"].storage[0]["_frames", "frame"]
    assert frames.device.type == device.type
    stepper = built["make_stepper"]
    assert isinstance(stepper, atari_builders.TimedStepper)
    assert stepper.mixed_precision and stepper.device_type == device.type
    assert used == {("bf16", device.type)}  # the refresh's target passes


def test_atari_devices_are_checked():
    """Refused without CUDA, naming the field; a memmap memory stays on the CPU."""
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    import atari_config
    from config import ConfigError

    def check(*overrides):
        cfg = atari_config.load_atari_config(["env.name=ALE/Pong-v5", *overrides])
        atari_config.check_atari_config(cfg)

    check("network.device=cpu", "memory.device=cpu")
    with pytest.raises(ConfigError, match=r"^network.device: unknown device 'tpu'"):
        check("network.device=tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^memory.device: cuda is requested"):
            check("memory.device=cuda")
    with (
        mock.patch("torch.cuda.is_available", lambda: True),
        mock.patch("torch.cuda.device_count", lambda: 1),
        pytest.raises(ConfigError, match=r"^memory.device: a memmap storage lives"),
    ):
        check("memory.device=cuda", "memory.storage=memmap")


def test_self_imitation_autocasts_where_the_critics_are():
    """The SIL steps' autocast names ``network.device`` (not the CPU's, under which
    CUDA critics would silently run fp32)."""
    recipe = mujoco_recipe()
    import builders

    cfg = recipe.load_config(["algo=td3_sil", "network.device=cuda"])  # not checked
    loss = seeded_loss()
    memory = EpisodicMemory(capacity=100)
    critic_optim = torch.optim.SGD(loss.qvalue_network_params.values(True, True))
    hook = builders.make_self_imitation(cfg, loss, memory, critic_optim)
    assert torch.device(hook.device).type == "cuda"


# ------------------------------------------ bf16 and compilation (the slowest)
@pytest.mark.parametrize("device", [CUDA])
def test_bf16_steps_and_refresh_autocast_on_the_device(device, monkeypatch):
    """bf16 is resolved as fast there; the losses and the target pass run under that
    device's autocast; parameters stay fp32; the numbers stay near fp32's."""
    assert precision.resolve("bf16", device) == "bf16"
    from torchrl_gem import GEMLoss

    seen = set()
    value_loss = GEMLoss.value_loss

    def spy(self, tensordict):
        seen.add(torch.is_autocast_enabled(device.type))
        return value_loss(self, tensordict)

    monkeypatch.setattr(GEMLoss, "value_loss", spy)
    batch = trajectory_batch(3, 20, generator=torch.Generator().manual_seed(7))
    batch["memory_return"] = torch.randn(3, 20, 2)
    results = {}
    for mode in ("fp32", "bf16"):
        loss = seeded_loss().to(device)
        stepper = DelayedActorStepper(
            torch.optim.SGD(loss.actor_network_params.values(True, True), lr=0.1),
            torch.optim.SGD(loss.qvalue_network_params.values(True, True), lr=0.1),
            precision=mode,
            device=device,
        )
        log = stepper.step(LossHost(loss), batch.reshape(-1).to(device))
        assert all(p.dtype == torch.float32 for p in loss.parameters())
        estimator = TwinBackPropEstimator.for_loss(
            loss, gamma=0.9, precision=mode, policy_noise=0.0
        )
        values = estimator.next_state_value(batch.get("next").to(device))
        assert values.dtype == torch.float32
        results[mode] = (log, values)
    assert seen == {False, True}
    for got, want in zip(results["bf16"], results["fp32"], strict=True):
        assert_same(got, want, rtol=5e-2, atol=5e-2, check_dtype=False)  # bf16 losses


@pytest.mark.parametrize("device", [CUDA])
def test_compiled_steps_and_target_pass_equal_eager_on_the_device(device):
    """torch.compile on the GPU (Triton) compiles, with no fall-back to eager, and
    gives eager's numbers."""
    generator = torch.Generator().manual_seed(8)
    batches = [trajectory_batch(32, generator=generator, memory_return=True)] * 3
    trajectories = trajectory_batch(3, 17, generator=generator).to(device)
    results = {}
    for compile in (False, True):
        loss = seeded_loss().to(device)
        stepper = DelayedActorStepper(
            torch.optim.SGD(loss.actor_network_params.values(True, True), lr=0.1),
            torch.optim.SGD(loss.qvalue_network_params.values(True, True), lr=0.1),
            device=device,
            compile=compile,
        )
        logs = [stepper.step(LossHost(loss), b.clone().to(device)) for b in batches]
        estimator = TwinBackPropEstimator.for_loss(
            loss, gamma=0.9, value_chunk_size=16, compile=compile, policy_noise=0.0
        )
        returns = estimator(trajectories.clone())["memory_return"]
        results[compile] = (logs, loss.state_dict(), returns)
    assert sorted(stepper._compiled) == ["actor_loss", "value_loss"]
    assert all(call.compiled for call in stepper._compiled.values())
    assert estimator._compiled_chunk_value.compiled
    (eager_logs, *eager), (logs, *compiled) = results[False], results[True]
    for got, want in zip([*logs, *compiled], [*eager_logs, *eager], strict=True):
        assert_same(got, want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------- GPU check
@pytest.mark.slow
def test_gpu_check_script_runs_in_smoke_mode(tmp_path):
    """``benchmarks/gpu_check.sh`` with ``GPU_CHECK_SMOKE=1`` (tiny sizes; its test
    step, this file, is left out): every step passes here, one log per step and a
    summary in the folder it is given."""
    out = tmp_path / "out"
    env = dict(os.environ, GPU_CHECK_SMOKE="1", PYTHON=sys.executable)
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = (out / "summary.txt").read_text()
    for step in ("setup", "gem_hopper", "update", "refresh"):
        assert f"PASS  {step}" in summary, summary
    assert "SKIP  tests" in summary
    assert sorted(path.name for path in out.iterdir()) == [
        "gem_hopper.log",
        "refresh.log",
        "setup.log",
        "summary.txt",
        "tests.log",
        "update.log",
    ]
    assert "frames/s" in (out / "gem_hopper.log").read_text()
    assert summary in done.stdout  # printed too
