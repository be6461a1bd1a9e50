r"""GEM (Generalizable Episodic Memory, Hu et al. ICML 2021) on Gymnasium MuJoCo.

Built from TorchRL parts: ``GymEnv`` environments, a ``Collector`` (uniform random
warm-up, then the actor plus Gaussian noise), ``torchrl_gem``'s ``EpisodicMemory``
and ``torchrl.trainers.Trainer`` with GEM's schedule as hooks (``torchrl_gem.trainer``).
The cycle per collected batch is the block of hook registrations in :func:`train`.

Run from the repository root::

    python recipes/gem_mujoco.py                          # the paper's configuration
    python recipes/gem_mujoco.py env.name=Walker2d-v5 algo=td3 seed=3
    python recipes/gem_mujoco.py checkpoint.resume=runs/<...>/checkpoints/last.pt

README default: GEM on Hopper-v5 in about 10 minutes on 2 CPU cores, ending with
``curves.png`` in the run dir. It keeps GEM's schedule (200 critic steps per 100
frames, 4 critics, 100k memory) and shrinks the budget: 20k frames of which 4k
random warm-up (paper: 1M and 25k), 256-unit layers (paper: 400/300), an evaluation
every 2k frames. Expect a Hopper return of a few hundred, a demo, not a result::

    python recipes/gem_mujoco.py collector.total_frames=20000 \
        collector.init_random_frames=4000 'network.hidden_sizes=[256,256]' \
        logger.eval_interval=2000

The full paper budget is the default, ``collector.total_frames=1000000`` (about 8 h
of one CPU thread for GEM in the default bf16, 13 h in fp32). Every option is
documented in ``config.py``; ``algo`` picks a variant from ``algo/``: gem, bp,
bp_4critics, gem_paired, gem_nocross (GEM and its ablations), td3, td3_tbp and
sac_tbp (TD3Loss and SACLoss on GEM returns) with their controls td3_gemnets and
sac_gemnets (the same networks on the loss's own one-step target), and the paper's
other baselines as its repository configured them, td3_sil, sac and ddpg::

    python recipes/gem_mujoco.py algo=sac      # batch 256, [256, 256], 10k warm-up
    python recipes/gem_mujoco.py algo=ddpg     # batch 100, lr 1e-3, one critic
    python recipes/gem_mujoco.py algo=td3_sil  # TD3 + self-imitation (sil section)

Every evaluation also logs the critics' estimate on the visited states against the
discounted return obtained there (``eval/q_estimate``, ``eval/mc_return``,
``eval/q_bias``); ``analysis/plot.py`` draws them under the return curves.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torchrl.trainers import ReplayBufferTrainer, Trainer, UpdateWeights

from builders import (
    STEP_METHODS,
    critic_groups,
    make_agent,
    make_critic_probe,
    make_exploration_policy,
    make_memory,
    make_optimizers,
    make_self_imitation,
    network_precision,
)
from config import (  # noqa: F401 - ConfigError, check_config: for tests
    ConfigError,
    check_config,
    compile_enabled,
    load_config,
)
from interaction import (
    EVAL_SEED_OFFSET,
    action_half_range,
    collector_step,
    collector_steps,
    make_collector,
    make_env,
)
from launchers import check_launcher, sweep_threads
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
from torchrl_gem.sil import MonteCarloReturn
from torchrl_gem.trainer import (
    DelayedActorStepper,
    EpisodeStats,
    EvaluationHook,
    FiniteCheckHook,
    MemoryRefreshHook,
    PolicyAverageHook,
    ProgressBar,
    RunTiming,
)

# The settings a checkpoint must share with the run that resumes it.
IDENTITY = (
    "env.name",
    "algo",
    "seed",
    "network.hidden_sizes",
    "collector.frames_per_batch",
    "memory.capacity",
    "memory.storage",
    "collector.backend",
    "collector.num_workers",
    "collector.envs_per_worker",
)
# What checkpoints written before the collector's layout joined IDENTITY stand for.
IDENTITY_DEFAULTS = {
    "collector.backend": "single",
    "collector.num_workers": 1,
    "collector.envs_per_worker": 1,
}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) one training run described by ``cfg``; returns its summary."""
    wall_start = time.perf_counter()
    check_config(cfg)
    identity = run_identity(cfg, IDENTITY)
    resume_path, resumed = read_resume(cfg, identity, IDENTITY_DEFAULTS)  # or refused
    done = finished_summary(resume_path, resumed, cfg.collector.total_frames)
    if done is not None:
        return done
    seed_everything(cfg.seed, cfg.optim.num_threads or sweep_threads())

    # ---- the parts: environments, agent, memory, collector, optimisers, logger ----
    device = torch.device(cfg.network.device)  # networks, memory, refresh
    train_env = make_env(cfg, cfg.seed)  # the single collector's (else specs only)
    eval_env = make_env(cfg, cfg.seed + EVAL_SEED_OFFSET)
    if device.type != "cpu":
        eval_env = eval_env.to(device)  # the actor evaluates where it trains
    spec, half_range = action_half_range(train_env, cfg.env.name)
    obs_dim = train_env.observation_spec["observation"].shape[-1]
    actor, loss, per_step_target, bulk_target = make_agent(cfg, obs_dim, spec)
    memory = make_memory(cfg)
    policy = make_exploration_policy(
        actor, spec, cfg.collector.exploration_sigma * half_range
    )
    check_memory_fits(cfg, memory, collector_step(train_env, policy))  # or stop now
    collector = make_collector(cfg, train_env, policy)
    actor_optim, critic_optim = make_optimizers(cfg, loss)
    critic_method, actor_method = STEP_METHODS[cfg.algo.loss]
    run_dir = resolve_run_dir(cfg, resumed)
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = make_logger(cfg, run_dir, resumed)  # on resume: cut back to it
    trainer = Trainer(
        collector=collector,
        total_frames=cfg.collector.total_frames,
        frame_skip=1,
        optim_steps_per_batch=cfg.algo.updates_per_batch,
        loss_module=loss,
        optimization_stepper=DelayedActorStepper(  # critic step, actor every 2nd
            actor_optim,
            critic_optim,
            policy_delay=cfg.optim.policy_delay,
            target_updater=per_step_target,  # TD3: Polyak after each actor step
            critic_method=critic_method,
            actor_method=actor_method,
            precision=network_precision(cfg),  # bf16 autocast, or fp32
            device=device,
            compile=compile_enabled(cfg),  # torch.compile the two loss calls
            grad_norms=cfg.logger.diagnostics,
            critic_max_grad_norm=cfg.optim.critic_max_grad_norm,
        ),
        logger=logger,
        progress_bar=False,  # ProgressBar below: resumes at its frame, shows eval
        log_interval=cfg.logger.log_interval,
    )

    # ---- GEM's cycle: what the trainer runs per collected batch, in this order ----
    FiniteCheckHook().register(trainer)  # 1. refuse NaN/inf from the environment
    replay = ReplayBufferTrainer(memory, batch_size=cfg.optim.batch_size, device=device)
    trainer.register_module("replay_buffer", replay)
    trainer.register_op("batch_process", replay.extend)  # 2. store the trajectories
    stats = EpisodeStats()
    stats.register(trainer)  # 3. log the returns of finished training episodes
    if bulk_target is not None:
        bulk_target.register(trainer)  # 4. one bulk target update, weight 0.633
    if cfg.algo.returns == "tbp":  # 5. twin returns of every stored transition
        refresh = MemoryRefreshHook(
            memory,
            loss.value_estimator,
            every=cfg.memory.refresh_every,
            diagnostics=cfg.logger.diagnostics,  # memory/*: targets, horizons
        )
        refresh.register(trainer)
    elif cfg.algo.loss == "td3_sil":  # 5. Monte-Carlo returns of the stored episodes
        mc_returns = MonteCarloReturn(gamma=cfg.optim.gamma)
        refresh = MemoryRefreshHook(memory, mc_returns, every=cfg.memory.refresh_every)
        refresh.register(trainer)
    trainer.register_op("process_optim_batch", replay.sample)  # 6. gradient steps
    if cfg.algo.loss == "td3_sil":  # 7. self-imitation steps on prioritized samples
        make_self_imitation(cfg, loss, memory, critic_optim).register(trainer)
    UpdateWeights(collector, update_weights_interval=1).register(trainer)  # 8. sync
    episodes = {  # which evaluation episodes, and when: one set for every actor
        "interval": cfg.logger.eval_interval,
        "num_episodes": cfg.logger.eval_episodes,
        "max_steps": cfg.env.max_episode_steps,
        "seed": cfg.seed + EVAL_SEED_OFFSET,
    }
    evaluated = actor
    if cfg.optim.actor_average is not None:  # 8b. the weights' moving average
        average = PolicyAverageHook(actor, decay=cfg.optim.actor_average)
        average.register(trainer)
        evaluated = average.policy
        online = EvaluationHook(eval_env, actor, **episodes, prefix="eval_online")
        online.register(trainer, name="evaluation_online")  # paired with the average
    evaluation = EvaluationHook(  # 9. deterministic evaluation every N frames
        eval_env,
        evaluated,
        **episodes,
        critic=make_critic_probe(loss),  # overestimation: Q vs discounted returns
        critic_groups=critic_groups(cfg),
        gamma=cfg.optim.gamma,
        action_bounds=(spec.space.low, spec.space.high)
        if cfg.logger.diagnostics
        else None,
        snapshot_dir=run_dir / "actors" if cfg.logger.snapshots else None,
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
        env=train_env if collector_steps(cfg) else None,  # None: workers step it
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


@hydra.main(version_base="1.3", config_path=".", config_name="gem_mujoco")
def main(cfg: DictConfig) -> None:
    run_main(train, cfg)


if __name__ == "__main__":
    check_launcher(sys.argv[1:])  # a missing launcher plugin: say what to install
    main()
