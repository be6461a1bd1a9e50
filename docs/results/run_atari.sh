#!/usr/bin/env bash
# The short Atari learning runs of docs/results/README.md: gem and dqn on
# ALE/MsPacman-v5, seed 0, 200k agent steps, side by side at 1 torch thread each.
# Re-launching skips a finished run and resumes an unfinished one from its last
# checkpoint (checkpoint.resume=auto). Run from the repository root.
set -euo pipefail
for algo in gem dqn; do
  python recipes/gem_atari.py "algo=$algo" env.name=ALE/MsPacman-v5 seed=0 \
    collector.total_frames=200000 memory.capacity=200000 \
    explore.annealing_frames=80000 algo.target_update_interval=625 \
    logger.eval_interval=10000 logger.eval_episodes=5 logger.progress_bar=false \
    checkpoint.interval=10000 checkpoint.resume=auto optim.num_threads=1 \
    "logger.run_dir=docs/results/atari/MsPacman-v5/$algo/seed0" "$@" &
done
wait
