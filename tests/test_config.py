"""The recipes' typed config: recipes/config.py, gem_mujoco.yaml and algo/*.yaml.

Composition only, no training: every variant composes and passes the checks, each
variant file reproduces the preset it replaces, and every error names its field and
says what would be valid.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("hydra")
pytest.importorskip("gymnasium")

from omegaconf import OmegaConf  # noqa: E402

import config as recipe_config  # noqa: E402  (recipes/ is on pytest's pythonpath)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
ConfigError = recipe_config.ConfigError

# The `algos` table of gem_mujoco.yaml before it became the `algo` group: the files of
# recipes/algo/ must compose to exactly these values.
PRESET_KEYS = (
    "loss returns single_estimator memory_noise target_assignment memory num_critics "
    "layer_norm reinject_action updates_per_batch target_update"
).split()
OLD_PRESETS = {
    "gem": ("gem", "tbp", False, True, "broadcast", "episodic", 4, True, True, 200, "bulk"),  # noqa: E501
    "td3": ("td3", "td0", False, True, "broadcast", "replay", 2, False, False, 100, "delayed"),  # noqa: E501
    "bp": ("gem", "tbp", True, False, "broadcast", "episodic", 2, True, True, 200, "bulk"),  # noqa: E501
    "bp_4critics": ("gem", "tbp", True, True, "broadcast", "episodic", 4, True, True, 200, "bulk"),  # noqa: E501
    "gem_paired": ("gem", "tbp", False, True, "paired", "episodic", 4, True, True, 200, "bulk"),  # noqa: E501
}  # fmt: skip
# The paper's other baselines (gem-algorithm.md s3.2), added after the table above.
NEW_PRESETS = {
    "td3_sil": ("td3_sil", "td0", False, True, "broadcast", "episodic", 2, False, False, 100, "delayed"),  # noqa: E501
    "sac": ("sac", "td0", False, True, "broadcast", "replay", 2, False, False, 100, "delayed"),  # noqa: E501
    "ddpg": ("ddpg", "td0", False, True, "broadcast", "replay", 1, False, False, 100, "delayed"),  # noqa: E501
    # GEM returns for TorchRL's losses: GEM's networks since the overestimation study
    "td3_tbp": ("td3", "tbp", False, True, "broadcast", "episodic", 4, True, True, 100, "delayed"),  # noqa: E501
    "sac_tbp": ("sac", "tbp", False, True, "broadcast", "episodic", 4, True, True, 100, "delayed"),  # noqa: E501
    # their controls: the same networks on the loss's own one-step target
    "td3_gemnets": ("td3", "td0", False, True, "broadcast", "replay", 4, True, True, 100, "delayed"),  # noqa: E501
    "sac_gemnets": ("sac", "td0", False, True, "broadcast", "replay", 4, True, True, 100, "delayed"),  # noqa: E501
    # GEM less the twin cross-evaluation alone (its gem section differs, below)
    "gem_nocross": ("gem", "tbp", False, True, "broadcast", "episodic", 4, True, True, 200, "bulk"),  # noqa: E501
}  # fmt: skip
PRESETS = {**OLD_PRESETS, **NEW_PRESETS}
ALGOS = tuple(PRESETS)
# What the baselines set outside the algo section (files with `# @package _global_`);
# every other preset leaves the shared sections at OLD_SECTIONS.
SHARED_OVERRIDES = {
    "sac": {
        "collector.init_random_frames": 10_000,
        "memory.capacity": 1_000_000,
        "optim.batch_size": 256,
        "optim.policy_delay": 1,
        "network.hidden_sizes": [256, 256],
    },
    "ddpg": {
        "collector.init_random_frames": 10_000,
        "memory.capacity": 1_000_000,
        "optim.batch_size": 100,
        "optim.actor_lr": 1.0e-3,
        "optim.critic_lr": 1.0e-3,
        "optim.policy_delay": 1,
    },
}
SHARED_OVERRIDES["sac_tbp"] = SHARED_OVERRIDES["sac"]  # sac_tbp extends sac
SHARED_OVERRIDES["sac_gemnets"] = SHARED_OVERRIDES["sac"]  # so does sac_gemnets
SHARED_OVERRIDES["gem_nocross"] = {"gem.cross_evaluation": False}
# The sil section (used by loss=td3_sil only): the released TD3+SIL's settings.
SIL_DEFAULTS = {
    "coeff": 0.1,
    "clip": 1.0,
    "updates_per_batch": 4,
    "batch_size": 128,
    "action_source": "policy",
    "priority_alpha": 0.6,
    "priority_beta": 0.1,
    "min_valid": 64,
    "max_grad_norm": 0.5,
    "scale_by_weight_sum": True,
}

# The other sections of the old gem_mujoco.yaml (memory.refresh_every already renamed).
OLD_SECTIONS = {
    "seed": 0,
    "env": {"name": "Hopper-v5", "max_episode_steps": 1000},
    "collector": {
        "total_frames": 1_000_000,
        "init_random_frames": 25_000,
        "frames_per_batch": 100,
        "exploration_sigma": 0.1,
        "backend": "single",  # scale-out (issue 11): the single collector, as before
        "num_workers": 1,
        "envs_per_worker": 1,
        "ray_address": None,
    },
    "memory": {
        "capacity": 100_000,
        "storage": "tensor",
        "scratch_dir": None,
        "refresh_every": 1,
        "value_chunk_size": 2048,
        "device": "cpu",
    },
    "optim": {
        "batch_size": 128,
        "actor_lr": 3.0e-4,
        "critic_lr": 3.0e-4,
        "gamma": 0.99,
        "tau": 0.005,
        "policy_delay": 2,
        "policy_noise": 0.2,
        "noise_clip": 0.5,
        "num_threads": 1,  # beside other work (benchmarks/threads.py)
        "precision": "bf16",  # the default since the learning-parity check
        "compile": None,
        "critic_max_grad_norm": None,
        "actor_average": None,
    },
    "network": {"hidden_sizes": [400, 300], "init": "glorot", "device": "cpu"},
    "gem": {
        "asymmetry": 0.5,
        "actor_critics": "mean",
        "max_horizon": None,
        "zero_tail": True,
        "floor": "selector",
        "cross_evaluation": True,
    },
    "logger": {
        "backends": ["csv"],
        "project_name": "torchrl-gem",
        "wandb_mode": "offline",
        "run_dir": None,
        "eval_interval": 10_000,
        "eval_episodes": 10,
        "log_interval": 1000,
        "progress_bar": True,
        "plot": True,
        "diagnostics": True,
        "snapshots": False,
    },
    "checkpoint": {"interval": 50_000, "resume": None, "stop_after": None},
}


def check(*overrides: str) -> None:
    recipe_config.check_config(recipe_config.load_config(list(overrides)))


def error_of(*overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        check(*overrides)
    return str(err.value)


# ------------------------------------------------------------------ defaults
@pytest.mark.parametrize("algo", ALGOS)
def test_every_variant_composes_and_passes(algo):
    cfg = recipe_config.load_config([f"algo={algo}"])
    recipe_config.check_config(cfg)
    assert cfg.algo.name == algo  # readable without HydraConfig


@pytest.mark.parametrize("algo", ALGOS)
def test_variant_files_reproduce_the_old_presets(algo):
    cfg = recipe_config.load_config([f"algo={algo}"])
    algo_values = recipe_config.plain(cfg.algo)
    assert algo_values.pop("name") == algo
    assert algo_values == dict(zip(PRESET_KEYS, PRESETS[algo], strict=True))


@pytest.mark.parametrize("algo", ALGOS)
def test_shared_sections_resolve_as_before(algo):
    """Parity: gem, td3 and the ablations resolve every shared value as before the
    baselines were added; sac and ddpg change exactly their listed fields."""
    values = recipe_config.plain(recipe_config.load_config([f"algo={algo}"]))
    assert values.pop("sil") == SIL_DEFAULTS
    del values["algo"]
    expected = recipe_config.flatten(OLD_SECTIONS)
    expected.update(SHARED_OVERRIDES.get(algo, {}))
    assert recipe_config.flatten(values) == expected


def test_other_sections_keep_the_old_defaults():
    values = recipe_config.plain(recipe_config.load_config())
    sections = ["seed", "algo", *list(OLD_SECTIONS)[1:]]
    sections.insert(sections.index("gem") + 1, "sil")
    assert list(values) == sections
    del values["algo"], values["sil"]
    assert values == OLD_SECTIONS


def test_algo_group_holds_exactly_the_variants():
    assert {path.stem for path in (RECIPES / "algo").glob("*.yaml")} == set(ALGOS)


def _algo_values(name: str):
    """The file `algo/<name>.yaml`, its own algo fields, and whether it is global."""
    path = RECIPES / "algo" / f"{name}.yaml"
    own = OmegaConf.load(path)
    is_global = path.read_text().startswith("# @package _global_")
    return own, (own.algo if is_global else own), is_global


def _base_of(own):
    """AlgoConfig merged with the algo fields of the files ``own`` extends."""
    base = OmegaConf.structured(recipe_config.AlgoConfig)
    for parent in own.get("defaults", []):
        if parent != "_self_":
            parent_own, parent_values, _ = _algo_values(parent.removesuffix("@algo"))
            base = OmegaConf.merge(_base_of(parent_own), parent_values)
    return base


@pytest.mark.parametrize("algo", ALGOS)
def test_variant_files_override_only_what_differs(algo):
    """Each value in a file changes its base: AlgoConfig, or the file it extends.

    A file with ``# @package _global_`` holds its algo fields under ``algo:`` and
    may set shared sections, each of which must differ from the schema's default.
    """
    own, algo_values, is_global = _algo_values(algo)
    base = _base_of(own)
    assert algo_values.name == algo
    for key in set(algo_values) - {"name", "defaults"}:
        assert algo_values[key] != base[key], f"{algo}.yaml repeats {key}"
    if is_global:
        schema = OmegaConf.structured(recipe_config.MujocoConfig)
        for section in set(own) - {"algo", "defaults"}:
            for key, value in own[section].items():
                assert value != schema[section][key], f"{algo}.yaml repeats {key}"


def test_readme_command_keeps_its_meaning():
    cfg = recipe_config.load_config(
        "algo=td3 seed=1 collector.total_frames=2000 collector.init_random_frames=500 "
        "network.hidden_sizes=[32,32] logger.eval_interval=500 logger.eval_episodes=2 "
        "logger.log_interval=500 logger.progress_bar=false logger.plot=false "
        "checkpoint.interval=0 optim.num_threads=1 logger.run_dir=/tmp/x".split()
    )
    recipe_config.check_config(cfg)
    assert (cfg.algo.name, cfg.algo.loss, cfg.seed) == ("td3", "td3", 1)
    assert list(cfg.network.hidden_sizes) == [32, 32]
    assert cfg.logger.run_dir == "/tmp/x" and cfg.optim.num_threads == 1
    tuned = recipe_config.load_config(["algo=gem_paired", "algo.updates_per_batch=4"])
    assert (
        tuned.algo.updates_per_batch == 4 and tuned.algo.target_assignment == "paired"
    )


# --------------------------------------------------------- schema conventions
def test_every_schema_field_has_a_comment():
    classes = [
        obj
        for obj in vars(recipe_config).values()
        if dataclasses.is_dataclass(obj) and obj.__name__.endswith("Config")
    ]
    assert len(classes) >= 10
    for cls in classes:
        comments = recipe_config.field_comments(cls)
        for item in dataclasses.fields(cls):
            assert comments.get(item.name), f"{cls.__name__}.{item.name}"


def test_field_comments_join_lines_and_inherit():
    @dataclasses.dataclass
    class Base:
        # one line
        a: int = 1
        b: int = 2  # a trailing comment is not the field's comment
        # first line
        #   and the second
        c: int = 3

    @dataclasses.dataclass
    class Derived(Base):
        # redeclared
        c: int = 4

    assert recipe_config.field_comments(Base) == {
        "a": "one line",
        "c": "first line and the second",
    }
    assert recipe_config.field_comments(Derived) == {"a": "one line", "c": "redeclared"}
    described = recipe_config.describe_fields(Derived)
    assert [(d.name, d.default, d.accepts, d.comment) for d in described] == [
        ("a", 1, "an integer", "one line"),
        ("b", 2, "an integer", ""),
        ("c", 4, "an integer", "redeclared"),
    ]


def test_every_yaml_value_has_a_comment():
    for path in [RECIPES / "gem_mujoco.yaml", *(RECIPES / "algo").glob("*.yaml")]:
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                assert " # " in line, f"{path.name}: {line!r}"


def test_choices_compare_print_and_dump_as_strings():
    cfg = recipe_config.load_config(["algo=td3"])
    loss = cfg.algo.loss
    assert loss is recipe_config.Loss.td3
    assert loss == "td3" and loss in ("td3",) and {"td3": 1}[loss] == 1
    assert str(loss) == f"{loss}" == "td3"
    assert cfg.logger.backends[0] == "csv"
    assert "  loss: td3\n" in OmegaConf.to_yaml(cfg)
    values = recipe_config.plain(cfg)
    assert type(values["algo"]["loss"]) is str
    assert type(values["logger"]["backends"][0]) is str
    assert json.loads(json.dumps(values)) == values
    buffer = io.BytesIO()
    torch.save({"identity": recipe_config.plain(cfg.algo)}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["identity"]["loss"] == "td3"
    for choice in recipe_config.Choice.__subclasses__():
        assert all(member.name == member.value for member in choice), choice


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "overrides, message",
    [
        # a value outside an enum's choices
        (["algo.loss=gemm"], "algo.loss: unknown value 'gemm' (did you mean 'gem'?); "
         "choose one of ['gem', 'td3', 'td3_sil', 'sac', 'ddpg']"),
        (["logger.backends=[csv,mlflow]"], "logger.backends: unknown value 'mlflow'; "
         "choose one of ['csv', 'tensorboard', 'wandb']"),
        (["network.init=xavier"], "network.init: unknown value 'xavier'"),
        # a value of the wrong type
        (["optim.gamma=abc"], "optim.gamma: must be a number in [0.0, 1.0], got 'abc'"),
        (["memory.refresh_every=1.5"],
         "memory.refresh_every: must be an integer > 0, got 1.5"),
        (["algo.memory_noise=maybe"],
         "algo.memory_noise: must be true or false, got 'maybe'"),
        (["optim.num_threads=many"],
         "optim.num_threads: must be an integer > 0 or null, got 'many'"),
        # a key that the schema lacks
        (["optim.gama=0.9"], "optim.gama: unknown field (did you mean 'optim.gamma'?)"),
        (["+optim.extra=1"], "optim.extra: unknown field; optim has ['batch_size'"),
        (["algos.gem.updates_per_batch=4"], "algos: unknown field; the algos table is "
         "now the config group algo"),
        # an unknown variant
        (["algo=gemm"], "algo: unknown value 'gemm' (did you mean 'gem'?); choose one "
         "of ['bp', 'bp_4critics', 'ddpg', 'gem', 'gem_nocross', 'gem_paired', 'sac', "
         "'sac_gemnets', 'sac_tbp', 'td3', 'td3_gemnets', 'td3_sil', 'td3_tbp']"),
        # a value out of its declared range
        (["optim.gamma=1.5"], "optim.gamma: must lie in [0.0, 1.0], got 1.5"),
        (["optim.tau=0"], "optim.tau: must lie in (0.0, 1.0], got 0.0"),
        (["optim.actor_lr=-1e-3"],
         "optim.actor_lr: must lie in (0.0, inf], got -0.001"),
        (["collector.total_frames=0"],
         "collector.total_frames: must be an integer > 0, got 0"),
        (["collector.init_random_frames=-1"],
         "collector.init_random_frames: must be an integer >= 0, got -1"),
        (["seed=-1"], "seed: must be an integer >= 0, got -1"),
        (["checkpoint.stop_after=0"],
         "checkpoint.stop_after: must be an integer > 0, got 0"),
        (["network.hidden_sizes=[32,0]"], "network.hidden_sizes: must be a non-empty "
         "list of integers > 0, got [32, 0]"),
        (["network.hidden_sizes=[]"], "network.hidden_sizes: must be a non-empty "),
        # rules across fields
        (["algo.memory=replay"], "algo.memory: twin back-propagated returns "
         "(returns=tbp) need memory=episodic, got replay"),
        (["algo.num_critics=3"], "algo.num_critics: returns=tbp needs an even number"),
        (["algo=td3_tbp", "algo.num_critics=1"], "algo.num_critics: returns=tbp"),
        (["algo.returns=td0"], "algo.returns: loss=gem (GEMLoss) needs returns=tbp"),
        (["algo=td3", "algo.target_assignment=paired"],
         "algo.target_assignment: paired needs loss=gem"),
        (["algo=sac_tbp", "algo.target_assignment=min"],
         "algo.target_assignment: min needs loss=gem"),
        (["algo=td3_sil", "algo.memory=replay"], "algo.memory: loss=td3_sil reads "
         "Monte-Carlo returns of the stored episodes: it needs memory=episodic"),
        (["algo=td3_sil", "algo.returns=tbp"], "algo.returns: loss=td3_sil keeps the "
         "memory's return column"),
        (["algo=ddpg", "algo.num_critics=2"],
         "algo.num_critics: loss=ddpg (DDPGLoss) has one critic, got 2"),
        (["memory.value_chunk_size=null"], "memory.value_chunk_size: null (the whole "
         "memory in one call) cannot be compiled"),
        (["algo=td3_tbp", "optim.compile=true", "memory.value_chunk_size=null"],
         "memory.value_chunk_size: null"),
        (["sil.coeff=0"], "sil.coeff: must lie in (0.0, inf], got 0"),
        (["sil.action_source=stored"], "sil.action_source: unknown value 'stored'"),
        (["collector.frames_per_batch=200", "memory.capacity=100"],
         "collector.frames_per_batch: a batch of 200 frames does not fit in "
         "memory.capacity=100"),
        (["optim.batch_size=5000", "memory.capacity=1000"],
         "optim.batch_size: 5000 is larger than memory.capacity=1000; use at most"),
        (["logger.backends=[tensorboard]"], "logger.plot: the plot reads the csv logs: "
         "add csv to logger.backends"),
        (["env.name=Hoper-v5"], "env.name: unknown Gymnasium environment 'Hoper-v5'; "
         "did you mean 'Hopper-v5'"),
        (["checkpoint.resume=/no/such/checkpoint.pt"], "checkpoint.resume: no "
         "checkpoint file at '/no/such/checkpoint.pt'"),
    ],
)  # fmt: skip
def test_errors_name_the_field_and_what_is_valid(overrides, message):
    assert error_of(*overrides).startswith(message)


def test_cross_field_rules_allow_what_they_should():
    check("algo=td3", "algo.num_critics=3")  # td0 has no twin halves to split
    check("memory.value_chunk_size=null", "optim.compile=false")  # eager: one call
    check("algo=td3_tbp", "memory.value_chunk_size=null")  # TD3Loss: eager by default
    check("logger.backends=[tensorboard]", "logger.plot=false")
    check(
        "collector.frames_per_batch=100", "optim.batch_size=100", "memory.capacity=100"
    )


@pytest.mark.parametrize(
    "backend, hint", [("wandb", "pip install wandb"), ("tensorboard", "recipes extra")]
)
def test_missing_logger_package_names_it(monkeypatch, backend, hint):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == backend else find_spec(name, *args),
    )
    message = error_of(f"logger.backends=[csv,{backend}]")
    assert message.startswith(
        f"logger.backends: {backend} is selected but the {backend!r} package is not "
        "installed"
    )
    assert hint in message


def test_resume_takes_a_file_or_a_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    resolve = recipe_config.resolve_checkpoint_path
    assert resolve(run_dir) == last and resolve(str(last)) == last
    check(f"checkpoint.resume={run_dir}")
    message = error_of(f"checkpoint.resume={tmp_path}")
    assert message.startswith(
        "checkpoint.resume: no checkpoint file at "
        f"'{tmp_path / 'checkpoints' / 'last.pt'}'"
    )


def test_schema_walk_serves_any_dataclass():
    """The range walk is generic: another recipe's schema gets the same messages."""

    @dataclasses.dataclass
    class Other:
        # a fraction
        share: float = recipe_config.bounded(0.5, low=0.0, high=1.0, open_high=True)
        # a count between 1 and 8
        workers: int = recipe_config.bounded(2, low=1, high=8)
        # the shared sections are reusable as they are
        optim: recipe_config.OptimConfig = dataclasses.field(
            default_factory=recipe_config.OptimConfig
        )

    cfg = OmegaConf.structured(Other)
    recipe_config.check_schema(cfg, Other)
    for key, value, message in [
        ("share", 1.0, "share: must lie in [0.0, 1.0), got 1.0"),
        ("workers", 9, "workers: must be an integer in [1, 8], got 9"),
        ("optim", {"gamma": 2.0}, "optim.gamma: must lie in [0.0, 1.0], got 2.0"),
    ]:
        bad = OmegaConf.merge(cfg, {key: value})
        with pytest.raises(ConfigError, match="^" + re.escape(message)):
            recipe_config.check_schema(bad, Other)


def test_command_line_names_the_key(tmp_path):
    """Through @hydra.main: the schema is found and Hydra's own errors name keys."""
    script = tmp_path / "probe.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(RECIPES)!r})
            import hydra
            import config

            @hydra.main(version_base="1.3", config_path={str(RECIPES)!r},
                        config_name="gem_mujoco")
            def main(cfg):
                config.check_config(cfg)
                print("algo", cfg.algo.name, cfg.algo.loss)

            main()
            """
        )
    )

    def run(*overrides):
        return subprocess.run(
            [sys.executable, str(script), *overrides, f"hydra.run.dir={tmp_path}"],
            capture_output=True,
            text=True,
            timeout=120,
        )

    good = run("algo=td3_tbp")
    assert good.returncode == 0 and "algo td3_tbp td3" in good.stdout, good.stderr
    bad = run("algo.loss=gemm")
    assert bad.returncode != 0
    assert "full_key: algo.loss" in bad.stderr and "gem, td3" in bad.stderr
