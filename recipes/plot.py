"""Learning curves of gem_mujoco.py runs: evaluation return against environment frames.

    python recipes/plot.py RUN_DIR [RUN_DIR ...] --out curves.png

Each RUN_DIR is a run directory (it holds ``run_info.json``, written by the recipe) or
any folder above run directories (``runs/`` or ``runs/Hopper-v5``). Runs are grouped by
task and algorithm; the figure has one panel per task and one line per algorithm,
the mean over seeds with a +-std band (population std, as the paper's plots). A
markdown table of the final returns (mean +- std over seeds) is printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path

METRIC = "eval/return_mean"


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


def read_scalar(run: Path, name: str = METRIC) -> list[tuple[int, float]]:
    """``(frame, value)`` pairs of a TorchRL CSV-logged scalar, one per frame.

    The CSV logger writes ``<run>/<experiment>/scalars/<name>.csv`` with lines
    ``step,value``. A resumed run may log a frame twice; the last value wins.
    """
    values: dict[int, float] = {}
    for file in sorted(run.glob(f"*/scalars/{name}.csv")):
        with open(file, newline="") as handle:
            for row in csv.reader(handle):
                if len(row) == 2:
                    values[int(float(row[0]))] = float(row[1])
    return sorted(values.items())


def collect(runs: list[Path], metric: str = METRIC) -> dict[tuple[str, str], list]:
    """``{(task, algo): [curve, ...]}``, one ``[(frame, value), ...]`` per run."""
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for run in runs:
        info = json.loads((run / "run_info.json").read_text())
        curve = read_scalar(run, metric)
        if curve:
            groups[(info["env"], info["algo"])].append(curve)
    return dict(sorted(groups.items()))


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


def markdown_table(groups: dict) -> str:
    lines = [
        "| task | algorithm | runs | frames | final return (mean ± std) |",
        "|---|---|---:|---:|---:|",
    ]
    for (task, algo), curves in groups.items():
        finals = [curve[-1][1] for curve in curves]
        frames = sorted({curve[-1][0] for curve in curves})
        frame_text = str(frames[0]) if len(frames) == 1 else f"{frames[0]}-{frames[-1]}"
        mean, std = _mean_std(finals)
        row = [task, algo, str(len(curves)), frame_text, f"{mean:.1f} ± {std:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_groups(groups: dict, out: Path, metric: str = METRIC) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    tasks = sorted({task for task, _ in groups})
    columns = min(3, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False
    )
    for ax, task in zip(axes.flat, tasks, strict=False):
        for (group_task, algo), curves in groups.items():
            if group_task != task:
                continue
            frames, mean, std = aggregate(curves)
            low = [m - s for m, s in zip(mean, std, strict=True)]
            high = [m + s for m, s in zip(mean, std, strict=True)]
            (line,) = ax.plot(frames, mean, label=f"{algo} ({len(curves)})")
            ax.fill_between(frames, low, high, color=line.get_color(), alpha=0.2)
        ax.set_title(task)
        ax.set_xlabel("environment frames")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 20k, 1M: no overlap
        ax.set_ylabel("evaluation return" if metric == METRIC else metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_runs(paths, out, *, metric: str = METRIC, quiet: bool = False) -> str:
    """Find the runs under ``paths``, write the figure to ``out``, return the table."""
    groups = collect(find_runs(paths), metric)
    if not groups:
        raise SystemExit(f"no {metric!r} logs found under {[str(p) for p in paths]}")
    plot_groups(groups, out, metric)
    table = markdown_table(groups)
    if not quiet:
        print(table)
        print(f"\nwrote {out}")
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories or folders above them")
    parser.add_argument("--out", default="curves.png", help="PNG file to write")
    parser.add_argument("--metric", default=METRIC, help="CSV scalar to plot")
    args = parser.parse_args(argv)
    plot_runs(args.runs, args.out, metric=args.metric)


if __name__ == "__main__":
    main()
