"""Statistics of a study with few seeds, by the conventions of ``rliable`` (Agarwal et
al., NeurIPS 2021), computed with NumPy and SciPy.

``rliable`` itself is not a dependency: its 1.2.0 imports ``arch``, which fails at
import with pandas 3. The same quantities are computed here:

- the interquartile mean, IQM (``scipy.stats.trim_mean`` cutting 25% at each end);
- 95% percentile intervals from a *stratified* bootstrap: the runs of each task are
  resampled with replacement within their task, the statistic recomputed on every
  resample (rliable's ``StratifiedBootstrap``, ``method="percentile"``, and its
  50,000 resamples, vectorised here);
- the probability of improvement ``P(X > Y)`` of one algorithm over another: per
  task, the Mann-Whitney statistic ``P(x > y) + P(x = y) / 2`` over all pairs of runs,
  averaged over tasks, with its stratified bootstrap interval (both algorithms' runs
  resampled);
- performance profiles: the fraction of runs (all tasks together) whose normalised
  score exceeds ``tau``, with intervals.

Scores come as one array of per-run scores per task (``list[np.ndarray]``, tasks in
the same order for every algorithm).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import trim_mean

Scores = Sequence[np.ndarray]  # per task: the scores of the runs
REPS = 50_000  # bootstrap resamples, rliable's default


def iqm(scores: np.ndarray, axis: int | None = None) -> float | np.ndarray:
    """Interquartile mean: the mean of the middle 50% of ``scores`` (all axes, or
    along ``axis``).

    Examples:
        >>> iqm(np.array([1.0, 2.0, 3.0, 4.0, 100.0, -50.0, 5.0, 6.0]))
        3.5
    """
    value = trim_mean(np.asarray(scores, dtype=float), 0.25, axis=axis)
    return float(value) if np.ndim(value) == 0 else value


def aggregate_iqm(per_task: Scores) -> float | np.ndarray:
    """IQM over every run of every task together (normalise the tasks first); the
    runs are the last axis, any leading axes (bootstrap resamples) are kept."""
    pooled = np.concatenate([np.asarray(task, dtype=float) for task in per_task], -1)
    return iqm(pooled, axis=-1)


def stratified_bootstrap(
    per_task: Scores,
    statistic: Callable[[list[np.ndarray]], float | np.ndarray],
    *,
    reps: int = REPS,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(statistic, low, high)``: the statistic of ``per_task`` and its percentile
    interval over ``reps`` resamples of each task's runs within the task.

    ``statistic`` reduces the last axis of each task's array (the runs) and keeps
    the leading ones: it sees every resample at once, ``[reps, runs]`` per task.
    ``reps`` defaults to rliable's 50,000: with 2,000, an interval's ends moved with
    ``seed`` by a few hundredths on three runs per task.
    """
    rng = np.random.default_rng(seed)
    tasks = [np.asarray(task, dtype=float) for task in per_task]
    resampled = [task[rng.integers(0, len(task), (reps, len(task)))] for task in tasks]
    values = np.asarray(statistic(resampled), dtype=float)
    if values.shape != (reps,):
        raise ValueError(
            f"the statistic must reduce only the runs' axis: {reps} resamples gave "
            f"shape {values.shape}, expected ({reps},)."
        )
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(statistic(tasks)), float(low), float(high)


def probability_of_improvement(x: Scores, y: Scores) -> float | np.ndarray:
    """``P(X > Y)``: per task ``P(x > y) + P(x = y) / 2`` over all pairs of runs,
    averaged over the tasks (runs on the last axis, leading axes kept).

    Examples:
        >>> probability_of_improvement([np.array([3.0, 4.0])], [np.array([1.0, 3.0])])
        0.875
    """
    per_task = []
    for a, b in zip(x, y, strict=True):
        a = np.asarray(a, dtype=float)[..., :, None]
        b = np.asarray(b, dtype=float)[..., None, :]
        per_task.append(np.mean((a > b) + 0.5 * (a == b), axis=(-2, -1)))
    value = np.mean(per_task, axis=0)
    return float(value) if np.ndim(value) == 0 else value


def probability_of_improvement_interval(
    x: Scores, y: Scores, *, reps: int = REPS, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``(P(X > Y), low, high)``: both algorithms' runs resampled within each task."""
    count = len(x)
    both = [*x, *y]  # one bootstrap over the tasks of both: each resampled apart

    def statistic(tasks: list[np.ndarray]) -> float | np.ndarray:
        return probability_of_improvement(tasks[:count], tasks[count:])

    return stratified_bootstrap(
        both, statistic, reps=reps, confidence=confidence, seed=seed
    )


def performance_profile(
    per_task: Scores, taus: np.ndarray, **bootstrap
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fraction, low, high)`` per ``tau``: the fraction of runs (all tasks) whose
    score exceeds ``tau``, with its stratified bootstrap interval."""
    rows = [
        stratified_bootstrap(
            per_task,
            lambda tasks, tau=tau: np.mean(np.concatenate(tasks, -1) > tau, axis=-1),
            **bootstrap,
        )
        for tau in taus
    ]
    return tuple(np.array(column) for column in zip(*rows, strict=True))


def normalise(scores: np.ndarray, random: float, reference: float) -> np.ndarray:
    """``(score - random) / (reference - random)``: 0 is the random policy, 1 the
    reference."""
    return (np.asarray(scores, dtype=float) - random) / (reference - random)


def drawdown(
    frames: Sequence[int], values: Sequence[float], start: int, stop: float = math.inf
) -> float:
    """The stability figure: over the evaluations at or after ``start`` (and before
    ``stop``), the mean drop below the run's best evaluation so far, as a fraction
    of that best (0: it never fell back; 0.5: on average half of its best lost). An
    evaluation whose best so far is at or below 0 counts 0: a fraction of it means
    nothing.

    Examples:
        >>> drawdown([0, 10, 20, 30], [50.0, 100.0, 40.0, 100.0], start=20)
        0.3
        >>> frames, values = [0, 10, 20, 30], [50.0, 100.0, 40.0, 100.0]
        >>> round(drawdown(frames, values, start=0, stop=30), 2)  # (0 + 0 + 0.6) / 3
        0.2
    """
    best, losses = -math.inf, []
    for frame, value in zip(frames, values, strict=True):
        best = max(best, value)
        if start <= frame < stop:
            losses.append((best - value) / best if best > 0 else 0.0)
    return float(np.mean(losses)) if losses else math.nan
