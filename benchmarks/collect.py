"""Collection throughput of each ``collector.backend``: frames/s, ratio to single.

Builds the recipe's collector (``recipes/interaction.py``) for every requested backend
and worker count, with the recipe's exploration policy (actor of ``--hidden`` units plus
Gaussian noise) on ``--env``, and times ``--batches`` batches of ``--frames-per-batch``
frames after one untimed batch (process and actor start-up are reported apart). After
every batch the learner pushes the policy weights (``update_policy_weights_``), as the
recipe does each cycle. No learning happens: this is the collection side only.

Run: ``python benchmarks/collect.py`` (``--backends single process ray``,
``--workers 1 2``, ``--envs-per-worker``; ray needs the ray extra).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RL_WARNINGS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))

import torch  # noqa: E402


def measure(backend: str, workers: int, args) -> tuple[float, float]:
    """(start-up seconds, frames/s) of one backend and worker count."""
    import builders
    import interaction
    from config import check_config, load_config

    cfg = load_config(
        [
            f"env.name={args.env}",
            f"collector.backend={backend}",
            f"collector.num_workers={workers}",
            f"collector.envs_per_worker={args.envs_per_worker}",
            f"collector.frames_per_batch={args.frames_per_batch}",
            f"collector.total_frames={args.frames_per_batch * (args.batches + 1)}",
            "collector.init_random_frames=0",
            f"network.hidden_sizes=[{args.hidden},{args.hidden}]",
        ]
    )
    check_config(cfg)
    env = interaction.make_env(cfg, 0)
    spec, half_range = interaction.action_half_range(env, cfg.env.name)
    obs_dim = env.observation_spec["observation"].shape[-1]
    actor, *_ = builders.make_agent(cfg, obs_dim, spec)
    policy = builders.make_exploration_policy(actor, spec, 0.1 * half_range)
    start = time.perf_counter()
    collector = interaction.make_collector(cfg, env, policy)
    frames, timed_from = 0, None
    for index, batch in enumerate(collector):
        if index == 0:
            startup = time.perf_counter() - start
            timed_from = time.perf_counter()
        else:
            frames += batch.numel()
        collector.update_policy_weights_()
    elapsed = time.perf_counter() - timed_from
    collector.shutdown()
    return startup, frames / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--backends", nargs="+", default=["single", "process", "ray"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--envs-per-worker", type=int, default=1)
    parser.add_argument("--frames-per-batch", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{args.env}, {args.frames_per_batch} frames per batch, {args.batches} timed "
        f"batches, {args.envs_per_worker} env(s) per worker, actor {args.hidden}x2, "
        f"{len(os.sched_getaffinity(0))} cores"
    )
    print(
        f"{'backend':>8} {'workers':>7} {'start-up s':>10} {'frames/s':>9} {'ratio':>6}"
    )
    base = None
    for backend in args.backends:
        if backend == "ray" and importlib.util.find_spec("ray") is None:
            print(f"{backend:>8}  skipped: pip install -e '.[ray]'")
            continue
        for workers in args.workers:
            if backend == "single" and workers != 1:
                continue
            startup, rate = measure(backend, workers, args)
            base = rate if backend == "single" else base
            ratio = f"{rate / base:6.2f}" if base else "     -"
            print(f"{backend:>8} {workers:>7} {startup:>10.1f} {rate:>9.0f} {ratio}")


if __name__ == "__main__":
    main()
