"""Torch threads for the recipes' learners: 1 or 2, on an idle machine and beside a
busy process, with and without the OpenMP and inter-op settings that bear on it.

What ``optim.num_threads`` should default to. Each workload is the learner's hot path
at the recipes' defaults (bf16 autocast, eager, HalfCheetah-sized inputs):

- ``gem-update``: one GEM gradient step (``GEMLoss``, 4 LayerNorm critics of
  [400, 300], batch 128; the actor every 2nd step; benchmarks/update.py's
  ``GEMLossUpdate``), steps/s;
- ``gem-refresh``: the refresh of a 20k-transition memory (the target actor and 4
  target critics over every stored next state, then the twin back-propagation),
  thousands of stored states/s;
- ``td3-update``: one TD3 gradient step (TorchRL's ``TD3Loss``, 2 plain critics of
  [400, 300], batch 128, ``SoftUpdate``; ``TD3LossUpdate``), steps/s;
- ``atari-update``: one GEM-DQN gradient step on Atari (``recipes/gem_atari.py``'s
  loss and stepper, batch 32 of 84x84x4 frames), steps/s.

Settings, each a worker process of its own (OpenMP reads its environment once):
``default`` (the environment as is), ``passive`` (``OMP_WAIT_POLICY=PASSIVE``: a
thread that waits for work sleeps instead of spinning) and ``interop1``
(``torch.set_num_interop_threads(1)``). Each worker times its workload at 1 and 2
threads (``torch.set_num_threads``), on an idle machine and beside ``--busy`` busy
processes (``while True: pass``); rounds interleave every (worker, threads, load)
cell, the order rotating each round. A cell's rate is the median over rounds, ``vs
1t`` the median over rounds of its ratio to the same workload at 1 thread, default
setting and same load in the same round.

Run on an otherwise idle machine (other work counts as load):

    python benchmarks/threads.py                 # all workloads, 3 rounds
    python benchmarks/threads.py --workloads gem-update td3-update --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOADS = ("gem-update", "gem-refresh", "td3-update", "atari-update")
SETTINGS = ("default", "passive", "interop1")
THREADS = (1, 2)
LOADS = ("idle", "busy")


# ------------------------------------------------------------------ worker side
def build(workload: str):
    """``(step, units per step)``: one call of ``step`` is one unit of work."""
    import torch

    if workload in ("gem-update", "td3-update"):
        sys.path.insert(0, str(HERE))
        import update

        pool = update.make_pool(128, torch.Generator().manual_seed(0))
        kind = (
            update.GEMLossUpdate if workload == "gem-update" else update.TD3LossUpdate
        )
        return kind((400, 300), pool, bf16=True), 1
    if workload == "gem-refresh":
        sys.path.insert(0, str(HERE))
        import refresh
        from torchrl.data import Bounded

        from torchrl_gem import GEMLoss, make_gem_actor, make_gem_critics

        memory = refresh.build_memory(20, 1000, torch.Generator().manual_seed(0))
        spec = Bounded(-1.0, 1.0, shape=(refresh.ACT_DIM,))
        actor = make_gem_actor(refresh.OBS_DIM, spec)  # [400, 300], as the recipe
        critics = make_gem_critics(refresh.OBS_DIM, refresh.ACT_DIM)
        loss = GEMLoss(actor, critics, action_spec=spec)
        estimator = loss.make_value_estimator(gamma=0.99).value_estimator

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                memory.refresh(estimator)

        return step, len(memory) / 1000
    if workload == "atari-update":
        sys.path.insert(0, str(HERE.parent / "recipes"))
        from atari_speed import Host, synthetic_batch

        import atari_builders
        import gem_atari
        from interaction import make_atari_env

        cfg = gem_atari.load_config(["algo=gem", "optim.compile=false"])
        spec = make_atari_env(cfg, 0, clip_rewards=True).action_spec
        loss, _ = atari_builders.make_agent(cfg, spec)
        stepper, host = atari_builders.make_stepper(cfg, loss), Host(loss)
        batch = synthetic_batch(32, spec.shape[-1], torch.Generator().manual_seed(0))
        return (lambda: stepper.step(host, batch.clone())), 1
    raise ValueError(f"unknown workload {workload!r}; choose from {WORKLOADS}")


def worker(workload: str, setting: str, seconds: float) -> None:
    """Answer each ``threads`` line on stdin with ``{"rate": units/s}``."""
    # answers go to a copy of stdout; stdout itself (ALE's banner, logs) to stderr
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import torch

    if setting == "interop1":
        torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    step, units = build(workload)
    for _ in range(3):  # warm-up: allocator, autocast caches
        step()
    print(json.dumps({"ready": True}), file=answers, flush=True)
    for line in sys.stdin:
        torch.set_num_threads(int(line))
        step()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            step()
            count += 1
        elapsed = time.perf_counter() - start
        print(json.dumps({"rate": count * units / elapsed}), file=answers, flush=True)


# ------------------------------------------------------------------ driver side
class Worker:
    """A worker process, kept between rounds: built once, timed many times."""

    def __init__(self, workload: str, setting: str, seconds: float) -> None:
        env = dict(os.environ, PYTHONPATH=str(HERE.parent), RL_WARNINGS="0")
        if setting == "passive":
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", workload, setting, str(seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.workload, self.setting = workload, setting

    def answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(
                f"worker {self.workload}/{self.setting} exited "
                f"(code {self.process.wait()}); run it alone to see why: python "
                f"benchmarks/threads.py --worker {self.workload} {self.setting} 1"
            )
        return json.loads(line)

    def rate(self, threads: int) -> float:
        self.process.stdin.write(f"{threads}\n")
        self.process.stdin.flush()
        return self.answer()["rate"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def busy_processes(count: int) -> list[subprocess.Popen]:
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(count)
    ]


def rotated(items: list, shift: int) -> list:
    shift %= len(items)
    return items[shift:] + items[:shift]


def measure(args) -> dict[tuple, list[float]]:
    """``(workload, setting, threads, load) -> [rate per round]``."""
    workers = [
        Worker(w, s, args.seconds) for w in args.workloads for s in args.settings
    ]
    try:
        for each in workers:
            each.answer()  # built and warmed up
        rates: dict[tuple, list[float]] = defaultdict(list)
        cells = [(each, threads) for each in workers for threads in THREADS]
        for round_ in range(args.rounds):
            for load in rotated(list(LOADS), round_):
                busy = busy_processes(args.busy if load == "busy" else 0)
                try:
                    for each, threads in rotated(cells, round_):
                        key = (each.workload, each.setting, threads, load)
                        rates[key].append(each.rate(threads))
                finally:
                    for process in busy:
                        process.kill()
                        process.wait()
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        return rates
    finally:
        for each in workers:
            each.close()


def report(rates: dict[tuple, list[float]], args) -> None:
    units = {"gem-refresh": "k states/s"}
    print(
        f"torch threads: {args.rounds} rounds of {args.seconds:g} s per cell, "
        f"busy = {args.busy} busy process(es), {os.cpu_count()} cores\n"
    )
    print("| workload | setting | threads | idle | vs 1t | busy | vs 1t |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for workload in args.workloads:
        for setting in args.settings:
            for threads in THREADS:
                cells = []
                for load in LOADS:
                    own = rates[(workload, setting, threads, load)]
                    base = rates.get((workload, "default", 1, load), own)
                    pairs = zip(own, base, strict=True)
                    ratio = statistics.median(a / b for a, b in pairs)
                    cells += [f"{statistics.median(own):.1f}", f"{ratio:.2f}x"]
                unit = units.get(workload, "steps/s")
                print(
                    f"| {workload} ({unit}) | {setting} | {threads} | "
                    + " | ".join(cells)
                    + " |"
                )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per cell")
    parser.add_argument("--busy", type=int, default=1, help="busy processes")
    args = parser.parse_args()
    for name, allowed in (("workloads", WORKLOADS), ("settings", SETTINGS)):
        unknown = set(getattr(args, name)) - set(allowed)
        if unknown:
            parser.error(f"--{name}: unknown {sorted(unknown)}; choose from {allowed}")
    report(measure(args), args)


if __name__ == "__main__":
    main()
