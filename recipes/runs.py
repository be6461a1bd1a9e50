"""Run plumbing shared by the recipes: seeding, run folders, loggers, resume, the
training call and its end-of-run summary. Nothing here is specific to GEM or to a
task; the recipes build their agents with ``builders.py`` and hand the assembled
:class:`~torchrl.trainers.Trainer` to :func:`train_and_summarise`.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torchrl import timeit

from analysis.plot import plot_runs
from config import ConfigError, plain, resolve_checkpoint_path
from logs import flat_hparams, wandb_run_id
from torchrl_gem.checkpoint import (
    CheckpointError,
    CheckpointHook,
    RunCheckpoint,
    StopSignal,
)
from torchrl_gem.memory import available_ram_bytes


def seed_everything(seed: int, num_threads: int | None) -> None:
    """Torch threads (printed), then torch, NumPy and Python seeds; the timers start
    at zero."""
    torch.set_num_threads(num_threads or len(os.sched_getaffinity(0)))
    print(f"torch threads: {torch.get_num_threads()} (optim.num_threads)")
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    timeit.erase()


# ---------------------------------------------------------------------------
# Identity, resume, run folder
# ---------------------------------------------------------------------------
def run_identity(cfg: DictConfig, fields: tuple[str, ...]) -> dict[str, Any]:
    """The settings (``fields``, dotted) a checkpoint must share with its run."""
    tree = plain(cfg)
    identity = {}
    for field in fields:
        value = tree
        for part in field.split("."):
            value = value[part]
        identity[field] = value
    return identity


def read_resume(
    cfg: DictConfig, identity: dict, defaults: dict | None = None
) -> tuple[Path | None, dict | None]:
    """``(path, payload)`` of ``checkpoint.resume``, checked, or ``(None, None)``.

    ``auto`` takes ``logger.run_dir``'s own checkpoint when there is one, so that a
    re-launched sweep continues each run where it stopped. ``defaults``: identity
    values that older checkpoints, written before a key joined it, stand for.
    """
    resume = cfg.checkpoint.resume
    if resume == "auto":
        resume = Path(cfg.logger.run_dir) / "checkpoints" / "last.pt"
        if not resume.is_file():
            return None, None
    if resume is None:
        return None, None
    path = resolve_checkpoint_path(resume)
    return path, RunCheckpoint.read(path, identity, defaults=defaults)


def finished_summary(path: Path | None, resumed: dict | None, total_frames: int):
    """The summary of a run whose checkpoint already holds ``total_frames``, else
    ``None`` (a re-launched sweep skips its finished runs)."""
    if resumed is None or resumed["frames"] < total_frames:
        return None
    print(f"{path}: finished at {resumed['frames']} frames, nothing to do.")
    return {
        "status": "already finished",
        "signal": None,
        "frames": resumed["frames"],
        "run_dir": resumed["run_dir"],
    }


def transition_bytes(memory, step) -> int:
    """Bytes one transition takes in ``memory``; ``step``: one as the collector
    delivers it (``interaction.collector_step``)."""
    if hasattr(memory, "transition_bytes"):  # an EpisodicMemory: its bookkeeping too
        return memory.transition_bytes(step)
    leaves = step.values(include_nested=True, leaves_only=True)
    return sum(leaf.nbytes for leaf in leaves) + 8  # + the int64 "index" it writes


def check_memory_fits(cfg: DictConfig, memory, step) -> None:
    """Refuse a memory in RAM whose ``memory.capacity`` transitions need more than
    the RAM available (``available_ram_bytes``: the OS's figure, lowered to the
    cgroup's limit), before anything is collected.

    ``step``: one transition as the collector delivers it. A memmap memory (on
    disk) or one in GPU memory (``memory.device``) is not checked.
    """
    on_gpu = torch.device(cfg.memory.get("device", "cpu")).type != "cpu"
    if cfg.memory.storage != "tensor" or on_gpu:
        return
    available = available_ram_bytes()
    per_transition = transition_bytes(memory, step)
    needed = cfg.memory.capacity * per_transition
    if available is not None and needed > available:
        raise ConfigError(
            f"memory.capacity: {cfg.memory.capacity} transitions of "
            f"{per_transition} bytes need {needed} bytes ({needed / 1e9:.1f} GB) of "
            f"RAM, and {available} bytes ({available / 1e9:.1f} GB) are available; "
            f"use memory.capacity={available // per_transition} or less, or "
            "memory.storage=memmap to keep the memory on disk (memory.scratch_dir)"
        )


def resolve_run_dir(cfg: DictConfig, resumed: dict | None) -> Path:
    """``logger.run_dir``, else the resumed run's folder, else Hydra's run dir."""
    if cfg.logger.run_dir:
        return Path(cfg.logger.run_dir)
    if resumed is not None and Path(resumed["run_dir"]).is_dir():
        return Path(resumed["run_dir"])  # keep appending to the interrupted run's logs
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / cfg.env.name / cfg.algo.name / f"seed{cfg.seed}_{stamp}"


def resume_command(path: Path | None) -> str:
    """The command line that continues this run from ``path``."""
    overrides = ["<same overrides>"]
    if HydraConfig.initialized():
        overrides = [
            item
            for item in HydraConfig.get().overrides.task
            if not item.startswith("checkpoint.resume=")
        ]
    script = Path(sys.argv[0]).name if sys.argv[0].endswith(".py") else "<recipe>.py"
    return " ".join(
        [f"python recipes/{script}", *overrides, f"checkpoint.resume={path}"]
    )


# ---------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------
def start_logs(cfg: DictConfig, run_dir: Path, logger, resumed: bool) -> None:
    """A new run writes its config and hyperparameters; every run its run_info."""
    if not resumed:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(plain(cfg)))
        if logger is not None:
            logger.log_hparams(flat_hparams(cfg))
    info = {
        "env": cfg.env.name,
        "algo": cfg.algo.name,
        "seed": cfg.seed,
        "total_frames": cfg.collector.total_frames,
    }
    (run_dir / "run_info.json").write_text(json.dumps(info, indent=2))


# ---------------------------------------------------------------------------
# Training and summary
# ---------------------------------------------------------------------------
TIMERS = (  # summary label -> timeit key
    ("collect", "collect"),
    ("memory write", "hook/extend"),
    ("target update", "hook/bulk_target_update"),
    ("memory refresh", "memory/refresh"),
    ("sample", "hook/sample"),
    ("update", "update"),
    ("self-imitation", "sil"),
    ("eval", "eval"),
    ("checkpoint", "checkpoint"),
)


def train_with_checkpoints(
    cfg: DictConfig,
    trainer,
    *,
    collector,
    env,
    memory,
    identity: dict,
    resume: tuple[Path | None, dict | None],
    run_dir: Path,
    logger,
    evaluation,
    progress,
    timing,
    wall_start: float,
) -> dict[str, Any]:
    """The last hook of a recipe's cycle, then the run: checkpoints (periodic, final,
    on SIGINT/SIGTERM) of ``trainer``, ``collector``, ``env`` (``None`` where workers
    step the environments: an inexact resume) and ``memory``; the resume of
    ``resume = (path, payload)`` from :func:`read_resume`; the logs; the training
    and its summary (:func:`train_and_summarise`)."""
    run_state = RunCheckpoint(
        trainer,
        collector,
        env,
        run_dir / "checkpoints" / "last.pt",
        identity,
        memory=memory,
        extra={"run_dir": str(run_dir), "wandb_id": wandb_run_id(logger)},
    )
    stop_signal = StopSignal()
    checkpointer = CheckpointHook(
        run_state.save,
        interval=cfg.checkpoint.interval,
        stop_after=cfg.checkpoint.stop_after,
        stop_signal=stop_signal,
    )
    checkpointer.register(trainer)
    resume_path, resumed = resume
    if resumed is not None:
        run_state.restore(resumed, resume_path)
        del resumed["trainer"]  # loaded: the run would otherwise hold its memory twice
        print(f"Resumed {resume_path} at frame {trainer.collected_frames}.")
    start_logs(cfg, run_dir, logger, resumed=resumed is not None)
    return train_and_summarise(
        cfg,
        trainer,
        run_dir=run_dir,
        evaluation=evaluation,
        checkpointer=checkpointer,
        stop_signal=stop_signal,
        progress=progress,
        timing=timing,
        wall_start=wall_start,
    )


def run_main(train, cfg: DictConfig) -> None:
    """A recipe's command line: ``train(cfg)``; a bad config or checkpoint exits
    with its message, a run stopped by a signal with ``128 + signal``."""
    try:
        summary = train(cfg)
    except (ConfigError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None
    if summary["signal"] is not None:
        raise SystemExit(128 + summary["signal"])


def train_and_summarise(
    cfg: DictConfig,
    trainer,
    *,
    run_dir: Path,
    evaluation,
    checkpointer,
    stop_signal,
    progress,
    timing,
    wall_start: float,
) -> dict[str, Any]:
    """Run ``trainer.train()`` under ``stop_signal``; log, plot and print a summary.

    ``timing``: the run's :class:`~torchrl_gem.trainer.RunTiming`, logged once more
    at the last frame (the final checkpoint included) where the trainer did not
    (:func:`final_timing`).
    """
    start_frames = trainer.collected_frames
    train_start = time.perf_counter()
    with stop_signal:
        progress.start()
        try:
            trainer.train()
        finally:
            progress.close()
    train_time = time.perf_counter() - train_start

    frames = trainer.collected_frames
    if trainer.logger is not None:
        trainer.logger.log_metrics(final_timing(trainer, timing), step=frames)
    session = timeit.todict(percall=False)  # this process only, like wall_s
    finished = frames >= cfg.collector.total_frames
    summary = {
        "algo": cfg.algo.name,
        "env": cfg.env.name,
        "seed": cfg.seed,
        "status": "finished" if finished else f"stopped ({checkpointer.stopped_by})",
        "signal": stop_signal.signum,
        "frames": frames,
        "total_frames": cfg.collector.total_frames,
        "run_dir": str(run_dir),
        "wall_s": time.perf_counter() - wall_start,
        "frames_per_s": (frames - start_frames) / max(train_time, 1e-9),
        "evaluations": list(evaluation.history),
        "final_return": evaluation.last_return,
        "timing": {label: session[key] for label, key in TIMERS if key in session},
        "checkpoint": str(checkpointer.path) if checkpointer.path else None,
        "plot": None,
        "resume_hint": None if finished else resume_command(checkpointer.path),
    }
    if cfg.logger.plot and finished:
        out = run_dir / "curves.png"
        plot_runs([run_dir], out, quiet=True)
        summary["plot"] = str(out)
    print_summary(summary)
    return summary


def final_timing(trainer, timing) -> dict[str, float]:
    """The run's time totals at its last frame, the final checkpoint included, for
    each timer that the trainer did not log at that frame already (each step is
    logged once)."""
    frames = trainer.collected_frames
    return {
        key: value
        for key, value in timing().items()
        if trainer._last_log.get(key) != frames  # TorchRL's log-interval record
    }


def print_summary(summary: dict[str, Any]) -> None:
    evals = summary["evaluations"]
    lines = [
        "=" * 72,
        f"{summary['algo']} on {summary['env']} (seed {summary['seed']}): "
        f"{summary['status']} at {summary['frames']} / {summary['total_frames']} "
        "frames",
        f"run dir      {summary['run_dir']}",
        f"wall-clock   {summary['wall_s']:.1f} s this session, "
        f"{summary['frames_per_s']:.0f} frames/s",
    ]
    if evals:
        best = max(evals, key=lambda item: item[1])
        lines.append(
            f"evaluation   last {evals[-1][1]:.1f} (frame {evals[-1][0]}), best "
            f"{best[1]:.1f} (frame {best[0]}), {len(evals)} evaluations"
        )
    timing = summary["timing"]
    if timing:
        total = summary["wall_s"]
        parts = [
            f"{k} {v:.1f}s ({100 * v / max(total, 1e-9):.0f}%)"
            for k, v in timing.items()
        ]
        lines.append("time         " + ", ".join(parts[:4]))
        if parts[4:]:
            lines.append("             " + ", ".join(parts[4:]))
    for label, key in (
        ("checkpoint", "checkpoint"),
        ("resume with", "resume_hint"),
        ("plot", "plot"),
    ):
        if summary.get(key):
            lines.append(f"{label:<12} {summary[key]}")
    lines.append("=" * 72)
    print("\n".join(lines))
