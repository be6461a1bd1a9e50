"""The Trainer hooks of torchrl_gem.trainer, each on its own."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded

import torchrl_gem.trainer as gem_trainer
from torchrl_gem import GEMLoss, make_gem_actor, make_gem_critics, schedule
from torchrl_gem.trainer import BulkTargetUpdateHook, FiniteCheckHook


def test_memory_refresh_hook_counts_batches():
    class Memory:
        def __init__(self):
            self.calls = []

        def refresh(self, estimator):
            self.calls.append(estimator)

    memory = Memory()
    hook = gem_trainer.MemoryRefreshHook(memory, "estimator", every=3)
    refreshed = []
    for _ in range(4):
        before = len(memory.calls)
        hook()
        refreshed.append(len(memory.calls) > before)
    assert refreshed == [True, False, False, True]
    resumed = gem_trainer.MemoryRefreshHook(memory, "estimator", every=3)
    resumed.load_state_dict(hook.state_dict())  # mid-interval: the schedule goes on
    for _ in range(3):
        resumed()
    assert resumed.num_refreshes == 3 and len(memory.calls) == 3
    for every in (0, 1.5, True):
        with pytest.raises(ValueError, match="every must be"):
            gem_trainer.MemoryRefreshHook(memory, "estimator", every=every)
    # a memory whose refresh reports no diagnostics (FrameEpisodicMemory's) says so
    with pytest.raises(ValueError, match="Memory.refresh has no 'diagnostics'"):
        gem_trainer.MemoryRefreshHook(memory, "estimator", diagnostics=True)


def test_bulk_target_update_equals_sequential_polyak_steps():
    spec = Bounded(-1.0, 1.0, shape=(2,))

    def make():
        torch.manual_seed(0)
        return GEMLoss(
            make_gem_actor(3, spec, hidden_sizes=(8,)),
            make_gem_critics(3, 2, hidden_sizes=(8,)),
            action_spec=spec,
        )

    bulk, sequential = make(), make()
    for loss in (bulk, sequential):
        with torch.no_grad():  # move the online nets away from their targets
            torch.manual_seed(1)
            loss.actor_network_params.apply(lambda p: p.add_(torch.randn_like(p)))
            loss.qvalue_network_params.apply(lambda p: p.add_(torch.randn_like(p)))
    BulkTargetUpdateHook(bulk, tau=0.005, num_updates=200)()
    one_step = schedule._soft_update(sequential, 0.005)
    for _ in range(200):
        one_step.step()
    for name in ("target_actor_network_params", "target_qvalue_network_params"):
        got = getattr(bulk, name).flatten_keys()
        want = getattr(sequential, name).flatten_keys()
        for key in got.keys():
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)


def test_finite_check_names_env_and_episode_step():
    observation = torch.zeros(2, 5, 3)
    observation[1, 3, 0] = float("inf")
    batch = TensorDict(
        observation=observation,
        next=TensorDict(
            observation=torch.zeros(2, 5, 3),
            reward=torch.zeros(2, 5, 1),
            step_count=torch.arange(10).reshape(2, 5, 1),
        ),
        batch_size=[2, 5],
    )
    with pytest.raises(FloatingPointError) as err:
        FiniteCheckHook()(batch)
    assert "'observation' at environment step 8 " in str(err.value)
    assert "env 1, episode step 8" in str(err.value)


def test_stepper_returns_the_gradient_norms_it_stepped_with():
    from conftest import LossHost, tiny_loss, trajectory_batch

    torch.manual_seed(0)
    loss = tiny_loss()
    critic_params = list(loss.qvalue_network_params.values(True, True))
    actor_params = list(loss.actor_network_params.values(True, True))
    stepper = gem_trainer.DelayedActorStepper(
        torch.optim.SGD(actor_params, lr=0.0),  # lr 0: the grads stay to be read
        torch.optim.SGD(critic_params, lr=0.0),
        grad_norms=True,
    )
    batch = trajectory_batch(16, memory_return=True)
    out = stepper.step(LossHost(loss), batch)
    by_hand = {  # the actor's action bounds are buffers, without gradients
        name: torch.cat(
            [p.grad.reshape(-1) for p in params if p.grad is not None]
        ).norm()
        for name, params in (("qvalue", critic_params), ("actor", actor_params))
    }
    for name, norm in by_hand.items():
        assert norm > 0
        torch.testing.assert_close(out[f"grad_norm_{name}"], norm)
    second = stepper.step(LossHost(loss), batch)  # no actor step: the latest norm
    torch.testing.assert_close(second["grad_norm_actor"], by_hand["actor"])
    quiet = gem_trainer.DelayedActorStepper(
        torch.optim.SGD(actor_params), torch.optim.SGD(critic_params)
    )
    assert sorted(quiet.step(LossHost(loss), batch).keys()) == [
        "loss_actor",
        "loss_qvalue",
    ]


def test_action_saturation_counts_components_at_a_bound():
    hook = gem_trainer.EvaluationHook(
        None, None, action_bounds=(torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 4.0]))
    )
    # half-ranges 1 and 2; within 1% of them from a bound: -0.995, 3.99, 0.01
    actions = torch.tensor([[-0.995, 3.99], [0.5, 2.0], [0.98, 0.01], [1.0, 1.0]])
    assert hook.saturation(actions) == pytest.approx(4 / 8)


def test_critic_gradients_clipped_to_their_max_norm():
    from conftest import LossHost, tiny_loss, trajectory_batch

    torch.manual_seed(0)
    loss = tiny_loss()
    critic_params = list(loss.qvalue_network_params.values(True, True))
    before = [p.detach().clone() for p in critic_params]
    stepper = gem_trainer.DelayedActorStepper(
        torch.optim.SGD(loss.actor_network_params.values(True, True), lr=0.0),
        torch.optim.SGD(critic_params, lr=1.0),  # the step is minus the gradient
        grad_norms=True,
        critic_max_grad_norm=0.01,
    )
    batch = trajectory_batch(16, memory_return=True)
    batch["memory_return"] += 100.0  # far targets: a gradient norm well above 0.01
    out = stepper.step(LossHost(loss), batch)
    pairs = zip(critic_params, before, strict=True)
    moved = torch.cat([(p - b).reshape(-1) for p, b in pairs])
    assert out["grad_norm_qvalue"] > 1.0  # logged before the clip
    torch.testing.assert_close(moved.norm(), torch.tensor(0.01), rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="critic_max_grad_norm must be > 0"):
        gem_trainer.DelayedActorStepper(
            stepper.actor_optimizer, stepper.critic_optimizer, critic_max_grad_norm=0
        )


def test_policy_average_by_hand_and_through_its_state():
    from tensordict.nn import TensorDictModule

    online = TensorDictModule(torch.nn.Linear(2, 1, bias=False), ["x"], ["y"])
    weight = online.module.weight
    with torch.no_grad():
        weight.copy_(torch.tensor([[8.0, 0.0]]))
    hook = gem_trainer.PolicyAverageHook(online, decay=0.75)
    with torch.no_grad():
        weight.copy_(torch.tensor([[0.0, 4.0]]))
    hook()  # 0.75 * [8, 0] + 0.25 * [0, 4]
    with torch.no_grad():
        weight.copy_(torch.tensor([[4.0, 4.0]]))
    hook()  # 0.75 * [6, 1] + 0.25 * [4, 4]
    averaged = hook.policy.module.weight
    torch.testing.assert_close(averaged, torch.tensor([[5.5, 1.75]]))
    assert torch.equal(weight, torch.tensor([[4.0, 4.0]]))  # the online one untouched
    out = hook.policy(TensorDict(x=torch.tensor([[1.0, 2.0]]), batch_size=[1]))
    torch.testing.assert_close(out["y"], torch.tensor([[5.5 + 3.5]]))
    resumed = gem_trainer.PolicyAverageHook(online, decay=0.75)
    resumed.load_state_dict(hook.state_dict())
    torch.testing.assert_close(resumed.policy.module.weight, averaged)
    with pytest.raises(ValueError, match=r"decay must lie in \[0, 1\)"):
        gem_trainer.PolicyAverageHook(online, decay=1.0)
