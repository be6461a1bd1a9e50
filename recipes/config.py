"""Typed configuration of the GEM recipes: Hydra structured configs.

Every section of a recipe's config is a dataclass below: each field has its type, its
default, a one-line comment and, where a number has limits, its range (``bounded``).
Hydra composes the primary config (``gem_mujoco.yaml``: this schema, one file of the
``algo`` group, Hydra's settings) with the command line; OmegaConf then rejects a value
of the wrong type, a string outside an ``Enum``'s choices and an unknown key. What
OmegaConf cannot see is checked by ``check_config``: the declared ranges and stray
keys (one generic walk over the schema, ``check_schema``) and the few rules that span
several fields. Every error is a ``ConfigError`` whose message starts with the field
it is about and says what would be valid.

Shared sections (collector, logger, checkpoint, and the rules of
``check_shared_rules``) are meant for every recipe; env, network, memory, optim, gem,
sil and algo are the MuJoCo recipe's (the Atari recipe declares its own). A file of
the ``algo`` group may also set shared fields (``# @package _global_``: the
baselines' batch sizes, widths, learning rates and warm-ups); the command line still
overrides them.

Choices are ``Choice`` enums: a member equals its string (``cfg.algo.loss == "gem"``),
hashes as it (``BUILDERS[cfg.algo.loss]``) and prints as it (``f"{cfg.algo.loss}"``).
``OmegaConf.to_yaml`` writes plain strings; ``OmegaConf.to_container`` keeps the enum
members, so use ``plain(cfg)`` for anything pickled (checkpoints load with
``weights_only=True``) or handed to other libraries.

Cost of the MuJoCo defaults (CPU recipe, measured by ``benchmarks/cycle.py``): the
full 1M-frame GEM budget takes about 8 h of one CPU thread in the default bf16 (13 h
in fp32; per 100 frames, 200 gradient steps and a refresh of up to 100k stored
states); TD3 about 3.4 h.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import inspect
import math
import os
import re
import textwrap
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from torchrl_gem import precision

HERE = Path(__file__).resolve().parent
MUJOCO_CONFIG = "gem_mujoco"  # the primary config file, recipes/gem_mujoco.yaml
MUJOCO_SCHEMA = "gem_mujoco_schema"  # MujocoConfig's name in Hydra's ConfigStore

__all__ = [
    "ActorCritics",
    "AlgoConfig",
    "Backend",
    "CheckpointConfig",
    "Choice",
    "CollectorBackend",
    "CollectorConfig",
    "ConfigError",
    "EnvConfig",
    "FieldDoc",
    "Floor",
    "GemConfig",
    "Init",
    "LoggerConfig",
    "Loss",
    "MemoryConfig",
    "MemoryKind",
    "MujocoConfig",
    "NetworkConfig",
    "OptimConfig",
    "Precision",
    "Range",
    "Returns",
    "SilAction",
    "SilConfig",
    "Storage",
    "TargetAssignment",
    "TargetUpdate",
    "WandbMode",
    "bounded",
    "check_algo",
    "check_config",
    "check_env_name",
    "check_schema",
    "config_error",
    "check_shared_rules",
    "describe_fields",
    "field_comments",
    "load_config",
    "non_negative",
    "plain",
    "positive",
    "register_configs",
    "resolve_checkpoint_path",
]


class ConfigError(ValueError):
    """An impossible or unknown setting; the message starts with the field name."""


def _require(condition: bool, field_path: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field_path}: {message}")


def _unknown(value: Any, choices) -> str:
    choices = [str(choice) for choice in choices]
    hint = difflib.get_close_matches(str(value), choices, n=1)
    maybe = f" (did you mean {hint[0]!r}?)" if hint else ""
    return f"unknown value {str(value)!r}{maybe}; choose one of {choices}"


# ---------------------------------------------------------------------------
# Choices: string enums (OmegaConf rejects any other value, naming the key)
# ---------------------------------------------------------------------------
class Choice(str, Enum):
    """A closed set of strings; a member equals, hashes and prints as its string.

    Members are named as their values (OmegaConf converts a string by name).
    """

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Loss(Choice):
    gem = "gem"  # torchrl_gem.GEMLoss
    td3 = "td3"  # torchrl.objectives.TD3Loss
    td3_sil = "td3_sil"  # TD3Loss plus torchrl_gem.SelfImitationLoss steps
    sac = "sac"  # torchrl.objectives.SACLoss (no value network), TanhNormal actor
    ddpg = "ddpg"  # torchrl.objectives.DDPGLoss, one critic


class Returns(Choice):
    tbp = "tbp"  # twin back-propagated memory returns
    td0 = "td0"  # TD3's one-step target


class TargetAssignment(Choice):
    broadcast = "broadcast"  # every critic regresses on both columns (released)
    paired = "paired"  # each twin group on its own column (paper)
    min = "min"  # every critic on the smaller column (conservative, not the paper's)


class MemoryKind(Choice):
    episodic = "episodic"  # torchrl_gem.EpisodicMemory, refreshed
    replay = "replay"  # a plain TorchRL replay buffer


class TargetUpdate(Choice):
    bulk = "bulk"  # one SoftUpdate per batch, tau_eff = 1-(1-tau)^G
    delayed = "delayed"  # a SoftUpdate after every actor step


class Storage(Choice):
    tensor = "tensor"  # in RAM
    memmap = "memmap"  # disk-backed, under memory.scratch_dir


class Init(Choice):
    glorot = "glorot"  # TF's Glorot-uniform weights + zero biases, as the reference
    torch = "torch"  # PyTorch's defaults


class ActorCritics(Choice):
    mean = "mean"  # the actor maximises the mean of all critics (released code)
    first = "first"  # the actor maximises critic 0 (TD3)


class Floor(Choice):
    selector = "selector"  # a column's one-step floor is the selector's (released)
    own = "own"  # each column's own one-step floor (the paper's text)


class Backend(Choice):
    csv = "csv"  # torchrl CSVLogger; the plot reads it
    tensorboard = "tensorboard"  # needs the tensorboard package
    wandb = "wandb"  # needs the wandb package


class CollectorBackend(Choice):
    single = "single"  # torchrl.collectors.Collector in the learner's process
    process = "process"  # MultiSyncCollector: one process per worker
    ray = "ray"  # RayCollector: one Ray actor per worker (needs the ray extra)


class WandbMode(Choice):
    online = "online"
    offline = "offline"
    disabled = "disabled"


class Precision(Choice):
    fp32 = "fp32"
    bf16 = "bf16"


class SilAction(Choice):
    policy = "policy"  # Q(s, pi(s)), a value of the state (released TD3+SIL)
    data = "data"  # Q(s, a) at the stored action, the one that earned the return R


# ---------------------------------------------------------------------------
# Ranges, declared next to the fields
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """The allowed values of a number (of every item, for a list of numbers)."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    min_items: int = 0  # lists only: the fewest items allowed

    def contains(self, value: float) -> bool:
        above = self.low < value if self.open_low else self.low <= value
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def condition(self, integer: bool) -> str:
        """``> 0`` / ``<= 8`` (integers), else the interval: ``in [0.0, 1.0]``."""
        cast = (lambda b: int(b) if math.isfinite(b) else b) if integer else float
        low, high = cast(self.low), cast(self.high)
        if integer and self.high == math.inf and self.low > -math.inf:
            return f"{'>' if self.open_low else '>='} {low}"
        if integer and self.low == -math.inf and self.high < math.inf:
            return f"{'<' if self.open_high else '<='} {high}"
        left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
        return f"in {left}{low}, {high}{right}"


def bounded(
    default: Any,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    open_low: bool = False,
    open_high: bool = False,
    min_items: int = 0,
) -> Any:
    """A dataclass field whose value (or every item of it) must lie in a range.

    ``check_schema`` reads the range from the field's metadata; ``None`` (an
    optional field left unset) is not checked. A list default is copied per instance.
    """
    metadata = {"range": Range(low, high, open_low, open_high, min_items)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def positive(default: Any) -> Any:
    """A number > 0 (an integer field reads ``must be an integer > 0``)."""
    return bounded(default, low=0, open_low=True)


def non_negative(default: Any) -> Any:
    """A number >= 0."""
    return bounded(default, low=0)


# ---------------------------------------------------------------------------
# Shared sections (every recipe)
# ---------------------------------------------------------------------------
@dataclass
class CollectorConfig:
    """Interaction: torchrl.collectors.Collector."""

    # environment steps of the run (paper: 1M; README demo: 20k)
    total_frames: int = positive(1_000_000)
    # uniform random actions before learning starts (learning_starts)
    init_random_frames: int = non_negative(25_000)
    # env steps per cycle: target update -> memory refresh -> gradient steps
    frames_per_batch: int = positive(100)
    # Gaussian exploration std in normalised action units (times the action half-range)
    exploration_sigma: float = bounded(0.1, low=0.0)
    # single (this process) | process (MultiSyncCollector) | ray (RayCollector);
    # process/ray resume inexactly: a resumed run starts new episodes (warned)
    backend: CollectorBackend = CollectorBackend.single
    # collector workers (processes or Ray actors); single: 1
    num_workers: int = positive(1)
    # environments per worker, stepped in series (SerialEnv); frames split evenly
    envs_per_worker: int = positive(1)
    # Ray cluster to join (ray.init address, e.g. auto); null = the running or a
    # new local Ray instance
    ray_address: str | None = None


@dataclass
class MemoryConfig:
    """Replay: torchrl_gem.EpisodicMemory (or a plain buffer for td3)."""

    # transitions kept (FIFO by whole episodes for the episodic memory)
    capacity: int = positive(100_000)
    # tensor (RAM) | memmap (disk-backed, under scratch_dir)
    storage: Storage = Storage.tensor
    # folder of the memmap storage; null = a temporary folder
    scratch_dir: str | None = None
    # collector batches between two refreshes of every stored return (1 = as released)
    refresh_every: int = positive(1)
    # states per target-network call in a refresh (bounds RAM, keeps caches warm);
    # null = all in one call (eager only: optim.compile=false)
    value_chunk_size: int | None = positive(2048)
    # cpu | cuda | cuda:<n> of a tensor storage; an episodic memory (refreshed by
    # the target networks) must sit on network.device
    device: str = "cpu"


@dataclass
class OptimConfig:
    """Gradient steps, targets, CPU threads, precision, compilation."""

    # transitions per gradient step, sampled uniformly with replacement
    batch_size: int = positive(128)
    # Adam learning rate of the actor
    actor_lr: float = positive(3.0e-4)
    # Adam learning rate of the critics (one optimiser over all of them)
    critic_lr: float = positive(3.0e-4)
    # discount factor
    gamma: float = bounded(0.99, low=0.0, high=1.0)
    # Polyak weight per gradient step (bulk mode applies 1-(1-tau)^G once per cycle)
    tau: float = bounded(0.005, low=0.0, high=1.0, open_low=True)
    # critic steps per actor step
    policy_delay: int = positive(2)
    # target smoothing noise std, normalised action units (times the half-range)
    policy_noise: float = bounded(0.2, low=0.0)
    # clip of the target smoothing noise, normalised action units
    noise_clip: float = bounded(0.5, low=0.0)
    # torch CPU threads for updates and refreshes; 1 holds beside other work (a 2nd
    # gains <= 1.5x idle, loses 7-50x under load: benchmarks/threads.py); null = all
    # cores of this process (in a joblib sweep: cores // hydra.launcher.n_jobs)
    num_threads: int | None = positive(1)
    # network passes (gradient steps, refresh) in bf16 autocast, fp32 master weights
    # (learning parity: docs/results/README.md); fp32 (logged) where bf16 is not fast
    precision: Precision = Precision.bf16
    # torch.compile the gradient steps' loss calls and the refresh's target pass
    # (~30 s to compile; eager where it fails); null = on for algo.loss=gem, where
    # it measured faster, off for TorchRL's losses (TD3Loss measured slower)
    compile: bool | None = None
    # clip the critics' gradient 2-norm to this before each step; null = no clip
    critic_max_grad_norm: float | None = positive(None)
    # evaluate an exponential moving average of the actor's weights, this decay per
    # collected batch (torchrl_gem.trainer.PolicyAverageHook), and the online actor
    # as eval_online/* on the same episodes; null = the actor alone
    actor_average: float | None = bounded(None, low=0.0, high=1.0, open_high=True)


@dataclass
class LoggerConfig:
    """Logs, evaluation, progress, plot."""

    # any of csv, tensorboard, wandb (torchrl.record.loggers); the plot reads csv
    backends: list[Backend] = field(default_factory=lambda: [Backend.csv])
    # W&B project
    project_name: str = "torchrl-gem"
    # W&B mode: online | offline | disabled
    wandb_mode: WandbMode = WandbMode.offline
    # outputs (logs, checkpoints, plot); null = Hydra's run dir (or the resumed run's)
    run_dir: str | None = None
    # frames between deterministic evaluations (paper: 10k)
    eval_interval: int = positive(10_000)
    # episodes per evaluation (released GEM ran 11 by an off-by-one, baselines 10)
    eval_episodes: int = positive(10)
    # frames between two logs of training losses
    log_interval: int = non_negative(1000)
    # tqdm bar: frames, episode return, last evaluation, frames/s
    progress_bar: bool = True
    # write curves.png (evaluation return vs frames) into the run dir at the end
    plot: bool = True
    # MuJoCo: log the memory's targets (memory/*), the gradient norms and how often
    # the evaluated actor acts at its bounds (eval/action_saturation); cheap
    diagnostics: bool = True
    # MuJoCo: save the actor's weights at every evaluation (<run_dir>/actors/
    # frame<N>.pt), to evaluate them again with more episodes
    # (recipes/analysis/reevaluate.py)
    snapshots: bool = False


@dataclass
class CheckpointConfig:
    """Save / resume / stop."""

    # frames between periodic checkpoints (0 = only at the end and on SIGINT/SIGTERM)
    interval: int = non_negative(50_000)
    # checkpoint file (or run dir) to continue, must match its env/algo/seed; auto =
    # logger.run_dir's own checkpoint if any (re-launched sweeps: skip or resume)
    resume: str | None = None
    # checkpoint and stop once this many frames are collected (time-sliced jobs)
    stop_after: int | None = positive(None)


# ---------------------------------------------------------------------------
# MuJoCo sections
# ---------------------------------------------------------------------------
@dataclass
class EnvConfig:
    """The Gymnasium task."""

    # Ant/HalfCheetah/Humanoid/Walker2d/Hopper/Swimmer-v5 (paper: -v2, other obs)
    name: str = "Hopper-v5"
    # time limit; reaching it is a truncation (bootstrapped), not a termination
    max_episode_steps: int = positive(1000)


@dataclass
class NetworkConfig:
    """Actor and critic MLPs (LayerNorm etc. per algo)."""

    # hidden widths of the actor and of every critic
    hidden_sizes: list[int] = bounded([400, 300], low=0, open_low=True, min_items=1)
    # glorot (TF's Glorot-uniform + zero bias, as the reference) | torch (defaults)
    init: Init = Init.glorot
    # cpu | cuda | cuda:<n>: networks, losses and gradient steps (the collector
    # steps its envs and a policy copy on the CPU)
    device: str = "cpu"


@dataclass
class GemConfig:
    """GEM's loss and memory-return options."""

    # alpha of the asymmetric loss: overestimation weighs 1/alpha, underestimation alpha
    asymmetry: float = bounded(0.5, low=0.0, high=1.0, open_low=True)
    # the actor maximises the mean of all critics (released code) | first (TD3)
    actor_critics: ActorCritics = ActorCritics.mean
    # rollout cap H; null = episode end (as released; a set H costs O(T*H))
    max_horizon: int | None = positive(None)
    # also offer the bootstrap-free reward-to-go candidate (released: its sentinel row)
    zero_tail: bool = True
    # one-step floor of a column: selector's (released MuJoCo code) | own (paper text)
    floor: Floor = Floor.selector
    # a pair's best horizon valued by the other pair (GEM) | false: by itself (ablation)
    cross_evaluation: bool = True


@dataclass
class SilConfig:
    """The self-imitation term of loss=td3_sil (torchrl_gem.sil); unused otherwise.

    The defaults are the released TD3+SIL's (common/self_imitation.py, td3_sil.py).
    """

    # weight of the term (released: 0.1)
    coeff: float = positive(0.1)
    # clip of the advantage R - Q; null = none (released: 1)
    clip: float | None = positive(1.0)
    # SIL gradient steps per collected batch, after the TD3 steps (released: 4)
    updates_per_batch: int = positive(4)
    # transitions per SIL step (released: TD3's batch, 128)
    batch_size: int = positive(128)
    # critics evaluated at policy (Q(s, pi(s)), released) | data (the stored action)
    action_source: SilAction = SilAction.policy
    # prioritized sampling exponent, priority = clipped advantage (0 = uniform)
    priority_alpha: float = non_negative(0.6)
    # importance-weight exponent of the prioritized sampling
    priority_beta: float = non_negative(0.1)
    # the loss is summed over the batch and divided by max(#(R > Q), min_valid)
    min_valid: int = positive(64)
    # global gradient-norm clip of a SIL step; null = none (released: 0.5)
    max_grad_norm: float | None = positive(0.5)
    # gradient times the sum of importance weights, as the released graph computed it
    scale_by_weight_sum: bool = True


@dataclass
class AlgoConfig:
    """An algorithm variant; the defaults are GEM as released (recipes/algo/gem.yaml).

    Each file of recipes/algo/ overrides only what differs from its base.
    """

    # the variant, equal to its file name in recipes/algo/ (run dirs, logs)
    name: str = "gem"
    # loss builder: gem (GEMLoss) | td3 (TD3Loss) | td3_sil (TD3Loss + SIL) | sac | ddpg
    loss: Loss = Loss.gem
    # critic target: tbp (twin back-propagated memory returns) | td0 (TD3's one-step)
    returns: Returns = Returns.tbp
    # BP ablation: min over all critics in both columns, no cross-evaluation
    single_estimator: bool = False
    # smoothing noise on the memory's target actions: true (GEM) | false (released BP)
    memory_noise: bool = True
    # GEMLoss: every critic on both columns (released) | paired (paper) | min (the
    # smaller column for every critic: a conservative variant)
    target_assignment: TargetAssignment = TargetAssignment.broadcast
    # episodic (torchrl_gem.EpisodicMemory, refreshed) | replay (plain TorchRL buffer)
    memory: MemoryKind = MemoryKind.episodic
    # critics; twin groups are the two halves
    num_critics: int = positive(4)
    # LayerNorm in the actor and critics
    layer_norm: bool = True
    # critics concatenate the action again after the first layer
    reinject_action: bool = True
    # gradient steps per collected batch (critic update-to-data ratio 2)
    updates_per_batch: int = positive(200)
    # bulk (one SoftUpdate per batch, tau_eff=1-(1-tau)^G) | delayed (per actor step)
    target_update: TargetUpdate = TargetUpdate.bulk


@dataclass
class MujocoConfig:
    """GEM on Gymnasium MuJoCo (recipes/gem_mujoco.py)."""

    # seeds everything: envs, network init, exploration/smoothing noise, memory, eval
    seed: int = non_negative(0)
    # the variant: a file of recipes/algo/ (algo=td3), fields as algo.<field>=...
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    # the Gymnasium task
    env: EnvConfig = field(default_factory=EnvConfig)
    # interaction: torchrl.collectors.Collector
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    # replay: torchrl_gem.EpisodicMemory (or a plain buffer, algo.memory=replay)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    # gradient steps, targets, CPU threads, precision, compilation
    optim: OptimConfig = field(default_factory=OptimConfig)
    # actor and critic MLPs
    network: NetworkConfig = field(default_factory=NetworkConfig)
    # GEM's loss and memory-return options
    gem: GemConfig = field(default_factory=GemConfig)
    # the self-imitation term of algo.loss=td3_sil
    sil: SilConfig = field(default_factory=SilConfig)
    # logs, evaluation, progress, plot
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # save / resume / stop
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (primary configs list them first)."""
    ConfigStore.instance().store(name=MUJOCO_SCHEMA, node=MujocoConfig)


register_configs()


# ---------------------------------------------------------------------------
# The schema as data: field lookup, expectations in words, one generic walk
# ---------------------------------------------------------------------------
def _fields(schema: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(schema)
    return [(item, hints[item.name]) for item in dataclasses.fields(schema)]


def _is_schema(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if type(None) in args:
        (inner,) = [arg for arg in args if arg is not type(None)]
        return inner, True
    return hint, False


def _lookup(schema: type, path: str) -> tuple[dataclasses.Field, Any] | None:
    """The field and type hint at ``a.b.c`` (list indices ignored), or None."""
    found = None
    for name in re.sub(r"\[[^\]]*\]", "", path).split("."):
        if not _is_schema(schema):
            return None
        found = next(((f, h) for f, h in _fields(schema) if f.name == name), None)
        if found is None:
            return None
        schema = found[1]
    return found


def _choices(hint: Any) -> list[str] | None:
    """The values of an Enum field (or of a list of them), else None."""
    hint, _ = _unwrap_optional(hint)
    if typing.get_origin(hint) is list:
        (hint,) = typing.get_args(hint)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return [member.value for member in hint]
    return None


def _expectation(hint: Any, bound: Range | None) -> str:
    """What a field accepts, in words: ``an integer > 0``, ``true or false``..."""
    hint, optional = _unwrap_optional(hint)
    cond = lambda integer: f" {bound.condition(integer)}" if bound else ""  # noqa: E731
    choices = _choices(hint)
    if typing.get_origin(hint) is list:  # list[int] (sizes) or list[Choice]
        size = "non-empty " if bound is not None and bound.min_items else ""
        if choices is not None:
            text = f"a list of values from {choices}"
        else:
            text = f"a {size}list of integers{cond(True)}"
    elif choices is not None:
        text = f"one of {choices}"
    elif hint is bool:
        text = "true or false"
    elif hint is int:
        text = f"an integer{cond(True)}"
    elif hint is float:
        text = f"a number{cond(False)}"
    elif hint is str:
        text = "a string"
    elif _is_schema(hint):
        text = f"a mapping of {[item.name for item in dataclasses.fields(hint)]}"
    else:
        text = f"a {hint}"
    return f"{text} or null" if optional else text


def field_comments(schema: type) -> dict[str, str]:
    """``{field: its comment}``: the ``# ...`` lines right above each field, joined.

    A field that a base class declares has the base's comment unless redeclared.

    Examples:
        >>> field_comments(CheckpointConfig)["stop_after"]
        'checkpoint and stop once this many frames are collected (time-sliced jobs)'
    """
    comments: dict[str, str] = {}
    for cls in reversed(schema.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        block: list[str] = []
        for line in textwrap.dedent(inspect.getsource(cls)).splitlines():
            if line.startswith("    # "):
                block.append(line.removeprefix("    # ").strip())
                continue
            declared = re.match(r"    (\w+):", line)
            if declared and block:
                comments[declared.group(1)] = " ".join(block)
            block = []
    return comments


class FieldDoc(typing.NamedTuple):
    """A field of a schema as its documentation shows it."""

    name: str
    default: Any  # a section's default is an instance of its dataclass
    accepts: str  # type and allowed values, worded as the errors word them
    comment: str


def describe_fields(schema: type) -> list[FieldDoc]:
    """Every field of ``schema`` (a dataclass), in order, with what the docs show.

    Examples:
        >>> item = describe_fields(EnvConfig)[1]
        >>> item.name, item.default, item.accepts
        ('max_episode_steps', 1000, 'an integer > 0')
        >>> item.comment
        'time limit; reaching it is a truncation (bootstrapped), not a termination'
    """
    comments = field_comments(schema)
    described = []
    for item, hint in _fields(schema):
        default = item.default
        if default is dataclasses.MISSING:
            default = item.default_factory()
        accepts = _expectation(hint, item.metadata.get("range"))
        described.append(
            FieldDoc(item.name, default, accepts, comments.get(item.name, ""))
        )
    return described


def _check_value(path: str, value: Any, hint: Any, bound: Range) -> None:
    hint, _ = _unwrap_optional(hint)
    if OmegaConf.is_list(value) or isinstance(value, list):
        items = list(value)
        ok = len(items) >= bound.min_items and all(bound.contains(v) for v in items)
        _require(ok, path, f"must be {_expectation(hint, bound)}, got {items!r}")
    elif hint is int:
        _require(
            bound.contains(value),
            path,
            f"must be an integer {bound.condition(True)}, got {value!r}",
        )
    else:
        _require(
            bound.contains(value),
            path,
            f"must lie {bound.condition(False)}, got {value!r}",
        )


def check_schema(cfg: DictConfig, schema: type, prefix: str = "") -> None:
    """Walk ``cfg`` along ``schema`` (a dataclass): ranges and unknown keys.

    Every field declared with ``bounded`` (``positive``, ``non_negative``) must lie
    in its range (``None``, an unset optional field, is not checked); a key that the
    schema lacks (added with ``+key=...``) is an error. Types and choices were
    enforced by OmegaConf already. Raises ``ConfigError`` naming the first field.
    """
    fields = _fields(schema)
    names = {item.name for item, _ in fields}
    for key in cfg:
        if key not in names and not (key == "hydra" and not prefix):
            reason = _unknown_key(schema, prefix.rstrip("."), str(key))
            raise ConfigError(f"{prefix}{key}: {reason}")
    for item, hint in fields:
        path = f"{prefix}{item.name}"
        value = cfg[item.name]
        if _is_schema(hint):
            check_schema(value, hint, f"{path}.")
            continue
        bound = item.metadata.get("range")
        if bound is not None and value is not None:
            _check_value(path, value, hint, bound)


def _unknown_key(node: type | None, parent: str, name: str) -> str:
    """Why ``parent.name`` is not a field of ``node``, and the fields it has."""
    if not parent and name == "algos":
        return (
            "unknown field; the algos table is now the config group algo: pick a "
            "variant with algo=<name>, change a field with algo.<field>=<value>"
        )
    if not _is_schema(node):
        return "unknown field"
    names = [item.name for item in dataclasses.fields(node)]
    hint = difflib.get_close_matches(name, names, n=1)
    maybe = ""
    if hint:
        maybe = f" (did you mean {'.'.join(filter(None, [parent, hint[0]]))!r}?)"
    return f"unknown field{maybe}; {parent or 'the config'} has {names}"


# ---------------------------------------------------------------------------
# Rules that span several fields, and the outside world (packages, files, envs)
# ---------------------------------------------------------------------------
LOGGER_PACKAGES = {
    Backend.tensorboard: (
        "tensorboard",
        "pip install tensorboard, in the recipes extra",
    ),
    Backend.wandb: ("wandb", "pip install wandb"),
}


# optional package -> the extra (pyproject.toml) that installs it
EXTRAS = {"ray": "ray"}


def require_extra(module: str, field_path: str, why: str) -> None:
    """A ``ConfigError`` naming ``field_path`` and the extra if ``module`` is absent."""
    if importlib.util.find_spec(module) is None:
        extra = EXTRAS.get(module, module)
        raise ConfigError(
            f"{field_path}: {why} needs the {module!r} package: "
            f'pip install -e ".[{extra}]"'
        )


_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def check_device(name: str, field_path: str) -> torch.device:
    """``cpu`` | ``cuda`` | ``cuda:<n>``, present on this machine, as a device."""
    if not _DEVICE.match(str(name)):
        raise ConfigError(
            f"{field_path}: unknown device {name!r}; use cpu, cuda or cuda:<index>"
        )
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{field_path}: {name} is requested but this machine has no CUDA "
                f"device (torch {torch.__version__}); use {field_path}=cpu"
            )
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"{field_path}: {name} does not exist, this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def check_scaling(cfg: DictConfig) -> None:
    """Rules of the collector layout and the devices; raises ``ConfigError``."""
    col = cfg.collector
    envs = col.num_workers * col.envs_per_worker
    if col.backend == "single" and col.num_workers != 1:
        raise ConfigError(
            "collector.num_workers: the single backend runs one collector in this "
            f"process, got {col.num_workers}; use collector.backend=process or ray"
        )
    if col.frames_per_batch % envs:
        raise ConfigError(
            f"collector.frames_per_batch: {col.frames_per_batch} frames do not split "
            f"evenly over num_workers * envs_per_worker = {envs} environments; use a "
            "multiple of it"
        )
    if col.backend == "ray":
        require_extra("ray", "collector.backend", "collector.backend=ray")
    if col.ray_address is not None and col.backend != "ray":
        raise ConfigError(
            "collector.ray_address: only read by collector.backend=ray, got "
            f"backend={col.backend}"
        )
    network = check_device(cfg.network.device, "network.device")
    memory = check_device(cfg.memory.device, "memory.device")
    if cfg.algo.memory == "episodic" and memory != network:
        raise ConfigError(
            f"memory.device: the episodic memory's refresh runs the target networks "
            f"over the stored states, so it must sit with them on network.device="
            f"{cfg.network.device}, got {cfg.memory.device}"
        )
    if cfg.memory.storage == "memmap" and memory.type != "cpu":
        raise ConfigError(
            "memory.device: a memmap storage lives on disk (cpu); use "
            "memory.storage=tensor for a CUDA memory"
        )


def check_algo(algo: DictConfig, field_path: str = "algo") -> None:
    """Combinations of an ``AlgoConfig``'s fields that cannot run."""
    if algo.returns == Returns.tbp:
        _require(
            algo.memory == MemoryKind.episodic,
            f"{field_path}.memory",
            "twin back-propagated returns (returns=tbp) need memory=episodic, "
            f"got {algo.memory}",
        )
        _require(
            algo.num_critics % 2 == 0 and algo.num_critics >= 2,
            f"{field_path}.num_critics",
            "returns=tbp needs an even number (>= 2) of critics, its two twin "
            f"halves, got {algo.num_critics}",
        )
    if algo.loss == Loss.gem:
        _require(
            algo.returns == Returns.tbp,
            f"{field_path}.returns",
            f"loss=gem (GEMLoss) needs returns=tbp, got {algo.returns}",
        )
    if algo.loss == Loss.td3_sil:
        _require(
            algo.memory == MemoryKind.episodic,
            f"{field_path}.memory",
            "loss=td3_sil reads Monte-Carlo returns of the stored episodes: it needs "
            f"memory=episodic, got {algo.memory}",
        )
        _require(
            algo.returns == Returns.td0,
            f"{field_path}.returns",
            "loss=td3_sil keeps the memory's return column for its Monte-Carlo "
            f"returns: it needs returns=td0, got {algo.returns}",
        )
    if algo.loss == Loss.ddpg:
        _require(
            algo.num_critics == 1,
            f"{field_path}.num_critics",
            f"loss=ddpg (DDPGLoss) has one critic, got {algo.num_critics}",
        )
    if algo.target_assignment != TargetAssignment.broadcast:
        _require(
            algo.loss == Loss.gem,
            f"{field_path}.target_assignment",
            f"{algo.target_assignment} needs loss=gem (GEMLoss), got "
            f"loss={algo.loss}; use broadcast",
        )


def network_precision(cfg: DictConfig) -> str:
    """``optim.precision``, or fp32 where ``network.device`` has no fast bf16."""
    return precision.resolve(str(cfg.optim.precision), config_device(cfg, "network"))


def config_device(cfg: DictConfig, section: str) -> torch.device:
    """``<section>.device``; the CPU for a run's saved config older than the field
    (the Atari recipe's before it learned on a GPU)."""
    return torch.device(cfg.get(section, {}).get("device", "cpu"))


def compile_enabled(cfg: DictConfig) -> bool:
    """``optim.compile``; unset: on for GEM's losses, where it measured faster."""
    if cfg.optim.compile is None:
        return cfg.algo.loss == Loss.gem
    return bool(cfg.optim.compile)


def check_compile(cfg: DictConfig) -> None:
    """A compiled refresh runs fixed-size chunks: it needs a chunk size."""
    if compile_enabled(cfg) and cfg.algo.returns == Returns.tbp:
        _require(
            cfg.memory.value_chunk_size is not None,
            "memory.value_chunk_size",
            "null (the whole memory in one call) cannot be compiled, which "
            "optim.compile is for this algo: set a size (default 2048) or "
            "optim.compile=false",
        )


def check_shared_rules(cfg: DictConfig) -> None:
    """Rules across the shared sections: sizes vs capacity, logger, checkpoint."""
    capacity = cfg.memory.capacity
    _require(
        cfg.collector.frames_per_batch <= capacity,
        "collector.frames_per_batch",
        f"a batch of {cfg.collector.frames_per_batch} frames does not fit in "
        f"memory.capacity={capacity}; use at most {capacity}",
    )
    _require(
        cfg.optim.batch_size <= capacity,
        "optim.batch_size",
        f"{cfg.optim.batch_size} is larger than memory.capacity={capacity}; "
        f"use at most {capacity}",
    )
    backends = list(cfg.logger.backends)
    for backend in backends:
        if backend in LOGGER_PACKAGES:
            module, how = LOGGER_PACKAGES[backend]
            _require(
                importlib.util.find_spec(module) is not None,
                "logger.backends",
                f"{backend} is selected but the {module!r} package is not installed "
                f"({how}); or drop {backend} from logger.backends",
            )
    _require(
        not cfg.logger.plot or Backend.csv in backends,
        "logger.plot",
        "the plot reads the csv logs: add csv to logger.backends, or set "
        "logger.plot=false",
    )
    if cfg.checkpoint.resume == "auto":
        _require(
            cfg.logger.run_dir is not None,
            "checkpoint.resume",
            "auto resumes logger.run_dir's own checkpoint: set logger.run_dir",
        )
    elif cfg.checkpoint.resume is not None:
        resolve_checkpoint_path(cfg.checkpoint.resume)


def check_env_name(name: str, field_path: str = "env.name") -> None:
    """``name`` must be a registered Gymnasium id; suggests close ones."""
    import gymnasium

    if name in gymnasium.envs.registry:
        return
    hints = difflib.get_close_matches(str(name), list(gymnasium.envs.registry), n=3)
    maybe = f"; did you mean {', '.join(map(repr, hints))}?" if hints else ""
    raise ConfigError(f"{field_path}: unknown Gymnasium environment {name!r}{maybe}")


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """The checkpoint file of ``path``: the file itself, or a run dir's last.pt."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    _require(
        path.is_file(),
        "checkpoint.resume",
        f"no checkpoint file at {str(path)!r} (give a checkpoint file, or a run "
        "dir holding checkpoints/last.pt)",
    )
    return path


def check_config(cfg: DictConfig) -> None:
    """All checks of a composed MuJoCo config; raises ``ConfigError``.

    The schema walk first (ranges, stray keys), then the rules across fields (the
    algo's, the shared sections' with the checkpoint to resume, the collector layout
    and devices: ``check_scaling``), then the
    environment id. Types and choices were checked by composition (``load_config``).
    """
    check_schema(cfg, MujocoConfig)
    check_algo(cfg.algo)
    check_compile(cfg)
    check_shared_rules(cfg)
    check_scaling(cfg)
    check_env_name(cfg.env.name)


# ---------------------------------------------------------------------------
# Composition, with Hydra / OmegaConf errors turned into ConfigError
# ---------------------------------------------------------------------------
def plain(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` as plain Python containers: interpolations resolved, enums as str."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested dict (:func:`plain`'s), lists kept as values.

    Examples:
        >>> flatten({"algo": {"loss": "td3", "sizes": [1, 2]}, "seed": 0})
        {'algo.loss': 'td3', 'algo.sizes': [1, 2], 'seed': 0}
    """
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _chain(err: BaseException | None):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def config_error(err: BaseException, schema: type = MujocoConfig) -> ConfigError:
    """A Hydra / OmegaConf composition error as a ``ConfigError`` naming the field.

    Handles an unknown choice of a config group (``algo=gemm``), and OmegaConf's
    errors carrying a ``full_key``: a value of the wrong type, a string outside an
    enum's choices, a key that the schema lacks. Anything else keeps its message.
    """
    for cause in _chain(err):
        if isinstance(cause, MissingConfigException) and cause.options:
            group, _, choice = str(cause.missing_cfg_file).rpartition("/")
            return ConfigError(
                f"{group or 'config'}: {_unknown(choice, cause.options)}"
            )
        if not (isinstance(cause, OmegaConfBaseException) and cause.full_key):
            continue
        path = re.sub(r"\[[^\]]*\]$", "", str(cause.full_key))
        found = _lookup(schema, path)
        if found is None:
            parent, _, name = path.rpartition(".")
            node = (_lookup(schema, parent) or (None, None))[1] if parent else schema
            return ConfigError(f"{path}: {_unknown_key(node, parent, name)}")
        item, hint = found
        choices = _choices(hint)
        if choices is not None:
            return ConfigError(f"{path}: {_unknown(cause.value, choices)}")
        expected = _expectation(hint, item.metadata.get("range"))
        return ConfigError(f"{path}: must be {expected}, got {cause.value!r}")
    return ConfigError(str(err))


def load_config(
    overrides: list[str] | tuple[str, ...] = (),
    config_name: str = MUJOCO_CONFIG,
    schema: type = MujocoConfig,
    config_dir: str | os.PathLike = HERE,
) -> DictConfig:
    """Compose ``<config_dir>/<config_name>.yaml`` with command-line style overrides.

    Bad types, choices and keys raise ``ConfigError`` naming the field (``schema``,
    the primary config's dataclass, words the message); ranges and cross-field rules
    are ``check_config``'s. The result has no ``hydra`` node. ``config_dir``
    defaults to ``recipes/`` (the MuJoCo recipe; the Atari one lives in
    ``recipes/atari/``).
    """
    with initialize_config_dir(str(config_dir), version_base="1.3"):
        try:
            return compose(config_name=config_name, overrides=list(overrides))
        except (HydraException, OmegaConfBaseException) as err:
            raise config_error(err, schema) from err
