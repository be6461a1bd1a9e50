"""Cost of a full memory refresh, against the reference algorithm and the update step.

Builds a memory of 100 episodes x 1000 steps (HalfCheetah-sized: 17-d observations,
6-d actions) and prints, all measured in this run:

1. the exact O(T) backward scan (``twin_backprop_return``) over all 100k transitions;
2. the reference algorithm of the released code, re-implemented here: per episode,
   the (T+1) x (T+1) matrix of every n-step candidate built row by row backwards in
   float64, a per-row argmax and the cross-evaluation (O(T^2) per episode);
3. their ratio, and the largest difference between the two results;
4. a full ``EpisodicMemory.refresh`` (target actor + 4 target critics on all 100k
   next-states, then the scan) next to 200 gradient steps of ``GEMLoss`` (batch
   128, actor every 2nd step), the work that follows each refresh in GEM;
5. the refresh's NaN/inf guards (rewards and bootstrap values, as the estimator
   and the scan check them) and their share of the refresh;
6. the refresh at each ``--sizes`` (default 100k and 1M stored transitions) in fp32
   and bf16 autocast, eager and compiled (``compile=True``, as the recipe's
   default for GEM): time, states/s, achieved GFLOP/s of the target networks (2
   FLOPs per weight per state, counted from the networks) next to the limit, a
   [4096 x 406] @ [406 x 300] matmul at the same precision and threads, and the
   speed-up over fp32 eager.

Run: ``python benchmarks/refresh.py`` (``--episodes`` and ``--steps`` resize parts
1-5, ``--sizes`` part 6, ``--compiled no`` leaves out its compiled rows; ``--threads``
sets torch's threads). ``--device cuda`` puts the scan of part 1, the networks and
the memories on the GPU (the reference stays NumPy on the CPU); timings then wait for
the GPU's work (``torch.cuda.synchronize``).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("RL_WARNINGS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from torchrl.data import Bounded  # noqa: E402

from torchrl_gem import (  # noqa: E402
    EpisodicMemory,
    GEMLoss,
    TwinBackPropEstimator,  # noqa: E402
    make_gem_actor,
    make_gem_critics,
    twin_backprop_return,
)
from torchrl_gem.functional import check_finite  # noqa: E402
from torchrl_gem.precision import autocast  # noqa: E402

OBS_DIM, ACT_DIM, GAMMA = 17, 6, 0.99


def reference_episode(values: np.ndarray, rewards: np.ndarray, terminal: bool):
    """The released code's algorithm for one episode, O(T^2) time and memory.

    As ``EpisodicMemoryTBP.update_memory`` does it (without its zero-tail
    candidate, to compute this package's default definition): one float64 matrix of
    every n-step candidate per estimator, each built by a Python loop over rows
    from the episode's end backwards, then a list comprehension of per-row argmaxes.
    Row ``t`` holds G^k_t(n) for n = 1 .. T - t: G_t(1) = r_t + gamma b_t and
    G_t(n) = r_t + gamma G_{t+1}(n - 1). ``values`` [T, 2] are V^k(s_{t+1}).
    """
    steps = len(rewards)
    bootstrap = values.astype(np.float64).copy()
    if terminal:
        bootstrap[-1] = 0.0
    candidates = []
    for k in (0, 1):
        candidate = np.full((steps, steps), -np.inf)
        for t in range(steps - 1, -1, -1):
            candidate[t, 0] = rewards[t] + GAMMA * bootstrap[t, k]
            if t + 1 < steps:
                width = steps - t - 1
                candidate[t, 1 : width + 1] = (
                    rewards[t] + GAMMA * candidate[t + 1, :width]
                )
        candidates.append(candidate)
    best = [[int(np.argmax(row)) for row in candidate] for candidate in candidates]
    out = np.empty((steps, 2))
    for k in (0, 1):
        for t in range(steps):
            # estimator k at the horizon the other picked, floored by its one-step
            evaluated = candidates[k][t, best[1 - k][t]]
            out[t, k] = max(evaluated, candidates[k][t, 0])
    return out


DEVICE = torch.device("cpu")  # --device: the scan, the networks, the memories


def timed(fn, repeat: int) -> tuple[float, object]:
    """Median wall-clock of ``repeat`` calls (after one warm-up call), each until
    its work on ``DEVICE`` has run."""
    result = fn()
    times = []
    for _ in range(repeat):
        synchronize()
        start = time.perf_counter()
        result = fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def build_memory(
    episodes: int, steps: int, generator: torch.Generator
) -> EpisodicMemory:
    total = episodes * steps
    memory = EpisodicMemory(capacity=total, device=DEVICE)
    done = torch.zeros(episodes, steps, 1, dtype=torch.bool)
    done[:, -1] = True
    terminated = done & (torch.rand(episodes, 1, 1, generator=generator) < 0.5)
    memory.extend(
        TensorDict(
            observation=torch.randn(episodes, steps, OBS_DIM, generator=generator),
            action=torch.rand(episodes, steps, ACT_DIM, generator=generator) * 2 - 1,
            collector=TensorDict(
                traj_ids=torch.arange(episodes)[:, None].expand(episodes, steps),
                batch_size=[episodes, steps],
            ),
            next=TensorDict(
                observation=torch.randn(episodes, steps, OBS_DIM, generator=generator),
                reward=torch.randn(episodes, steps, 1, generator=generator),
                done=done,
                terminated=terminated,
                truncated=done & ~terminated,
                batch_size=[episodes, steps],
            ),
            batch_size=[episodes, steps],
        )
    )
    return memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument(
        "--updates", type=int, default=200, help="part 4's gradient steps (GEM's: 200)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", type=torch.device, default="cpu", help="cpu, cuda")
    parser.add_argument(
        "--compiled", choices=["both", "no"], default="both", help="part 6's rows"
    )
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    episodes, steps = args.episodes, args.steps
    gpu = ""
    if DEVICE.type == "cuda":
        gpu = f", on {torch.cuda.get_device_name(DEVICE)} (torch {torch.__version__})"
    print(
        f"memory: {episodes} episodes x {steps} steps = {episodes * steps} "
        f"transitions, obs {OBS_DIM}, action {ACT_DIM}, torch threads "
        f"{torch.get_num_threads()}, device {DEVICE}{gpu}"
    )

    # 1-3: the scan against the reference algorithm, same inputs
    values = torch.randn(episodes, steps, 2, generator=generator, dtype=torch.float64)
    rewards = torch.randn(episodes, steps, 1, generator=generator, dtype=torch.float64)
    done = torch.zeros(episodes, steps, 1, dtype=torch.bool)
    done[:, -1] = True
    terminated = done & (torch.rand(episodes, 1, 1, generator=generator) < 0.5)
    flat = [
        x.reshape(-1, x.shape[-1]).to(DEVICE)
        for x in (values, rewards, done, terminated)
    ]
    scan_time, scan = timed(lambda: twin_backprop_return(GAMMA, *flat), args.repeat)
    values_np, rewards_np = values.numpy(), rewards.squeeze(-1).numpy()
    terminal_np = terminated[:, -1, 0].numpy()

    def reference():
        return np.concatenate(
            [
                reference_episode(values_np[e], rewards_np[e], bool(terminal_np[e]))
                for e in range(episodes)
            ]
        )

    reference_time, reference_out = timed(reference, max(1, args.repeat // 2))
    difference = np.abs(scan.cpu().numpy() - reference_out).max()
    print(f"scan (O(T), all episodes at once): {scan_time * 1e3:9.1f} ms")
    print(f"reference (O(T^2) per episode):    {reference_time * 1e3:9.1f} ms")
    print(
        f"ratio reference / scan:            {reference_time / scan_time:9.1f} x"
        f"   (max |difference| {difference:.2e})"
    )

    # 4: a full refresh against the gradient steps that follow it (--updates)
    spec = Bounded(-1.0, 1.0, shape=(ACT_DIM,))
    loss = GEMLoss(
        make_gem_actor(OBS_DIM, spec),
        make_gem_critics(OBS_DIM, ACT_DIM),
        action_spec=spec,
    ).to(DEVICE)
    estimator = loss.make_value_estimator(gamma=GAMMA).value_estimator
    memory = build_memory(episodes, steps, generator)
    refresh_time, _ = timed(lambda: memory.refresh(estimator), args.repeat)

    actor_optim = torch.optim.Adam(loss.actor_network_params.values(True, True), 3e-4)
    critic_optim = torch.optim.Adam(loss.qvalue_network_params.values(True, True), 3e-4)

    def gradient_steps() -> None:
        for step in range(args.updates):
            batch = memory.sample(128)
            critic_loss, _ = loss.value_loss(batch)
            critic_optim.zero_grad()
            critic_loss.backward()
            critic_optim.step()
            if step % 2:
                actor_loss, _ = loss.actor_loss(batch)
                actor_optim.zero_grad()
                actor_loss.backward()
                actor_optim.step()

    update_time, _ = timed(gradient_steps, max(1, args.repeat // 2))
    print(f"full refresh (networks + scan):    {refresh_time * 1e3:9.1f} ms")
    print(
        f"{args.updates:>3} GEMLoss gradient steps:        {update_time * 1e3:9.1f} ms"
    )
    print(f"refresh / gradient steps:          {refresh_time / update_time:9.2f}")

    # 5: the guards a refresh runs: rewards twice (estimator, scan), values twice
    # (network outputs, scan), over every stored transition
    float_rewards, float_values = rewards.float().to(DEVICE), values.float().to(DEVICE)

    def guards() -> None:
        for _ in range(2):
            check_finite("reward", float_rewards)
            check_finite("next_state_value", float_values)

    guard_time, _ = timed(guards, args.repeat)
    print(
        f"finite checks in a refresh:        {guard_time * 1e3:9.2f} ms"
        f"   ({100 * guard_time / refresh_time:.2f}% of the refresh)"
    )

    # 6: the refresh at scale, fp32 and bf16, against the matmul limit
    flops_per_state = 2 * sum(
        module.weight.numel()
        for network in (loss.actor_network, loss.qvalue_network)
        for module in network.modules()
        if isinstance(module, torch.nn.Linear)
    )
    flops_per_state += (
        2
        * sum(  # the other critics: the template holds one
            value.numel() // value.shape[0]
            for key, value in loss.qvalue_network_params.items(True, True)
            if key[-1] == "weight" and value.ndim == 3
        )
        * (loss.num_qvalue_nets - 1)
    )
    limits = {mode: matmul_limit(mode) for mode in ("fp32", "bf16")}
    print(
        f"\nrefresh at scale: {flops_per_state / 1e6:.2f} MFLOP per state (target "
        f"actor + {loss.num_qvalue_nets} target critics); matmul limit fp32 "
        f"{limits['fp32']:.0f} GFLOP/s, bf16 {limits['bf16']:.0f} GFLOP/s"
    )
    print(
        f"{'stored':>9} {'precision':>9} {'compiled':>8} {'time (s)':>9} "
        f"{'states/s':>9} {'GFLOP/s':>8} {'% limit':>8} {'speed-up':>8}"
    )
    for size in args.sizes:
        scaled = build_memory(size // steps, steps, generator)
        times = {}
        for mode in ("fp32", "bf16"):
            for compiled in (False, True) if args.compiled == "both" else (False,):
                estimator = TwinBackPropEstimator.for_loss(
                    loss, gamma=GAMMA, precision=mode, compile=compiled
                )
                seconds, _ = timed(  # the untimed first call compiles
                    lambda e=estimator, m=scaled: m.refresh(e),
                    max(1, args.repeat // 2),
                )
                times[mode, compiled] = seconds
                rate = flops_per_state * size / seconds / 1e9
                print(
                    f"{size:>9} {mode:>9} {'yes' if compiled else 'no':>8} "
                    f"{seconds:>9.2f} {size / seconds:>9.0f} {rate:>8.1f} "
                    f"{100 * rate / limits[mode]:>7.0f}% "
                    f"{times['fp32', False] / seconds:>8.2f}"
                )
        del scaled  # free it before building the next size


def matmul_limit(mode: str, repeat: int = 10) -> float:
    """GFLOP/s of a [4096 x 406] @ [406 x 300] matmul, fp32 or under bf16 autocast."""
    a = torch.randn(4096, 406, device=DEVICE)
    b = torch.randn(406, 300, device=DEVICE)
    with autocast(mode, DEVICE):
        seconds, _ = timed(lambda: a @ b, repeat)
    return 2 * 4096 * 406 * 300 / seconds / 1e9


if __name__ == "__main__":
    main()
