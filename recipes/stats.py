"""Statistics of a study with few seeds, by the conventions of ``rliable`` (Agarwal et
al., NeurIPS 2021), computed with NumPy and SciPy.

``rliable`` itself is not a dependency: its 1.2.0 imports ``arch``, which fails at
import with pandas 3. The same quantities are computed here:

- the interquartile mean, IQM (``scipy.stats.trim_mean`` cutting 25% at each end);
- 95% percentile intervals from a *stratified* bootstrap: the runs of each task are
  resampled with replacement within their task, the statistic recomputed on every
  resample (rliable's ``StratifiedBootstrap``, ``method="percentile"``);
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


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of ``scores`` (all axes).

    Examples:
        >>> iqm(np.array([1.0, 2.0, 3.0, 4.0, 100.0, -50.0, 5.0, 6.0]))
        3.5
    """
    return float(trim_mean(np.asarray(scores, dtype=float), 0.25, axis=None))


def aggregate_iqm(per_task: Scores) -> float:
    """IQM over every run of every task together (normalise the tasks first)."""
    return iqm(np.concatenate([np.asarray(task, dtype=float) for task in per_task]))


def stratified_bootstrap(
    per_task: Scores,
    statistic: Callable[[list[np.ndarray]], float],
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(statistic, low, high)``: the statistic of ``per_task`` and its percentile
    interval over ``reps`` resamples of each task's runs within the task."""
    rng = np.random.default_rng(seed)
    tasks = [np.asarray(task, dtype=float) for task in per_task]
    values = np.empty(reps)
    for rep in range(reps):
        values[rep] = statistic(
            [task[rng.integers(0, len(task), len(task))] for task in tasks]
        )
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return statistic(tasks), float(low), float(high)


def probability_of_improvement(x: Scores, y: Scores) -> float:
    """``P(X > Y)``: per task ``P(x > y) + P(x = y) / 2`` over all pairs of runs,
    averaged over the tasks.

    Examples:
        >>> probability_of_improvement([np.array([3.0, 4.0])], [np.array([1.0, 3.0])])
        0.875
    """
    per_task = []
    for a, b in zip(x, y, strict=True):
        a = np.asarray(a, dtype=float)[:, None]
        b = np.asarray(b, dtype=float)[None, :]
        per_task.append(float(np.mean((a > b) + 0.5 * (a == b))))
    return float(np.mean(per_task))


def probability_of_improvement_interval(
    x: Scores, y: Scores, *, reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``(P(X > Y), low, high)``: both algorithms' runs resampled within each task."""
    count = len(x)
    both = [*x, *y]  # one bootstrap over the tasks of both: each resampled apart

    def statistic(tasks: list[np.ndarray]) -> float:
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
            lambda tasks, tau=tau: float(np.mean(np.concatenate(tasks) > tau)),
            **bootstrap,
        )
        for tau in taus
    ]
    return tuple(np.array(column) for column in zip(*rows, strict=True))


def normalise(scores: np.ndarray, random: float, reference: float) -> np.ndarray:
    """``(score - random) / (reference - random)``: 0 is the random policy, 1 the
    reference."""
    return (np.asarray(scores, dtype=float) - random) / (reference - random)


def drawdown(frames: Sequence[int], values: Sequence[float], start: int) -> float:
    """The stability figure: over the evaluations at or after ``start``, the mean
    drop below the run's best evaluation so far, as a fraction of that best (0: it
    never fell back; 0.5: on average half of its best lost).

    Examples:
        >>> drawdown([0, 10, 20, 30], [50.0, 100.0, 40.0, 100.0], start=20)
        0.3
    """
    best, losses = -math.inf, []
    for frame, value in zip(frames, values, strict=True):
        best = max(best, value)
        if frame >= start:
            losses.append((best - value) / best if best > 0 else 0.0)
    return float(np.mean(losses)) if losses else math.nan
