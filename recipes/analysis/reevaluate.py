"""Evaluate a MuJoCo run's saved actors again, with more episodes.

A run with ``logger.snapshots=true`` saves its actor at every evaluation
(``<run_dir>/actors/frame<N>.pt``). Its logged evaluation used
``logger.eval_episodes`` episodes (10 by default): a drop between two evaluations
is the policy changing, or those episodes' noise. This re-runs the evaluation of the
chosen frames with ``--episodes`` episodes from the same seed (so the first
``eval_episodes`` of them are the logged ones, which the table checks) and prints,
per frame, the logged mean, the new mean with its standard error, and the episodes'
spread::

    python recipes/analysis/reevaluate.py runs/Hopper-v5/gem/seed0 --frames 80000 90000
    python recipes/analysis/reevaluate.py RUN_DIR --episodes 50    # every snapshot
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a file: import from recipes/, as the recipes do
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from analysis.plot import read_scalar  # noqa: E402
from builders import make_networks  # noqa: E402
from interaction import EVAL_SEED_OFFSET, action_half_range, make_env  # noqa: E402
from torchrl_gem.trainer import EvaluationHook  # noqa: E402


def snapshot_frames(run_dir: Path) -> list[int]:
    """The frames whose actor ``run_dir`` saved, in order."""
    found = (run_dir / "actors").glob("frame*.pt")
    return sorted(int(path.stem.removeprefix("frame")) for path in found)


def reevaluate(run_dir: Path, frames: list[int], episodes: int) -> list[dict]:
    """One row per frame: the logged mean and the ``episodes``-episode statistics."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    env = make_env(cfg, cfg.seed + EVAL_SEED_OFFSET)
    spec, _ = action_half_range(env, cfg.env.name)
    actor, _ = make_networks(cfg, env.observation_spec["observation"].shape[-1], spec)
    logged = dict(read_scalar(run_dir, "eval/return_mean"))
    evaluation = EvaluationHook(
        env,
        actor,
        num_episodes=episodes,
        max_steps=cfg.env.max_episode_steps,
        seed=cfg.seed + EVAL_SEED_OFFSET,  # the logged evaluations' episodes first
        action_bounds=(spec.space.low, spec.space.high),
    )
    rows = []
    for frame in frames:
        path = run_dir / "actors" / f"frame{frame}.pt"
        if not path.is_file():
            raise SystemExit(f"{path}: no actor saved at frame {frame}")
        actor.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        result = evaluation.evaluate()
        rows.append(
            {
                "frame": frame,
                "logged": logged.get(frame, math.nan),
                "mean": result["return_mean"],
                "stderr": result["return_std"] / math.sqrt(episodes),
                "std": result["return_std"],
                "length": result["episode_length"],
                "saturation": result["action_saturation"],
            }
        )
    return rows


def table(rows: list[dict], episodes: int, logged_episodes: int) -> str:
    lines = [
        f"| frame | logged ({logged_episodes} episodes) | mean of {episodes} ± s.e. "
        "| std over episodes | episode length | actions at a bound |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['frame']} | {row['logged']:.1f} | {row['mean']:.1f} ± "
            f"{row['stderr']:.1f} | {row['std']:.1f} | {row['length']:.1f} | "
            f"{row['saturation']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run saved with snapshots")
    parser.add_argument("--frames", type=int, nargs="*", help="default: every one")
    parser.add_argument("--episodes", type=int, default=50, help="per frame")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    frames = args.frames or snapshot_frames(args.run_dir)
    if not frames:
        raise SystemExit(
            f"{args.run_dir}: no saved actors (run it with logger.snapshots=true)"
        )
    rows = reevaluate(args.run_dir, frames, args.episodes)
    logged_episodes = OmegaConf.load(args.run_dir / "config.yaml").logger.eval_episodes
    print(table(rows, args.episodes, logged_episodes))


if __name__ == "__main__":
    main()
