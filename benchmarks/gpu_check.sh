#!/usr/bin/env bash
# The learner on a GPU, checked in one go (issue 36): the device tests, a 20k-frame
# GEM run on Hopper-v5 with the learner on CUDA (its time split by phase), and the
# update and refresh benchmarks on CUDA in fp32 and bf16 beside the same on this
# machine's CPU. Each step runs under its own time limit (8 min in all) and writes
# one log into OUT_DIR; a failed step does not stop the next; summary.txt ends it.
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# Without CUDA the same steps run on the CPU (the device tests skip their CUDA cases).
# The packages: when `import torchrl_gem` or a recipe's dependency fails, they are
# installed from the wheels in .whl/ if it exists (a machine that reaches no package
# index: benchmarks/gpu_wheels.sh fetches them beforehand), else with pip. An
# installed torch is kept: the GPU machine's has CUDA. GPU_CHECK_SMOKE=1 shrinks
# every step to seconds and leaves out the tests (tests/test_device.py runs it so).
set -u -o pipefail

out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.." || exit 2
root=$PWD
python=${PYTHON:-python3}
smoke=${GPU_CHECK_SMOKE:-0}
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")  # run dirs, installed wheels
trap 'rm -rf "$work"' EXIT
export PYTHONPATH="$root:$root/recipes:$work/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 RL_WARNINGS=0 TQDM_MININTERVAL=10
results=()
failed=0

# step NAME SECONDS COMMAND: run COMMAND (a bash line) under a time limit, its
# output into OUT_DIR/NAME.log and on the screen; record PASS, FAIL or TIME.
step() {
    local name=$1 limit=$2 command=$3 log="$out/$1.log" start=$SECONDS rc status
    echo "== $name (limit ${limit}s): $command" | tee "$log"
    timeout --kill-after=10 "$limit" bash -c "$command" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) status=PASS ;;
        124 | 137) status=TIME ;;
        *) status=FAIL ;;
    esac
    [ "$status" = PASS ] || failed=$((failed + 1))
    results+=("$(printf '%-5s %s (%ss, exit %s)' "$status" "$name" $((SECONDS - start)) "$rc")")
}

skip() {  # skip NAME WHY
    echo "== $1 skipped: $2" | tee "$out/$1.log"
    results+=("$(printf '%-5s %s (%s)' SKIP "$1" "$2")")
}

# the versions, the GPU, and the device the learner will use (last line)
cat >"$work/versions.py" <<'EOF'
import torch, torchrl, tensordict, gymnasium, mujoco, hydra, ale_py, torchrl_gem

print("torch", torch.__version__, "CUDA", torch.version.cuda, "torchrl",
      torchrl.__version__, "tensordict", tensordict.__version__)
if torch.cuda.is_available():
    print("GPU:", torch.cuda.get_device_name(), "bf16:", torch.cuda.is_bf16_supported())
print("learner device:", "cuda" if torch.cuda.is_available() else "cpu")
EOF
step setup 40 "
    echo \"$(date -u +%FT%TZ) on \$(hostname), \$(env -u OMP_NUM_THREADS nproc) cores\"
    git log -1 --format='commit %h %s' 2>/dev/null || echo 'commit: not a git checkout'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null \
        || echo 'nvidia-smi: none'
    $python '$work/versions.py' 2>'$work/imports.txt' && exit
    echo \"missing: \$(tail -n 1 '$work/imports.txt')\"
    if [ -d .whl ]; then
        echo 'installing the wheels of .whl/ into $work/site'
        $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --target '$work/site' .whl/*.whl || exit 1
    else
        echo 'installing the project (an installed torch is kept)'
        $python -m pip install -q -e '.[mujoco,atari,recipes]' pytest || exit 1
    fi
    $python '$work/versions.py'
"
device=$(sed -n 's/^learner device: //p' "$out/setup.log")
device=${device:-cpu}
devices=$([ "$device" = cuda ] && echo "cuda cpu" || echo cpu)
threads=$(env -u OMP_NUM_THREADS nproc)

if [ "$smoke" = 1 ]; then
    skip tests "smoke mode, which tests/test_device.py runs"
    gem_sizes="env.max_episode_steps=50 collector.total_frames=300 \
        collector.init_random_frames=200 'network.hidden_sizes=[16,16]' \
        algo.updates_per_batch=2 optim.batch_size=16 memory.capacity=1000 \
        logger.eval_interval=300 logger.eval_episodes=1 optim.compile=false \
        logger.plot=false optim.num_threads=1"
    update_sizes="--sizes 16x16 --repeat 1 --steps 2 --warmup 1 --threads 1 \
        --variants GEMLoss --precision fp32"
    refresh_sizes="--episodes 2 --steps 50 --repeat 1 --sizes 1000 --updates 2 \
        --threads 1"
else
    # CUBLAS_WORKSPACE_CONFIG: deterministic cuBLAS, for the exact-resume test;
    # -o addopts: in this process (the GPU machine has no pytest-xdist for -n auto)
    step tests 140 "CUBLAS_WORKSPACE_CONFIG=:4096:8 $python -m pytest -q \
        -o addopts='--tb=short' -p no:cacheprovider -rs --durations=15 tests/test_device.py \
        -k 'not gpu_check_script'"
    # benchmarks/README.md's 'measure before booking' run, in the paper's sizes
    gem_sizes="collector.total_frames=20000 collector.init_random_frames=5000 \
        logger.eval_interval=10000"
    update_sizes="--sizes 400x300 --repeat 3 --steps 30 --warmup 10 \
        --threads $threads --variants GEMLoss TD3Loss --precision fp32 bf16"
    refresh_sizes="--episodes 20 --steps 1000 --repeat 3 --sizes 100000 \
        --threads $threads"
fi

# the summary at its end prints frames/s and the time per phase (collect, update,
# memory refresh, eval, ...); on a GPU a phase's time includes the queued GPU work
# that its first synchronising call waits for
step gem_hopper 200 "$python recipes/gem_mujoco.py env.name=Hopper-v5 \
    network.device=$device memory.device=$device checkpoint.interval=0 \
    logger.run_dir=$work/gem_hopper hydra.run.dir=$work/hydra \
    hydra.output_subdir=null $gem_sizes"
step update 50 "for d in $devices; do
    $python benchmarks/update.py --device \$d $update_sizes || exit 1
done"
step refresh 50 "for d in $devices; do
    $python benchmarks/refresh.py --device \$d --compiled no $refresh_sizes || exit 1
done"

{
    echo "gpu_check: learner on $device; $([ "$smoke" = 1 ] && echo smoke || echo full) mode; logs in $out"
    printf '%s\n' "${results[@]}"
    echo "$failed step(s) failed or timed out"
} >"$out/summary.txt"
echo
cat "$out/summary.txt"
[ "$failed" = 0 ]
