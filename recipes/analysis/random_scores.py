"""Returns of the uniform random policy: the 0 of the study's normalised scores.

    python recipes/analysis/random_scores.py Hopper-v5 Walker2d-v5 HalfCheetah-v5

Each task: ``--episodes`` full episodes of uniformly random actions (Gymnasium's
``action_space.sample``, seeded), the mean and std of their undiscounted returns.
``plot.py``'s ``NORMALISATION`` holds what this printed for the MuJoCo tasks (the
Atari games' are the published random and human scores).
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np


def random_returns(task: str, episodes: int, seed: int = 10_000) -> np.ndarray:
    """Undiscounted returns of ``episodes`` random-action episodes of ``task``."""
    env = gym.make(task)
    env.action_space.seed(seed)
    returns = []
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    return np.array(returns)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="+", help="Gymnasium ids")
    parser.add_argument("--episodes", type=int, default=100)
    args = parser.parse_args(argv)
    for task in args.tasks:
        returns = random_returns(task, args.episodes)
        print(f"{task}: {returns.mean():.1f} ± {returns.std():.1f}")


if __name__ == "__main__":
    main()
