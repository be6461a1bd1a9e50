"""Steady-state frames/s of the recipe's training cycle with a full 100k memory.

One cycle is what ``recipes/gem_mujoco.py`` runs per collected batch of 100 frames:
collect, memory write, target update, refresh of the whole memory (GEM), the gradient
steps (200 for GEM, 100 for TD3), weight sync. Nothing collects 100k frames: each
variant builds the recipe's objects for Hopper-v5 through the recipe's own ``train()``
(its ``Trainer`` is swapped for a subclass whose ``train()`` first fills the memory,
then runs the unchanged loop), with the memory preloaded by ``memory.extend`` with 100
synthetic finished 1000-step Hopper-shaped episodes (observation 11, action 3, random
observations and rewards, truncated at the time limit, with the collector's keys).
Settings: ``collector.init_random_frames=0``, ``optim.num_threads=1``, one evaluation
episode at the start (``logger.eval_interval`` beyond the run, outside the timing),
``checkpoint.interval=0`` with the run stopped before its final checkpoint and
evaluation, no plot, no progress bar.

Variants (``--variants``, default all):

- ``gem-fp32``, ``gem-bf16``, ``td3-fp32``, ``td3-bf16``: the current recipe,
  ``algo=gem|td3`` and ``optim.precision``, with its default ``optim.compile``
  (GEM's loss calls and target pass compiled, TD3 eager); TD3's plain replay buffer
  is preloaded with the same episodes.
- ``gem-fp32-eager``, ``gem-bf16-eager``: the same with ``optim.compile=false``.
- ``minimal-fp32``, ``minimal-bf16``: the ceiling for the plumbing, GEM in plain
  PyTorch in this file: a Gymnasium Hopper-v5 stepped directly by a torch actor (+
  Gaussian noise 0.1), a tensor ring buffer of 100k transitions with the same
  preload, the refresh as target actor (+ smoothing noise) and the 4 target critics
  (one after the other: about 2.5x faster than batched at 2048 rows on CPU, as the
  package's estimator does) on every stored next state in chunks of 2048, then
  ``torchrl_gem.twin_backprop_return`` (zero tail, selector floor: the recipe's
  defaults); one bulk target update (``torch._foreach_lerp_``); 200 gradient steps
  of batch 128 with the 4 critics as batched matmuls, the asymmetric loss on both
  twin columns, the actor every 2nd step, fused Adam. The acting actor is the
  trained one, so it has no weight sync. bf16 = autocast around the networks, as the
  recipe.
- ``base-gem-fp32``, ``base-td3-fp32``, ``base-gem-bf16``: the recipe at
  ``--baseline-commit`` (default 99ab704, before the precision option: fp32 only;
  ``base-gem-bf16`` needs a later one), built by its own ``train()`` in the same way,
  from a checkout on ``PYTHONPATH``: ``--baseline-path``, or else a temporary ``git
  worktree`` of that commit, removed at the end. A refactor compares with the commit
  before it: ``--baseline-commit <sha> --variants gem-bf16,base-gem-bf16``.

Every variant runs in its own process (its own ``timeit`` registry, torch threads,
imports of its checkout), and all are interleaved: one cycle each in turn, the order
rotating every round, the others waiting idle on a pipe. Each process first runs
``--warmup`` untimed cycles (all processes at once), then ``--cycles`` timed ones. A
timed cycle runs from the end of one weight sync to the end of the next, so it holds
the previous cycle's logging hooks too. frames/s is the frames of the timed cycles
over their summed wall time; the split is the ``timeit`` totals
(``timeit.todict(percall=False)``) of the timed cycles over the same time: collect
(``collect``), memory write (``hook/extend``), sample (``hook/sample``), target
update (``hook/bulk_target_update``; TD3 steps its targets inside the gradient
steps), refresh (``memory/refresh``), gradient steps (``update``), the rest "other".
The minimal loop times its phases under the same keys. "spread" is (max - min) /
median of the cycle times; the memory evicts one 1000-step episode every 10 cycles,
so 10 cycles hold one eviction. Ratios: the frames/s ratio, then the median and range
over rounds of the per-round ratio.

Run: ``python benchmarks/cycle.py`` (about 10 minutes on 2 cores);
``--cycles 3 --variants gem-fp32,minimal-fp32`` for a quick look.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("RL_WARNINGS", "0")

import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASELINE_COMMIT = "99ab704"
ENV_NAME = "Hopper-v5"
OBS_DIM, ACT_DIM = 11, 3
EPISODES, EPISODE_STEPS = 100, 1000  # the preload: a full 100k memory
FRAMES_PER_BATCH = 100
TRAJ_ID_OFFSET = 1_000_000  # preloaded trajectory ids, apart from the collector's
SPLIT = (  # table column -> timeit key
    ("collect", "collect"),
    ("mem write", "hook/extend"),
    ("sample", "hook/sample"),
    ("target upd", "hook/bulk_target_update"),
    ("refresh", "memory/refresh"),
    ("grad steps", "update"),
)


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # "recipe" or "minimal"
    code: str  # "current" or "baseline": which checkout it imports
    algo: str
    precision: str
    compile: bool | None = None  # optim.compile; None: the recipe's default


VARIANTS = (
    Variant("gem-fp32", "recipe", "current", "gem", "fp32"),
    Variant("gem-bf16", "recipe", "current", "gem", "bf16"),
    Variant("gem-fp32-eager", "recipe", "current", "gem", "fp32", compile=False),
    Variant("gem-bf16-eager", "recipe", "current", "gem", "bf16", compile=False),
    Variant("td3-fp32", "recipe", "current", "td3", "fp32"),
    Variant("td3-bf16", "recipe", "current", "td3", "bf16"),
    Variant("minimal-fp32", "minimal", "current", "gem", "fp32"),
    Variant("minimal-bf16", "minimal", "current", "gem", "bf16"),
    Variant("base-gem-fp32", "recipe", "baseline", "gem", "fp32"),
    Variant("base-td3-fp32", "recipe", "baseline", "td3", "fp32"),
    Variant("base-gem-bf16", "recipe", "baseline", "gem", "bf16"),
)
BY_NAME = {variant.name: variant for variant in VARIANTS}
# (numerator, denominator, goal): frames/s ratios printed under the table
RATIOS = (
    ("gem-fp32", "minimal-fp32", 0.85),
    ("gem-bf16", "minimal-bf16", 0.85),
    ("gem-fp32", "base-gem-fp32", 1.2),
    ("gem-bf16", "base-gem-fp32", 1.8),
    ("td3-fp32", "base-td3-fp32", None),
    ("gem-bf16", "base-gem-bf16", None),
    ("td3-bf16", "base-td3-fp32", None),
    ("gem-fp32", "gem-fp32-eager", None),
    ("gem-bf16", "gem-bf16-eager", None),
    ("gem-fp32-eager", "minimal-fp32", None),
    ("gem-bf16", "gem-fp32", None),
    ("minimal-bf16", "minimal-fp32", None),
)


def synthetic_episodes(
    episodes: int = EPISODES, steps: int = EPISODE_STEPS, seed: int = 0
) -> TensorDict:
    """``[episodes, steps]`` finished Hopper-shaped episodes with collector keys.

    Random observations (each step's next observation is the following step's
    observation), uniform actions in [-1, 1], random rewards; every episode ends by
    the 1000-step time limit (done and truncated, not terminated). Step counts and
    running returns as ``StepCounter`` and ``RewardSum`` write them.
    """
    generator = torch.Generator().manual_seed(seed)
    shape = (episodes, steps)
    states = torch.randn(episodes, steps + 1, OBS_DIM, generator=generator)
    reward = torch.randn(*shape, 1, generator=generator)
    action = torch.rand(*shape, ACT_DIM, generator=generator) * 2 - 1
    count = torch.arange(steps).expand(shape).unsqueeze(-1).clone()
    returns = reward.cumsum(1)
    end = torch.zeros(*shape, 1, dtype=torch.bool)
    end[:, -1] = True
    trajectory = (TRAJ_ID_OFFSET + torch.arange(episodes))[:, None].expand(shape)

    def false() -> torch.Tensor:
        return torch.zeros(*shape, 1, dtype=torch.bool)

    return TensorDict(
        observation=states[:, :-1].clone(),
        action=action,
        step_count=count,
        episode_reward=returns - reward,
        done=false(),
        terminated=false(),
        truncated=false(),
        collector=TensorDict(traj_ids=trajectory.clone(), batch_size=shape),
        next=TensorDict(
            observation=states[:, 1:].clone(),
            reward=reward,
            done=end,
            terminated=false(),
            truncated=end.clone(),
            step_count=count + 1,
            episode_reward=returns,
            batch_size=shape,
        ),
        batch_size=shape,
    )


# ---------------------------------------------------------------------------
# Worker side: one variant per process, one cycle per "go" from the coordinator
# ---------------------------------------------------------------------------
class Channel:
    """The worker's end of the pipes; :meth:`cycle_end` runs after each weight sync.

    After ``warmup`` cycles it reports "ready", then blocks until the coordinator
    says "go" (time one more cycle) or anything else (exit at once: no final
    evaluation, checkpoint or summary).
    """

    def __init__(self, fds: str, warmup: int) -> None:
        from torchrl import timeit

        read_fd, write_fd = (int(fd) for fd in fds.split(","))
        self.reader = os.fdopen(read_fd, "r")
        self.writer = os.fdopen(write_fd, "w")
        self.timeit = timeit
        self.warmup = warmup
        self.cycles = 0
        self.info: dict = {}
        self.start: float | None = None
        self.before: dict[str, float] = {}

    def send(self, **message) -> None:
        self.writer.write(json.dumps(message) + "\n")
        self.writer.flush()

    def cycle_end(self, *args, **kwargs) -> None:
        now = time.perf_counter()
        self.cycles += 1
        if self.start is not None:
            totals = self.timeit.todict(percall=False)
            split = {
                key: totals.get(key, 0.0) - self.before.get(key, 0.0)
                for _, key in SPLIT
            }
            self.send(kind="cycle", seconds=now - self.start, split=split)
        elif self.cycles < self.warmup:
            return
        else:
            self.send(kind="ready", **self.info)
        if self.reader.readline().strip() != "go":
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        self.before = self.timeit.todict(percall=False)
        self.start = time.perf_counter()


def recipe_worker(variant: Variant, args: argparse.Namespace, channel: Channel):
    """Build and run the recipe of the checkout at ``args.root`` (on PYTHONPATH)."""
    root = Path(args.root).resolve()
    sys.path[:0] = [str(root), str(root / "recipes")]
    import gem_mujoco
    import torchrl_gem

    package = Path(torchrl_gem.__file__).resolve()
    if root not in package.parents:
        raise RuntimeError(f"torchrl_gem imported from {package}, not from {root}")
    run_dir = Path(args.run_dir) / variant.name
    total_frames = (args.warmup + args.cycles + 1) * FRAMES_PER_BATCH
    overrides = [
        f"algo={variant.algo}",
        f"env.name={ENV_NAME}",
        f"collector.total_frames={total_frames}",
        "collector.init_random_frames=0",
        f"collector.frames_per_batch={FRAMES_PER_BATCH}",
        "optim.num_threads=1",
        f"logger.run_dir={run_dir}",
        f"logger.eval_interval={100 * total_frames}",
        "logger.eval_episodes=1",
        "logger.plot=false",
        "logger.progress_bar=false",
        "checkpoint.interval=0",
    ]
    if variant.code == "current" and variant.compile is not None:
        overrides.append(f"optim.compile={str(variant.compile).lower()}")
    cfg = gem_mujoco.load_config(overrides)
    if "precision" in cfg.optim:  # 99ab704 had no such option: fp32
        precision_override = f"optim.precision={variant.precision}"
        cfg = gem_mujoco.load_config([*overrides, precision_override])
    precision = str(cfg.optim.get("precision", "fp32"))
    if variant.code == "current":  # with the fallback where bf16 is slow
        from builders import network_precision

        precision = network_precision(cfg)

    class PreloadedTrainer(gem_mujoco.Trainer):
        """The recipe's trainer, its memory filled before the loop starts."""

        def train(self):
            memory = self._modules["replay_buffer"].replay_buffer
            episodic = hasattr(memory, "refresh")
            data = synthetic_episodes()
            memory.extend(data if episodic else data.reshape(-1))
            channel.info.update(
                package=str(package.parent),
                memory=type(memory).__name__,
                stored=len(memory),
                precision=precision,
            )
            self.register_op("post_steps", channel.cycle_end)  # after the sync
            return super().train()

    gem_mujoco.Trainer = PreloadedTrainer
    gem_mujoco.train(cfg)
    raise RuntimeError("the run ended before the coordinator stopped it")


class MinimalGEM:
    """GEM's cycle in plain PyTorch: the ceiling for the recipe's plumbing."""

    CAPACITY = EPISODES * EPISODE_STEPS
    HIDDEN = (400, 300)
    NUM_CRITICS = 4
    BATCH, UPDATES, POLICY_DELAY = 128, 200, 2
    GAMMA, TAU, LR = 0.99, 0.005, 3e-4
    EXPLORATION, POLICY_NOISE, NOISE_CLIP, CHUNK = 0.1, 0.2, 0.5, 2048

    def __init__(self, precision: str, seed: int = 0) -> None:
        import gymnasium

        from torchrl_gem import twin_backprop_return

        self.scan = twin_backprop_return
        self.precision = precision
        torch.manual_seed(seed)
        self.env = gymnasium.make(ENV_NAME)
        observation, _ = self.env.reset(seed=seed)
        self.observation = torch.as_tensor(observation, dtype=torch.float32)
        self.low = torch.as_tensor(self.env.action_space.low, dtype=torch.float32)
        self.high = torch.as_tensor(self.env.action_space.high, dtype=torch.float32)
        self.actor = self._actor_params()
        self.critics = self._critic_params()
        with torch.no_grad():
            self.target_actor = [p.detach().clone() for p in self.actor]
            self.target_critics = [p.detach().clone() for p in self.critics]
        self.actor_optim = torch.optim.Adam(self.actor, lr=self.LR, fused=True)
        self.critic_optim = torch.optim.Adam(self.critics, lr=self.LR, fused=True)
        self.tau = 1.0 - (1.0 - self.TAU) ** self.UPDATES  # bulk: 200 Polyak steps

        size = self.CAPACITY
        self.buffer = {
            "observation": torch.zeros(size, OBS_DIM),
            "action": torch.zeros(size, ACT_DIM),
            "reward": torch.zeros(size, 1),
            "next_observation": torch.zeros(size, OBS_DIM),
            "done": torch.zeros(size, 1, dtype=torch.bool),
            "terminated": torch.zeros(size, 1, dtype=torch.bool),
            "memory_return": torch.zeros(size, 2),
        }
        self.position = self.stored = 0
        data = synthetic_episodes().reshape(-1)
        self.write(
            {
                "observation": data["observation"],
                "action": data["action"],
                "reward": data["next", "reward"],
                "next_observation": data["next", "observation"],
                "done": data["next", "done"],
                "terminated": data["next", "terminated"],
            }
        )
        self.batch = {
            key: value[:FRAMES_PER_BATCH].clone()
            for key, value in self.buffer.items()
            if key != "memory_return"
        }

    # ---- networks: [in, out] weights; the critics' layers batched over critics ----
    @staticmethod
    def _glorot(*shape: int) -> torch.Tensor:
        fan_in, fan_out = shape[-2], shape[-1]
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        return torch.empty(shape).uniform_(-bound, bound)

    def _actor_params(self) -> list[torch.nn.Parameter]:
        params, width = [], OBS_DIM
        for hidden in self.HIDDEN:
            params += [self._glorot(width, hidden), torch.zeros(hidden)]
            params += [torch.ones(hidden), torch.zeros(hidden)]  # LayerNorm
            width = hidden
        params += [self._glorot(width, ACT_DIM), torch.zeros(ACT_DIM)]
        return [torch.nn.Parameter(p) for p in params]

    def _critic_params(self) -> list[torch.nn.Parameter]:
        k, (first, second) = self.NUM_CRITICS, self.HIDDEN
        width = first + ACT_DIM  # the action re-injected after the first layer
        first_weight = self._glorot(k, OBS_DIM + ACT_DIM, first)
        params = [
            first_weight.transpose(0, 1).reshape(OBS_DIM + ACT_DIM, k * first),
            torch.zeros(k, 1, first),
            torch.ones(k, 1, width),
            torch.zeros(k, 1, width),
            self._glorot(k, width, second),
            torch.zeros(k, 1, second),
            torch.ones(k, 1, second),
            torch.zeros(k, 1, second),
            self._glorot(k, second, 1),
            torch.zeros(k, 1, 1),
        ]
        return [torch.nn.Parameter(p.contiguous()) for p in params]

    def act(self, params, observation: torch.Tensor) -> torch.Tensor:
        w1, b1, g1, c1, w2, b2, g2, c2, w3, b3 = params
        hidden = torch.addmm(b1, observation, w1)
        hidden = torch.relu(torch.layer_norm(hidden, hidden.shape[-1:], g1, c1))
        hidden = torch.addmm(b2, hidden, w2)
        hidden = torch.relu(torch.layer_norm(hidden, hidden.shape[-1:], g2, c2))
        squashed = torch.tanh(torch.addmm(b3, hidden, w3))
        return self.low + (squashed + 1) * (self.high - self.low) / 2

    def values(self, params, observation, action) -> torch.Tensor:
        """``[K, n]`` values of the K critics."""
        w1, b1, g1, c1, w2, b2, g2, c2, w3, b3 = params
        k, rows = self.NUM_CRITICS, observation.shape[0]
        hidden = torch.cat([observation, action], -1) @ w1  # [n, K * first]
        hidden = hidden.view(rows, k, -1).transpose(0, 1) + b1
        hidden = torch.cat([hidden, action.expand(k, rows, ACT_DIM)], -1)
        normed = torch.layer_norm(hidden, hidden.shape[-1:])
        hidden = torch.relu(torch.addcmul(c1, normed, g1))
        hidden = torch.baddbmm(b2, hidden, w2)
        normed = torch.layer_norm(hidden, hidden.shape[-1:])
        hidden = torch.relu(torch.addcmul(c2, normed, g2))
        return torch.baddbmm(b3, hidden, w3).squeeze(-1)

    def values_per_critic(self, params, observation, action) -> torch.Tensor:
        """``[K, n]`` values, one critic after the other (large inference batches)."""
        w1, b1, g1, c1, w2, b2, g2, c2, w3, b3 = params
        k, first = self.NUM_CRITICS, self.HIDDEN[0]
        state_action = torch.cat([observation, action], -1)
        first_weights = w1.view(OBS_DIM + ACT_DIM, k, first)
        values = []
        for i in range(k):
            hidden = torch.addmm(b1[i, 0], state_action, first_weights[:, i])
            hidden = torch.cat([hidden, action], -1)
            shape = hidden.shape[-1:]
            hidden = torch.layer_norm(hidden, shape, g1[i, 0], c1[i, 0]).relu_()
            hidden = torch.addmm(b2[i, 0], hidden, w2[i])
            shape = hidden.shape[-1:]
            hidden = torch.layer_norm(hidden, shape, g2[i, 0], c2[i, 0]).relu_()
            values.append(torch.addmm(b3[i, 0], hidden, w3[i]))
        return torch.stack(values).squeeze(-1)

    def autocast(self):
        return torch.autocast("cpu", torch.bfloat16, enabled=self.precision == "bf16")

    # ---- the cycle ----
    def write(self, data: dict[str, torch.Tensor]) -> None:
        rows = len(data["reward"])
        slots = (self.position + torch.arange(rows)) % self.CAPACITY
        for key, value in data.items():
            self.buffer[key][slots] = value
        self.position = (self.position + rows) % self.CAPACITY
        self.stored = min(self.stored + rows, self.CAPACITY)

    @torch.no_grad()
    def collect(self) -> None:
        batch = self.batch
        for step in range(FRAMES_PER_BATCH):
            action = self.act(self.actor, self.observation.unsqueeze(0))[0]
            noise = torch.randn(ACT_DIM) * self.EXPLORATION
            action = torch.maximum(torch.minimum(action + noise, self.high), self.low)
            observation, reward, terminated, truncated, _ = self.env.step(
                action.numpy()
            )
            batch["observation"][step] = self.observation
            batch["action"][step] = action
            batch["reward"][step] = reward
            next_observation = torch.as_tensor(observation, dtype=torch.float32)
            batch["next_observation"][step] = next_observation
            batch["done"][step] = terminated or truncated
            batch["terminated"][step] = terminated
            if terminated or truncated:
                observation, _ = self.env.reset()
                next_observation = torch.as_tensor(observation, dtype=torch.float32)
            self.observation = next_observation

    @torch.no_grad()
    def target_update(self) -> None:
        torch._foreach_lerp_(self.target_actor, self.actor, self.tau)
        torch._foreach_lerp_(self.target_critics, self.critics, self.tau)

    @torch.no_grad()
    def refresh(self) -> None:
        """Twin returns of every stored transition, oldest to newest."""
        order = (self.position + torch.arange(self.stored)) % self.CAPACITY
        if self.stored < self.CAPACITY:
            order = torch.arange(self.stored)
        next_observation = self.buffer["next_observation"][order]
        values = torch.empty(len(order), 2)
        half = self.NUM_CRITICS // 2
        with self.autocast():
            for start in range(0, len(order), self.CHUNK):
                states = next_observation[start : start + self.CHUNK]
                action = self.act(self.target_actor, states)
                noise = torch.randn_like(action) * self.POLICY_NOISE
                action = action + noise.clamp(-self.NOISE_CLIP, self.NOISE_CLIP)
                action = torch.maximum(torch.minimum(action, self.high), self.low)
                value = self.values_per_critic(self.target_critics, states, action)
                end = start + len(states)
                values[start:end, 0] = value[:half].amin(0)
                values[start:end, 1] = value[half:].amin(0)
        returns = self.scan(
            self.GAMMA,
            values,
            self.buffer["reward"][order],
            self.buffer["done"][order],
            self.buffer["terminated"][order],
            zero_tail=True,
            floor="selector",
        )
        self.buffer["memory_return"][order] = returns

    def gradient_steps(self, timeit) -> None:
        buffer = self.buffer
        frozen = [p.detach() for p in self.critics]
        for step in range(self.UPDATES):
            with timeit("hook/sample"):
                index = torch.randint(self.stored, (self.BATCH,))
                observation = buffer["observation"][index]
                action = buffer["action"][index]
                target = buffer["memory_return"][index].T.unsqueeze(0)  # [1, 2, B]
            with timeit("update"):
                with self.autocast():
                    prediction = self.values(self.critics, observation, action)
                    error = target - prediction.unsqueeze(1)  # [K, 2, B]
                    weight = torch.where(error < 0, 2.0, 0.5)  # 1/alpha, alpha
                    loss = (weight * error.square()).mean(1).sum(0).mean()
                self.critic_optim.zero_grad(set_to_none=True)
                loss.backward()
                self.critic_optim.step()
                if step % self.POLICY_DELAY == 0:
                    with self.autocast():
                        policy = self.act(self.actor, observation)
                        actor_loss = -self.values(frozen, observation, policy).mean()
                    self.actor_optim.zero_grad(set_to_none=True)
                    actor_loss.backward()
                    self.actor_optim.step()

    def cycle(self, timeit) -> None:
        with timeit("collect"):
            self.collect()
        with timeit("hook/extend"):
            self.write(self.batch)
        with timeit("hook/bulk_target_update"):
            self.target_update()
        with timeit("memory/refresh"):
            self.refresh()
        self.gradient_steps(timeit)


def minimal_worker(variant: Variant, args: argparse.Namespace, channel: Channel):
    import torchrl_gem

    torch.set_num_threads(1)
    loop = MinimalGEM(variant.precision)
    channel.info.update(
        package=str(Path(torchrl_gem.__file__).resolve().parent),
        memory="tensor ring buffer",
        stored=loop.stored,
        precision=variant.precision,
    )
    while True:
        loop.cycle(channel.timeit)
        channel.cycle_end()


# ---------------------------------------------------------------------------
# Coordinator: start the workers, interleave their cycles, print the table
# ---------------------------------------------------------------------------
class Worker:
    def __init__(self, variant: Variant, root: Path, args, run_dir: Path) -> None:
        self.variant = variant
        to_worker, from_worker = os.pipe(), os.pipe()
        fds = f"{to_worker[0]},{from_worker[1]}"
        self.log_path = run_dir / f"{variant.name}.log"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker"]
        command += [variant.name, "--fds", fds, "--root", str(root)]
        command += ["--run-dir", str(run_dir), "--cycles", str(args.cycles)]
        command += ["--warmup", str(args.warmup)]
        env = dict(os.environ, PYTHONPATH=str(root))
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                command,
                pass_fds=(to_worker[0], from_worker[1]),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=root,
            )
        os.close(to_worker[0])
        os.close(from_worker[1])
        self.writer = os.fdopen(to_worker[1], "w")
        self.reader = os.fdopen(from_worker[0], "r")
        self.info: dict = {}
        self.seconds: list[float] = []
        self.split: dict[str, float] = {key: 0.0 for _, key in SPLIT}

    def receive(self, kind: str) -> dict:
        line = self.reader.readline()
        if not line:
            self.process.wait()
            tail = self.log_path.read_text().splitlines()[-30:]
            raise RuntimeError(
                f"worker {self.variant.name} exited ({self.process.returncode}):\n"
                + "\n".join(tail)
            )
        message = json.loads(line)
        assert message["kind"] == kind, message
        return message

    def command(self, word: str) -> None:
        self.writer.write(word + "\n")
        self.writer.flush()

    def run_cycle(self) -> float:
        self.command("go")
        message = self.receive("cycle")
        self.seconds.append(message["seconds"])
        for key, value in message["split"].items():
            self.split[key] += value
        return FRAMES_PER_BATCH / message["seconds"]

    def stop(self) -> None:
        try:
            self.command("stop")
        except BrokenPipeError:
            pass
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torchrl

    cores = len(os.sched_getaffinity(0))
    return (
        f"machine: {model}, {cores} cores available ({os.cpu_count()} logical), "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"torchrl {torchrl.__version__}; 1 torch thread per variant"
    )


def baseline_checkout(args, scratch: Path) -> tuple[Path, bool]:
    """The baseline checkout: ``--baseline-path``, or a temporary worktree."""
    if args.baseline_path:
        return Path(args.baseline_path).resolve(), False
    path = scratch / "baseline"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path)]
        + [args.baseline_commit],
        check=True,
        capture_output=True,
    )
    return path, True


def print_table(workers: list[Worker], rounds: list[dict[str, float]]) -> None:
    header = f"{'variant':<15}{'frames/s':>9}{'s/cycle':>9}{'spread':>8}"
    header += "".join(f"{label:>11}" for label, _ in SPLIT) + f"{'other':>8}"
    print(header)
    print("-" * len(header))
    fps = {}
    for worker in workers:
        total = sum(worker.seconds)
        cycles = len(worker.seconds)
        fps[worker.variant.name] = cycles * FRAMES_PER_BATCH / total
        median = statistics.median(worker.seconds)
        spread = (max(worker.seconds) - min(worker.seconds)) / median
        shares = [worker.split[key] / total for _, key in SPLIT]
        cells = "".join(
            f"{100 * share:>10.1f}%" if share > 0 else f"{'-':>11}" for share in shares
        )
        print(
            f"{worker.variant.name:<15}{fps[worker.variant.name]:>9.1f}"
            f"{total / cycles:>9.2f}{100 * spread:>7.0f}%{cells}"
            f"{100 * (1 - sum(shares)):>7.1f}%"
        )
    print()
    print("ratios (frames/s; per-round median [min, max]; goal):")
    for top, bottom, goal in RATIOS:
        if top not in fps or bottom not in fps:
            continue
        per_round = [r[top] / r[bottom] for r in rounds]
        verdict = ""
        if goal is not None:
            met = "met" if fps[top] / fps[bottom] >= goal else "NOT met"
            verdict = f"  goal >= {goal}: {met}"
        print(
            f"  {top + ' / ' + bottom:<30}{fps[top] / fps[bottom]:>6.3f}   "
            f"{statistics.median(per_round):.2f} [{min(per_round):.2f}, "
            f"{max(per_round):.2f}]{verdict}"
        )


def coordinate(args: argparse.Namespace) -> None:
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in names if name not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(BY_NAME)}")
    variants = [BY_NAME[name] for name in names]
    print(machine())
    print(
        f"{ENV_NAME}, memory preloaded with {EPISODES} x {EPISODE_STEPS} synthetic "
        f"steps; {FRAMES_PER_BATCH} frames per cycle; {args.warmup} warm-up + "
        f"{args.cycles} timed cycles per variant, interleaved (order rotating)"
    )
    start = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="gem_cycle_"))
    baseline, created = None, False
    workers: list[Worker] = []
    try:
        if any(variant.code == "baseline" for variant in variants):
            baseline, created = baseline_checkout(args, scratch)
            print(f"baseline: commit {args.baseline_commit} at {baseline}")
        for variant in variants:
            root = baseline if variant.code == "baseline" else ROOT
            workers.append(Worker(variant, root, args, scratch))
        for worker in workers:
            worker.info = worker.receive("ready")
            info = worker.info
            print(
                f"  {worker.variant.name:<15} {info['memory']} holding "
                f"{info['stored']} transitions, precision {info['precision']}, "
                f"torchrl_gem from {info['package']}"
            )
        print(f"set-up and warm-up: {time.perf_counter() - start:.0f} s")
        rounds = []
        for index in range(args.cycles):
            shift = index % len(workers)
            order = workers[shift:] + workers[:shift]
            rounds.append({w.variant.name: w.run_cycle() for w in order})
        print()
        print_table(workers, rounds)
    finally:
        for worker in workers:
            worker.stop()
        if created:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force"]
                + [str(baseline)],
                check=False,
                capture_output=True,
            )
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"wall time: {time.perf_counter() - start:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20, help="timed cycles")
    parser.add_argument("--warmup", type=int, default=1, help="untimed cycles")
    parser.add_argument(
        "--variants",
        default=",".join(BY_NAME),
        help=f"comma-separated, of {','.join(BY_NAME)}",
    )
    parser.add_argument(
        "--baseline-commit",
        default=BASELINE_COMMIT,
        help="the commit of the base-* variants (base-gem-bf16 needs one with "
        f"optim.precision); default {BASELINE_COMMIT}",
    )
    parser.add_argument(
        "--baseline-path",
        help="a checkout of the baseline commit; default: a temporary git worktree",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--fds", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cycles < 1 or args.warmup < 1:
        raise SystemExit("--cycles and --warmup must be >= 1")
    if args.worker is None:
        coordinate(args)
        return
    variant = BY_NAME[args.worker]
    channel = Channel(args.fds, args.warmup)
    if variant.kind == "minimal":
        minimal_worker(variant, args, channel)
    else:
        recipe_worker(variant, args, channel)


if __name__ == "__main__":
    main()
