#!/usr/bin/env bash
# Reproduction check for refactors: short recipe runs at the recipes' defaults (bf16,
# compiled where it applies), then one sha256 over their evaluation and loss logs
# (time logs excluded: wall-clock). A refactor keeps the hash; a change of numbers
# changes it. Run from the repository root on the commits before and after:
#   bash benchmarks/reproduce.sh /tmp/repro_before
#   bash benchmarks/reproduce.sh /tmp/repro_after     # the same hash, or a change
set -euo pipefail
out=${1:?usage: bash benchmarks/reproduce.sh OUT_DIR}
quiet=(logger.progress_bar=false logger.plot=false checkpoint.interval=0
  optim.num_threads=1)
for algo in gem td3 sac td3_sil; do
  python recipes/gem_mujoco.py "algo=$algo" seed=1 collector.total_frames=2000 \
    collector.init_random_frames=500 'network.hidden_sizes=[32,32]' \
    logger.eval_interval=500 logger.eval_episodes=2 logger.log_interval=500 \
    "${quiet[@]}" "logger.run_dir=$out/$algo" >"$out.$algo.log" 2>&1
done
python recipes/gem_atari.py algo=gem seed=1 env.name=ALE/Pong-v5 \
  collector.total_frames=600 collector.init_random_frames=200 \
  collector.frames_per_batch=100 algo.updates_per_batch=4 \
  algo.target_update_interval=8 optim.batch_size=16 memory.capacity=1000 \
  memory.value_chunk_size=256 env.max_episode_steps=100 logger.eval_interval=300 \
  logger.eval_episodes=1 logger.log_interval=100 "${quiet[@]}" \
  "logger.run_dir=$out/atari_gem" >"$out.atari_gem.log" 2>&1
find "$out" -path '*scalars*' -name '*.csv' -not -path '*/time/*' | sort |
  xargs cat | sha256sum
