"""A run's logs hold each step once: killed runs resumed, the cut, the plot's reading.

A run killed (``kill -9``) between two checkpoints has logged steps past its last
checkpoint; resumed, it must end with the logs of the same run done without
interruption, for the MuJoCo and the Atari recipe.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import run_killed, write_log, write_run
from conftest import tiny_mujoco_run as tiny

pytest.importorskip("hydra")

import logs  # noqa: E402 - recipes/ is on pytest's pythonpath
from analysis import plot  # noqa: E402


def csv_files(run_dir: Path) -> dict[str, Path]:
    root = run_dir / "logs"
    return {str(path.relative_to(root)): path for path in logs.csv_logs(root)}


def steps(path: Path) -> list[int]:
    return [logs.step_of(line) for line in logs.read_lines(path)]


def assert_logged_once_as_uninterrupted(split: Path, straight: Path) -> None:
    """Every CSV log of ``split`` has strictly increasing steps and equals the one of
    ``straight``; the time totals (wall-clock) in their steps only."""
    resumed, reference = csv_files(split), csv_files(straight)
    assert sorted(resumed) == sorted(reference)
    for name, path in resumed.items():
        logged = steps(path)
        assert logged == sorted(set(logged)), f"{name} repeats or reorders steps"
        if name.startswith("scalars/time/"):
            assert logged == steps(reference[name]), name
        else:
            assert path.read_text() == reference[name].read_text(), name


def eval_steps(run_dir: Path) -> list[int]:
    return steps(run_dir / "logs" / "scalars" / "eval" / "return_mean.csv")


# ------------------------------------------------------------------ MuJoCo
def test_mujoco_run_killed_between_checkpoints_logs_each_step_once(tmp_path):
    pytest.importorskip("mujoco")
    pytest.importorskip("tensorboard")
    import gem_mujoco

    extra = (
        "collector.total_frames=500",
        "logger.eval_interval=100",
        "checkpoint.interval=200",
        "checkpoint.resume=auto",
    )
    straight, split = tmp_path / "straight", tmp_path / "split"
    gem_mujoco.train(gem_mujoco.load_config(tiny("gem", straight, *extra)))
    both = (*extra, "logger.backends=[csv,tensorboard]")
    run_killed("gem_mujoco", tiny("gem", split, *both), kill_at=300, cwd=tmp_path)
    # the killed process evaluated past its last checkpoint (200)
    assert eval_steps(split)[-1] == 300
    # TensorBoard reads event files in the order of their names, whose timestamps
    # count seconds: the resumed process's file must not share the killed one's
    time.sleep(1.1)
    gem_mujoco.train(gem_mujoco.load_config(tiny("gem", split, *both)))
    assert_logged_once_as_uninterrupted(split, straight)

    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    events = EventAccumulator(str(split / "tensorboard")).Reload()
    tags = events.Tags()["scalars"]
    assert "eval/return_mean" in tags
    for tag in tags:
        rows = [(event.step, event.value) for event in events.Scalars(tag)]
        logged = [step for step, _ in rows]
        assert logged == sorted(set(logged)), f"{tag} repeats steps in TensorBoard"
        if not tag.startswith("time/"):  # the resumed process's values, as in csv
            expected = plot.read_scalar(split, tag)
            assert logged == [step for step, _ in expected], tag
            values = [value for _, value in rows]
            assert values == pytest.approx([v for _, v in expected], rel=1e-6), tag


# ------------------------------------------------------------------- Atari
def test_atari_run_killed_between_checkpoints_logs_each_step_once(tmp_path):
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    import gem_atari
    from test_atari import tiny as tiny_atari

    extra = ("checkpoint.interval=100", "checkpoint.resume=auto")
    straight, split = tmp_path / "straight", tmp_path / "split"
    gem_atari.train(gem_atari.load_config(tiny_atari("gem", straight, *extra)))
    overrides = tiny_atari("gem", split, *extra)
    run_killed("gem_atari", overrides, kill_at=150, cwd=tmp_path)
    assert eval_steps(split)[-1] == 150  # past the checkpoint at 100
    gem_atari.train(gem_atari.load_config(overrides))
    assert_logged_once_as_uninterrupted(split, straight)


# -------------------------------------------------------------------- cut
def test_cut_keeps_rows_at_or_before_the_step_in_every_file(tmp_path):
    a = write_log(tmp_path / "scalars" / "a.csv", [(0, 1.0), (100, 2.0), (200, 3.0)])
    b = write_log(tmp_path / "scalars" / "time" / "b.csv", [(50, 0.5), (150, 1.5)])
    c = write_log(tmp_path / "scalars" / "c.csv", [(100, 7.0)])
    assert logs.cut_csv_logs(tmp_path, 100) == [a, b]  # c is left untouched
    assert a.read_text() == "0,1.0\n100,2.0\n"
    assert b.read_text() == "50,0.5\n"
    assert c.read_text() == "100,7.0\n"


def test_a_crash_during_the_cut_loses_no_row(tmp_path, monkeypatch):
    rows = [(0, 1.0), (100, 2.0), (200, 3.0)]
    log = write_log(tmp_path / "scalars" / "eval" / "return_mean.csv", rows)
    before = log.read_text()

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(logs.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        logs.cut_csv_logs(tmp_path, 100)
    assert log.read_text() == before  # the old file, whole
    assert logs.csv_logs(tmp_path) == [log]  # no half-written file beside it
    monkeypatch.undo()
    logs.cut_csv_logs(tmp_path, 100)
    assert log.read_text() == "0,1.0\n100,2.0\n"


def test_a_half_written_temporary_file_is_not_a_log(tmp_path):
    log = write_log(tmp_path / "scalars" / "a.csv", [(0, 1.0)])
    (tmp_path / "scalars" / "a.csv.tmp").write_text("0,1.0\n10")  # a crash mid-write
    assert logs.csv_logs(tmp_path) == [log]


def test_one_row_per_step_keeps_the_later_process(tmp_path):
    # killed at 300 after a checkpoint at 200; the resumed process logs from 250 on
    lines = ["0,1\n", "100,2\n", "200,3\n", "300,4\n", "250,5\n", "300,6\n", "400,7\n"]
    kept, dropped = logs.one_row_per_step(lines)
    assert kept == ["0,1\n", "100,2\n", "200,3\n", "250,5\n", "300,6\n", "400,7\n"]
    assert dropped == [300]
    # the same step twice in one process (a timer logged again at the end)
    assert logs.one_row_per_step(["0,1\n", "5,2\n", "5,3\n"]) == (
        ["0,1\n", "5,3\n"],
        [5],
    )
    assert logs.one_row_per_step(lines[:4]) == (lines[:4], [])


# ------------------------------------------------------------------- W&B
def test_wandb_continues_the_run_of_the_checkpoint(tmp_path, monkeypatch):
    from torchrl.record.loggers.wandb import WandbLogger

    import gem_mujoco

    made = []

    def fake_get_logger(backend, log_dir, name, **kwargs):
        made.append(kwargs["wandb_kwargs"])
        logger = object.__new__(WandbLogger)  # no wandb package needed
        logger.id = kwargs["wandb_kwargs"]["id"]
        return logger

    monkeypatch.setattr(logs, "get_logger", fake_get_logger)
    cfg = gem_mujoco.load_config(tiny("gem", tmp_path, "logger.backends=[wandb]"))
    fresh = logs.make_logger(cfg, tmp_path)
    resumed = logs.make_logger(cfg, tmp_path, {"frames": 300, "wandb_id": "run123"})
    assert made[0]["resume"] == made[1]["resume"] == "allow"
    assert len(made[0]["id"]) == 12 and made[1]["id"] == "run123"
    assert logs.wandb_run_id(fresh) == made[0]["id"]
    assert logs.wandb_run_id(resumed) == "run123"
    assert logs.wandb_run_id(logs.FanOutLogger([object(), resumed])) == "run123"
    assert logs.wandb_run_id(None) is None


@pytest.mark.parametrize("folder", ["logs/scalars/eval", "tensorboard"])
def test_a_new_run_refuses_another_runs_logs(folder, tmp_path):
    import gem_mujoco

    cfg = gem_mujoco.load_config(tiny("gem", tmp_path))
    (tmp_path / "logs").mkdir()  # empty folders are no logs
    logs.make_logger(cfg, tmp_path)
    (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / folder / "return_mean.csv").write_text("0,1.0\n")
    name = folder.split("/")[0]
    with pytest.raises(FileExistsError, match=f"already holds the {name}/ logs"):
        logs.make_logger(cfg, tmp_path)
    # resuming from a checkpoint continues those logs
    logs.make_logger(cfg, tmp_path, {"frames": 0})


# -------------------------------------------------------------------- plot
def fake_run(root: Path, curve, timer) -> Path:
    scalars = {"eval/return_mean": curve, "time/update": timer}
    return write_run(root, "Hopper-v5", "gem", 0, 400, scalars)


# logged by a run killed at 300 and resumed from its checkpoint at 200, before the
# recipes cut logs on resume: 300 twice, the resumed process's value last
CURVE = [(0, 1.0), (100, 2.0), (200, 3.0), (300, 40.0), (300, 4.0), (400, 5.0)]
TIMER = [(100, 60.0), (200, 120.0), (300, 180.0), (300, 185.0), (400, 240.0)]


def test_plot_reads_a_repeated_step_once_and_names_the_file(tmp_path):
    run_dir = fake_run(tmp_path, CURVE, TIMER)
    with pytest.warns(UserWarning, match=r"seed0/logs/scalars/eval/return_mean.csv"):
        curve = plot.read_scalar(run_dir)
    assert curve == [(0, 1.0), (100, 2.0), (200, 3.0), (300, 4.0), (400, 5.0)]


def test_plot_times_a_resumed_run_whose_totals_are_consistent(tmp_path):
    run_dir = fake_run(tmp_path, CURVE, TIMER)
    with pytest.warns(UserWarning):
        table = plot.time_table([run_dir])
    # 240 s for 400 frames: 1000 min per 100k frames, and the run counts as timed
    assert "| Hopper-v5 | gem | 1 of 1 | 1000.0 ± 0.0 |" in table


@pytest.mark.parametrize(
    ("envs", "unit"),
    [
        (["ALE/Pong-v5"], "agent steps"),  # TorchRL's frames, at frame skip 4
        (["Hopper-v5"], "frames"),
        (["ALE/Pong-v5", "Hopper-v5"], "frames"),  # mixed: no common unit but frames
    ],
)
def test_plot_tables_name_what_frames_count(tmp_path, envs, unit):
    scalars = {"eval/return_mean": [(0, 1.0), (400, 2.0)], "time/update": [(400, 6.0)]}
    runs = [write_run(tmp_path, env, "gem", 0, 400, scalars) for env in envs]
    groups = {(env, "gem"): [[(0, 1.0), (400, 2.0)]] for env in envs}
    assert f"| runs | {unit} | final return |" in plot.markdown_table(groups)
    assert f"| minutes per 100k {unit} |" in plot.time_table(runs)


def test_plot_phase_table_by_hand(tmp_path):
    # 400 frames in 3600 s: 1800 update, 900 refresh, 360 collect, 180 evaluation,
    # 0 checkpoint (no log), 360 in the other hooks; per 1,000 frames x 2.5
    timers = {
        "time/update": [(200, 900.0), (400, 1800.0)],
        "time/collect": [(400, 360.0)],
        "time/hook/memory_refresh": [(400, 900.0)],
        "time/hook/evaluation": [(400, 180.0)],
        "time/hook/extend": [(400, 360.0)],
    }
    gem = write_run(tmp_path, "Hopper-v5", "gem", 0, 400, timers)
    untimed = write_run(tmp_path, "Hopper-v5", "gem", 1, 400, {})
    table = plot.phase_table([gem, untimed], per=1_000)
    # collection, gradient steps, refresh, evaluation, checkpoints, other, total
    row = "| Hopper-v5 | gem | 1 | 0.25 | 1.25 | 0.62 | 0.12 | 0.00 | 0.25 | 2.50 |"
    assert row in table, table
    assert "Hours per 1,000 frames" in table


def test_plot_run_scores_table_by_hand(tmp_path):
    curve = [(frame, float(frame // 100)) for frame in range(0, 1001, 100)]
    write_run(tmp_path, "Ant-v5", "td3", 2, 1000, {"eval/return_mean": curve})
    short = [(0, 1.0), (100, 3.0)]  # still running: no figure at 300-500 yet
    write_run(tmp_path, "Ant-v5", "gem", 0, 1000, {"eval/return_mean": short})
    runs = plot.find_runs([tmp_path])
    table = plot.run_scores_table(runs, window=(300, 500))
    # td3: the last five evaluations 6..10 -> 8; final 10; 3, 4, 5 -> 4
    assert "| Ant-v5 | td3 | 2 | 1000 | 8.0 | 10.0 | 4.0 |" in table
    assert "| Ant-v5 | gem | 0 | 100 | 2.0 | 3.0 |  |" in table
    assert table.index("| gem |") < table.index("| td3 |")  # sorted rows


def test_plot_drawdown_table_by_hand(tmp_path):
    # seed 0: best so far 10 from 100 frames on; stretch (0, 200]: 10 and 5 drop
    # 0 and 0.5 -> 0.25; (200, 400]: 10 and 2 drop 0 and 0.8 -> 0.4
    full = [(0, 0.0), (100, 10.0), (200, 5.0), (300, 10.0), (400, 2.0)]
    write_run(tmp_path, "Ant-v5", "gem", 0, 400, {"eval/return_mean": full})
    # seed 1 stops at 300: (0, 200] -> 1 - 6/8 = 0.25 at 200 -> 0.125; (200, 400]
    # not reached, so only seed 0 counts there
    short = [(0, 0.0), (100, 8.0), (200, 6.0), (300, 8.0)]
    write_run(tmp_path, "Ant-v5", "gem", 1, 400, {"eval/return_mean": short})
    table = plot.drawdown_table(plot.find_runs([tmp_path]), stretch=200)
    assert "| task | algorithm | runs | 200 | 400 |" in table
    # (0.25 + 0.125) / 2 = 0.1875 ± 0.0625
    assert "| Ant-v5 | gem | 2 | 0.19 ± 0.06 | 0.40 ± 0.00 |" in table, table
    assert "No evaluations" in plot.drawdown_table([], stretch=200)
    # stretches without an evaluation (every other one here) are blank, not nan
    halves = plot.drawdown_table(plot.find_runs([tmp_path]), stretch=50)
    assert "nan" not in halves and "| Ant-v5 | gem | 2 |  | 0.00 ± 0.00 |" in halves
    with pytest.raises(SystemExit):  # argparse: a stretch of 0 frames
        plot.main([str(tmp_path), "--drawdown-by", "0"])


def test_plot_stats_before_any_run_finished_says_so(tmp_path, capsys):
    # a study whose runs are all still going: no empty statistics tables, the runs'
    # own tables still printed
    write_run(tmp_path, "Ant-v5", "gem", 0, 1000, {"eval/return_mean": [(0, 1.0)]})
    write_run(tmp_path, "Ant-v5", "td3", 0, 1000, {"eval/return_mean": [(0, 2.0)]})
    out_png = tmp_path / "s.png"
    plot.main(
        [str(tmp_path), "--stats", "gem", "--per-run", "0:0", "--out", str(out_png)]
    )
    out = capsys.readouterr().out
    assert "No run has finished: no statistics yet." in out
    assert "IQM [95% CI]" not in out and "\n| algorithm |" not in out
    assert "| Ant-v5 | td3 | 0 | 0 | 2.0 | 2.0 | 2.0 |" in out


def test_plot_clean_rewrites_repeated_steps(tmp_path, capsys):
    run_dir = fake_run(tmp_path, CURVE, TIMER)
    plot.main([str(tmp_path), "--clean", "--out", str(tmp_path / "c.png")])
    out = capsys.readouterr().out
    assert out.count("cleaned ") == 2
    eval_log = run_dir / "logs" / "scalars" / "eval" / "return_mean.csv"
    assert steps(eval_log) == [0, 100, 200, 300, 400]
    assert "300,4.0\n" in eval_log.read_text()
    assert plot.clean_logs([run_dir]) == []  # clean now: nothing to rewrite
