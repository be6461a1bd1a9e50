"""Learning curves of gem_mujoco.py runs: evaluation return against environment frames.

    python recipes/analysis/plot.py RUN_DIR [RUN_DIR ...] --out curves.png
    python recipes/analysis/plot.py fp32=runs/Hopper-v5/gem bf16=bf16/Hopper-v5/gem
    python recipes/analysis/plot.py docs/results/runs --stats gem
    python recipes/analysis/plot.py docs/results/runs --curves gem,td3

(labels name variants of one algorithm; ``--stats``: IQM, intervals, P(gem > x);
``--curves``: draw two algorithms, tabulate all.)

Each RUN_DIR is a run directory (it holds ``run_info.json``, written by the recipe) or
any folder above run directories (``runs/`` or ``runs/Hopper-v5``); ``LABEL=RUN_DIR``
names the runs found there ``LABEL`` instead of their algorithm (to compare variants
of one algorithm). Runs are grouped by task and algorithm (or label); the figure has
one panel per task and one line per algorithm, the mean over seeds with a +-std band
(population std, as the paper's plots). A markdown table of the final returns, the
mean of the last five evaluations and the best (each mean +- std over seeds) is
printed.

Where the runs logged the overestimation diagnostic (``eval/q_estimate``,
``eval/mc_return``, ``eval/q_bias``: the critics' mean estimate on the states of the
evaluation episodes, the discounted return obtained from them, their difference), two
more rows of panels follow, per task: the estimate (solid) beside the return
(dashed), and the bias (mean +- std over seeds, > 0 is overestimation); a second table
gives their final values.

A last table gives the time the runs took per 100k frames, from their ``time/*``
logs (collection, gradient steps and every trainer hook, which hold the rest). Tables
and axes of Atari runs say agent steps: TorchRL's frames there (:func:`step_unit`).

``--metric`` picks the scalar drawn and scored (``eval_online/return_mean``: the
online actor of runs that evaluate an average, ``optim.actor_average``).
``--paired OTHER`` only prints :func:`paired_table`: each run's score under
``--metric`` against its score under ``OTHER``, the same episodes, paired per run.
``--stats ALGO`` adds the study's statistics (``stats.py``, rliable's conventions):
first the paper's table (algorithm x task: IQM [95% CI], mean ± std, runs and
precision per cell), then per task the IQM of the runs' scores (the mean of their
last five evaluations) with its 95% stratified bootstrap interval, mean ± std, the
worst run, the drawdown over the run's second half (from 50k of 100k frames) and
the probability that ALGO improves on each algorithm; then the same over the tasks,
normalised (:data:`NORMALISATION`), and a performance-profile figure next to
``--out``.

Logs hold each step once (the recipes cut them back on resume). Logs written before
that may repeat the steps between a checkpoint and a kill: they are read with the
resumed process's rows and a warning naming the file; ``--clean`` rewrites them so.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import warnings
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

if __name__ == "__main__":  # run as a file: import from recipes/, as the recipes do
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402

from analysis import stats  # noqa: E402
from logs import (  # noqa: E402
    csv_logs,
    one_row_per_step,
    read_lines,
    step_of,
    write_lines,
)

METRIC = "eval/return_mean"
Q_ESTIMATE, MC_RETURN, Q_BIAS = "eval/q_estimate", "eval/mc_return", "eval/q_bias"
AXIS_LABELS = {
    METRIC: "evaluation return",
    Q_ESTIMATE: "critics' mean estimate",
    MC_RETURN: "discounted return obtained",
    Q_BIAS: "Q estimate - discounted return",
}
TOP_TIMERS = ("collect", "update", "hook/*")  # disjoint; the other timers nest in hooks


class Normalisation(NamedTuple):
    """A task's normalised score, (score - random) / (reference - random)."""

    random: float  # the score that maps to 0
    reference: float  # the score that maps to 1
    one_is: str  # what 1 is, for the tables and figures


# MuJoCo: random, the uniform random policy (100 episodes: python
# recipes/analysis/random_scores.py <task>); reference, TD3's maximum average return
# over 10 trials of 1M steps (Fujimoto et al., ICML 2018, Table 1, the tasks' -v1
# versions)
TD3_BEST = "TD3's best in 1M steps"
# Atari: the human-normalised score, with the random and human scores of the Atari
# 100k benchmark's tables (rliable's Atari data): published, no-sticky-action figures
HUMAN = "human"
NORMALISATION = {
    "Hopper-v5": Normalisation(19.8, 3564.07, TD3_BEST),
    "Walker2d-v5": Normalisation(1.1, 4682.82, TD3_BEST),
    "HalfCheetah-v5": Normalisation(-283.4, 9636.95, TD3_BEST),
    "Ant-v5": Normalisation(-50.7, 4372.44, TD3_BEST),
    "ALE/Frostbite-v5": Normalisation(65.2, 4334.7, HUMAN),
    "ALE/MsPacman-v5": Normalisation(307.3, 6951.6, HUMAN),
}


def normalised_scores(scores: dict, algo: str) -> tuple[list[str], list]:
    """The tasks of :data:`NORMALISATION` that ``algo`` ran, and its normalised
    scores on each (``scores``: ``{(task, algo): final scores}``)."""
    tasks = [task for task in NORMALISATION if (task, algo) in scores]
    normalised = []
    for task in tasks:
        zero, one = NORMALISATION[task].random, NORMALISATION[task].reference
        normalised.append(stats.normalise(scores[task, algo], zero, one))
    return tasks, normalised


def one_is(scores: dict) -> str:
    """What a normalised score of 1 is over the tasks of ``scores`` (keyed by
    ``(task, algo)``) that :data:`NORMALISATION` holds."""
    tasks = (task for task, _ in scores if task in NORMALISATION)
    return " / ".join(dict.fromkeys(NORMALISATION[task].one_is for task in tasks))


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported when first drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out, dpi: int) -> Path:
    """Lay ``fig`` out, write it to ``out`` (its folder made), close it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    pyplot().close(fig)
    return out


def find_runs(paths) -> list[Path]:
    """Run directories (holding ``run_info.json``) at or below ``paths``."""
    runs = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if (path / "run_info.json").is_file():
            runs.append(path)
        else:
            runs.extend(info.parent for info in sorted(path.rglob("run_info.json")))
    return sorted(dict.fromkeys(run.resolve() for run in runs))


def labelled_runs(arguments) -> dict[Path, str | None]:
    """``{run: label}`` for ``RUN_DIR`` (label ``None``) and ``LABEL=RUN_DIR``."""
    labels: dict[Path, str | None] = {}
    for argument in arguments:
        label, path = None, argument
        if isinstance(argument, str) and "=" in argument and not Path(path).exists():
            label, path = argument.split("=", 1)
        labels.update(dict.fromkeys(find_runs([path]), label))
    return labels


def read_log(file: Path) -> list[tuple[int, float]]:
    """``(step, value)`` rows of a TorchRL CSV log (lines ``step,value``), one per step.

    A log that repeats steps (written by a resumed run before the recipes cut the
    logs on resume) is read with the later process's rows (``logs.one_row_per_step``)
    and a warning naming the file; ``--clean`` rewrites such files.
    """
    lines, dropped = one_row_per_step(read_lines(file))
    if dropped:
        warnings.warn(
            f"{file}: {len(dropped)} rows at steps {min(dropped)}-{max(dropped)} "
            "were logged again by a resumed process; reading its rows (clean the "
            "file with plot.py --clean)",
            stacklevel=2,
        )
    return [(step_of(line), float(line.split(",")[1])) for line in lines]


def read_scalar(run: Path, name: str = METRIC) -> list[tuple[int, float]]:
    """``(frame, value)`` pairs of a scalar that ``run`` logged with the csv backend
    (``<run>/<experiment>/scalars/<name>.csv``), one per frame."""
    values: dict[int, float] = {}
    for file in sorted(run.glob(f"*/scalars/{name}.csv")):
        values.update(read_log(file))
    return sorted(values.items())


def clean_logs(runs) -> list[Path]:
    """Rewrite every CSV log of ``runs`` that repeats steps with one row per step,
    the later process's (atomically); returns the files rewritten."""
    rewritten = []
    for run in runs:
        for file in csv_logs(run):
            lines = read_lines(file)
            kept, dropped = one_row_per_step(lines)
            if dropped:
                write_lines(file, kept)
                rewritten.append(file)
    return rewritten


def collect(runs, metric: str = METRIC) -> dict[tuple[str, str], list]:
    """``{(task, algo): [curve, ...]}``, one ``[(frame, value), ...]`` per run.

    ``runs`` is a list of run directories, or :func:`labelled_runs`' mapping, whose
    labels replace the algorithm where given.
    """
    keys = _group_keys(runs)
    return _grouped(keys, read_curves(keys, metric))


def finished_runs(runs, metric: str = METRIC) -> tuple[dict, list[str]]:
    """:func:`collect`'s groups of the runs that reached their budget
    (``run_info.json``'s ``total_frames``), and one line per cell saying which runs
    were left out (runs still going, or stopped)."""
    keys = _group_keys(runs)
    curves = read_curves(keys, metric)
    finished, short = {}, defaultdict(list)
    for run, curve in curves.items():
        budget = run_info(run)["total_frames"]
        if curve[-1][0] >= budget:
            finished[run] = curve
        else:
            short[keys[run]].append((curve[-1][0], budget))
    notes = [
        f"{task} {algo}: {len(stopped)} run(s) left out, at frames "
        f"{', '.join(str(frame) for frame, _ in sorted(stopped))} of "
        f"{stopped[0][1]} (still running?)"
        for (task, algo), stopped in sorted(short.items())
    ]
    return _grouped(keys, finished), notes


def read_curves(runs, metric: str = METRIC) -> dict[Path, list]:
    """``{run: [(frame, value), ...]}`` for the runs that logged ``metric``."""
    curves = {run: read_scalar(run, metric) for run in runs}
    return {run: curve for run, curve in curves.items() if curve}


def _grouped(keys: dict, curves: dict) -> dict[tuple[str, str], list]:
    """``curves`` (``{run: curve}``) grouped by ``keys`` (``{run: (task, algo)}``)."""
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for run, curve in curves.items():
        groups[keys[run]].append(curve)
    return dict(sorted(groups.items()))


@functools.cache
def run_info(run: Path) -> dict:
    """The run's ``run_info.json`` (task, algorithm, seed, budget), read once per
    process: a run writes it at its start, and every table and check reads it."""
    return json.loads((run / "run_info.json").read_text())


def _group_keys(runs) -> dict[Path, tuple[str, str]]:
    """``{run: (task, label or algorithm)}`` for a run list or a run -> label map."""
    labels = runs if isinstance(runs, dict) else dict.fromkeys(runs)
    keys = {}
    for run, label in labels.items():
        info = run_info(run)
        keys[run] = (info["env"], label or info["algo"])
    return keys


def training_seconds(run: Path) -> tuple[int, float] | None:
    """``(frames, seconds)``: the last frame the run logged ``time/*`` at, and the
    sum there of its top-level timers (collection, gradient steps, trainer hooks).

    ``None`` without time logs, or where a timer's logged total goes down: the run
    was resumed before the recipes carried the totals over (``RunTiming``), so the
    time its frames cost is unknown.
    """
    frames, seconds = 0, 0.0
    for pattern in TOP_TIMERS:
        for file in sorted(run.glob(f"*/scalars/time/{pattern}.csv")):
            rows = read_log(file)
            values = [value for _, value in rows]
            if values != sorted(values):
                return None
            frames, seconds = max(frames, rows[-1][0]), seconds + values[-1]
    return (frames, seconds) if frames else None


# the phases of the wall-clock split: a top-level timer each, or a trainer hook's;
# the other hooks (memory write, sampling, target update, logging, ...) sum to "other"
PHASES = {
    "collection": "collect",
    "gradient steps": "update",
    "memory refresh": "hook/memory_refresh",
    "evaluation": "hook/evaluation",
    "checkpoints": "hook/checkpoint",
}


def phase_seconds(run: Path) -> tuple[int, dict[str, float]] | None:
    """``(frames, {phase: seconds})`` at the last frame the run logged ``time/*``:
    :data:`PHASES` and ``"other"``, the rest of :data:`TOP_TIMERS`; ``None`` where
    :func:`training_seconds` is."""
    timed = training_seconds(run)
    if timed is None:
        return None
    frames, total = timed
    seconds = {}
    for phase, timer in PHASES.items():  # a hook the run lacks (td3: no refresh): 0
        files = sorted(run.glob(f"*/scalars/time/{timer}.csv"))
        seconds[phase] = read_log(files[0])[-1][1] if files else 0.0
    seconds["other"] = total - sum(seconds.values())
    return frames, seconds


def phase_table(runs, per: int = 1_000_000) -> str:
    """Hours per ``per`` frames of each phase (:func:`phase_seconds`) and in all,
    per (task, algo), the mean over its timed runs."""
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for run, key in _group_keys(runs).items():
        groups[key].append(phase_seconds(run))
    phases = [*PHASES, "other"]
    unit = step_unit(task for task, _ in groups)
    lines = [
        f"Hours per {per:,} {unit}, the mean over the runs timed (to where each is).",
        "",
        "| task | algorithm | runs timed | " + " | ".join(phases) + " | total |",
        "|---|---|---:|" + "---:|" * (len(phases) + 1),
    ]
    for (task, algo), timed in sorted(groups.items()):
        timed = [t for t in timed if t is not None]
        cells = ["-"] * (len(phases) + 1)
        if timed:
            frames = np.array([frames for frames, _ in timed], dtype=float)
            seconds = np.array([[s[phase] for phase in phases] for _, s in timed])
            hours = seconds / 3600 * (per / frames)[:, None]  # [runs, phases]
            cells = [f"{h:.2f}" for h in [*hours.mean(0), hours.sum(1).mean()]]
        row = [task, algo, str(len(timed)), *cells]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def run_scores_table(runs, window: tuple[int, int], last: int = 5) -> str:
    """One row per run, finished or not: the frames it reached, its score (the mean
    of its ``last`` evaluations), its final evaluation and the mean of its
    evaluations at ``window`` frames (inclusive; blank before it reaches them)."""
    low, high = window
    unit = step_unit(task for task, _ in _group_keys(runs).values())
    lines = [
        f"| task | algorithm | seed | {unit} | score (last {last}) | final "
        f"| {low:,}-{high:,} |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    rows = []
    for run, (task, algo) in _group_keys(runs).items():
        curve = read_scalar(run)
        if not curve:
            continue
        inside = [value for frame, value in curve if low <= frame <= high]
        at_window = f"{np.mean(inside):.1f}" if curve[-1][0] >= high else ""
        score = np.mean([value for _, value in curve[-last:]])
        seed = run_info(run)["seed"]
        rows.append(
            (task, algo, seed, curve[-1][0], f"{score:.1f}", f"{curve[-1][1]:.1f}")
            + (at_window,)
        )
    for row in sorted(rows):
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


def drawdown_table(runs, stretch: int) -> str:
    """The drawdown (``stats.drawdown``) within each stretch of ``stretch`` frames,
    per (task, algo) the mean ± std over the runs that reached the stretch's end
    (blank where no evaluation fell in it):
    whether a run's drops below its best persist, fade or grow as it trains."""
    groups = collect(runs)
    if not groups:
        return "No evaluations logged yet: no drawdown."
    ends = range(
        stretch, max(c[-1][0] for cs in groups.values() for c in cs) + 1, stretch
    )
    unit = step_unit(task for task, _ in groups)
    lines = [
        f"Drawdown within each stretch of {stretch:,} {unit} (the evaluations after "
        "its start, up to its end), mean ± std over the runs that reached its end.",
        "",
        "| task | algorithm | runs | " + " | ".join(f"{end:,}" for end in ends) + " |",
        "|---|---|---:|" + "---:|" * len(ends),
    ]
    for (task, algo), curves in groups.items():
        cells = []
        for end in ends:
            reached = [curve for curve in curves if curve[-1][0] >= end]
            figures = [  # frames in (end - stretch, end]: start and stop one later
                stats.drawdown(*zip(*c, strict=True), end - stretch + 1, end + 1)
                for c in reached
            ]
            figures = [f for f in figures if not math.isnan(f)]  # none evaluated there
            cells.append(
                "{:.2f} ± {:.2f}".format(*_mean_std(figures)) if figures else ""
            )
        lines.append(f"| {task} | {algo} | {len(curves)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def step_unit(tasks) -> str:
    """What the logs' frames count: TorchRL's frames are an Atari run's agent steps
    (4 emulator frames each, frame skip)."""
    return "agent steps" if all(task.startswith("ALE/") for task in tasks) else "frames"


def time_table(runs) -> str:
    """Minutes per 100k frames per (task, algo), mean ± std over the timed runs."""
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for run, key in _group_keys(runs).items():
        groups[key].append(training_seconds(run))
    unit = step_unit(task for task, _ in groups)
    lines = [
        f"| task | algorithm | runs timed | minutes per 100k {unit} |",
        "|---|---|---:|---:|",
    ]
    for (task, algo), timed in sorted(groups.items()):
        minutes = [s / 60 * 100_000 / f for f, s in filter(None, timed)]
        cell = "{:.1f} ± {:.1f}".format(*_mean_std(minutes)) if minutes else "-"
        lines.append(f"| {task} | {algo} | {len(minutes)} of {len(timed)} | {cell} |")
    return "\n".join(lines)


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def aggregate(curves: list) -> tuple[list[int], list[float], list[float]]:
    """Mean and std over runs at every frame where any run was evaluated."""
    by_frame: dict[int, list[float]] = defaultdict(list)
    for curve in curves:
        for frame, value in curve:
            by_frame[frame].append(value)
    frames = sorted(by_frame)
    stats = [_mean_std(by_frame[frame]) for frame in frames]
    return frames, [m for m, _ in stats], [s for _, s in stats]


def markdown_table(groups: dict, last: int = 5) -> str:
    """Final, mean of the ``last`` evaluations and best return, mean ± std over runs.

    A single final evaluation is noisy; the mean of the last few is steadier.
    """
    unit = step_unit(task for task, _ in groups)
    lines = [
        f"| task | algorithm | runs | {unit} | final return "
        f"| mean of last {last} | best |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (task, algo), curves in groups.items():
        frames = sorted({curve[-1][0] for curve in curves})
        frame_text = str(frames[0]) if len(frames) == 1 else f"{frames[0]}-{frames[-1]}"
        per_run = (
            [curve[-1][1] for curve in curves],
            [sum(v for _, v in curve[-last:]) / len(curve[-last:]) for curve in curves],
            [max(v for _, v in curve) for curve in curves],
        )
        cells = ["{:.1f} ± {:.1f}".format(*_mean_std(values)) for values in per_run]
        row = [task, algo, str(len(curves)), frame_text, *cells]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def final_scores(curves: list, last: int = 5) -> np.ndarray:
    """Each run's score: the mean of its ``last`` evaluations."""
    return np.array(
        [np.mean([value for _, value in curve[-last:]]) for curve in curves]
    )


def second_half_drawdowns(curves) -> list[float]:
    """Each run's stability figure (``stats.drawdown``) over its second half (from
    50k of 100k frames)."""
    return [
        stats.drawdown(*zip(*curve, strict=True), start=curve[-1][0] // 2)
        for curve in curves
    ]


@functools.cache
def _iqm_interval(scores: tuple[float, ...], reps: int) -> tuple[float, float, float]:
    """IQM of ``scores`` with its 95% stratified bootstrap interval; cached, since
    the paper's table and the per-task table show the same cells."""
    values = np.asarray(scores)
    return stats.stratified_bootstrap(
        [values], lambda t: stats.iqm(t[0], axis=-1), reps=reps
    )


def _interval(point: float, low: float, high: float) -> str:
    return f"{point:.1f} [{low:.1f}, {high:.1f}]"


def precisions(runs) -> dict[tuple[str, str], str]:
    """``{(task, algo): precision}``: the runs' ``optim.precision`` (their
    ``config.yaml``), joined by ``+`` where a group mixes them, ``?`` if unknown."""
    from omegaconf import OmegaConf

    found: dict[tuple[str, str], set] = defaultdict(set)
    for run, key in _group_keys(runs).items():
        config = run / "config.yaml"
        optim = OmegaConf.load(config).get("optim", {}) if config.is_file() else {}
        found[key].add(str(optim.get("precision", "?")))
    return {key: "+".join(sorted(values)) for key, values in found.items()}


def paper_table(
    groups: dict, precision: dict | None = None, last: int = 5, reps: int = stats.REPS
) -> str:
    """The paper's layout: one row per algorithm, one column per task; each cell
    the IQM [95% CI] of the runs' scores (the mean of their ``last`` evaluations),
    then mean ± std (runs, precision)."""
    tasks = sorted({task for task, _ in groups})
    algos = sorted({algo for _, algo in groups})
    lines = ["| algorithm | " + " | ".join(tasks) + " |"]
    lines.append("|---|" + "---:|" * len(tasks))
    for algo in algos:
        cells = [algo]
        for task in tasks:
            if (task, algo) not in groups:
                cells.append("")
                continue
            values = final_scores(groups[task, algo], last)
            iqm, low, high = _iqm_interval(tuple(values.tolist()), reps)
            mean, std = _mean_std(values.tolist())
            note = f"{len(values)}" + (
                f", {precision[task, algo]}" if precision else ""
            )
            cells.append(
                f"{iqm:.0f} [{low:.0f}, {high:.0f}]<br>{mean:.0f} ± {std:.0f} ({note})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _poi_header(reference: str, others_improve: bool) -> str:
    order = ("algorithm", reference) if others_improve else (reference, "algorithm")
    return "P({} > {}) [95% CI]".format(*order)


def _poi_cell(reference: list, other: list, others_improve: bool, reps: int) -> str:
    """The probability of improvement (with its interval) of the reference's scores
    over the other's, task by task, or of the other's over the reference's."""
    x, y = (other, reference) if others_improve else (reference, other)
    interval = stats.probability_of_improvement_interval(x, y, reps=reps)
    return "{:.2f} [{:.2f}, {:.2f}]".format(*interval)


def stats_table(
    groups: dict,
    reference: str = "gem",
    last: int = 5,
    reps: int = stats.REPS,
    others_improve: bool = False,
) -> str:
    """Per task and algorithm, over runs of the mean of the ``last`` evaluations:
    IQM with its 95% bootstrap interval, mean ± std, the worst run, the stability
    figure (``stats.drawdown`` over the second half of each run, from 50k of 100k
    frames; mean ± std over runs) and the probability that ``reference`` improves
    on the algorithm (``others_improve``: that the algorithm improves on
    ``reference``; ``stats.py``, rliable's conventions). Then the aggregate over
    the tasks of :data:`NORMALISATION`, normalised."""
    lines = [
        f"| task | algorithm | runs | IQM [95% CI] | mean ± std | worst run | "
        f"drawdown, 2nd half | {_poi_header(reference, others_improve)} |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    scores = {key: final_scores(curves, last) for key, curves in groups.items()}
    for (task, algo), values in scores.items():
        drawdowns = second_half_drawdowns(groups[task, algo])
        iqm = _iqm_interval(tuple(values.tolist()), reps)
        poi = ""
        if algo != reference and (task, reference) in scores:
            poi = _poi_cell([scores[task, reference]], [values], others_improve, reps)
        cells = [task, algo, str(len(values)), _interval(*iqm)]
        cells += ["{:.1f} ± {:.1f}".format(*_mean_std(values.tolist()))]
        cells += [
            f"{values.min():.1f}",
            "{:.2f} ± {:.2f}".format(*_mean_std(drawdowns)),
        ]
        cells += [poi]
        lines.append("| " + " | ".join(cells) + " |")
    aggregate = aggregate_table(scores, reference, reps, others_improve)
    return "\n".join(lines) + ("\n\n" + aggregate if aggregate else "")


def aggregate_table(
    scores: dict, reference: str, reps: int, others_improve: bool = False
) -> str:
    """IQM of the normalised scores over the tasks each algorithm ran (of those in
    :data:`NORMALISATION`), and ``reference``'s probability of improvement over it
    on the tasks both ran; empty if none of the tasks has a normalisation."""
    algos = sorted({algo for _, algo in scores})
    if not any(task in NORMALISATION for task, _ in scores):
        return ""
    lines = [
        f"Normalised: 0 is the random policy, 1 is {one_is(scores)}.",
        "",
        "| algorithm | tasks | runs | normalised IQM [95% CI] | "
        f"{_poi_header(reference, others_improve)} |",
        "|---|---:|---:|---:|---:|",
    ]
    for algo in algos:
        tasks, normalised = normalised_scores(scores, algo)
        if not tasks:
            continue
        point, low, high = stats.stratified_bootstrap(
            normalised, stats.aggregate_iqm, reps=reps
        )
        poi = ""
        common = [t for t in tasks if (t, reference) in scores]
        if algo != reference and common:
            poi = _poi_cell(
                [scores[t, reference] for t in common],
                [scores[t, algo] for t in common],
                others_improve,
                reps,
            )
            if len(common) < len(tasks):  # P covers fewer tasks than the IQM
                poi += f" ({len(common)} of its {len(tasks)} tasks)"
        runs = sum(len(scores[t, algo]) for t in tasks)
        cells = [algo, str(len(tasks)), str(runs)]
        cells += [f"{point:.2f} [{low:.2f}, {high:.2f}]", poi]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(
    runs, metric: str, other: str, last: int = 5, reps: int = stats.REPS
) -> str:
    """Each run scored twice, on the same evaluation episodes: under ``metric`` and
    under ``other`` (an averaged actor's ``eval/return_mean`` against its online
    actor's ``eval_online/return_mean``). Per task and label, over the runs that
    logged both: the mean score of each, the mean paired difference (``metric``
    minus ``other``) with its 95% bootstrap interval (pairs resampled), the runs
    where ``metric`` scored higher, and each one's drawdown over the second half
    (:func:`stats_table`'s). Pairing removes the spread between seeds that an
    unpaired comparison of two sets of runs has to overcome."""
    pairs: dict[tuple[str, str], list] = defaultdict(list)
    for run, key in _group_keys(runs).items():
        first, second = read_scalar(run, metric), read_scalar(run, other)
        if first and second:
            pairs[key].append((first, second))
    if not pairs:
        raise SystemExit(f"no run logged both {metric!r} and {other!r}")
    lines = [
        f"| task | algorithm | runs | {metric} | {other} | difference [95% CI] | "
        f"runs higher | drawdown, {metric} | drawdown, {other} |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (task, algo), both in sorted(pairs.items()):
        sides = [list(curves) for curves in zip(*both, strict=True)]  # metric, other
        scores = [final_scores(curves, last) for curves in sides]
        difference = scores[0] - scores[1]
        interval = stats.stratified_bootstrap(
            [difference], lambda t: np.mean(t[0], axis=-1), reps=reps
        )
        cells = [task, algo, str(len(difference))]
        cells += ["{:.1f} ± {:.1f}".format(*_mean_std(s.tolist())) for s in scores]
        cells += [_interval(*interval), f"{int(np.sum(difference > 0))}/{len(both)}"]
        for curves in sides:
            drawdowns = second_half_drawdowns(curves)
            cells.append("{:.2f} ± {:.2f}".format(*_mean_std(drawdowns)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_profiles(
    groups: dict, out: Path, last: int = 5, reps: int = stats.REPS
) -> Path | None:
    """Performance profiles (rliable): per algorithm, the fraction of its runs over
    the tasks of :data:`NORMALISATION` whose normalised score exceeds ``tau``, with
    95% stratified bootstrap bands; ``None`` (no figure) if no task has one."""
    if not any(task in NORMALISATION for task, _ in groups):
        return None
    plt = pyplot()

    scores = {key: final_scores(curves, last) for key, curves in groups.items()}
    taus = np.linspace(-0.1, 1.2, 66)
    fig, ax = plt.subplots(figsize=(6, 4))
    for index, algo in enumerate(sorted({algo for _, algo in scores})):
        tasks, normalised = normalised_scores(scores, algo)
        if not tasks:
            continue
        fraction, low, high = stats.performance_profile(normalised, taus, reps=reps)
        color = f"C{index % 10}"
        ax.plot(taus, fraction, color=color, label=f"{algo} ({len(tasks)} tasks)")
        ax.fill_between(taus, low, high, color=color, alpha=0.2)
    ax.set_xlabel(f"normalised score tau (0: random policy, 1: {one_is(scores)})")
    ax.set_ylabel("fraction of runs with score > tau")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, out, dpi=120)


def bias_table(diagnostics: dict) -> str:
    """Final Q estimate, discounted return and bias per (task, algo), over seeds."""
    lines = [
        "| task | algorithm | runs | Q estimate | discounted return | Q bias |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key, curves in diagnostics[Q_BIAS].items():
        cells = []
        for name in (Q_ESTIMATE, MC_RETURN, Q_BIAS):
            finals = [curve[-1][1] for curve in diagnostics[name].get(key, [])]
            cells.append(
                "" if not finals else "{:.1f} ± {:.1f}".format(*_mean_std(finals))
            )
        lines.append("| " + " | ".join([*key, str(len(curves)), *cells]) + " |")
    return "\n".join(lines)


def _draw(ax, curves, *, color, label=None, linestyle="-", band=True) -> None:
    frames, mean, std = aggregate(curves)
    ax.plot(frames, mean, color=color, linestyle=linestyle, label=label)
    if band:
        low = [m - s for m, s in zip(mean, std, strict=True)]
        high = [m + s for m, s in zip(mean, std, strict=True)]
        ax.fill_between(frames, low, high, color=color, alpha=0.2)


def plot_groups(
    groups: dict, out: Path, metric: str = METRIC, diagnostics: dict | None = None
) -> Path:
    """Return panels (one per task); with ``diagnostics`` (``{metric: groups}`` of
    the three diagnostic scalars) two more rows per task: estimate vs return, bias."""
    from matplotlib.ticker import EngFormatter

    plt = pyplot()

    tasks = sorted({task for task, _ in groups})
    algos = sorted({algo for _, algo in groups})
    colors = {algo: f"C{index % 10}" for index, algo in enumerate(algos)}
    columns = min(3, len(tasks))
    task_rows = math.ceil(len(tasks) / columns)
    rows = task_rows * (3 if diagnostics else 1)
    fig, axes = plt.subplots(
        rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False
    )
    for index, task in enumerate(tasks):
        row, column = divmod(index, columns)
        ax = axes[row, column]
        for (group_task, algo), curves in groups.items():
            if group_task == task:
                label = f"{algo} ({len(curves)})"
                _draw(ax, curves, color=colors[algo], label=label)
        ax.set_title(task)
        ax.set_ylabel(AXIS_LABELS.get(metric, metric))
        if metric == Q_BIAS:
            ax.axhline(0.0, color="black", linewidth=0.8)  # > 0: overestimation
        if not diagnostics:
            continue
        estimate_ax = axes[row + task_rows, column]
        for (group_task, algo), curves in diagnostics[Q_ESTIMATE].items():
            if group_task == task:
                _draw(estimate_ax, curves, color=colors[algo], label=algo, band=False)
                returns = diagnostics[MC_RETURN].get((group_task, algo), [])
                if returns:
                    style = {"color": colors[algo], "linestyle": "--", "band": False}
                    _draw(estimate_ax, returns, **style)
        estimate_ax.set_title(f"{task}: critics' estimate (-) vs return (--)")
        estimate_ax.set_ylabel("mean over evaluated states")
        bias_ax = axes[row + 2 * task_rows, column]
        for (group_task, algo), curves in diagnostics[Q_BIAS].items():
            if group_task == task:
                _draw(bias_ax, curves, color=colors[algo], label=algo)
        bias_ax.axhline(0.0, color="black", linewidth=0.8)
        bias_ax.set_title(f"{task}: overestimation")
        bias_ax.set_ylabel(AXIS_LABELS[Q_BIAS])
    unit = step_unit(tasks)
    for ax in axes.flat:
        if not ax.has_data():
            ax.axis("off")
            continue
        ax.set_xlabel("environment frames" if unit == "frames" else unit)
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 20k, 1M: no overlap
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return save_figure(fig, out, dpi=120)


def plot_runs(
    paths, out, *, metric: str = METRIC, curves=None, quiet: bool = False
) -> str:
    """Find the runs under ``paths`` (``LABEL=PATH`` allowed), write the figure to
    ``out`` (only the algorithms in ``curves``, if given), return the tables (of
    every run)."""
    runs = labelled_runs(paths)
    keys = _group_keys(runs)  # each run's info read once, for every metric below
    curves_of = read_curves(runs, metric)
    groups = _grouped(keys, curves_of)
    if not groups:
        raise SystemExit(f"no {metric!r} logs found under {[str(p) for p in paths]}")
    diagnostics = None
    if metric == METRIC:
        diagnostics = {
            name: _grouped(keys, read_curves(runs, name))
            for name in (Q_ESTIMATE, MC_RETURN, Q_BIAS)
        }
        if not diagnostics[Q_BIAS]:
            diagnostics = None  # runs from before the diagnostic existed

    def drawn(groups: dict) -> dict:
        return {k: v for k, v in groups.items() if curves is None or k[1] in curves}

    if curves is not None and not drawn(groups):
        raise SystemExit(f"--curves {','.join(curves)}: none of these algorithms ran")
    plot_groups(
        drawn(groups),
        out,
        metric,
        diagnostics and {name: drawn(d) for name, d in diagnostics.items()},
    )
    table = markdown_table(groups)
    if diagnostics:
        table += "\n\n" + bias_table(diagnostics)
    table += "\n\n" + time_table({run: runs[run] for run in curves_of})
    if not quiet:
        print(table)
        print(f"\nwrote {out}")
    return table


def window(text: str) -> tuple[int, int]:
    """``"LOW:HIGH"`` frames, ``LOW <= HIGH`` (``--per-run``)."""
    low, sep, high = text.partition(":")
    if not sep or not low.isdigit() or not high.isdigit() or int(low) > int(high):
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH frames, got {text!r}")
    return int(low), int(high)


def frame_count(text: str) -> int:
    """A positive number of frames (``--phases``, ``--drawdown-by``)."""
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive frame count, got {text!r}"
        )
    return int(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs",
        nargs="+",
        help="run directories or folders above them; LABEL=DIR labels its runs",
    )
    parser.add_argument("--out", default="curves.png", help="PNG file to write")
    parser.add_argument(
        "--metric", default=METRIC, help="CSV scalar to plot (and to score, --stats)"
    )
    parser.add_argument(
        "--curves",
        metavar="ALGO,...",
        type=lambda text: text.split(","),
        help="draw only these algorithms (or labels); the tables cover every run",
    )
    parser.add_argument(
        "--stats",
        metavar="ALGO",
        help="also print IQM with 95%% bootstrap intervals and the probability that "
        "ALGO improves on each algorithm (rliable's conventions), per task and "
        "normalised over the tasks",
    )
    parser.add_argument(
        "--others-improve",
        action="store_true",
        help="with --stats: the probability that each algorithm improves on ALGO "
        "(a candidate against a baseline) instead of ALGO on each",
    )
    parser.add_argument(
        "--paired",
        metavar="OTHER",
        help="only print each run's score under --metric against its score under "
        "OTHER on the same episodes (eval_online/return_mean: an averaged actor "
        "against its online one), paired per run",
    )
    parser.add_argument(
        "--per-run",
        metavar="LOW:HIGH",
        type=window,
        help="also print every run's frames, score, final evaluation and the mean of "
        "its evaluations between LOW and HIGH frames (a published budget's figure)",
    )
    parser.add_argument(
        "--phases",
        metavar="FRAMES",
        type=frame_count,
        help="also print the hours per FRAMES frames of each phase (collection, "
        "gradient steps, memory refresh, evaluation, checkpoints, other)",
    )
    parser.add_argument(
        "--drawdown-by",
        metavar="FRAMES",
        type=frame_count,
        help="also print each stretch of FRAMES frames' drawdown (the mean drop "
        "below the run's best so far): do the runs' drops persist, fade or grow",
    )
    parser.add_argument(
        "--clean",
        action="store_true",
        help="first rewrite the logs that repeat steps, one row per step (the later)",
    )
    args = parser.parse_args(argv)
    if args.clean:
        for file in clean_logs(labelled_runs(args.runs)):
            print(f"cleaned {file}")
    if args.paired:
        print(paired_table(labelled_runs(args.runs), args.metric, args.paired))
        return
    if args.stats:  # the statistics first, then the curves' tables
        runs = labelled_runs(args.runs)
        groups, left_out = finished_runs(runs, args.metric)
        for note in left_out:
            print(f"- {note}")
        if groups:
            print(paper_table(groups, precisions(runs)))
            table = stats_table(groups, args.stats, others_improve=args.others_improve)
            print("\n" + table + "\n")
            out = Path(args.out)
            profile = plot_profiles(groups, out.with_name(out.stem + "_profile.png"))
            if profile:
                print(f"wrote {profile}\n")
        else:  # the runs' own tables below still say where each one is
            print("\nNo run has finished: no statistics yet.\n")
    if args.per_run:
        print(run_scores_table(labelled_runs(args.runs), args.per_run) + "\n")
    if args.phases:
        print(phase_table(labelled_runs(args.runs), args.phases) + "\n")
    if args.drawdown_by:
        print(drawdown_table(labelled_runs(args.runs), args.drawdown_by) + "\n")
    plot_runs(args.runs, args.out, metric=args.metric, curves=args.curves)


if __name__ == "__main__":
    main()
