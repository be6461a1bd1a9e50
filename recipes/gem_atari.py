r"""GEM on Atari (the released DQN-based agent, Hu et al. ICML 2021) and DQN baselines.

Built from TorchRL parts: Gymnasium ALE games (ale-py ships the ROMs) with DQN's
standard preprocessing, a ``Collector`` (uniform random warm-up, then epsilon-greedy),
``torchrl_gem``'s ``FrameEpisodicMemory`` (one 84x84 frame per transition, stacks
rebuilt at sampling and refresh) and ``torchrl.trainers.Trainer``. The cycle per
collected batch is the block of hook registrations in :func:`train`.

Run from the repository root (needs ``pip install -e ".[atari,recipes]"``)::

    python recipes/gem_atari.py                                   # GEM, Frostbite
    python recipes/gem_atari.py env.name=ALE/Zaxxon-v5 algo=dqn seed=3
    python recipes/gem_atari.py algo=ddqn                         # double DQN
    python recipes/gem_atari.py checkpoint.resume=runs/<...>/checkpoints/last.pt

A CPU-sized demo (a few minutes on 2 cores; a demo, not a result)::

    python recipes/gem_atari.py env.name=ALE/Pong-v5 collector.total_frames=5000 \
        collector.init_random_frames=1000 memory.capacity=20000 \
        logger.eval_interval=2500 logger.eval_episodes=1 optim.num_threads=2

The defaults are the released configuration (2.5M agent steps = 10M emulator
frames, 1M-transition memory: far beyond 2 CPU cores; see docs/performance.md, "Atari").
Every option is documented in ``atari_config.py``; ``algo`` picks a file of
``atari/algo/``: gem, dqn, ddqn.
"""

from __future__ import annotations

import time
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torchrl.trainers import ReplayBufferTrainer, Trainer, UpdateWeights

from atari_builders import (
    EpsilonGreedyEval,
    EpsilonSchedule,
    make_agent,
    make_exploration_policy,
    make_memory,
    make_stepper,
)
from atari_config import ATARI_CONFIG, ATARI_DIR, check_atari_config
from atari_config import load_atari_config as load_config  # noqa: F401 - for tests
from interaction import EVAL_SEED_OFFSET, collector_step, make_atari_env, make_collector
from logs import make_logger
from runs import (
    check_memory_fits,
    finished_summary,
    read_resume,
    resolve_run_dir,
    run_identity,
    run_main,
    seed_everything,
    train_with_checkpoints,
)
from torchrl_gem.trainer import (
    EpisodeStats,
    EvaluationHook,
    FiniteCheckHook,
    HardTargetUpdateHook,
    MemoryRefreshHook,
    ProgressBar,
    RunTiming,
)

# The settings a checkpoint must share with the run that resumes it.
IDENTITY = (
    "env",
    "algo",
    "seed",
    "collector.frames_per_batch",
    "memory.capacity",
    "memory.storage",
)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) one training run described by ``cfg``; returns its summary."""
    wall_start = time.perf_counter()
    check_atari_config(cfg)
    identity = run_identity(cfg, IDENTITY)
    resume_path, resumed = read_resume(cfg, identity)  # refused before any work
    done = finished_summary(resume_path, resumed, cfg.collector.total_frames)
    if done is not None:
        return done
    seed_everything(cfg.seed, cfg.optim.num_threads)

    # ---- the parts: environments, agent, memory, collector, optimiser, logger ----
    device = torch.device(cfg.network.device)  # Q-networks, gradient steps
    train_env = make_atari_env(cfg, cfg.seed, clip_rewards=True)
    eval_env = make_atari_env(cfg, cfg.seed + EVAL_SEED_OFFSET, clip_rewards=False)
    if device.type != "cpu":
        eval_env = eval_env.to(device)  # the greedy policy evaluates where it trains
    spec = train_env.action_spec
    loss, greedy = make_agent(cfg, spec)
    memory = make_memory(cfg)
    policy = make_exploration_policy(cfg, greedy, spec)
    check_memory_fits(cfg, memory, collector_step(train_env, policy))  # or stop now
    collector = make_collector(cfg, train_env, policy)
    run_dir = resolve_run_dir(cfg, resumed)
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = make_logger(cfg, run_dir, resumed)  # on resume: cut back to it
    trainer = Trainer(
        collector=collector,
        total_frames=cfg.collector.total_frames,
        frame_skip=1,  # frames are agent steps (the env skips emulator frames)
        optim_steps_per_batch=cfg.algo.updates_per_batch,
        loss_module=loss,
        optimization_stepper=make_stepper(cfg, loss),  # optim.precision, one Adam
        logger=logger,
        progress_bar=False,  # ProgressBar below: resumes at its frame, shows eval
        log_interval=cfg.logger.log_interval,
    )
    batches_per_target = cfg.algo.target_update_interval // cfg.algo.updates_per_batch

    # ---- the cycle: what the trainer runs per collected batch, in this order ----
    FiniteCheckHook(keys=[("next", "reward")]).register(trainer)  # 1. NaN/inf guard
    replay = ReplayBufferTrainer(memory, batch_size=cfg.optim.batch_size, device=device)
    trainer.register_module("replay_buffer", replay)
    trainer.register_op("batch_process", replay.extend)  # 2. store single frames
    stats = EpisodeStats()
    stats.register(trainer)  # 3. log the raw scores of finished training episodes
    # 4. hard target copy every target_update_interval gradient steps (TorchRL's
    # HardUpdate, copying on every step it is given: the period is the hook's)
    HardTargetUpdateHook(loss, every=batches_per_target).register(trainer)
    if cfg.algo.loss == "gem":  # 5. memory returns: full refresh with new targets,
        refresh = MemoryRefreshHook(  # else only the new states (cached values)
            memory, loss.value_estimator, every=batches_per_target, incremental=True
        )
        refresh.register(trainer)
    trainer.register_op("process_optim_batch", replay.sample)  # 6. gradient steps
    EpsilonSchedule(policy[-1], cfg, trainer).register(trainer)  # 7. anneal epsilon
    UpdateWeights(collector, update_weights_interval=1).register(trainer)  # 8. sync
    evaluation = EvaluationHook(  # 9. raw-score evaluation every N frames
        eval_env,
        EpsilonGreedyEval(greedy, spec, cfg.explore.eps_eval, device=device),
        interval=cfg.logger.eval_interval,
        num_episodes=cfg.logger.eval_episodes,
        max_steps=cfg.env.max_episode_steps,
        seed=cfg.seed + EVAL_SEED_OFFSET,
        gamma=cfg.optim.gamma,
    )
    evaluation.register(trainer)
    timing = RunTiming()  # 10. time split, carried across resumes
    timing.register(trainer)
    progress = ProgressBar(trainer, stats, evaluation, cfg.logger.progress_bar)
    trainer.register_op("post_steps_log", progress)  # 11. progress bar
    return train_with_checkpoints(  # 12. checkpoint: periodic, final, on a signal
        cfg,
        trainer,
        collector=collector,
        env=train_env,
        memory=memory,
        identity=identity,
        resume=(resume_path, resumed),
        run_dir=run_dir,
        logger=logger,
        evaluation=evaluation,
        progress=progress,
        timing=timing,
        wall_start=wall_start,
    )


@hydra.main(version_base="1.3", config_path=str(ATARI_DIR), config_name=ATARI_CONFIG)
def main(cfg: DictConfig) -> None:
    run_main(train, cfg)


if __name__ == "__main__":
    main()
