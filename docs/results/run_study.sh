#!/usr/bin/env bash
# The 100k-step MuJoCo study of docs/results/README.md: a queue of runs, two at a time
# at one torch thread each on a 2-core machine. Re-launching skips every run whose
# committed logs reach the budget (checkpoints are not committed, so a fresh machine
# knows a finished run by its logs) and resumes an unfinished one from its last
# checkpoint (checkpoint.resume=auto). Run from the repository root:
#   bash docs/results/run_study.sh            # every part: 1, 2, 4, then 3
#   bash docs/results/run_study.sh 2 4        # only parts 2 and 4
# SLOTS=N sets the queue width. Each run prints to runs/study_logs/<task>_<algo>_seed<N>.log (gitignored).
set -euo pipefail
FRAMES=100000
SLOTS=${SLOTS:-2}
budget=(
  collector.total_frames=$FRAMES collector.init_random_frames=10000
  logger.eval_interval=5000 logger.eval_episodes=10 optim.num_threads=1
  checkpoint.interval=10000 checkpoint.resume=auto logger.progress_bar=false
  logger.snapshots=true  # actors kept (not committed) for recipes/reevaluate.py
)

# One line per run: "<task> <algo> <seed> [extra overrides...]". Precision: part 1's
# Hopper and Walker2d runs are fp32 (begun before bf16 became the recipe's default);
# every other run takes the recipe's default (bf16, compiled where it applies).
part() {
  case $1 in
  1)  # gem against td3, seeds 0-2
    for task in Hopper-v5 Walker2d-v5; do for seed in 0 1 2; do for algo in gem td3; do
      echo "$task $algo $seed optim.precision=fp32"; done; done; done
    for seed in 0 1 2; do for algo in gem td3; do
      echo "HalfCheetah-v5 $algo $seed optim.precision=bf16"; done; done ;;
  2)  # the paper's one-step baselines, seeds 0-2
    for task in Hopper-v5 Walker2d-v5 HalfCheetah-v5; do for seed in 0 1 2; do
      for algo in sac ddpg td3_sil; do echo "$task $algo $seed"; done; done; done ;;
  3)  # ablations of the twin estimator, and GEM returns for TorchRL's losses
    for task in Hopper-v5 Walker2d-v5; do for seed in 0 1 2; do
      for algo in bp bp_4critics gem_paired td3_tbp sac_tbp; do
        echo "$task $algo $seed"; done; done; done ;;
  4)  # gem and td3 to five seeds
    for task in Hopper-v5 Walker2d-v5 HalfCheetah-v5; do for seed in 3 4; do
      for algo in gem td3; do echo "$task $algo $seed"; done; done; done ;;
  esac
}

finished() {  # $1: run dir; true when its evaluation log reaches the budget
  local log=$1/logs/scalars/eval/return_mean.csv
  [[ -f $log ]] && awk -F, -v n=$FRAMES '$1 >= n {found = 1} END {exit !found}' "$log"
}

run_one() {  # one queue line
  read -r task algo seed extra <<<"$1"
  local dir=docs/results/runs/$task/$algo/seed$seed
  if finished "$dir"; then echo "skip $dir (finished)"; return 0; fi
  exec 9>"runs/study_logs/${task}_${algo}_seed$seed.lock"
  if ! flock -n 9; then echo "skip $dir (running in another queue)"; return 0; fi
  echo "$(date +%H:%M) start $dir"
  # shellcheck disable=SC2086
  if python recipes/gem_mujoco.py "${budget[@]}" "env.name=$task" "algo=$algo" \
    "seed=$seed" "logger.run_dir=$dir" $extra \
    >"runs/study_logs/${task}_${algo}_seed$seed.log" 2>&1; then
    echo "$(date +%H:%M) done $dir"
  else
    echo "$(date +%H:%M) FAILED $dir (see runs/study_logs)"
  fi
}

if [[ ${1:-} == --one ]]; then run_one "$2"; exit; fi  # a queue slot's call
parts=("$@")
[[ ${#parts[@]} -gt 0 ]] || parts=(1 2 4 3)  # 4 before 3: the stable-GEM issue reads it
mkdir -p runs/study_logs
for p in "${parts[@]}"; do part "$p"; done | xargs -P "$SLOTS" -I{} bash "$0" --one {}
