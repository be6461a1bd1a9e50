"""Why a run's evaluations swing: what its logs held before and at each drop.

    python recipes/analysis/swings.py docs/results/runs/Hopper-v5/gem \
        docs/results/runs/Walker2d-v5/gem

A *drop* is an evaluation (from ``--start`` frames on) whose mean return falls below
``--fraction`` of the run's best evaluation so far. For every logged quantity (the
evaluation's own: the critics' bias, the episode length, the action saturation; the
training logs averaged over the interval since the previous evaluation: losses,
gradient norms, the memory's targets), the table compares three groups of
evaluations from ``--start`` on: the drops, the evaluations just before a drop, and
the others. A quantity that moves *before* a drop shows in the second column; one
that moves only with it, in the first. The stability figure is ``stats.drawdown``.

``--out PNG`` also draws each run's curves (one column per run): the evaluation
return, then every logged quantity against frames, with the drops marked by red
lines on every panel, so that what moves before a drop can be seen, not only
averaged. ``--detrend`` compares each quantity's residuals from its run's linear
trend instead (drops come late, when slowly drifting quantities are high or low).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a file: import from recipes/, as the recipes do
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402

from analysis import stats  # noqa: E402
from analysis.plot import find_runs, pyplot, read_scalar, save_figure  # noqa: E402

RETURN = "eval/return_mean"
# quantity -> (csv scalar, read at the evaluation or averaged since the previous one)
QUANTITIES = {
    "critics' bias (eval)": ("eval/q_bias", "at"),
    "episode length (eval)": ("eval/episode_length", "at"),
    "actions at a bound (eval)": ("eval/action_saturation", "at"),
    "critic loss": ("loss_qvalue", "since"),
    "actor loss": ("loss_actor", "since"),
    "critic gradient norm": ("grad_norm_qvalue", "since"),
    "actor gradient norm": ("grad_norm_actor", "since"),
    "memory target - MC return": ("memory/target_minus_mc", "since"),
    "multi-step fraction": ("memory/multi_step_fraction", "since"),
    "mean horizon": ("memory/horizon_mean", "since"),
}


def drops(curve: list, start: int, fraction: float) -> list[int]:
    """Indices of the evaluations at or after ``start`` below ``fraction`` of the
    best evaluation so far.

    Examples:
        >>> drops([(0, 10.0), (10, 100.0), (20, 40.0), (30, 90.0)], 20, 0.5)
        [2]
    """
    best, found = -math.inf, []
    for index, (frame, value) in enumerate(curve):
        if frame >= start and best > 0 and value < fraction * best:
            found.append(index)
        best = max(best, value)
    return found


def value_at(series: dict[int, float], frame: int, previous: int, how: str):
    """The quantity at ``frame`` ("at"), or its mean over ``(previous, frame]``."""
    if how == "at":
        return series.get(frame)
    window = [v for f, v in series.items() if previous < f <= frame]
    return float(np.mean(window)) if window else None


def _residuals(points: list[tuple]) -> list[tuple]:
    """``(frame, group, value)`` points with the value's least-squares line over
    the frames subtracted.

    Examples:
        >>> _residuals([(0, "a", 1.0), (10, "b", 3.0), (20, "c", 2.0)])
        [(0, 'a', -0.5), (10, 'b', 1.0), (20, 'c', -0.5)]
    """
    frames, groups, values = zip(*points, strict=True)
    trend = np.polyval(np.polyfit(frames, values, 1), frames)
    residuals = (np.asarray(values) - trend).round(12).tolist()
    return list(zip(frames, groups, residuals, strict=True))


def analyse(
    runs: list[Path], start: int, fraction: float, detrend: bool = False
) -> tuple[dict, dict]:
    """``({quantity: {group: [values]}}, {run: (drops, evaluations, drawdown)})``.

    ``detrend`` groups each quantity's residuals from its run's linear trend over
    the evaluations from ``start`` on instead of its values: drops come late in a
    run, so a quantity that only drifts with training would otherwise seem to move
    with them."""
    table = {name: {"drop": [], "before": [], "other": []} for name in QUANTITIES}
    summary = {}
    for run in runs:
        curve = read_scalar(run, RETURN)
        if not curve:
            continue
        found = set(drops(curve, start, fraction))
        before = {index - 1 for index in found} - found
        series = {
            name: dict(read_scalar(run, key)) for name, (key, _) in QUANTITIES.items()
        }
        group_of = {
            index: "drop"
            if index in found
            else "before"
            if index in before
            else "other"
            for index in range(len(curve))
        }
        for name, (_, how) in QUANTITIES.items():
            points = []  # (frame, group, value) of the evaluations from start on
            for index, (frame, _) in enumerate(curve):
                previous = curve[index - 1][0] if index else -1
                value = value_at(series[name], frame, previous, how)
                if frame >= start and value is not None and math.isfinite(value):
                    points.append((frame, group_of[index], value))
            if detrend and len(points) > 1:
                points = _residuals(points)
            for _, group, value in points:
                table[name][group].append(value)
        frames, values = zip(*curve, strict=True)
        summary[run] = (
            len(found),
            sum(frame >= start for frame in frames),
            stats.drawdown(frames, values, start),
        )
    return table, summary


def report(table: dict, summary: dict, start: int, fraction: float) -> str:
    lines = [
        f"Drops: evaluations from {start} frames on below {fraction:.0%} of the "
        "run's best so far.",
        "",
        "| run | drops / evaluations | drawdown |",
        "|---|---:|---:|",
    ]
    for run, (count, total, drawdown) in summary.items():
        lines.append(f"| {run} | {count} / {total} | {drawdown:.2f} |")
    lines += [
        "",
        "| quantity | at a drop | just before a drop | other evaluations |",
        "|---|---:|---:|---:|",
    ]

    def cell(values: list[float]) -> str:
        if not values:
            return "-"
        return f"{np.mean(values):.3g} ± {np.std(values):.2g} ({len(values)})"

    for name, groups in table.items():
        if any(groups.values()):
            cells = [cell(groups[g]) for g in ("drop", "before", "other")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Each cell: mean ± std (count) over the evaluations of the group.")
    return "\n".join(lines)


def plot_swings(runs: list[Path], start: int, fraction: float, out: Path) -> Path:
    """One column per run: the return and each logged quantity, drops marked."""
    from matplotlib.ticker import EngFormatter

    plt = pyplot()

    curves = {run: read_scalar(run, RETURN) for run in runs}
    curves = {run: curve for run, curve in curves.items() if curve}
    rows = {"evaluation return": RETURN}
    rows.update(
        (name, key)
        for name, (key, _) in QUANTITIES.items()
        if any(read_scalar(run, key) for run in curves)
    )
    fig, axes = plt.subplots(
        len(rows),
        len(curves),
        figsize=(3.6 * len(curves), 1.7 * len(rows)),
        sharex=True,
        squeeze=False,
    )
    for column, (run, curve) in enumerate(curves.items()):
        dropped = [curve[index][0] for index in drops(curve, start, fraction)]
        for row, (name, key) in enumerate(rows.items()):
            ax = axes[row, column]
            series = read_scalar(run, key)
            if series:
                marker = "." if row == 0 else None  # evaluations as points
                ax.plot(*zip(*series, strict=True), lw=1, marker=marker)
            for frame in dropped:
                ax.axvline(frame, color="tab:red", lw=0.8, alpha=0.6)
            ax.axvline(start, color="grey", lw=0.6, ls=":")
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            if column == 0:
                ax.set_ylabel(name, fontsize=7)
        axes[0, column].set_title("/".join(run.parts[-3:]), fontsize=8)
        axes[-1, column].set_xlabel("environment frames", fontsize=7)
        axes[-1, column].xaxis.set_major_formatter(EngFormatter(sep=""))
    return save_figure(fig, out, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories or folders above")
    parser.add_argument("--start", type=int, default=50_000, help="first frame")
    parser.add_argument("--fraction", type=float, default=0.5, help="of the best")
    parser.add_argument("--out", type=Path, help="PNG of each run's curves")
    parser.add_argument(
        "--detrend", action="store_true", help="group residuals from each run's trend"
    )
    args = parser.parse_args(argv)
    runs = find_runs(args.runs)
    table, summary = analyse(runs, args.start, args.fraction, args.detrend)
    print(report(table, summary, args.start, args.fraction))
    if args.out:
        print(f"\nwrote {plot_swings(runs, args.start, args.fraction, args.out)}")


if __name__ == "__main__":
    main()
