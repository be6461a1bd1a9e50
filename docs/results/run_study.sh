#!/usr/bin/env bash
# The studies of docs/results/README.md as one queue of runs, two at a time at one
# torch thread each on a 2-core machine. Re-launching skips every run whose committed
# logs reach its budget (checkpoints are not committed, so a fresh machine knows a
# finished run by its logs), skips a run that another queue holds (a lock per run),
# and resumes an unfinished one from its last checkpoint (checkpoint.resume=auto).
# Run from the repository root:
#   bash docs/results/run_study.sh            # every MuJoCo part: 1, 4, 2, then 3
#   bash docs/results/run_study.sh 2 4        # only parts 2 and 4
#   bash docs/results/run_study.sh atari      # the Atari comparison
#   bash docs/results/run_study.sh stable     # stable-GEM screening on Hopper
#   bash docs/results/run_study.sh stable5    # its best to 5 seeds, both tasks
#   bash docs/results/run_study.sh 1m         # gem and td3 at the paper's 1M frames
#   bash docs/results/run_study.sh --list 3   # print part 3's commands, run nothing
# SLOTS=N sets the queue width; STOP_AT=HH:MM starts no run after the next time the
# clock reads HH:MM, past midnight too (a session's end: a run killed there loses the
# progress since its last checkpoint). Each
# run prints to runs/study_logs/<task>_<algo>_seed<N>.log (gitignored).
set -euo pipefail
SLOTS=${SLOTS:-2}
# MuJoCo: 100k frames, 10k random warm-up, an evaluation every 5k frames of 10 episodes
mujoco=(
  collector.total_frames=100000 collector.init_random_frames=10000
  logger.eval_interval=5000 logger.eval_episodes=10 optim.num_threads=1
  checkpoint.interval=10000 checkpoint.resume=auto logger.progress_bar=false
  logger.snapshots=true  # actors kept (not committed) for recipes/analysis/reevaluate.py
)
# MuJoCo at the paper's budget (the recipe's defaults, spelled out so that a later
# default cannot change the study): 1M frames, 25k random warm-up (the released
# learning_starts), a 100k memory, an evaluation every 10k frames of 10 episodes; a
# checkpoint every 20k frames (a stop costs at most ~10 min of gem), as a run
# outlasts a 3-hour working stretch
mujoco_1m=(
  collector.total_frames=1000000 collector.init_random_frames=25000
  memory.capacity=100000 logger.eval_interval=10000 logger.eval_episodes=10
  optim.num_threads=1 checkpoint.interval=20000 checkpoint.resume=auto
  logger.progress_bar=false
)
# Atari: 200k agent steps, the released schedule scaled to them (epsilon annealed over
# the first 40%; a target copy and full refresh every 625 gradient steps: 15 in the
# run's 9,925, as the released 8,000 fit 15.6 times in the paper's 10M frames), an
# evaluation every 10k steps of 10 episodes at epsilon 0.05
atari=(
  collector.total_frames=200000 memory.capacity=200000
  explore.annealing_frames=80000 algo.target_update_interval=625
  logger.eval_interval=10000 logger.eval_episodes=10 optim.num_threads=1
  checkpoint.interval=10000 checkpoint.resume=auto logger.progress_bar=false
)

# One line per run: "[1m] <task> <algo> <seed> [@label] [extra overrides...]"; an ALE/
# task runs the Atari recipe; a labelled run (a variant of algo) goes to
# stable/<task>/<label>; a line headed 1m runs the 1M-frame budget into runs_1m/. Precision: part 1's Hopper and Walker2d runs are fp32 (begun
# before bf16 became the recipe's default); every other MuJoCo run takes the recipe's
# default (bf16, compiled where it applies). Every Atari run is bf16 (the same for
# the three algorithms; benchmarks/atari_parity.py checks it on the first trained
# checkpoint).
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
  3)  # ablations of the twin estimator, and GEM returns for TorchRL's losses; then
    # the latter's controls (their networks on the losses' own one-step targets)
    for task in Hopper-v5 Walker2d-v5; do for seed in 0 1 2; do
      for algo in bp bp_4critics gem_paired td3_tbp sac_tbp; do
        echo "$task $algo $seed"; done; done; done
    for task in Hopper-v5 Walker2d-v5; do for seed in 0 1 2; do
      for algo in td3_gemnets sac_gemnets; do echo "$task $algo $seed"; done; done; done
    # and the one-factor ablation of the cross-evaluation, added after the above
    for task in Hopper-v5 Walker2d-v5; do for seed in 0 1 2; do
      echo "$task gem_nocross $seed"; done; done ;;
  4)  # gem and td3 to five seeds (gem's two first: the stable-GEM issue reads them)
    for task in Hopper-v5 Walker2d-v5 HalfCheetah-v5; do for algo in gem td3; do
      for seed in 3 4; do echo "$task $algo $seed"; done; done; done ;;
  stable)  # stable-GEM candidates (docs/results/README.md), one per family, seeds 0-2
    for seed in 0 1 2; do
      echo "Hopper-v5 gem $seed @max_horizon5 gem.max_horizon=5"
      echo "Hopper-v5 gem $seed @asymmetry0.25 gem.asymmetry=0.25"
      echo "Hopper-v5 gem $seed @actor_average0.95 optim.actor_average=0.95"
    done ;;
  stable5)  # the screening's best (by P(candidate > gem) on Hopper) to 5 seeds on
    # both tasks (Hopper's seeds 0-2 ran in the screening); the average only changes
    # what is evaluated, so each run also evaluates its online actor (eval_online/*):
    # gem beside it on the same episodes
    for task in Walker2d-v5 Hopper-v5; do for seed in 0 1 2 3 4; do
      echo "$task gem $seed @actor_average0.95 optim.actor_average=0.95"
    done; done ;;
  1m)  # gem against td3 at 1M frames, seeds 0-2: HalfCheetah's seed 0 first, then
    # its seeds 1-2, then Ant (the recipe's defaults otherwise: bf16, compiled gem)
    for task in HalfCheetah-v5 Ant-v5; do for seed in 0 1 2; do for algo in gem td3; do
      echo "1m $task $algo $seed"; done; done; done ;;
  atari)  # GEM-DQN against DQN and DDQN on two of the paper's games, seeds 0-2
    for seed in 0 1 2; do for task in ALE/MsPacman-v5 ALE/Frostbite-v5; do
      for algo in gem dqn ddqn; do echo "$task $algo $seed optim.precision=bf16"
      done; done; done ;;
  esac
}

finished() {  # $1: run dir, $2: its budget; true when its evaluation log reaches it
  local log=$1/logs/scalars/eval/return_mean.csv
  [[ -f $log ]] && awk -F, -v n="$2" '$1 >= n {found = 1} END {exit !found}' "$log"
}

run_one() {  # one queue line
  local line=$1 runs=runs frames=100000 prefix=""
  local -a budget=("${mujoco[@]}")
  if [[ $line == "1m "* ]]; then
    line=${line#1m } runs=runs_1m frames=1000000 prefix=1m_ budget=("${mujoco_1m[@]}")
  fi
  read -r task algo seed extra <<<"$line"
  local recipe=gem_mujoco dir=docs/results/$runs/$task/$algo/seed$seed
  if [[ $task == ALE/* ]]; then
    recipe=gem_atari dir=docs/results/atari/${task#ALE/}/$algo/seed$seed frames=200000
    budget=("${atari[@]}")
  fi
  local name=$prefix${task#ALE/}_${algo}_seed$seed
  if [[ $extra == @* ]]; then
    local label=${extra%% *}
    label=${label#@} extra=${extra#"@$label"}
    dir=docs/results/stable/$task/$label/seed$seed name=${task}_${label}_seed$seed
  fi
  if [[ -n ${LIST:-} ]]; then  # the command, for --list (tests compose each config)
    echo "recipes/$recipe.py ${budget[*]} env.name=$task algo=$algo seed=$seed" \
      "logger.run_dir=$dir" $extra
    return 0
  fi
  if finished "$dir" "$frames"; then echo "skip $dir (finished)"; return 0; fi
  if [[ -n ${STOP_EPOCH:-} && $(date +%s) -ge $STOP_EPOCH ]]; then
    echo "skip $dir (STOP_AT $STOP_AT)"
    return 0
  fi
  exec 9>"runs/study_logs/$name.lock"
  if ! flock -n 9; then echo "skip $dir (running in another queue)"; return 0; fi
  # again under the lock: another queue may have finished it since the check above
  if finished "$dir" "$frames"; then echo "skip $dir (finished)"; return 0; fi
  echo "$(date +%H:%M) start $dir"
  # shellcheck disable=SC2086
  if python "recipes/$recipe.py" "${budget[@]}" "env.name=$task" "algo=$algo" \
    "seed=$seed" "logger.run_dir=$dir" $extra >"runs/study_logs/$name.log" 2>&1; then
    echo "$(date +%H:%M) done $dir"
  else
    echo "$(date +%H:%M) FAILED $dir (see runs/study_logs/$name.log)"
  fi
}

if [[ ${1:-} == --one ]]; then run_one "$2"; exit; fi  # a queue slot's call
[[ ${1:-} == --list ]] && LIST=1 && shift
parts=("$@")
[[ ${#parts[@]} -gt 0 ]] || parts=(1 4 2 3)  # 4 early: the stable-GEM issue reads it
if [[ -n ${LIST:-} ]]; then
  for p in "${parts[@]}"; do part "$p"; done | while read -r line; do run_one "$line"; done
  exit
fi
mkdir -p runs/study_logs
if [[ -n ${STOP_AT:-} ]]; then  # the next HH:MM from now, as seconds for every slot
  STOP_EPOCH=$(date -d "$STOP_AT" +%s)
  (( STOP_EPOCH > $(date +%s) )) || STOP_EPOCH=$((STOP_EPOCH + 86400))
  export STOP_EPOCH
fi
for p in "${parts[@]}"; do part "$p"; done | xargs -P "$SLOTS" -I{} bash "$0" --one {}
