"""A run's logs: TorchRL loggers by backend, each step logged once across resumes.

A run killed between two checkpoints has logged steps that its resumed process logs
again. On resume, :func:`make_logger` drops what came after the checkpoint, so that
every step is logged once, with the resumed process's values:

- ``csv``: each ``<run>/logs/scalars/**/*.csv`` is cut back to its rows at or before
  the checkpoint's step (:func:`cut_csv_logs`; each file replaced atomically);
- ``tensorboard``: the writer purges the later events (``SummaryWriter``'s
  ``purge_step``: readers such as ``EventAccumulator`` hide them);
- ``wandb``: the run continues under its id, kept in the checkpoint. W&B history is
  append-only: for the steps between the checkpoint and the kill, its charts show
  both the stopped process's points and the resumed ones. The CSV logs are the
  reference.

:func:`one_row_per_step` cleans logs written before that (``analysis/plot.py --clean``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torchrl.record.loggers import TensorboardLogger, get_logger
from torchrl.record.loggers.wandb import WandbLogger

from config import plain

CSV_EXPERIMENT = "logs"  # the csv backend writes <run_dir>/logs/scalars/<name>.csv


# ---------------------------------------------------------------------------
# Loggers
# ---------------------------------------------------------------------------
class FanOutLogger:
    """Forwards every call to several TorchRL loggers (e.g. csv + wandb)."""

    def __init__(self, loggers: list) -> None:
        self.loggers = loggers

    def __getattr__(self, name: str):
        methods = [getattr(logger, name) for logger in self.loggers]
        return lambda *args, **kwargs: [method(*args, **kwargs) for method in methods]


class PurgingTensorboardLogger(TensorboardLogger):
    """TorchRL's ``TensorboardLogger`` whose writer hides the events logged at or
    after ``purge_step`` by an earlier writer of the same folder."""

    def __init__(self, exp_name: str, log_dir: str, *, purge_step: int | None):
        self.purge_step = purge_step
        super().__init__(exp_name=exp_name, log_dir=log_dir)

    def _create_experiment(self):
        from torch.utils.tensorboard import SummaryWriter

        log_dir = os.path.join(self.log_dir, self.exp_name)
        return SummaryWriter(log_dir=log_dir, purge_step=self.purge_step)


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The config as a flat ``{"optim.actor_lr": 3e-4, ...}`` of scalars.

    TensorBoard's hparams accept nothing else.
    """
    flat, stack = {}, [("", plain(cfg))]
    while stack:
        prefix, node = stack.pop()
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                stack.append((f"{name}.", value))
            else:
                keep = isinstance(value, (int, float, str, bool))
                flat[name] = value if keep else str(value)
    return dict(sorted(flat.items()))


def make_logger(cfg: DictConfig, run_dir: Path, resumed: dict | None = None):
    """TorchRL loggers of ``logger.backends`` writing under ``run_dir``.

    ``resumed``: the payload of the checkpoint the run resumes from. Its ``frames``
    is the last step kept in the logs; its ``wandb_id`` the W&B run to continue.
    """
    name = f"{cfg.algo.name}_{cfg.env.name}_seed{cfg.seed}"
    resume_step = None if resumed is None else int(resumed["frames"])
    for folder in (CSV_EXPERIMENT, "tensorboard"):
        if resume_step is None and any((run_dir / folder).rglob("*.*")):
            # a new run would append its steps to another run's
            raise FileExistsError(
                f"logger.run_dir={run_dir} already holds the {folder}/ logs of a "
                "run that has no checkpoint to resume: choose another "
                "logger.run_dir, or move those logs away"
            )
    loggers = []
    for backend in map(str, cfg.logger.backends):
        if backend == "csv":
            if resume_step is not None:
                cut_csv_logs(run_dir / CSV_EXPERIMENT, resume_step)
            loggers.append(get_logger("csv", str(run_dir), CSV_EXPERIMENT))
        elif backend == "tensorboard":
            purge_step = None if resume_step is None else resume_step + 1
            loggers.append(
                PurgingTensorboardLogger(
                    "tensorboard", str(run_dir), purge_step=purge_step
                )
            )
        else:  # wandb
            run_id = (resumed or {}).get("wandb_id") or uuid.uuid4().hex[:12]
            wandb_kwargs = {
                "project": cfg.logger.project_name,
                "mode": cfg.logger.wandb_mode,
                "config": plain(cfg),
                "id": run_id,  # the same W&B run across resumes
                "resume": "allow",
            }
            loggers.append(
                get_logger(backend, str(run_dir), name, wandb_kwargs=wandb_kwargs)
            )
    if not loggers:
        return None
    return loggers[0] if len(loggers) == 1 else FanOutLogger(loggers)


def wandb_run_id(logger) -> str | None:
    """The id of the W&B run among ``logger``'s, for the checkpoint; else ``None``."""
    for each in getattr(logger, "loggers", [logger]):
        if isinstance(each, WandbLogger):
            return each.id
    return None


# ---------------------------------------------------------------------------
# CSV logs: one row per step
# ---------------------------------------------------------------------------
def step_of(line: str) -> int:
    """The step of a ``step,value`` line of TorchRL's CSV logger."""
    return int(float(line.split(",", 1)[0]))


def read_lines(file: Path) -> list[str]:
    """The non-empty lines of a CSV log, newline included."""
    with open(file) as handle:
        return [line for line in handle if line.strip()]


def write_lines(file: Path, lines: list[str]) -> None:
    """Replace ``file`` by ``lines`` atomically: a crash leaves the old or the new."""
    temporary = file.with_name(file.name + ".tmp")
    try:
        with open(temporary, "w") as handle:
            handle.writelines(lines)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, file)
    finally:
        temporary.unlink(missing_ok=True)


def csv_logs(log_dir: Path) -> list[Path]:
    """Every scalar CSV under ``log_dir`` (leftover ``.tmp`` files are not logs)."""
    return sorted(Path(log_dir).rglob("*.csv"))


def cut_csv_logs(log_dir: Path, step: int) -> list[Path]:
    """Drop every row logged after ``step`` from the CSV logs under ``log_dir``.

    Returns the files that changed. Each is replaced atomically, so a crash during
    the cut loses no row at or before ``step``.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> log = Path(tempfile.mkdtemp()) / "scalars" / "eval" / "return.csv"
        >>> log.parent.mkdir(parents=True)
        >>> _ = log.write_text("0,1.5\\n500,2.5\\n1000,3.5\\n")
        >>> [path.name for path in cut_csv_logs(log.parents[2], 500)]
        ['return.csv']
        >>> log.read_text()
        '0,1.5\\n500,2.5\\n'
    """
    changed = []
    for file in csv_logs(log_dir):
        lines = read_lines(file)
        kept = [line for line in lines if step_of(line) <= step]
        if len(kept) != len(lines):
            write_lines(file, kept)
            changed.append(file)
    return changed


def one_row_per_step(lines: list[str]) -> tuple[list[str], list[int]]:
    """``(kept lines, steps of the dropped lines)``: each step once, the last kept.

    A resumed process logs again from just after its checkpoint. Where its logs were
    not cut (runs from before :func:`make_logger` cut them), a row whose step is not
    above the previous row's starts a later process, whose rows replace the earlier
    process's rows at that step and after it.

    Examples:
        >>> rows = ["0,1\\n", "500,2\\n", "1000,3\\n", "500,9\\n", "1000,8\\n"]
        >>> one_row_per_step(rows)
        (['0,1\\n', '500,9\\n', '1000,8\\n'], [1000, 500])
    """
    kept: list[str] = []
    dropped: list[int] = []
    for line in lines:
        step = step_of(line)
        while kept and step_of(kept[-1]) >= step:
            dropped.append(step_of(kept.pop()))
        kept.append(line)
    return kept, dropped
