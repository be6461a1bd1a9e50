"""Hooks that watch a :class:`torchrl.trainers.Trainer` run, for any off-policy recipe.

- :class:`EvaluationHook`: deterministic evaluation every ``N`` frames, with the
  critics' estimate on the visited states against the discounted return obtained
  there (overestimation);
- :class:`FiniteCheckHook`: stop on NaN/inf coming from the environment, naming the
  step;
- :class:`EpisodeStats`: returns of the finished training episodes;
- :class:`RunTiming`: time per phase, carried across resumes;
- :class:`ProgressBar`: tqdm, resuming at its frame.

GEM's schedule itself is in :mod:`torchrl_gem.schedule`; both are re-exported by
:mod:`torchrl_gem.trainer`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import NestedKey, TensorDictBase
from torchrl import timeit
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.trainers import LogTiming, Trainer, TrainerHookBase

__all__ = [
    "EpisodeStats",
    "EvaluationHook",
    "FiniteCheckHook",
    "ProgressBar",
    "RunTiming",
]


def _frames(trainer: Trainer | None) -> int:
    return 0 if trainer is None else int(trainer.collected_frames)


class EvaluationHook(TrainerHookBase):
    """Evaluate a policy without exploration every ``interval`` collected frames.

    Runs ``num_episodes`` complete episodes on ``env`` with
    ``ExplorationType.DETERMINISTIC`` (so an
    :class:`~torchrl.modules.AdditiveGaussianModule` adds no noise), under
    ``torch.no_grad()`` and ``timeit("eval")``, and logs the mean and population std
    of the undiscounted returns and the mean episode length at the current frame
    count (``"<prefix>/return_mean"``, ``"<prefix>/return_std"``,
    ``"<prefix>/episode_length"``) through ``logger`` (default: the trainer's).

    With ``critic`` it also measures overestimation on the states the evaluation
    visited: for every step ``t`` of every episode, the critics' estimate
    ``Q(s_t, a_t)`` at the action taken, next to the discounted return obtained
    from there, ``G_t = r_t + gamma r_{t+1} + ...`` to the episode's end. An
    episode that ends by termination adds nothing after its last reward; one cut by
    the time limit (or by ``max_steps``) is bootstrapped there with the same
    estimate, ``gamma^(T-t) Q(s_T, pi(s_T))`` at its last next-state, so that the
    comparison is not biased by the horizon the evaluation cut. Averaged over all
    visited states: ``"<prefix>/q_estimate"`` (the mean over all critics),
    ``"<prefix>/mc_return"`` and ``"<prefix>/q_bias"`` (their difference; > 0 is
    overestimation); for each group ``g`` of ``critic_groups``, the same three
    with the group's ``min`` as the estimate (``q_estimate_group<g>``, ...).

    With ``action_bounds = (low, high)`` it also logs how often the policy acts at
    its bounds: ``"<prefix>/action_saturation"``, the fraction of action components
    of the visited steps within 1% of the half-range from ``low`` or ``high``. With
    ``snapshot_dir`` it saves the policy's ``state_dict`` at every evaluation, as
    ``<snapshot_dir>/frame<frames>.pt``, to evaluate it again later with more
    episodes (how much of a swing is the policy, how much the episodes' noise).

    With ``seed`` set, the environment is re-seeded before every evaluation, so all
    evaluations start from the same initial states: curves compare like with like,
    and the hook draws no random numbers that a resumed run would have to restore.
    With ``at_start`` it evaluates once before training (frame 0); with ``at_end``
    once more on the last batch if that is not on the interval.

    Args:
        env (EnvBase): the evaluation environment (separate from the training one).
        policy (Callable): the policy; the deterministic actor or the exploration
            policy (noise is switched off).

    Keyword Args:
        interval (int): frames between evaluations. Defaults to ``10_000``.
        num_episodes (int): episodes per evaluation. Defaults to ``10``.
        max_steps (int): step cap per episode. Defaults to ``1000``.
        seed (int, optional): seed applied before each evaluation.
        at_start (bool): evaluate before training. Defaults to ``True``.
        at_end (bool): evaluate at the end of training. Defaults to ``True``.
        logger (Logger, optional): where to log; defaults to ``trainer.logger``.
        prefix (str): metric name prefix. Defaults to ``"eval"``.
        critic (Callable, optional): ``(observation, action)`` tensordict ``[N]`` ->
            ``[N, K]`` values of ``K`` critics (the online ones, usually).
        critic_groups (sequence of index sequences): critic groups whose ``min`` is
            reported too (GEM's twin groups; TD3's pair). Defaults to none.
        gamma (float): discount of the returns. Defaults to ``0.99``.
        action_bounds (tuple of Tensors, optional): ``(low, high)`` of the actions.
        snapshot_dir (str or Path, optional): where to save the policy's weights at
            every evaluation. Defaults to ``None`` (not saved).

    Examples:
        >>> from torchrl.envs import GymEnv
        >>> from torchrl.envs.utils import RandomPolicy
        >>> env = GymEnv("Pendulum-v1")
        >>> hook = EvaluationHook(env, RandomPolicy(env.action_spec), num_episodes=2,
        ...                       max_steps=20, seed=0)
        >>> result = hook.evaluate()  # in a Trainer: hook.register(trainer)
        >>> sorted(result)
        ['episode_length', 'return_mean', 'return_std']
        >>> result["episode_length"]
        20.0
        >>> critic = lambda td: td["observation"][:, :2] * 0 + 1.0  # 2 critics, Q=1
        >>> hook = EvaluationHook(env, RandomPolicy(env.action_spec), num_episodes=1,
        ...                       max_steps=20, seed=0, critic=critic, gamma=0.5,
        ...                       critic_groups=[(0, 1)])
        >>> result = hook.evaluate()
        >>> result["q_estimate"], result["q_estimate_group0"]
        (1.0, 1.0)
        >>> sorted(key for key in result if "bias" in key)
        ['q_bias', 'q_bias_group0']
    """

    def __init__(
        self,
        env: EnvBase,
        policy: Callable[[TensorDictBase], TensorDictBase],
        *,
        interval: int = 10_000,
        num_episodes: int = 10,
        max_steps: int = 1000,
        seed: int | None = None,
        at_start: bool = True,
        at_end: bool = True,
        logger=None,
        prefix: str = "eval",
        critic: Callable[[TensorDictBase], torch.Tensor] | None = None,
        critic_groups: Sequence[Sequence[int]] = (),
        gamma: float = 0.99,
        action_bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
        snapshot_dir: str | Path | None = None,
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1 frame, got {interval}.")
        if num_episodes < 1:
            raise ValueError(f"num_episodes must be >= 1, got {num_episodes}.")
        self.env = env
        self.policy = policy
        self.interval = int(interval)
        self.num_episodes = int(num_episodes)
        self.max_steps = int(max_steps)
        self.seed = seed
        self.at_start = at_start
        self.at_end = at_end
        self.logger = logger
        self.prefix = prefix
        self.critic = critic
        self.critic_groups = tuple(tuple(int(i) for i in g) for g in critic_groups)
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma}.")
        self.gamma = float(gamma)
        self.action_bounds = action_bounds
        self.snapshot_dir = None if snapshot_dir is None else Path(snapshot_dir)
        self.history: list[tuple[int, float]] = []  # (frame, mean return)
        self._trainer: Trainer | None = None

    @property
    def last_return(self) -> float | None:
        """Mean return of the latest evaluation, ``None`` before the first."""
        return self.history[-1][1] if self.history else None

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Run the episodes now and return their statistics (nothing is logged)."""
        returns, lengths, rollouts, actions = [], [], [], []
        with timeit("eval"), set_exploration_type(ExplorationType.DETERMINISTIC):
            if self.seed is not None:
                self.env.set_seed(self.seed)
            for _ in range(self.num_episodes):
                rollout = self.env.rollout(
                    self.max_steps, self.policy, break_when_any_done=True
                )
                returns.append(rollout.get(("next", "reward")).sum().item())
                lengths.append(float(rollout.shape[-1]))
                actions.append(rollout.get("action"))
                if self.critic is not None:
                    rollouts.append(rollout)
            bias = self.overestimation(rollouts) if rollouts else {}
        returns = torch.tensor(returns, dtype=torch.float64)
        out = {
            "return_mean": returns.mean().item(),
            "return_std": returns.std(correction=0).item(),
            "episode_length": sum(lengths) / len(lengths),
            **bias,
        }
        if self.action_bounds is not None:
            out["action_saturation"] = self.saturation(torch.cat(actions))
        return out

    def saturation(self, actions: torch.Tensor) -> float:
        """Fraction of ``actions``' components within 1% of the half-range from a
        bound of ``action_bounds``."""
        low, high = (bound.to(actions.device) for bound in self.action_bounds)
        middle, half = (high + low) / 2, (high - low) / 2
        at_bound = (actions - middle).abs() >= 0.99 * half
        return at_bound.float().mean().item()

    def overestimation(self, rollouts: Sequence[TensorDictBase]) -> dict[str, float]:
        """Critic estimates against discounted returns over episodes' states.

        Each rollout is one episode ``[T]`` as ``env.rollout`` returns it. See the
        class docstring for the definitions; call under the exploration type the
        evaluation uses (the bootstrap action is the policy's).
        """
        names = [""] + [f"_group{g}" for g in range(len(self.critic_groups))]
        estimates = {name: [] for name in names}
        targets = {name: [] for name in names}
        for rollout in rollouts:
            rollout = rollout.reshape(-1)
            values = self._estimates(rollout.exclude("next"))
            reward = rollout.get(("next", "reward")).reshape(-1).double()
            terminated = rollout.get(("next", "terminated"), None)
            if terminated is None:
                terminated = rollout.get(("next", "done"))
            if bool(terminated[-1].any()):
                tail = dict.fromkeys(names, 0.0)
            else:  # time limit (or max_steps): bootstrap with the same estimate
                last = rollout.get("next")[-1:].copy()
                last.set("action", self.policy(last.clone()).get("action"))
                tail = {k: float(v[0]) for k, v in self._estimates(last).items()}
            discounts = self.gamma ** torch.arange(
                len(reward), 0, -1, dtype=torch.float64
            )  # gamma^(T - t)
            rewards_to_go = self._rewards_to_go(reward)
            for name in names:
                estimates[name].append(values[name].double())
                targets[name].append(rewards_to_go + discounts * tail[name])
        out = {}
        for name in names:
            estimate = torch.cat(estimates[name]).mean().item()
            target = torch.cat(targets[name]).mean().item()
            out[f"q_estimate{name}"] = estimate
            out[f"mc_return{name}"] = target
            out[f"q_bias{name}"] = estimate - target
        return out

    def _rewards_to_go(self, reward: torch.Tensor) -> torch.Tensor:
        """``out[t] = sum_{k >= t} gamma^(k - t) reward[k]`` of a 1-D tensor."""
        out, running = [], 0.0
        for value in reversed(reward.tolist()):
            running = value + self.gamma * running
            out.append(running)
        return torch.tensor(out[::-1], dtype=torch.float64)

    def _estimates(self, batch: TensorDictBase) -> dict[str, torch.Tensor]:
        """``{"": mean over critics, "_group<g>": min over group g}``, each ``[N]``."""
        values = self.critic(batch)
        values = values.reshape(batch.numel(), -1).float()
        out = {"": values.mean(-1)}
        for index, group in enumerate(self.critic_groups):
            out[f"_group{index}"] = values[:, list(group)].min(-1).values
        return out

    def _run(self) -> None:
        frames = _frames(self._trainer)
        result = self.evaluate()
        self.history.append((frames, result["return_mean"]))
        if self.snapshot_dir is not None:
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
            torch.save(self.policy.state_dict(), self.snapshot_path(frames))
        logger = self.logger
        if logger is None and self._trainer is not None:
            logger = self._trainer.logger
        if logger is not None:
            logger.log_metrics(
                {f"{self.prefix}/{key}": value for key, value in result.items()},
                step=frames,
            )

    def snapshot_path(self, frames: int) -> Path:
        """Where the policy evaluated at ``frames`` is saved (``snapshot_dir``)."""
        return self.snapshot_dir / f"frame{frames}.pt"

    def setup(self) -> None:
        """Evaluate before training (once per run, not again after a resume)."""
        if self.at_start and not self.history:
            self._run()

    def __call__(self, batch: TensorDictBase | None = None) -> None:
        frames = _frames(self._trainer)
        last = self.history[-1][0] if self.history else -1
        due = frames // self.interval > max(last, 0) // self.interval
        if self.at_end and self._trainer is not None:
            due = due or (frames >= self._trainer.total_frames and last != frames)
        if due:
            self._run()

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(item) for item in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [(int(f), float(r)) for f, r in state_dict["history"]]

    def register(self, trainer: Trainer, name: str = "evaluation") -> None:
        self._trainer = trainer
        trainer.register_module(name, self)
        trainer.register_op("setup", self.setup)
        trainer.register_op("post_steps_log", self)


class FiniteCheckHook(TrainerHookBase):
    """Stop with an error naming the step when the environment returns NaN or inf.

    Checks ``keys`` of every collected batch (``[*B, T]``, time last) before anything
    stores it, and raises :class:`FloatingPointError` with the key, the global
    environment step (frames collected before the batch plus the step's position
    in it) and, when a ``StepCounter`` is present, the step within its episode.
    :meth:`register` places it first at ``"batch_process"``; register it before a
    replay-buffer hook.

    Keyword Args:
        keys (sequence of NestedKey): entries to check. Defaults to the observation,
            the next observation and the reward.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> check = FiniteCheckHook()
        >>> reward = torch.zeros(4, 1)
        >>> reward[2] = float("nan")
        >>> batch = TensorDict(observation=torch.zeros(4, 3),
        ...                    next=TensorDict(observation=torch.zeros(4, 3),
        ...                                    reward=reward), batch_size=[4])
        >>> try:
        ...     check(batch)
        ... except FloatingPointError as err:
        ...     print(str(err).split(" (step")[0])
        The environment returned a non-finite ('next', 'reward') at environment step 3
    """

    def __init__(
        self,
        keys: Sequence[NestedKey] = (
            "observation",
            ("next", "observation"),
            ("next", "reward"),
        ),
    ) -> None:
        self.keys = tuple(keys)
        self._trainer: Trainer | None = None

    def __call__(self, batch: TensorDictBase) -> TensorDictBase:
        for key in self.keys:
            value = batch.get(key, None)
            if value is None or bool(torch.isfinite(value).all()):
                continue
            bad = ~torch.isfinite(value.reshape(*batch.batch_size, -1)).all(-1)
            position = bad.nonzero()[0].tolist()  # first bad (env, ..., time)
            time, num_steps = position[-1], batch.batch_size[-1]
            num_envs = max(1, batch.numel() // num_steps)
            env_index = 0
            for size, index in zip(batch.batch_size[:-1], position[:-1], strict=True):
                env_index = env_index * size + index
            frames = _frames(self._trainer)
            step = frames + time * num_envs + env_index + 1
            where = f"step {time + 1} of the batch collected after {frames} frames"
            if batch.ndim > 1:
                where += f", env {env_index}"
            count = batch.get(("next", "step_count"), None)
            if count is not None:
                where += f", episode step {int(count[tuple(position)].max())}"
            raise FloatingPointError(
                f"The environment returned a non-finite {key!r} at environment step "
                f"{step} ({where})."
            )
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass

    def register(self, trainer: Trainer, name: str = "finite_check") -> None:
        self._trainer = trainer
        trainer.register_module(name, self)
        trainer.register_op("batch_process", self)


class EpisodeStats(TrainerHookBase):
    """Returns of the training episodes that ended in each batch (``pre_steps_log``)."""

    def __init__(self) -> None:
        self.last_return: float | None = None
        self.episodes = 0

    def __call__(self, batch: TensorDictBase) -> dict[str, float] | None:
        done = batch.get(("next", "done")).squeeze(-1)
        if not bool(done.any()):
            return None
        returns = batch.get(("next", "episode_reward")).squeeze(-1)[done]
        self.last_return = returns[-1].item()
        self.episodes += returns.numel()
        return {"train/episode_return": returns.mean().item()}

    def state_dict(self) -> dict[str, Any]:
        return {"last_return": self.last_return, "episodes": self.episodes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_return = state_dict["last_return"]
        self.episodes = int(state_dict["episodes"])

    def register(self, trainer: Trainer, name: str = "episode_stats") -> None:
        trainer.register_module(name, self)
        trainer.register_op("pre_steps_log", self)


class RunTiming(LogTiming):
    """TorchRL's ``LogTiming`` (total seconds per ``timeit`` timer) since the run began.

    ``timeit`` counts what this process timed. The hook's state, saved with the
    trainer's, holds the totals so far, and a resumed run adds them to its own: the
    logged ``<prefix>/<timer>`` then add up to what the run's frames cost (the work
    done after the last checkpoint, lost and redone, counted once).

    Examples:
        >>> from torchrl import timeit
        >>> from torchrl_gem.trainer import RunTiming
        >>> timeit.erase()
        >>> timing = RunTiming()
        >>> timing.load_state_dict({"prefix": "time", "totals": {"update": 100.0}})
        >>> with timeit("update"):
        ...     pass
        >>> round(timing()["time/update"])
        100
    """

    def __init__(self, prefix: str = "time") -> None:
        super().__init__(prefix=prefix, percall=False)
        self.carried: dict[str, float] = {}  # the resumed checkpoint's totals

    def totals(self) -> dict[str, float]:
        """Seconds per timer: the carried totals plus this process's."""
        totals = dict(self.carried)
        for name, seconds in timeit.todict(percall=False).items():
            if seconds or name in totals:  # erased timers keep their names at 0
                totals[name] = totals.get(name, 0.0) + seconds
        return totals

    def __call__(self, batch: TensorDictBase | None = None) -> dict[str, float]:
        return {f"{self.prefix}/{name}": value for name, value in self.totals().items()}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "totals": self.totals()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.percall = False  # totals are what carry over
        self.carried = dict(state_dict.get("totals", {}))  # older checkpoints: none


class ProgressBar:
    """tqdm bar: frames, frames/s, last training episode return, last evaluation."""

    def __init__(
        self, trainer: Trainer, stats: EpisodeStats, evaluation, enabled: bool
    ):
        self.trainer, self.stats, self.evaluation = trainer, stats, evaluation
        self.enabled = enabled
        self.bar = None

    def start(self) -> None:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.trainer.total_frames,
                initial=self.trainer.collected_frames,
                unit="frame",
                dynamic_ncols=True,
            )

    def __call__(self, batch: TensorDictBase | None = None) -> None:
        if self.bar is None:
            return
        self.bar.update(self.trainer.collected_frames - self.bar.n)
        postfix = {}
        if self.stats.last_return is not None:
            postfix["ep_return"] = f"{self.stats.last_return:.1f}"
        if self.evaluation.last_return is not None:
            postfix["eval"] = f"{self.evaluation.last_return:.1f}"
        self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
