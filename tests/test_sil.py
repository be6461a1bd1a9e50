"""The self-imitation pieces (torchrl_gem.sil), against hand computations.

Monte-Carlo returns of stored episodes, the SIL critic term (values, gradients, the
released normaliser and weighting), and the hook's prioritized sampling.
"""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import ValueOperator
from torchrl.objectives import TD3Loss

from torchrl_gem import EpisodicMemory, make_gem_actor, make_gem_critics
from torchrl_gem.sil import MonteCarloReturn, SelfImitationHook, SelfImitationLoss

NAN = float("nan")


# ------------------------------------------------------------------ helpers
class LinearQ(nn.Module):
    """``Q(s, a) = w . s + u . a``: values chosen by hand through the inputs."""

    def __init__(self, weight, action_weight) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(weight))
        self.action_weight = nn.Parameter(torch.tensor(action_weight))

    def forward(self, observation, action):
        value = (observation * self.weight).sum(-1, keepdim=True)
        return value + (action * self.action_weight).sum(-1, keepdim=True)


class ConstantActor(nn.Module):
    """``pi(s) = b`` for every state."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([value]))

    def forward(self, observation):
        return observation[..., :1] * 0 + self.bias


def two_critics():
    """Critic 0 reads the first observation entry, critic 1 the second; + action."""
    return [
        ValueOperator(LinearQ([1.0, 0.0], [1.0]), in_keys=["observation", "action"]),
        ValueOperator(LinearQ([0.0, 1.0], [1.0]), in_keys=["observation", "action"]),
    ]


def constant_actor(value: float) -> TensorDictModule:
    return TensorDictModule(
        ConstantActor(value), in_keys=["observation"], out_keys=["action"]
    )


def hand_batch(**extra) -> TensorDict:
    """Q0 = [0, 1, 2, 0.5], Q1 = [0, 3, -1, 0.5] at the stored (zero) actions."""
    return TensorDict(
        observation=torch.tensor([[0.0, 0.0], [1.0, 3.0], [2.0, -1.0], [0.5, 0.5]]),
        action=torch.zeros(4, 1),
        mc_return=torch.tensor([[0.5], [2.5], [1.0], [NAN]]),  # the last: running
        batch_size=[4],
        **extra,
    )


# R - Q0 = [0.5, 1.5, -1, -]; R - Q1 = [0.5, -0.5, 2, -]; clip 1: one-sided Huber
# l(0.5) = 0.125, l(1.5) = 1 * (1.5 - 0.5) = 1, l(2) = 1.5
PER_SAMPLE = torch.tensor([0.125, 0.5, 0.75, 0.0])  # mean over the 2 critics
ADVANTAGE = torch.tensor([0.5, 0.5, 0.5, 0.0])  # mean_k min((R - Q_k)_+, 1)
NUM_VALID = 2.0  # (2 samples with R > Q0 + 2 with R > Q1) / 2


# ------------------------------------------------------- Monte-Carlo returns
def test_monte_carlo_returns_by_hand():
    returns = MonteCarloReturn(gamma=0.9)
    # A: 3 steps, done; D: a running episode cut mid-sequence (memory layout);
    # B: 2 steps, done; C: 2 steps still running at the end
    reward = torch.tensor([1.0, 2.0, 3.0, 7.0, 7.0, 5.0, -1.0, 1.0, 1.0])
    done = torch.tensor([0, 0, 1, 0, 0, 0, 1, 0, 0], dtype=torch.bool)
    cut = torch.tensor([0, 0, 0, 0, 1, 0, 0, 0, 0], dtype=torch.bool)
    out = returns.returns(reward, done, cut)
    expected = [1 + 0.9 * (2 + 0.9 * 3), 2 + 0.9 * 3, 3, NAN, NAN, 5 - 0.9, -1]
    expected += [NAN, NAN]
    torch.testing.assert_close(out, torch.tensor(expected), equal_nan=True)
    # without the cut, D runs on into B: one episode of 4 steps ending with done
    chained = returns.returns(reward, done)
    assert chained[3].item() == pytest.approx(7 + 0.9 * 7 + 0.81 * 5 - 0.729)
    stored = TensorDict(
        {"next": {"reward": reward.unsqueeze(-1), "done": done.unsqueeze(-1)}}, [9]
    )
    pairs = returns.twin_returns(stored, cut=cut)
    assert pairs.shape == (9, 2)
    torch.testing.assert_close(pairs[:, 0], pairs[:, 1], equal_nan=True)


def test_monte_carlo_returns_fill_an_episodic_memory():
    """Terminated and truncated episodes: no bootstrap; a running one: no return."""
    memory = EpisodicMemory(capacity=50)
    # episode 0 terminates at step 2, episode 1 is truncated at step 5 (time
    # limit), episode 2 is still running after step 7
    traj = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    reward = torch.tensor([1.0, 2.0, 4.0, 8.0, 0.0, 2.0, 1.0, 1.0])
    done = torch.tensor([0, 0, 1, 0, 0, 1, 0, 0], dtype=torch.bool)
    terminated = torch.tensor([0, 0, 1, 0, 0, 0, 0, 0], dtype=torch.bool)
    steps = len(traj)
    memory.extend(
        TensorDict(
            observation=torch.arange(steps, dtype=torch.float32).unsqueeze(-1),
            action=torch.zeros(steps, 1),
            collector=TensorDict(traj_ids=traj, batch_size=[steps]),
            next=TensorDict(
                observation=torch.zeros(steps, 1),
                reward=reward.unsqueeze(-1),
                done=done.unsqueeze(-1),
                terminated=terminated.unsqueeze(-1),
                truncated=(done & ~terminated).unsqueeze(-1),
                batch_size=[steps],
            ),
            batch_size=[steps],
        )
    )
    memory.refresh(MonteCarloReturn(gamma=0.5))
    expected = [1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4, 4]  # terminated
    expected += [8 + 0.0 + 0.25 * 2, 0 + 0.5 * 2, 2]  # truncated: stops there
    expected += [NAN, NAN]  # running
    batch = memory.sample(400)
    index = batch["observation"].squeeze(-1).long()
    torch.testing.assert_close(
        batch["memory_return"][:, 0], torch.tensor(expected)[index], equal_nan=True
    )
    assert set(index.tolist()) == set(range(steps))


# --------------------------------------------------------------------- loss
def test_sil_loss_by_hand():
    loss = SelfImitationLoss(
        two_critics(), clip=1.0, coeff=0.1, reduction="none", min_valid=3
    )
    batch = hand_batch()
    torch.testing.assert_close(loss(batch)["loss_sil"], 0.1 * PER_SAMPLE)
    torch.testing.assert_close(batch["sil_advantage"], ADVANTAGE)
    total = 0.1 * PER_SAMPLE.sum()
    for reduction, value in [
        ("sum", total),
        ("mean", total / 4),
        ("valid", total / 3),  # max(2 valid, min_valid=3)
    ]:
        loss.reduction = reduction
        out = loss(hand_batch())
        assert out["loss_sil"].item() == pytest.approx(value.item())
        assert out["sil_valid"].item() == NUM_VALID
        assert out["sil_advantage"].item() == pytest.approx(ADVANTAGE.mean().item())
    loss.reduction, loss.min_valid = "valid", 1
    assert loss(hand_batch())["loss_sil"].item() == pytest.approx(total.item() / 2)


def test_sil_loss_weights_and_no_clip():
    loss = SelfImitationLoss(two_critics(), clip=None, reduction="none")
    weights = torch.tensor([1.0, 0.5, 2.0, 1.0])
    out = loss(hand_batch(priority_weight=weights))["loss_sil"]
    # u^2 / 2: critic 0 [0.125, 1.125, 0, 0], critic 1 [0.125, 0, 2, 0]
    expected = torch.tensor([0.125, 1.125 / 2, 1.0, 0.0]) * weights
    torch.testing.assert_close(out, expected)


def test_sil_gradient_is_the_released_one():
    """d loss / d Q_k,i = -coeff W_i min((R_i - Q_k,i)_+, c) / (2 N): the released
    term's gradient per sample, with N = max(valid, 64) (here min_valid=3)."""
    loss = SelfImitationLoss(two_critics(), clip=1.0, coeff=0.1, min_valid=3)
    loss.reduction = "valid"
    loss(hand_batch())["loss_sil"].backward()
    grad = loss.qvalue_network_params["module", "weight"].grad  # [2 critics, 2]
    scale = -0.5 * 0.1 / 3
    # critic 0: advantages [0.5, 1, 0, 0] at states [0,0], [1,3], ...: 1 * [1, 3]
    # critic 1: advantages [0.5, 0, 1, 0]: 1 * [2, -1]
    expected = scale * torch.tensor([[1.0, 3.0], [2.0, -1.0]])
    torch.testing.assert_close(grad, expected)


def test_sil_loss_at_the_policy_action():
    """action_source="policy": Q(s, pi(s)), the stored action ignored, no actor grad."""
    loss = SelfImitationLoss(
        two_critics(), actor_network=constant_actor(-1.0), action_source="policy"
    )
    loss.reduction = "none"
    batch = hand_batch()
    batch["action"] = torch.full((4, 1), 100.0)  # ignored
    loss(batch)
    # every Q lower by 1: R - Q0 = [1.5, 2.5, 0, -], R - Q1 = [1.5, 0.5, 3, -]
    torch.testing.assert_close(
        batch["sil_advantage"], torch.tensor([1.0, 0.75, 0.5, 0.0])
    )
    loss(batch)["loss_sil"].sum().backward()
    assert loss.actor_network_params["module", "bias"].grad is None


def test_sil_loss_refuses_bad_input():
    loss = SelfImitationLoss(two_critics())
    with pytest.raises(KeyError, match="mc_return"):
        loss(hand_batch().exclude("mc_return"))
    with pytest.raises(ValueError, match="must have shape"):
        loss(hand_batch().set("mc_return", torch.zeros(4, 2)))
    with pytest.raises(ValueError, match="needs the actor_network"):
        SelfImitationLoss(two_critics(), action_source="policy")
    with pytest.raises(ValueError, match="reduction"):
        SelfImitationLoss(two_critics(), reduction="max")
    renamed = SelfImitationLoss(two_critics())
    renamed.set_keys(mc_return="R")
    batch = hand_batch()
    batch["R"] = batch.pop("mc_return")
    assert torch.isfinite(renamed(batch)["loss_sil"])


def test_attached_to_trains_the_td3_critics():
    spec = Bounded(-1.0, 1.0, shape=(2,))
    td3 = TD3Loss(
        make_gem_actor(3, spec, hidden_sizes=(8,)),
        make_gem_critics(3, 2, num_critics=2, hidden_sizes=(8,)),
        action_spec=spec,
    )
    sil = SelfImitationLoss.attached_to(td3, action_source="policy")
    assert sil.qvalue_network_params is td3.qvalue_network_params
    assert sil.actor_network_params is td3.actor_network_params
    batch = TensorDict(
        observation=torch.randn(16, 3),
        action=torch.rand(16, 2),
        mc_return=torch.full((16, 1), 100.0),  # far above every estimate
        batch_size=[16],
    )
    sil(batch)["loss_sil"].backward()
    grads = [p.grad for p in td3.qvalue_network_params.values(True, True)]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in td3.actor_network_params.values(True, True))
    # the policy's action is the TD3 actor's: moving that actor changes the values
    before = sil.critic_values(batch).detach()
    with torch.no_grad():
        td3.actor_network_params.apply(lambda p: p.add_(1.0))
    assert not torch.equal(before, sil.critic_values(batch).detach())


# --------------------------------------------------------------------- hook
def hook_setup(**kwargs):
    """A finished episode of 6 steps and a running one of 2; critics at Q = 0."""
    memory = EpisodicMemory(capacity=20)
    reward = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.2, 0.4, 1.0, 1.0])
    done = torch.tensor([0, 0, 0, 0, 0, 1, 0, 0], dtype=torch.bool)
    traj = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    memory.extend(
        TensorDict(
            observation=torch.arange(8.0).unsqueeze(-1).expand(8, 2).clone(),
            action=torch.zeros(8, 1),
            collector=TensorDict(traj_ids=traj, batch_size=[8]),
            next=TensorDict(
                observation=torch.zeros(8, 2),
                reward=reward.unsqueeze(-1),
                done=done.unsqueeze(-1),
                terminated=done.unsqueeze(-1),
                batch_size=[8],
            ),
            batch_size=[8],
        )
    )
    memory.refresh(MonteCarloReturn(gamma=0.5))
    critics = two_critics()
    for critic in critics:
        nn.init.zeros_(critic.module.weight)
        nn.init.zeros_(critic.module.action_weight)
    loss = SelfImitationLoss(critics, coeff=0.1, reduction="valid", min_valid=1)
    optimizer = torch.optim.SGD(loss.qvalue_network_params.values(True, True), lr=0.0)
    kwargs.setdefault("batch_size", 5)
    return memory, loss, optimizer, SelfImitationHook(memory, loss, optimizer, **kwargs)


# G = [0.025, 0.05, 0.1, 0.2, 0.4, 0.4] for the finished episode (gamma 0.5)
RETURNS = torch.tensor([0.025, 0.05, 0.1, 0.2, 0.4, 0.4], dtype=torch.float64)


def test_hook_priorities_by_hand():
    memory, loss, _, hook = hook_setup()
    slots = hook.candidates()
    assert sorted(slots.tolist()) == list(range(6))  # the running episode: no return
    assert hook.priority[:6].tolist() == [1.0] * 6  # new: the highest priority
    torch.manual_seed(0)
    chosen, _ = hook.sample(slots)
    torch.manual_seed(0)
    hook.step(slots)
    # Q = 0 stays (lr 0): the new priority is the clipped return, max(., 1e-6)
    torch.testing.assert_close(hook.priority[chosen], RETURNS[chosen])
    untouched = sorted(set(range(6)) - set(chosen.tolist()))
    assert hook.priority[untouched].tolist() == [1.0] * len(untouched)
    assert hook.num_steps == 1 and hook.max_priority == 1.0
    # a refresh keeps the priorities of transitions already seen
    memory.refresh(MonteCarloReturn(gamma=0.5))
    hook.candidates()
    torch.testing.assert_close(hook.priority[chosen], RETURNS[chosen])


def test_hook_importance_weights_by_hand():
    _, _, _, hook = hook_setup(priority_alpha=0.5, priority_beta=0.4, batch_size=50)
    slots = hook.candidates()
    hook.priority[:6] = torch.tensor([1.0, 4.0, 9.0, 16.0, 25.0, 36.0]).double()
    chosen, batch = hook.sample(slots)
    scaled = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).double()  # p^0.5
    probability = scaled / scaled.sum()
    weight = (6 * probability).pow(-0.4)
    expected = weight[chosen] / weight.max()
    torch.testing.assert_close(batch["priority_weight"].double(), expected)
    torch.testing.assert_close(batch["mc_return"].squeeze(-1).double(), RETURNS[chosen])
    # alpha 0: uniform draws, unit weights
    hook.priority_alpha = 0.0
    _, batch = hook.sample(slots)
    assert batch["priority_weight"].eq(1.0).all()


def test_hook_gradient_scaling_and_clipping():
    def parameter_step(**kwargs):
        _, loss, optimizer, hook = hook_setup(**kwargs)
        for group in optimizer.param_groups:
            group["lr"] = 1.0
        slots = hook.candidates()
        torch.manual_seed(3)
        _, batch = hook.sample(slots)
        torch.manual_seed(3)
        before = loss.qvalue_network_params.clone()
        hook.step(slots)
        change = loss.qvalue_network_params - before
        flat = torch.cat([v.flatten() for v in change.values(True, True)])
        return flat, batch["priority_weight"].sum().item()

    plain, _ = parameter_step(max_grad_norm=None, priority_beta=0.3)
    scaled, weight_sum = parameter_step(
        max_grad_norm=None, priority_beta=0.3, scale_by_weight_sum=True
    )
    assert plain.abs().sum() > 0
    torch.testing.assert_close(scaled, plain * weight_sum)
    clipped, _ = parameter_step(max_grad_norm=1e-3, scale_by_weight_sum=True)
    assert clipped.norm().item() == pytest.approx(1e-3, rel=1e-4)


def test_hook_waits_for_the_warm_up_and_resumes():
    memory, loss, optimizer, hook = hook_setup(start_frames=100)

    class Trainer:  # the part of a Trainer the hook reads
        collected_frames = 50

    hook._trainer = Trainer()
    hook()
    assert hook.num_steps == 0 and hook.log() is None
    Trainer.collected_frames = 100
    hook()
    assert hook.num_steps == 4  # num_updates
    assert set(hook.log()) == {"sil/loss", "sil/advantage", "sil/valid"}
    copy = SelfImitationHook(memory, loss, optimizer)
    copy.load_state_dict(hook.state_dict())
    assert torch.equal(copy.priority, hook.priority)
    assert torch.equal(copy.priority_stamp, hook.priority_stamp)
    assert copy.num_steps == 4 and copy.last_metrics == hook.last_metrics
    assert math.isfinite(copy.last_metrics["sil/loss"])
