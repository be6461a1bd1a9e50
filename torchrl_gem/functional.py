"""Twin back-propagation: the return that GEM's critics regress onto.

For a transition ``t`` whose trajectory ends at ``e`` and an estimator ``k`` the
``n``-step candidate follows the recorded rewards for ``n`` steps and then bootstraps
with estimator ``k``:

    G^k_t(n) = sum_{j<n} gamma^j r_{t+j} + gamma^n (1 - terminated_{t+n-1}) V^k_{t+n-1}

with ``n = 1 .. min(e - t + 1, H)``. Each estimator picks its best horizon and the
*other* estimator evaluates it ("twin back-propagation", Hu et al., ICML 2021,
arXiv:2103.06469), floored by the one-step target:

    out[t, 0] = max(G^0_t(n^1), G^0_t(1)),   out[t, 1] = max(G^1_t(n^0), G^1_t(1))

where ``n^k`` is the smallest maximiser of ``G^k_t``. Without the cross-evaluation
(an ablation) each estimator evaluates its own pick: ``out[t, k] = G^k_t(n^k)``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["discounted_returns", "twin_backprop_return"]

Floor = Literal["own", "selector"]


@torch.no_grad()
def twin_backprop_return(
    gamma: float,
    next_state_value: Tensor,
    reward: Tensor,
    done: Tensor,
    terminated: Tensor,
    *,
    cut: Tensor | None = None,
    max_horizon: int | None = None,
    time_dim: int = -2,
    zero_tail: bool = False,
    floor: Floor = "own",
    cross_evaluation: bool = True,
    return_horizon: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Twin back-propagated returns along stored trajectories.

    A trajectory ends where the environment ended the episode (``done``), where the
    caller cut it (``cut``: storage or slicing stopped there) and at the last index
    along ``time_dim`` (always a cut unless ``done`` is set there). Horizons never
    cross an end. Every end bootstraps from ``next_state_value`` unless
    ``terminated`` is set; only the environment's ends (``done``) also offer the
    zero-tail candidate, since a cut says nothing about what came after it.

    Args:
        gamma (float): discount factor, in ``[0, 1]``.
        next_state_value (Tensor): ``[*B, T, 2]``; column ``k`` is ``V^k(s_{t+1})``,
            the bootstrap value of estimator ``k`` (already reduced over its critic
            group) for transition ``t``.
        reward (Tensor): ``[*B, T, 1]`` rewards ``r_t``.
        done (Tensor): ``[*B, T, 1]`` bool, the environment ended the episode
            after step ``t`` (terminated or truncated).
        terminated (Tensor): ``[*B, T, 1]`` bool, true termination after step ``t``
            (no bootstrap).

    Keyword Args:
        cut (Tensor, optional): ``[*B, T, 1]`` bool, trajectory ends after step
            ``t`` that the environment did not make: a running episode's newest
            stored step, a slice end. They bootstrap and never offer the zero tail.
        max_horizon (int, optional): largest rollout length ``H``. ``None`` (default)
            lets the horizon run to the end of each trajectory.
        time_dim (int): the time dimension of every input. Defaults to ``-2``.
        zero_tail (bool): also offer, after each end that ``done`` marks, the
            candidate that bootstraps with ``0`` (the plain discounted reward-to-go).
            The released code has it because of the sentinel row it appends to each
            finished episode; it underestimates truncated episodes. Defaults to
            ``False``.
        floor (str): ``"own"`` (default, the paper) floors column ``k`` with
            ``G^k_t(1)``; ``"selector"`` floors it with ``G^{k'}_t(1)``, the one-step
            target of the estimator that selected the horizon, as the released MuJoCo
            code does.
        cross_evaluation (bool): evaluate each estimator's best horizon with the
            other estimator (default, GEM). ``False`` is the single-factor ablation
            of it: column ``k`` is estimator ``k``'s own best, ``max_n G^k_t(n)``,
            which is never below its one-step target, so ``floor`` has no effect
            (the selector is the column's own estimator).
        return_horizon (bool): also return the horizons. Defaults to ``False``.

    Returns:
        A ``[*B, T, 2]`` tensor with the dtype and device of ``next_state_value``,
        detached from any graph. With ``return_horizon``, also the ``[*B, T, 2]``
        long tensor of the horizons that column ``k`` is evaluated on, ``n^{1-k}``
        (the other estimator's pick, before the floor; ``n^k`` without the
        cross-evaluation; the zero-tail candidate of an end ``e`` counts as
        ``e - t + 2``).

    Examples:
        >>> import torch
        >>> from torchrl_gem import twin_backprop_return
        >>> reward = torch.tensor([[1.0], [0.0], [2.0]])
        >>> value = torch.tensor([[0.0, 6.0], [0.0, 0.0], [5.0, 1.0]])
        >>> done = torch.tensor([[False], [False], [True]])
        >>> terminated = torch.zeros_like(done)
        >>> # estimator 0 picks n = 3 (1 + 0 + 2 + 5 = 8), estimator 1 picks n = 1 (7)
        >>> twin_backprop_return(1.0, value, reward, done, terminated)
        tensor([[1., 7.],
                [7., 3.],
                [7., 3.]])
        >>> # without the cross-evaluation each keeps its own best (8 and 7)
        >>> twin_backprop_return(1.0, value, reward, done, terminated,
        ...                      cross_evaluation=False)
        tensor([[8., 7.],
                [7., 3.],
                [7., 3.]])
    """
    _check_inputs(
        gamma,
        next_state_value,
        reward,
        done,
        terminated,
        cut,
        max_horizon,
        floor,
        time_dim,
    )
    # sums accumulate in at least fp32 (NumPy, the CPU scan's loop, has no bf16)
    dtype = torch.promote_types(next_state_value.dtype, torch.float32)
    # Work with time as the second to last dimension: [*B, T, F].
    value = next_state_value.detach().to(dtype).transpose(time_dim, -2)
    reward = reward.detach().to(dtype).transpose(time_dim, -2)
    done = done.transpose(time_dim, -2)
    terminated = terminated.transpose(time_dim, -2)
    end = done.clone() if cut is None else done | cut.transpose(time_dim, -2)
    end[..., -1, :] = True  # the last index always ends a trajectory (a cut)
    tail = done if zero_tail else None  # the zero tail follows the env's ends only
    bootstrap = value * (~terminated).to(dtype)
    ends = end.reshape(-1).nonzero().squeeze(-1)  # rows are separated by the cut
    lengths = torch.diff(ends, prepend=ends.new_full((1,), -1))
    # the scan is exact whenever the horizon cap removes no candidate
    if max_horizon is None or max_horizon >= int(lengths.max()) + int(zero_tail):
        selected, horizon = _scan(
            gamma,
            bootstrap,
            reward,
            ends,
            lengths,
            tail,
            return_horizon,
            cross_evaluation,
        )
    else:
        selected, horizon = _horizon_limited(
            gamma, bootstrap, reward, end, tail, max_horizon, cross_evaluation
        )
    if cross_evaluation:
        # ``selected[..., k]`` is estimator k's horizon evaluated by the other one;
        # column k of the result holds estimator k's value: ``selected[..., 1 - k]``.
        one_step = reward + gamma * bootstrap
        floor_value = one_step if floor == "own" else one_step.flip(-1)
        selected = torch.maximum(selected.flip(-1), floor_value)
        horizon = horizon.flip(-1) if return_horizon else None
    result = selected.to(next_state_value.dtype).transpose(time_dim, -2)
    if not return_horizon:
        return result
    return result, horizon.long().transpose(time_dim, -2)


@torch.no_grad()
def discounted_returns(
    gamma: float, reward: Tensor, done: Tensor, cut: Tensor | None = None
) -> Tensor:
    """``[T]`` discounted returns-to-go of ``[T]`` steps laid end to end in time
    order: ``G_t = r_t + gamma G_{t+1}`` within an episode, no bootstrap.

    An episode ends after a ``done`` step or a ``cut`` one (a running episode's
    newest step); the last step always ends one. Episodes that did not end with
    ``done`` get ``NaN``: their return is not known yet.

    Examples:
        >>> import torch
        >>> reward = torch.tensor([1.0, 1.0, 2.0, 5.0])
        >>> done = torch.tensor([False, True, False, False])
        >>> discounted_returns(0.5, reward, done)
        tensor([1.5000, 1.0000,    nan,    nan])
    """
    reward, done = reward.reshape(-1), done.reshape(-1).bool()
    if reward.shape != done.shape:
        raise ValueError(
            f"reward and done must have as many steps, got {tuple(reward.shape)} "
            f"and {tuple(done.shape)}."
        )
    num_steps = reward.numel()
    if not num_steps:
        return reward.clone()
    end = done.clone() if cut is None else done | cut.reshape(-1).bool()
    end[-1] = True
    # pack the episodes left-aligned into [episodes, longest] and scan backwards
    episode = torch.cat([end.new_zeros(1, dtype=torch.long), end[:-1].cumsum(0)])
    ends = end.nonzero().squeeze(-1)
    starts = torch.cat([ends.new_zeros(1), ends[:-1] + 1])
    position = torch.arange(num_steps, device=reward.device) - starts[episode]
    longest = int(position.max()) + 1
    packed = reward.new_zeros(len(ends), longest + 1, dtype=torch.float64)
    packed[episode, position] = reward.double()
    for step in range(longest - 1, -1, -1):
        packed[:, step] += gamma * packed[:, step + 1]
    out = packed[episode, position].to(reward.dtype)
    finished = done[ends]  # did each episode end with the environment's done?
    return torch.where(finished[episode], out, torch.nan)


def _scan(
    gamma: float,
    bootstrap: Tensor,
    reward: Tensor,
    ends: Tensor,
    lengths: Tensor,
    tail: Tensor | None,
    track_horizon: bool,
    cross_evaluation: bool,
) -> tuple[Tensor, Tensor | None]:
    """Exact O(T) backward scan over the unbounded horizon.

    Returns the other estimator's value at each selector's best horizon (its own
    best value without ``cross_evaluation``), and, with ``track_horizon``, that
    horizon (float; else ``None``: the refresh's hot loop skips it).

    For ``n >= 2`` the candidates obey ``G^k_t(n) = r_t + gamma G^k_{t+1}(n - 1)``, a
    monotone map, so the best candidate at ``t`` is either ``n = 1`` or one step
    before the best candidate at ``t + 1``. The carry holds, per selecting estimator
    k, ``(best value of k, value of the other estimator on that same horizon)``, the
    latter only with ``cross_evaluation``.
    Ties go to the shorter horizon, as ``argmax`` does.

    ``tail`` (or ``None``) marks the ends after which the zero-tail candidate is
    offered; the scan starts those trajectories at ``0`` instead of ``-inf``.

    Every trajectory of every batch row is packed into one row of a
    ``[num_trajectories, longest]`` block, right-aligned so that all of them end at
    the last column: the loop then runs over the longest trajectory only, with no
    per-step end masks, vectorised over all trajectories.
    """
    features = bootstrap.shape[-1]
    longest = int(lengths.max())
    trajectory = torch.repeat_interleave(
        torch.arange(len(ends), device=ends.device), lengths
    )
    # column of step i: the trajectory's end sits at the last column
    column = (
        longest
        - 1
        - (ends[trajectory] - torch.arange(len(trajectory), device=ends.device))
    )
    # time-major [L, E, F] blocks, so that each step reads contiguous rows
    flat_index = column * len(ends) + trajectory
    flat_bootstrap = bootstrap.reshape(-1, features)
    packed = bootstrap.new_zeros(longest * len(ends), 2 * features + 1)
    packed[flat_index] = torch.cat(
        [flat_bootstrap, flat_bootstrap.flip(-1), reward.reshape(-1, 1)], -1
    )
    packed = packed.view(longest, len(ends), 2 * features + 1)
    xp = _loop_module(packed.device)
    blocks = packed.numpy() if xp is np else packed
    bootstraps = list(blocks[..., :features])
    others = list(blocks[..., features:-1])
    rewards = list(blocks[..., -1:])
    # best[:, k]: best candidate of selector k; evaluated[:, k]: the other
    # estimator's value on that same horizon. Both start at the zero tail or -inf.
    best = xp.full_like(bootstraps[0], -math.inf)
    if tail is not None:
        with_tail = tail.reshape(-1)[ends]
        best[with_tail.numpy() if xp is np else with_tail] = 0.0
    evaluated = best
    # the best horizon; 1 before the end makes the zero tail's n = e - t + 2
    horizon = xp.ones_like(best)
    outputs, horizons = [], []
    for t in range(longest - 1, -1, -1):
        # n = 1 wins ties (b >= best continuation); a -inf continuation always loses.
        take_one_step = bootstraps[t] >= best
        best = rewards[t] + gamma * xp.maximum(bootstraps[t], best)
        if cross_evaluation:  # the other estimator's value on that horizon
            evaluated = rewards[t] + gamma * xp.where(
                take_one_step, others[t], evaluated
            )
            outputs.append(evaluated)
        else:
            outputs.append(best)
        if track_horizon:
            horizon = xp.where(take_one_step, 1.0, horizon + 1.0)
            horizons.append(horizon)
    unpack = lambda blocks: torch.as_tensor(  # noqa: E731
        xp.concatenate(blocks[::-1]), device=packed.device
    )[flat_index].reshape(bootstrap.shape)
    if not track_horizon:
        return unpack(outputs), None
    if gamma == 0.0:  # every candidate is r_t: the tie goes to n = 1
        return unpack(outputs), torch.ones_like(bootstrap)
    return unpack(outputs), unpack(horizons)


def _loop_module(device: torch.device):
    """The array module of the scan's loop: NumPy on CPU, where its per-operation
    overhead (which bounds the loop) is lower, torch on accelerators."""
    return np if device.type == "cpu" else torch


def _horizon_limited(
    gamma: float,
    bootstrap: Tensor,
    reward: Tensor,
    end: Tensor,
    tail: Tensor | None,
    max_horizon: int,
    cross_evaluation: bool,
) -> tuple[Tensor, Tensor]:
    """Exact O(T * H) form for a finite horizon: enumerate n = 1 .. H in lockstep.

    Returns, like :func:`_scan`, the other estimator's value at each selector's best
    horizon (or its own best), and that horizon. Strict ``>`` keeps the shortest
    horizon on ties.
    """
    one_step = reward + gamma * bootstrap
    best, best_other = one_step, one_step.flip(-1)
    horizon = torch.ones_like(best)
    reward_sum = reward  # sum_{j<n} gamma^j r_{t+j}, for the current n
    alive = torch.ones_like(end)  # candidate n exists at t (no end before t + n - 1)
    discount = 1.0  # gamma^(n - 1)
    for n in range(2, max_horizon + 1):
        if tail is not None:
            # Candidate n = e - t + 2 after an end e = t + n - 2 that offers the
            # zero tail: the rewards to the end, then a zero bootstrap.
            rewards_only = reward_sum.expand_as(best)
            better = alive & _shift(tail, n - 2, fill=False) & (rewards_only > best)
            best = torch.where(better, rewards_only, best)
            best_other = torch.where(better, rewards_only, best_other)
            horizon = torch.where(better, float(n), horizon)
        alive = alive & ~_shift(end, n - 2, fill=True)  # no end at t + n - 2
        discount *= gamma
        reward_sum = reward_sum + discount * _shift(reward, n - 1, fill=0.0)
        value = reward_sum + discount * gamma * _shift(bootstrap, n - 1, fill=0.0)
        better = alive & (value > best)
        best = torch.where(better, value, best)
        best_other = torch.where(better, value.flip(-1), best_other)
        horizon = torch.where(better, float(n), horizon)
    return (best_other if cross_evaluation else best), horizon


def _shift(x: Tensor, steps: int, fill: float | bool) -> Tensor:
    """``out[..., t, :] = x[..., t + steps, :]``, ``fill`` past the end."""
    if steps == 0:
        return x
    out = torch.full_like(x, fill)
    if steps < x.shape[-2]:
        out[..., :-steps, :] = x[..., steps:, :]
    return out


def _check_inputs(
    gamma: float,
    next_state_value: Tensor,
    reward: Tensor,
    done: Tensor,
    terminated: Tensor,
    cut: Tensor | None,
    max_horizon: int | None,
    floor: str,
    time_dim: int,
) -> None:
    if next_state_value.ndim < 2 or next_state_value.shape[-1] != 2:
        raise ValueError(
            "next_state_value must have shape [*B, T, 2] (one column per twin "
            f"estimator), got {tuple(next_state_value.shape)}."
        )
    if not next_state_value.is_floating_point():
        raise ValueError(
            f"next_state_value must be floating point, got {next_state_value.dtype}."
        )
    if not next_state_value.numel():
        raise ValueError(
            "twin_backprop_return needs at least one transition, got "
            f"next_state_value of shape {tuple(next_state_value.shape)}."
        )
    _check_time_dim(time_dim, next_state_value.ndim)
    expected = (*next_state_value.shape[:-1], 1)
    masks = {"done": done, "terminated": terminated}
    if cut is not None:
        masks["cut"] = cut
    for name, tensor in (("reward", reward), *masks.items()):
        if tuple(tensor.shape) != expected:
            raise ValueError(
                f"{name} must have shape {expected} to match next_state_value "
                f"{tuple(next_state_value.shape)}, got {tuple(tensor.shape)}."
            )
    for name, tensor in masks.items():
        if tensor.dtype != torch.bool:
            raise ValueError(f"{name} must be a bool tensor, got {tensor.dtype}.")
    if (terminated & ~done).any():  # TorchRL: done = terminated | truncated
        where = (terminated & ~done).nonzero()[0].tolist()
        raise ValueError(
            f"terminated is set where done is not, at index {where}: done must be "
            "terminated | truncated (an end the horizons cannot cross)."
        )
    for name, tensor in (("reward", reward), ("next_state_value", next_state_value)):
        check_finite(name, tensor)
    check_return_options(gamma, max_horizon, floor)


def _check_time_dim(time_dim: int, ndim: int) -> None:
    """``time_dim`` must name a dimension before the twin columns' last one."""
    if isinstance(time_dim, bool) or not isinstance(time_dim, int):
        raise ValueError(f"time_dim must be an int, got {time_dim!r}.")
    if not -ndim <= time_dim < ndim or time_dim % ndim == ndim - 1:
        raise ValueError(
            f"time_dim={time_dim} must name one of the first {ndim - 1} dimensions "
            f"of next_state_value (ndim {ndim}; its last holds the two twin columns)."
        )


def check_finite(name: str, tensor: Tensor) -> None:
    """Refuse NaN/inf, naming ``name`` and the index of the first bad element."""
    finite = torch.isfinite(tensor)
    if not finite.all():
        where = tuple((~finite).nonzero()[0].tolist())
        raise ValueError(
            f"{name} has a non-finite value ({tensor[where].item()}) at index "
            f"{where} of shape {tuple(tensor.shape)}."
        )


def check_return_options(gamma: float, max_horizon: int | None, floor: str) -> None:
    """Validate the scalar options of :func:`twin_backprop_return`."""
    if not 0.0 <= float(gamma) <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}.")
    if max_horizon is not None and max_horizon < 1:
        raise ValueError(f"max_horizon must be None or >= 1, got {max_horizon}.")
    if floor not in ("own", "selector"):
        raise ValueError(f"floor must be 'own' or 'selector', got {floor!r}.")
