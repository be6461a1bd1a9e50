"""The study's statistics against brute-force definitions and hand-computed cases."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import write_run

pytest.importorskip("scipy")

from analysis import stats  # noqa: E402 - recipes/ is on pytest's pythonpath


def brute_iqm(values) -> float:
    """Sort, drop a quarter (rounded down) of the runs at each end, average."""
    ordered = sorted(values)
    cut = len(ordered) // 4
    kept = ordered[cut : len(ordered) - cut]
    return sum(kept) / len(kept)


@pytest.mark.parametrize("size", [1, 3, 4, 5, 8, 10, 13])
def test_iqm_is_the_mean_of_the_middle_half(size):
    values = np.random.default_rng(size).normal(size=size)
    assert stats.iqm(values) == pytest.approx(brute_iqm(values.tolist()))


def test_aggregate_iqm_pools_the_tasks():
    tasks = [np.array([0.0, 1.0, 2.0, 9.0]), np.array([4.0, 5.0, 6.0, -9.0])]
    # pooled and sorted: -9 0 1 2 4 5 6 9 -> the middle four 1 2 4 5
    assert stats.aggregate_iqm(tasks) == pytest.approx(3.0)


def brute_probability_of_improvement(x, y) -> float:
    per_task = []
    for a, b in zip(x, y, strict=True):
        wins = [1.0 if i > j else 0.5 if i == j else 0.0 for i in a for j in b]
        per_task.append(sum(wins) / len(wins))
    return sum(per_task) / len(per_task)


def test_probability_of_improvement_against_all_pairs():
    rng = np.random.default_rng(0)
    x = [rng.integers(0, 4, size=n).astype(float) for n in (3, 5, 4)]  # with ties
    y = [rng.integers(0, 4, size=n).astype(float) for n in (4, 3, 5)]
    expected = brute_probability_of_improvement(x, y)
    assert stats.probability_of_improvement(x, y) == pytest.approx(expected)
    # P(X > Y) + P(Y > X) = 1: ties count half on each side
    assert stats.probability_of_improvement(y, x) == pytest.approx(1 - expected)


def test_probability_of_improvement_by_hand():
    # x: 3, 4; y: 1, 3 -> pairs (3,1) win, (3,3) tie, (4,1) win, (4,3) win: 3.5 / 4
    assert stats.probability_of_improvement(
        [np.array([3.0, 4.0])], [np.array([1.0, 3.0])]
    ) == pytest.approx(0.875)


def test_the_bootstrap_resamples_within_each_task():
    tasks = [np.zeros(5), np.full(3, 10.0)]
    # a statistic of the second task alone never sees the first task's runs
    point, low, high = stats.stratified_bootstrap(
        tasks, lambda resampled: resampled[1].mean(-1), reps=200
    )
    assert point == low == high == 10.0


def test_the_bootstrap_interval_is_the_percentiles_of_the_resamples():
    tasks = [np.array([0.0, 1.0])]
    # resampled means of two runs: 0 (1/4), 0.5 (1/2), 1 (1/4)
    point, low, high = stats.stratified_bootstrap(
        tasks, lambda t: t[0].mean(-1), reps=4000, seed=1
    )
    assert point == 0.5 and low == 0.0 and high == 1.0
    narrow = stats.stratified_bootstrap(
        tasks, lambda t: t[0].mean(-1), reps=4000, confidence=0.4, seed=1
    )
    assert narrow[1:] == (0.5, 0.5)


def test_the_bootstrap_interval_covers_the_mean_of_normal_samples():
    """About 95% of the intervals of samples of 30 contain the true mean."""
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(100):
        sample = [rng.normal(loc=2.0, size=30)]
        _, low, high = stats.stratified_bootstrap(
            sample, lambda t: t[0].mean(-1), reps=300, seed=trial
        )
        covered += low <= 2.0 <= high
    assert 85 <= covered <= 100


def test_probability_of_improvement_interval():
    x = [np.array([5.0, 6.0, 7.0]), np.array([2.0, 3.0])]
    y = [np.array([1.0, 2.0]), np.array([0.0, 1.0, 1.5])]
    assert stats.probability_of_improvement_interval(x, y, reps=100) == (1.0, 1.0, 1.0)
    x[0] = np.array([0.0, 6.0, 7.0])
    point, low, high = stats.probability_of_improvement_interval(x, y, reps=500)
    assert point == pytest.approx(brute_probability_of_improvement(x, y))
    assert low < point <= high <= 1.0


def test_performance_profile_counts_runs_above_each_threshold():
    tasks = [np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.6])]
    fraction, low, high = stats.performance_profile(
        tasks, np.array([0.0, 0.3, 0.7, 1.0]), reps=50
    )
    assert fraction.tolist() == [1.0, 0.6, 0.2, 0.0]
    assert (low <= fraction).all() and (fraction <= high).all()


def test_normalise():
    assert stats.normalise(np.array([10.0, 55.0, 100.0]), 10.0, 100.0).tolist() == [
        0.0,
        0.5,
        1.0,
    ]


def test_the_vectorised_bootstrap_equals_a_loop_over_resamples():
    """Every resample at once gives the statistic of each resample in turn: the
    same draws, the statistic applied one resample at a time."""
    tasks = [np.array([0.0, 3.0, 1.0, 7.0]), np.array([2.0, -1.0, 5.0])]
    reps, seed = 300, 4
    rng = np.random.default_rng(seed)
    draws = [task[rng.integers(0, len(task), (reps, len(task)))] for task in tasks]
    looped = [stats.aggregate_iqm([draw[rep] for draw in draws]) for rep in range(reps)]
    _, low, high = stats.stratified_bootstrap(
        tasks, stats.aggregate_iqm, reps=reps, seed=seed
    )
    assert (low, high) == tuple(np.percentile(looped, [2.5, 97.5]))
    x, y = tasks, [np.array([1.0, 1.0]), np.array([0.0, 4.0, 4.0])]
    looped = []
    rng = np.random.default_rng(seed)
    draws = [t[rng.integers(0, len(t), (reps, len(t)))] for t in [*x, *y]]
    for rep in range(reps):
        one = [draw[rep] for draw in draws]
        looped.append(brute_probability_of_improvement(one[:2], one[2:]))
    _, low, high = stats.probability_of_improvement_interval(x, y, reps=reps, seed=seed)
    assert (low, high) == pytest.approx(tuple(np.percentile(looped, [2.5, 97.5])))


def test_a_statistic_that_reduces_the_resamples_is_refused():
    with pytest.raises(ValueError, match="reduce only the runs' axis"):
        stats.stratified_bootstrap([np.arange(3.0)], lambda t: float(t[0].mean()))


def test_bootstrap_is_reproducible_by_seed():
    tasks = [np.arange(6.0), np.arange(4.0)]
    first = stats.stratified_bootstrap(tasks, stats.aggregate_iqm, reps=100, seed=3)
    again = stats.stratified_bootstrap(tasks, stats.aggregate_iqm, reps=100, seed=3)
    assert first == again
    assert list(itertools.islice(first, 1)) == [stats.aggregate_iqm(tasks)]


def test_drawdown_by_hand():
    # from 30 on: best 100 -> (100 - 40) / 100, then back at the best -> 0
    assert stats.drawdown([0, 10, 20, 30, 40], [50, 100, 70, 40, 100], 30) == 0.3
    # a best so far at or below 0 counts no drop (a fraction of it means nothing);
    # then the best is 20: (20 - 20) / 20, (20 - 5) / 20
    frames, values = [0, 10, 20, 30], [-50.0, -80.0, 20.0, 5.0]
    assert stats.drawdown(frames, values, 0) == pytest.approx((0 + 0 + 0 + 0.75) / 4)
    assert math.isnan(stats.drawdown([0, 10], [1.0, 2.0], 20))  # nothing evaluated


def test_plot_stats_table_by_hand():
    from analysis import plot

    def curve(*values):  # evaluations every 10 frames; the score is the last five
        return [(10 * i, v) for i, v in enumerate(values)]

    groups = {
        ("Hopper-v5", "gem"): [curve(0, 5, 5, 5, 5, 5), curve(0, 7, 7, 7, 7, 7)],
        ("Hopper-v5", "td3"): [curve(0, 6, 6, 6, 6, 6), curve(9, 1, 1, 1, 1, 1)],
    }
    table = plot.stats_table(groups, "gem", reps=200)
    # scores gem 5, 7 and td3 6, 1: pairs (5>6 no, 5>1, 7>6, 7>1) -> 3/4
    # drawdown over the second half (frames 30-50): gem never falls; td3's second
    # run sits at 1 below its best 9 -> 8/9 of it, its first at 0 -> 4/9 ± 4/9
    assert (
        "| Hopper-v5 | gem | 2 | 6.0 [5.0, 7.0] | 6.0 ± 1.0 | 5.0 | 0.00 ± 0.00 |"
        in table
    )
    assert (
        "| Hopper-v5 | td3 | 2 | 3.5 [1.0, 6.0] | 3.5 ± 2.5 | 1.0 | 0.44 ± 0.44 |"
        in table
    )
    assert "| 0.44 ± 0.44 | 0.75 [" in table
    # normalised by Hopper's (random, reference) = (19.8, 3564.07)
    random, reference, _ = plot.NORMALISATION["Hopper-v5"]
    expected = (6.0 - random) / (reference - random)
    assert f"| gem | 1 | 2 | {expected:.2f} [" in table
    assert "1 is TD3's best in 1M steps." in table
    # the other way round (a candidate against a baseline): P(td3 > gem) = 1/4
    reversed_table = plot.stats_table(groups, "gem", reps=200, others_improve=True)
    assert "| P(algorithm > gem) [95% CI] |" in reversed_table
    assert "| 0.44 ± 0.44 | 0.25 [" in reversed_table
    # a task without a normalisation: no aggregate, no profile
    pong = {("ALE/Pong-v5", algo): curves for (_, algo), curves in groups.items()}
    table = plot.stats_table(pong, "gem", reps=200)
    assert "| ALE/Pong-v5 | td3 | 2 |" in table and "normalised" not in table
    assert plot.plot_profiles(pong, Path("never-written.png")) is None
    # an Atari game of the study: human-normalised, (6 - 307.3) / (6951.6 - 307.3)
    pacman = {("ALE/MsPacman-v5", algo): c for (_, algo), c in groups.items()}
    table = plot.stats_table(pacman, "gem", reps=200)
    assert "Normalised: 0 is the random policy, 1 is human." in table
    assert f"| gem | 1 | 2 | {(6.0 - 307.3) / (6951.6 - 307.3):.2f} [" in table


def test_the_aggregate_says_when_p_covers_fewer_tasks():
    from analysis import plot

    def curve(value):
        return [(0, value), (10, value)]

    groups = {
        ("Hopper-v5", "gem"): [curve(5.0), curve(7.0)],
        ("Hopper-v5", "sac"): [curve(6.0), curve(1.0)],
        ("Walker2d-v5", "sac"): [curve(3.0), curve(4.0)],
    }
    table = plot.stats_table(groups, "gem", reps=200)
    (sac,) = [line for line in table.splitlines() if line.startswith("| sac | 2 |")]
    assert sac.endswith("(1 of its 2 tasks) |")  # P(gem > sac) on Hopper only


def test_runs_short_of_their_budget_are_left_out(tmp_path):
    from analysis import plot

    done, running = [(0, 1.0), (100, 2.0)], [(0, 1.0), (50, 3.0)]
    returns = "eval/return_mean"
    runs = [
        write_run(tmp_path, "Hopper-v5", "gem", 0, 100, {returns: done}),
        write_run(tmp_path, "Hopper-v5", "gem", 1, 100, {returns: running}),
        # a cell whose only run is still going drops out whole
        write_run(tmp_path, "Hopper-v5", "td3", 0, 100, {returns: running}),
    ]
    groups, notes = plot.finished_runs(runs)
    assert groups == {("Hopper-v5", "gem"): [done]}
    assert notes == [
        "Hopper-v5 gem: 1 run(s) left out, at frames 50 of 100 (still running?)",
        "Hopper-v5 td3: 1 run(s) left out, at frames 50 of 100 (still running?)",
    ]


def _swinging_run(tmp_path):
    """A run whose evaluations drop at 30 and 50 (of its best so far, 100)."""
    returns = [(0, 10.0), (10, 100.0), (20, 90.0), (30, 30.0), (40, 95.0), (50, 20.0)]
    bias = [(0, 1.0), (10, 2.0), (20, 3.0), (30, 50.0), (40, 4.0), (50, 60.0)]
    loss = [(5, 1.0), (15, 2.0), (25, 8.0), (28, 10.0), (35, 4.0), (45, 6.0)]
    scalars = {"eval/return_mean": returns, "eval/q_bias": bias, "loss_qvalue": loss}
    return write_run(tmp_path, "Hopper-v5", "gem", 0, 50, scalars)


def test_swings_groups_the_evaluations_around_drops(tmp_path):
    from analysis import swings

    run = _swinging_run(tmp_path)
    table, summary = swings.analyse([run], start=20, fraction=0.5)
    # drops at 30 and 50; just before them: 20 and 40; no other from 20 on
    assert table["critics' bias (eval)"] == {
        "drop": [50.0, 60.0],
        "before": [3.0, 4.0],
        "other": [],
    }
    # the critic loss since the previous evaluation: (20, 30] -> 8, 10; (40, 50] -> 6
    assert table["critic loss"]["drop"] == [9.0, 6.0]
    count, total, drawdown = summary[run]
    assert (count, total) == (2, 4)
    # best so far 100 from frame 10: losses .1 .7 .05 .8 over the four evaluations
    assert drawdown == pytest.approx((0.1 + 0.7 + 0.05 + 0.8) / 4)


def test_swings_detrend_groups_residuals_from_each_runs_line(tmp_path):
    from analysis import swings

    run = _swinging_run(tmp_path)
    table, _ = swings.analyse([run], start=20, fraction=0.5, detrend=True)
    # bias 3, 50, 4, 60 at 20..50: least-squares line 29.25 + 1.25 (frame - 35),
    # i.e. 10.5, 23, 35.5, 48; residuals -7.5, 27, -31.5, 12
    assert table["critics' bias (eval)"] == {
        "drop": pytest.approx([27.0, 12.0]),
        "before": pytest.approx([-7.5, -31.5]),
        "other": [],
    }


def test_swings_figure_has_a_row_per_logged_quantity(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from analysis import swings

    run = _swinging_run(tmp_path)
    saved = {}
    monkeypatch.setattr(
        plt.Figure, "savefig", lambda fig, out, **_: saved.update(fig=fig)
    )
    swings.plot_swings([run], start=20, fraction=0.5, out=tmp_path / "swings.png")
    axes = saved["fig"].axes
    # the return, then the two quantities this run logged (bias, critic loss)
    assert [ax.get_ylabel() for ax in axes] == [
        "evaluation return",
        "critics' bias (eval)",
        "critic loss",
    ]
    red = [
        line.get_xdata()[0] for line in axes[1].lines if line.get_color() == "tab:red"
    ]
    assert red == [30, 50]  # the drops, marked on every panel


def test_plot_profiles_writes_a_figure(tmp_path):
    from analysis import plot

    groups = {
        ("Hopper-v5", "gem"): [[(0, 100.0), (10, 900.0)], [(0, 50.0), (10, 2000.0)]]
    }
    out = plot.plot_profiles(groups, tmp_path / "profile.png", last=1, reps=20)
    assert out.is_file() and out.stat().st_size > 1000


def test_paper_table_is_algorithm_by_task_with_runs_and_precision(tmp_path):
    from analysis import plot

    runs = [_swinging_run(tmp_path / name) for name in ("a", "b", "c")]
    for run, precision in zip(runs, ("bf16", "fp32"), strict=False):
        (run / "config.yaml").write_text(f"optim:\n  precision: {precision}\n")
    # the third run has no config.yaml
    assert plot.precisions(runs) == {("Hopper-v5", "gem"): "?+bf16+fp32"}
    assert plot.precisions(runs[:1]) == {("Hopper-v5", "gem"): "bf16"}

    groups = {
        ("Hopper-v5", "gem"): [[(0, 1.0), (10, 5.0)], [(0, 1.0), (10, 7.0)]],
        ("Walker2d-v5", "td3"): [[(0, 1.0), (10, 2.0)]],
    }
    precision = {("Hopper-v5", "gem"): "bf16", ("Walker2d-v5", "td3"): "fp32"}
    lines = plot.paper_table(groups, precision, last=1, reps=200).splitlines()
    assert lines[0] == "| algorithm | Hopper-v5 | Walker2d-v5 |"
    # scores 5 and 7: IQM 6, bootstrap interval [5, 7], mean 6 ± 1
    assert lines[2] == "| gem | 6 [5, 7]<br>6 ± 1 (2, bf16) |  |"
    assert lines[3] == "| td3 |  | 2 [2, 2]<br>2 ± 0 (1, fp32) |"
