"""Typed configuration of the Atari recipe (``gem_atari.py``): Hydra structured configs.

The shared sections (logger, checkpoint, and the collector's common fields) are
``config.py``'s dataclasses, with Atari defaults where they differ; the
sections whose meaning is Atari's own (env, memory, optim, explore, algo) are
declared here with the same conventions: every field typed, commented and ranged.
The defaults are the released Atari code's (``gem-algorithm.md`` s4), except where a
comment says otherwise.

Frames: ``collector.*`` counts agent steps, as TorchRL's collectors do; with
``env.frame_skip=4`` each is 4 emulator frames (the paper's "10M frames" are
emulator frames, 2.5M agent steps).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from config import (
    CheckpointConfig,
    Choice,
    CollectorConfig,
    ConfigError,
    LoggerConfig,
    Precision,
    Storage,
    bounded,
    check_device,
    check_env_name,
    check_schema,
    check_shared_rules,
    load_config,
    non_negative,
    positive,
)

ATARI_DIR = Path(__file__).resolve().parent / "atari"  # gem_atari.yaml, algo/
ATARI_CONFIG = "gem_atari"  # the primary config file, recipes/atari/gem_atari.yaml
ATARI_SCHEMA = "gem_atari_schema"  # AtariConfig's name in Hydra's ConfigStore
EXTRA_HINT = 'pip install -e ".[atari]"'

__all__ = [
    "AtariAlgoConfig",
    "AtariCollectorConfig",
    "AtariConfig",
    "AtariEnvConfig",
    "AtariLoss",
    "AtariLoggerConfig",
    "AtariMemoryConfig",
    "AtariNetworkConfig",
    "AtariOptimConfig",
    "ExploreConfig",
    "MetaLoss",
    "SubLoss",
    "check_atari_config",
    "check_atari_env",
    "load_atari_config",
]


class AtariLoss(Choice):
    gem = "gem"  # torchrl_gem.GEMDQNLoss: 4 sub + 2 meta Nature-CNN Q-networks
    dqn = "dqn"  # torchrl.objectives.DQNLoss (double_dqn for DDQN)


class SubLoss(Choice):
    smooth_l1 = "smooth_l1"  # Huber, delta 1 (released)
    l2 = "l2"  # squared error


class MetaLoss(Choice):
    huber = "huber"  # the standard Huber, delta 1
    released_huber = "released_huber"  # released: u^2 within 1, 0.5 + |u| beyond


class Reduction(Choice):
    sum = "sum"  # summed over the batch (released)
    mean = "mean"  # averaged over the batch (TorchRL's losses' default)


# ---------------------------------------------------------------------------
# Shared sections with Atari defaults
# ---------------------------------------------------------------------------
@dataclass
class AtariCollectorConfig(CollectorConfig):
    """Interaction: torchrl.collectors.Collector; counts agent steps.

    ``exploration_sigma`` is unused here (``explore`` holds epsilon-greedy), and the
    Atari recipe runs one environment in a single-process collector.
    """

    # agent steps of the run (2.5M = the paper's 10M emulator frames at frame skip 4)
    total_frames: int = positive(2_500_000)
    # uniform random actions before learning starts (released: 2,000)
    init_random_frames: int = non_negative(2_000)
    # agent steps per cycle (released timesteps=500: 25 updates per 500 steps)
    frames_per_batch: int = positive(500)


@dataclass
class AtariLoggerConfig(LoggerConfig):
    """Logs, evaluation (raw game scores), progress, plot."""

    # agent steps between evaluations (released: every 50,000-step cycle)
    eval_interval: int = positive(50_000)
    # episodes per evaluation (released: 5), epsilon-greedy with explore.eps_eval
    eval_episodes: int = positive(5)


# ---------------------------------------------------------------------------
# Atari sections
# ---------------------------------------------------------------------------
@dataclass
class AtariEnvConfig:
    """The ALE game and DQN's standard preprocessing (overrides the id's defaults)."""

    # Gymnasium ALE id, e.g. ALE/Frostbite-v5 (paper: Alien, BattleZone, Frostbite,
    # MsPacman, WizardOfWor, Zaxxon)
    name: str = "ALE/Frostbite-v5"
    # emulator frames per agent step, max-pooled over the last two (v5 default: 4;
    # released: 4, the last frame kept)
    frame_skip: int = positive(4)
    # sticky actions (v5 default 0.25); 0 = deterministic emulator, as released
    repeat_action_probability: float = bounded(0.0, low=0.0, high=1.0)
    # random no-ops at reset, up to this many (0 = fixed start, as released; DQN: 30)
    noop_max: int = non_negative(0)
    # grayscale frames resized to screen_size x screen_size (INTER_AREA)
    screen_size: int = positive(84)
    # frames per stacked observation (TorchRL CatFrames)
    frame_stack: int = positive(4)
    # agent steps per episode (27,000 = 108k emulator frames); reaching it truncates
    max_episode_steps: int = positive(27_000)
    # learn from rewards clipped to [-1, 1]; logs and evaluations keep raw scores
    clip_rewards: bool = True


@dataclass
class AtariMemoryConfig:
    """Replay: torchrl_gem.FrameEpisodicMemory (one 84x84 frame per transition)."""

    # transitions kept (FIFO by whole episodes; released: 1M)
    capacity: int = positive(1_000_000)
    # tensor (RAM) | memmap (disk-backed, under scratch_dir)
    storage: Storage = Storage.tensor
    # folder of the memmap storage; null = a temporary folder
    scratch_dir: str | None = None
    # next states per target-network call in a refresh (bounds the rebuilt stacks)
    value_chunk_size: int = positive(512)
    # cpu | cuda | cuda:<n> of a tensor storage: where the frames are kept and the
    # stacks rebuilt (a refresh moves them to network.device a chunk at a time)
    device: str = "cpu"


@dataclass
class AtariNetworkConfig:
    """Where the Q-networks learn."""

    # cpu | cuda | cuda:<n>: Q-networks, losses, gradient steps and evaluation (the
    # collector acts with a CPU copy of the policy, synced every batch)
    device: str = "cpu"


@dataclass
class AtariOptimConfig:
    """Gradient steps, CPU threads, precision."""

    # transitions per gradient step, sampled uniformly with replacement
    batch_size: int = positive(32)
    # Adam learning rate of every Q-network (released run_gem.sh: 2e-4)
    lr: float = positive(2.0e-4)
    # Adam epsilon (released: 1.5e-4)
    adam_eps: float = positive(1.5e-4)
    # every loss over the batch: sum (released: lr and adam_eps were set at its
    # gradient scale) | mean (gradients batch_size times smaller, more of them
    # below adam_eps)
    loss_reduction: Reduction = Reduction.sum
    # discount factor
    gamma: float = bounded(0.99, low=0.0, high=1.0)
    # global gradient-norm clip; null = none (released: none)
    max_grad_norm: float | None = positive(None)
    # torch CPU threads for updates and refreshes; 1 holds beside other work (a 2nd
    # gains <= 1.4x idle, loses 9x under load: benchmarks/threads.py); null = all
    # cores of this process
    num_threads: int | None = positive(1)
    # fp32 | bf16: bf16 autocast for the gradient steps and the refresh (acting
    # stays fp32), fp32 weights and Adam (parity on a trained run:
    # docs/performance.md); fp32 (logged) where bf16 is not fast
    precision: Precision = Precision.bf16
    # torch.compile GEM-DQN's loss in the gradient steps and the refresh's target
    # pass (~1 min to compile, eager where it fails); null = on for algo.loss=gem
    # (DQNLoss measured slower compiled)
    compile: bool | None = None


@dataclass
class ExploreConfig:
    """Epsilon-greedy acting (TorchRL EGreedyModule), annealed linearly."""

    # epsilon at the first step
    eps_init: float = bounded(1.0, low=0.0, high=1.0)
    # epsilon after annealing_frames (released: 0.1)
    eps_end: float = bounded(0.1, low=0.0, high=1.0)
    # agent steps of the linear anneal (released: 1M)
    annealing_frames: int = positive(1_000_000)
    # epsilon of the evaluation episodes (released test_eps: 0.05)
    eps_eval: float = bounded(0.05, low=0.0, high=1.0)


@dataclass
class AtariAlgoConfig:
    """An algorithm variant; the defaults are GEM as released (atari/algo/gem.yaml)."""

    # the variant, equal to its file name in recipes/atari/algo/ (run dirs, logs)
    name: str = "gem"
    # gem (GEMDQNLoss, memory returns) | dqn (TorchRL's DQNLoss, one-step targets)
    loss: AtariLoss = AtariLoss.gem
    # loss=dqn: double DQN (online argmax, target value); the ddqn variant
    double_dqn: bool = False
    # gradient steps per collected batch (released: 25)
    updates_per_batch: int = positive(25)
    # gradient steps between hard target copies (and, for gem, full memory refreshes)
    target_update_interval: int = positive(8_000)
    # elementwise loss of the sub networks (gem) or of the Q-network (dqn)
    loss_function: SubLoss = SubLoss.smooth_l1
    # gem: loss of the meta networks on the memory returns (released: released_huber)
    meta_loss: MetaLoss = MetaLoss.huber
    # gem: weight where a meta net is below its target (released alpha: 1)
    underestimation_weight: float = positive(1.0)
    # gem: factor on the meta loss; null = 10 for released_huber, else 1
    meta_loss_weight: float | None = positive(None)
    # gem: sub networks, two twin groups of halves (released: 4)
    num_sub_nets: int = positive(4)


@dataclass
class AtariConfig:
    """GEM and its DQN baselines on Atari (recipes/gem_atari.py)."""

    # seeds everything: envs, network init, exploration, memory sampling, evaluation
    seed: int = non_negative(0)
    # the variant: a file of recipes/atari/algo/ (algo=dqn), fields as algo.<f>=...
    algo: AtariAlgoConfig = field(default_factory=AtariAlgoConfig)
    # the ALE game and its preprocessing
    env: AtariEnvConfig = field(default_factory=AtariEnvConfig)
    # interaction: torchrl.collectors.Collector
    collector: AtariCollectorConfig = field(default_factory=AtariCollectorConfig)
    # replay: torchrl_gem.FrameEpisodicMemory
    memory: AtariMemoryConfig = field(default_factory=AtariMemoryConfig)
    # the learner's device
    network: AtariNetworkConfig = field(default_factory=AtariNetworkConfig)
    # gradient steps, CPU threads
    optim: AtariOptimConfig = field(default_factory=AtariOptimConfig)
    # epsilon-greedy acting
    explore: ExploreConfig = field(default_factory=ExploreConfig)
    # logs, evaluation, progress, plot
    logger: AtariLoggerConfig = field(default_factory=AtariLoggerConfig)
    # save / resume / stop
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


ConfigStore.instance().store(name=ATARI_SCHEMA, node=AtariConfig)


# ---------------------------------------------------------------------------
# Checks and composition
# ---------------------------------------------------------------------------
def _require(condition: bool, field_path: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field_path}: {message}")


def check_atari_env(name: str, field_path: str = "env.name") -> None:
    """``name`` must be an ALE id of the installed ale-py; the extra must be there."""
    missing = [
        module
        for module in ("ale_py", "cv2")
        if importlib.util.find_spec(module) is None
    ]
    _require(
        not missing,
        field_path,
        f"Atari games need the atari extra ({', '.join(missing)} not installed): "
        f"{EXTRA_HINT}",
    )
    import ale_py
    import gymnasium

    gymnasium.register_envs(ale_py)
    check_env_name(name, field_path)
    entry = str(gymnasium.envs.registry[name].entry_point)
    _require(
        "ale_py" in entry,
        field_path,
        f"{name!r} is not an Atari (ale-py) game; use an ALE id such as "
        "ALE/Frostbite-v5",
    )


def check_atari_config(cfg: DictConfig) -> None:
    """All checks of a composed Atari config; raises ``ConfigError``."""
    check_schema(cfg, AtariConfig)
    algo = cfg.algo
    _require(
        algo.target_update_interval % algo.updates_per_batch == 0,
        "algo.target_update_interval",
        f"{algo.target_update_interval} gradient steps is not a whole number of "
        f"batches of algo.updates_per_batch={algo.updates_per_batch}; use a "
        "multiple of it",
    )
    _require(
        not algo.double_dqn or algo.loss == AtariLoss.dqn,
        "algo.double_dqn",
        f"double DQN is a form of loss=dqn, got loss={algo.loss}",
    )
    _require(
        algo.num_sub_nets >= 2 and algo.num_sub_nets % 2 == 0,
        "algo.num_sub_nets",
        f"must be even (two twin groups), got {algo.num_sub_nets}",
    )
    _require(
        cfg.explore.eps_end <= cfg.explore.eps_init,
        "explore.eps_end",
        f"{cfg.explore.eps_end} is above explore.eps_init={cfg.explore.eps_init}",
    )
    backend = cfg.collector.get("backend", "single")
    _require(
        str(backend) == "single",
        "collector.backend",
        f"the Atari recipe runs the single-process collector only, got {backend}",
    )
    for name in ("num_workers", "envs_per_worker"):
        value = cfg.collector.get(name, 1)
        _require(
            value == 1,
            f"collector.{name}",
            f"the Atari recipe steps one environment, got {value}",
        )
    check_device(cfg.network.device, "network.device")
    memory = check_device(cfg.memory.device, "memory.device")
    _require(
        cfg.memory.storage != Storage.memmap or memory.type == "cpu",
        "memory.device",
        "a memmap storage lives on disk (cpu); use memory.storage=tensor for a CUDA "
        "memory",
    )
    check_shared_rules(cfg)
    check_atari_env(cfg.env.name)


def load_atari_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose ``recipes/atari/gem_atari.yaml`` with command-line style overrides."""
    return load_config(overrides, ATARI_CONFIG, AtariConfig, config_dir=ATARI_DIR)
