"""GEM's training schedule and run monitoring: hooks of a TorchRL ``Trainer``.

Two modules by role, both re-exported here:

- :mod:`torchrl_gem.schedule`: GEM's schedule (:class:`BulkTargetUpdateHook`,
  :class:`MemoryRefreshHook`, :class:`DelayedActorStepper`, :func:`bulk_tau`), the
  DQN-style :class:`HardTargetUpdateHook` and :class:`PolicyAverageHook` (an
  averaged policy to evaluate);
- :mod:`torchrl_gem.monitoring`: what watches a run (:class:`EvaluationHook`,
  :class:`FiniteCheckHook`, :class:`EpisodeStats`, :class:`RunTiming`,
  :class:`ProgressBar`).

In one collected batch the trainer then runs, in order: ``batch_process`` (finite
check, memory extend) -> ``pre_optim_steps`` (bulk target update, memory refresh)
-> ``optim_steps_per_batch`` optimisation steps -> ``post_steps_log`` (evaluation).
"""

from torchrl_gem.monitoring import (
    EpisodeStats,
    EvaluationHook,
    FiniteCheckHook,
    ProgressBar,
    RunTiming,
)
from torchrl_gem.schedule import (
    BulkTargetUpdateHook,
    DelayedActorStepper,
    HardTargetUpdateHook,
    MemoryRefreshHook,
    PolicyAverageHook,
    bulk_tau,
)

__all__ = [
    "BulkTargetUpdateHook",
    "DelayedActorStepper",
    "EpisodeStats",
    "EvaluationHook",
    "FiniteCheckHook",
    "HardTargetUpdateHook",
    "MemoryRefreshHook",
    "PolicyAverageHook",
    "ProgressBar",
    "RunTiming",
    "bulk_tau",
]
