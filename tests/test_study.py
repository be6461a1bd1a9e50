"""The study queue (docs/results/run_study.sh): every run it would start composes a
valid config, so that a typo in its overrides fails here, not hours into a queue."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("hydra")
pytest.importorskip("gymnasium")

import config as recipe_config  # noqa: E402  (recipes/ is on pytest's pythonpath)

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("1", "2", "3", "4", "stable", "stable5", "atari", "1m")


def queued_commands(*parts: str) -> list[list[str]]:
    """``[recipe, *overrides]`` of each run that ``run_study.sh`` would start."""
    listed = subprocess.run(
        ["bash", "docs/results/run_study.sh", "--list", *parts],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split() for line in listed.splitlines()]


@pytest.mark.skipif(shutil.which("bash") is None, reason="run_study.sh needs bash")
@pytest.mark.parametrize("part", PARTS)
def test_every_queued_run_composes_a_valid_config(part):
    commands = queued_commands(part)
    assert commands, f"part {part} queues no run"
    for recipe, *overrides in commands:
        if recipe == "recipes/gem_atari.py":
            pytest.importorskip("ale_py", reason="the atari extra is not installed")
            import atari_config

            cfg = atari_config.load_atari_config(overrides)
            atari_config.check_atari_config(cfg)
        else:
            assert recipe == "recipes/gem_mujoco.py", recipe
            cfg = recipe_config.load_config(overrides)
            recipe_config.check_config(cfg)
        # each run writes where the results README's tables read it
        assert cfg.logger.run_dir.startswith("docs/results/"), cfg.logger.run_dir


def test_the_default_queue_is_the_mujoco_parts_in_order():
    assert queued_commands() == queued_commands("1", "4", "2", "3")
