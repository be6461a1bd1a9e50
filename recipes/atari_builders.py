"""The ``make_*`` builders of the Atari recipe: agents, memory, exploration.

Each reads the composed config (``atari_config.py``). The environment and the
collector are built in ``interaction.py``, the run plumbing is ``runs.py``: both
shared with the MuJoCo recipe.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase, TensorDictSequential
from torchrl import timeit
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import EGreedyModule, QValueActor
from torchrl.objectives import DQNLoss
from torchrl.trainers import (
    MixedPrecisionOptimizationStepper,
    Trainer,
    TrainerHookBase,
)

from config import compile_enabled, config_device, network_precision
from interaction import PIXELS
from torchrl_gem import GEMDQNLoss, make_gem_dqn_policy, make_nature_cnn_qnet
from torchrl_gem.compiling import CompiledCall
from torchrl_gem.frames import FrameEpisodicMemory


# ---------------------------------------------------------------------------
# Agents
# ---------------------------------------------------------------------------
def _qnet(cfg: DictConfig, num_actions: int):
    return make_nature_cnn_qnet(
        num_actions,
        frames=cfg.env.frame_stack,
        height=cfg.env.screen_size,
        width=cfg.env.screen_size,
        pixels_key=PIXELS,
    )


def make_agent(cfg: DictConfig, action_spec) -> tuple[Any, TensorDictModuleBase]:
    """The loss (with its value estimator) and the greedy policy acting for it.

    ``gem``: :class:`~torchrl_gem.GEMDQNLoss` over independently initialised sub and
    meta networks, acting on the meta mean. ``dqn``: TorchRL's ``DQNLoss`` on one
    ``QValueActor`` (``double_dqn`` for DDQN), which also acts. GEM's refresh
    runs in ``optim.precision`` (:func:`network_precision`); acting stays fp32:
    at one state at a time, bf16 measured slower (``benchmarks/atari_speed.py``).
    Both sit on ``network.device``.
    """
    algo, num_actions = cfg.algo, action_spec.shape[-1]
    device = config_device(cfg, "network")
    if algo.loss == "gem":
        loss = GEMDQNLoss(
            [_qnet(cfg, num_actions).to(device) for _ in range(algo.num_sub_nets)],
            [
                _qnet(cfg, num_actions).to(device)
                for _ in range(GEMDQNLoss.num_meta_nets)
            ],
            action_space=action_spec,
            loss_function=str(algo.loss_function),
            meta_loss_function=str(algo.meta_loss),
            underestimation_weight=algo.underestimation_weight,
            meta_loss_weight=algo.meta_loss_weight,
            reduction=str(cfg.optim.loss_reduction),
            # a loop over the six CNNs: 1.7x faster than torch.vmap per gradient
            # step on CPU (batch 32, 1 thread, measured)
            deactivate_vmap=True,
        ).to(device)
        loss.make_value_estimator(
            gamma=cfg.optim.gamma,
            value_chunk_size=cfg.memory.value_chunk_size,
            precision=network_precision(cfg),  # the refresh's target passes
            compile=compile_enabled(cfg),  # null: on for gem
        )
        loss.select_out_keys("loss_sub", "loss_meta")  # scalars for the trainer log
        return loss, make_gem_dqn_policy(loss, spec=action_spec)
    actor = QValueActor(
        _qnet(cfg, num_actions).module, in_keys=[PIXELS], spec=action_spec
    ).to(device)
    loss = DQNLoss(
        actor,
        loss_function=str(algo.loss_function),
        delay_value=True,
        double_dqn=algo.double_dqn,
        action_space=action_spec,
        reduction=str(cfg.optim.loss_reduction),
    ).to(device)
    loss.make_value_estimator(gamma=cfg.optim.gamma)
    return loss, actor


def make_optimizer(cfg: DictConfig, loss) -> torch.optim.Adam:
    """One Adam over every trained network (sub and meta nets get separate losses)."""
    return torch.optim.Adam(
        loss.parameters(), lr=cfg.optim.lr, eps=cfg.optim.adam_eps, fused=True
    )


class TimedStepper(MixedPrecisionOptimizationStepper):
    """TorchRL's mixed-precision step (the sum of the ``loss*`` entries, one
    optimiser, the gradient-norm clip; the forward pass under bf16 autocast with
    ``mixed_precision``), timed under ``timeit("update")``.

    With ``compiled_loss``, the forward pass calls that loss through
    :class:`~torchrl_gem.compiling.CompiledCall` (``torch.compile``, eager where it
    fails) instead of the trainer's eager call.
    """

    def __init__(self, optimizer, *, compiled_loss=None, **kwargs) -> None:
        super().__init__(optimizer, **kwargs)
        self.compiled_loss = None
        if compiled_loss is not None:
            # the module, not its forward: its hooks (select_out_keys) stay
            name = type(compiled_loss).__name__
            self.compiled_loss = CompiledCall(compiled_loss, name=name)

    def compute_loss(self, sub_batch: TensorDictBase) -> TensorDictBase:
        return self.compiled_loss(sub_batch)

    def step(self, trainer: Trainer, sub_batch: TensorDictBase) -> TensorDictBase:
        # the parent's step reads only ``compute_loss`` of the trainer it is given
        host = trainer if self.compiled_loss is None else self
        with timeit("update"):
            return super().step(host, sub_batch)


def make_stepper(cfg: DictConfig, loss) -> TimedStepper:
    """One Adam over every trained network, stepped in ``optim.precision``; GEM's
    loss compiled with ``optim.compile`` (null: on for gem)."""
    return TimedStepper(
        make_optimizer(cfg, loss),
        compiled_loss=loss if compile_enabled(cfg) else None,
        mixed_precision=network_precision(cfg) == "bf16",
        clip_norm=cfg.optim.max_grad_norm,
        device_type=config_device(cfg, "network").type,  # where autocast applies
    )


def make_memory(cfg: DictConfig) -> FrameEpisodicMemory:
    """The frame memory; DQN samples everything stored, GEM what has returns.

    Its NaN/inf guard is off: the recipe's ``FiniteCheckHook`` checks rewards first.
    """
    return FrameEpisodicMemory(
        capacity=cfg.memory.capacity,
        storage=cfg.memory.storage,
        scratch_dir=cfg.memory.scratch_dir,
        batch_size=cfg.optim.batch_size,
        pixels_key=PIXELS,
        num_frames=cfg.env.frame_stack,
        sample_unrefreshed=cfg.algo.loss != "gem",
        check_finite=(),
        device=config_device(cfg, "memory"),
    )


# ---------------------------------------------------------------------------
# Exploration
# ---------------------------------------------------------------------------
def make_exploration_policy(cfg: DictConfig, greedy, spec) -> TensorDictSequential:
    """``greedy`` + TorchRL's ``EGreedyModule`` (epsilon set by the schedule hook)."""
    explore = cfg.explore
    egreedy = EGreedyModule(
        spec,
        eps_init=explore.eps_init,
        eps_end=explore.eps_end,
        annealing_num_steps=explore.annealing_frames,
    )
    return TensorDictSequential(greedy, egreedy)


class EpsilonSchedule(TrainerHookBase):
    """Set the ``EGreedyModule``'s epsilon from the frames collected, once per batch.

    Linear from ``eps_init`` to ``eps_end`` over ``annealing_frames`` agent steps.
    Computed from the trainer's frame count rather than stepped, so a resumed run
    continues the schedule exactly without state of its own.
    """

    def __init__(self, egreedy: EGreedyModule, cfg: DictConfig, trainer: Trainer):
        self.egreedy, self.trainer = egreedy, trainer
        self.start, self.end = cfg.explore.eps_init, cfg.explore.eps_end
        self.frames = cfg.explore.annealing_frames

    def epsilon(self, frames: int) -> float:
        progress = min(frames / self.frames, 1.0)
        return self.start + (self.end - self.start) * progress

    def __call__(self, *args) -> None:
        self.egreedy.eps.fill_(self.epsilon(self.trainer.collected_frames))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass

    def register(self, trainer: Trainer, name: str = "epsilon_schedule") -> None:
        trainer.register_op("post_steps", self)


class EpsilonGreedyEval(TensorDictModuleBase):
    """The evaluation policy: ``greedy`` with a fixed epsilon (released: 0.05).

    Evaluations run under ``ExplorationType.DETERMINISTIC``, where an
    ``EGreedyModule`` does nothing; this module applies its epsilon regardless. Its
    epsilon sits on ``device``, with ``greedy`` (TorchRL's module refuses actions
    from another device).
    """

    def __init__(self, greedy, spec, eps: float, *, device="cpu") -> None:
        super().__init__()
        egreedy = EGreedyModule(spec, eps_init=eps, eps_end=eps).to(device)
        self.policy = TensorDictSequential(greedy, egreedy)
        self.in_keys, self.out_keys = self.policy.in_keys, self.policy.out_keys

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        with set_exploration_type(ExplorationType.RANDOM):
            return self.policy(tensordict)
