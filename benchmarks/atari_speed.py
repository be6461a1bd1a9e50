"""Speed of the Atari recipe in fp32 and bf16: gradient steps, acting, the refresh.

Builds the recipe's own parts (``atari_builders.make_agent`` and ``make_stepper``, the
ALE env of ``interaction.make_atari_env``, a ``FrameEpisodicMemory``) for ``gem`` and
``dqn`` in ``optim.precision`` fp32 and bf16, and times, in rounds that interleave
the variants (the order rotating):

- a gradient step (``TimedStepper.step``; gem's loss compiled, the recipe's default)
  on a batch of ``--batch`` stacked states;
- an agent step: the exploration policy on the current state, then the env step;
- for gem, the refresh's cost per stored state (``memory.refresh`` of
  ``--transitions`` synthetic transitions, every next state through the 4 target
  sub networks; compiled, the recipe's default, after an untimed first refresh),
  printed per 100k transitions.

Then the agent steps per second at the study's schedule, composed from those
measured parts (the recipe's own loop adds the trainer's hooks and logging, a few
percent): per agent step, one agent step, ``updates_per_batch / frames_per_batch``
gradient steps and, for gem, the incremental refresh of the new state plus a full
refresh of the whole memory every ``target_update_interval`` gradient steps
(``--memory`` stored states; the study: 200k agent steps, a target copy every 625
gradient steps, 25 per 500 agent steps). The ``-before`` variants are the code
before the speed work (``NatureQNet``'s explicit 'same' padding and float32 copies
of the frames, TorchRL's default stepper, eager gradient steps and refresh), rebuilt
here; the ratios are to them. ``gem-bf16-study`` is the code the Atari study's runs
had: the refresh compiled, the gradient steps eager.

Run: ``python benchmarks/atari_speed.py`` (a few minutes on 2 cores);
``--rounds 2 --transitions 2000`` for a quick look.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("RL_WARNINGS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))

import torch  # noqa: E402
from atari_refresh import fill  # noqa: E402
from tensordict import TensorDict  # noqa: E402

from torchrl_gem.frames import FrameEpisodicMemory  # noqa: E402

# (algorithm, precision, code): "before" is the code before the speed work, "study"
# the Atari study's (gem's gradient steps eager)
VARIANTS = tuple(
    (algo, precision, code)
    for algo in ("gem", "dqn")
    for precision, code in (("fp32", "before"), ("fp32", "now"), ("bf16", "now"))
) + (("gem", "bf16", "study"),)


class Host:
    """What the steppers use of a Trainer."""

    def __init__(self, loss, optimizer=None) -> None:
        self.loss_module = loss
        self.optimizer, self.clip_grad_norm, self.clip_norm = optimizer, True, None

    def compute_loss(self, batch):
        return self.loss_module(batch)


def explicit_padding_forward(self, pixels):
    """``NatureQNet.forward`` before the speed work: a float32 copy of the frames,
    scaled in another pass, and every layer's 'same' padding by ``F.pad``."""
    import torch.nn.functional as F

    batch = pixels.shape[:-3]
    x = pixels.reshape(-1, *pixels.shape[-3:]).to(self.hidden.weight.dtype)
    x = x * self.pixel_scale
    for conv, padding in zip(self.conv, self.explicit_pads, strict=True):
        x = torch.relu(conv(F.pad(x, padding)))
    x = torch.relu(self.hidden(x.flatten(1)))
    return self.head(x).reshape(*batch, -1)


def as_before(loss) -> None:
    """Give every Nature CNN of ``loss`` the forward pass of before the speed work."""
    import types

    from torchrl_gem.dqn import NatureQNet, _same_padding

    estimator = getattr(loss, "_value_estimator", None)  # holds its own template
    holders = [loss] + ([estimator] if isinstance(estimator, torch.nn.Module) else [])
    cnns = {id(m): m for h in holders for m in h.modules() if isinstance(m, NatureQNet)}
    for module in cnns.values():
        pads, (_, height, width) = [], module.input_shape
        for conv in module.conv:
            kernel, stride = conv.kernel_size[0], conv.stride[0]
            pads.append(
                (
                    *_same_padding(width, kernel, stride),
                    *_same_padding(height, kernel, stride),
                )
            )
            height, width = -(-height // stride), -(-width // stride)
            conv.padding = (0, 0)
        module.explicit_pads = pads
        module.forward = types.MethodType(explicit_padding_forward, module)


def synthetic_batch(batch: int, num_actions: int, generator) -> TensorDict:
    """Stacked uint8 states and next states, actions, rewards, twin returns."""
    pixels = torch.randint(0, 256, (batch, 5, 84, 84), dtype=torch.uint8)
    return TensorDict(
        pixels=pixels[:, :4],
        action=torch.nn.functional.one_hot(  # the env's one-hot actions
            torch.randint(num_actions, (batch,), generator=generator), num_actions
        ),
        memory_return=torch.randn(batch, 2, generator=generator),
        next=TensorDict(
            pixels=pixels[:, 1:],
            reward=torch.randn(batch, 1, generator=generator),
            done=torch.zeros(batch, 1, dtype=torch.bool),
            terminated=torch.zeros(batch, 1, dtype=torch.bool),
            batch_size=[batch],
        ),
        batch_size=[batch],
    )


class Variant:
    """One (algorithm, precision) of the recipe, built from its config."""

    def __init__(self, algo: str, precision: str, code: str, args) -> None:
        from torchrl.trainers import DefaultOptimizationStepper

        import atari_builders
        import gem_atari
        from interaction import make_atari_env

        self.name = f"{algo}-{precision}" + ("" if code == "now" else f"-{code}")
        overrides = [
            f"algo={algo}",
            f"env.name={args.env}",
            f"optim.precision={precision}",
            f"memory.capacity={args.transitions}",
            "optim.num_threads=1",
        ]
        if code == "before":  # eager; now: the default (gem compiled, dqn eager)
            overrides.append("optim.compile=false")
        self.cfg = gem_atari.load_config(overrides)
        self.env = make_atari_env(self.cfg, 0, clip_rewards=True)
        spec = self.env.action_spec
        self.loss, greedy = atari_builders.make_agent(self.cfg, spec)
        self.policy = atari_builders.make_exploration_policy(self.cfg, greedy, spec)
        self.stepper = atari_builders.make_stepper(self.cfg, self.loss)
        self.host = Host(self.loss)
        if code == "study":
            self.stepper.compiled_loss = None
        if code == "before":  # and TorchRL's default stepper, as the recipe had
            as_before(self.loss)
            self.stepper = DefaultOptimizationStepper()
            self.host = Host(
                self.loss, atari_builders.make_optimizer(self.cfg, self.loss)
            )
        generator = torch.Generator().manual_seed(0)
        self.batch = synthetic_batch(args.batch, spec.shape[-1], generator)
        if algo == "dqn":
            self.batch = self.batch.exclude("memory_return")
        self.memory = None
        if algo == "gem":  # synthetic 1000-step episodes (atari_refresh.py's)
            self.memory = FrameEpisodicMemory(capacity=args.transitions)
            fill(self.memory, args.transitions, length=1000, batch=500)
        self.state = self.env.reset()
        self.times: dict[str, list[float]] = {"grad": [], "agent": [], "refresh": []}

    def time_gradient_steps(self, count: int) -> None:
        start = time.perf_counter()
        for _ in range(count):
            self.stepper.step(self.host, self.batch.clone())
        self.times["grad"].append((time.perf_counter() - start) / count)

    def time_agent_steps(self, count: int) -> None:
        from torchrl.envs.utils import step_mdp

        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(count):
                out = self.env.step(self.policy(self.state))
                self.state = step_mdp(out)
                if bool(self.state.get("done")):
                    self.state = self.env.reset()
        self.times["agent"].append((time.perf_counter() - start) / count)

    def time_refresh(self) -> None:
        if self.memory is None:
            return
        start = time.perf_counter()
        self.memory.refresh(self.loss.value_estimator)
        self.times["refresh"].append((time.perf_counter() - start) / len(self.memory))

    def per_agent_step(self, args) -> float:
        """Seconds per agent step at the study's schedule (module docstring)."""
        algo = self.cfg.algo
        grad = statistics.median(self.times["grad"])
        seconds = statistics.median(self.times["agent"])
        seconds += grad * algo.updates_per_batch / self.cfg.collector.frames_per_batch
        if self.times["refresh"]:
            state = statistics.median(self.times["refresh"])
            steps_between = (
                args.target_update_interval
                * self.cfg.collector.frames_per_batch
                / algo.updates_per_batch
            )
            seconds += state * (1 + args.memory / steps_between)
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ALE/MsPacman-v5")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--grad-steps", type=int, default=10, help="per round")
    parser.add_argument("--agent-steps", type=int, default=200, help="per round")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--transitions", type=int, default=10_000, help="refresh")
    parser.add_argument(
        "--memory", type=int, default=200_000, help="stored states at the schedule"
    )
    parser.add_argument("--target-update-interval", type=int, default=625)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from torchrl_gem import precision

    print(
        f"torch {torch.__version__}, 1 thread, bf16 fast on this CPU: "
        f"{precision.bf16_is_fast('cpu')}; {args.env}, batch {args.batch}, "
        f"{args.rounds} rounds interleaved"
    )
    variants = [Variant(*variant, args) for variant in VARIANTS]
    for variant in variants:  # warm-up: first calls allocate (and compile)
        variant.time_gradient_steps(1)
        variant.time_agent_steps(5)
        variant.time_refresh()
        variant.times = {key: [] for key in variant.times}
    for index in range(args.rounds):
        order = variants[index % len(variants) :] + variants[: index % len(variants)]
        for variant in order:
            variant.time_gradient_steps(args.grad_steps)
            variant.time_agent_steps(args.agent_steps)
            variant.time_refresh()
    print(
        "\n| variant | gradient step (ms) | agent step (ms) | refresh per 100k "
        "(s) | agent steps/s at the schedule |"
    )
    print("|---|---:|---:|---:|---:|")
    speed = {}
    for variant in variants:
        times = {
            k: statistics.median(v) if v else None for k, v in variant.times.items()
        }
        speed[variant.name] = 1 / variant.per_agent_step(args)
        refresh = "-" if times["refresh"] is None else f"{times['refresh'] * 1e5:.0f}"
        print(
            f"| {variant.name} | {times['grad'] * 1e3:.1f} | "
            f"{times['agent'] * 1e3:.2f} | {refresh} | {speed[variant.name]:.1f} |"
        )
    print("\nratios to the code before (fp32, explicit padding, default stepper):")
    by_name = {variant.name: variant for variant in variants}
    for algo in ("gem", "dqn"):
        base = by_name[f"{algo}-fp32-before"]
        for name in (f"{algo}-fp32", f"{algo}-bf16", f"{algo}-bf16-study"):
            if name not in by_name:
                continue
            now = by_name[name]
            parts = ", ".join(
                f"{key} {statistics.median(base.times[key]) / statistics.median(now.times[key]):.2f}x"  # noqa: E501
                for key in ("grad", "agent", "refresh")
                if base.times[key]
            )
            total = speed[name] / speed[base.name]
            print(f"  {name}: agent steps/s {total:.2f}x ({parts})")


if __name__ == "__main__":
    main()
