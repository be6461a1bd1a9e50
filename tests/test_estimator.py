"""TwinBackPropEstimator: target networks, reductions, keys, and its three uses."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import (
    LazyTensorStorage,
    ReplayBuffer,
    SliceSampler,
    TensorDictReplayBuffer,
)
from torchrl.modules import ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SACLoss, TD3Loss

from conftest import (
    ACT,
    OBS,
    SPEC,
    constant_value_estimator,
    tiny_actor,
    tiny_critics,
    tiny_loss,
    trajectory_batch,
)
from torchrl_gem import (
    TwinBackPropEstimator,
    TwinBackPropTransform,
    twin_backprop_return,
)
from torchrl_gem.estimator import default_twin_groups


def td3_style_target(loss, batch, pair, noise):
    """r + gamma (1 - terminated) min_{i in pair} Q'_i(s', clip(pi'(s') + noise))."""
    next_td = batch["next"].clone()
    with loss.target_actor_network_params.to_module(loss.actor_network):
        action = loss.actor_network(next_td.select("observation"))["action"]
    next_td["action"] = (action + noise).clamp(-1, 1)
    values = []
    for i in pair:
        with loss.target_qvalue_network_params[i].to_module(loss.qvalue_network):
            values.append(loss.qvalue_network(next_td.clone())["state_action_value"])
    value = torch.stack(values).min(0).values
    return next_td["reward"] + 0.9 * value * (~next_td["terminated"])


@pytest.mark.parametrize("policy_noise", [0.0, 0.3])
def test_one_step_candidate_is_td3_clipped_double_q_target(policy_noise):
    loss = tiny_loss(policy_noise=policy_noise, noise_clip=0.2)
    estimator = loss.make_value_estimator(gamma=0.9, max_horizon=1).value_estimator
    batch = trajectory_batch(16, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(7)
    returns = estimator(batch.clone())["memory_return"]
    torch.manual_seed(7)
    noise = (torch.randn(16, ACT) * policy_noise).clamp(-0.2, 0.2)
    for column, pair in enumerate(((0, 1), (2, 3))):
        expected = td3_style_target(loss, batch, pair, noise)
        torch.testing.assert_close(returns[:, column : column + 1], expected)


@pytest.mark.parametrize("num_critics", [2, 4])
def test_one_step_candidate_equals_torchrl_td3_loss_target(num_critics):
    """At horizon 1 the twin returns hold TD3Loss's own target: with 2 critics in
    both groups, each column is it; with 4 in pairs (0, 1) and (2, 3), the min of the
    two columns is its 4-critic target, that of td3_gemnets (td3_tbp's control)."""
    torch.manual_seed(0)
    td3 = TD3Loss(
        tiny_actor(),
        tiny_critics(num_critics),
        action_spec=SPEC,
        num_qvalue_nets=num_critics,
        policy_noise=0.3,
        noise_clip=0.4,
    )
    td3.make_value_estimator(gamma=0.9)
    groups = ((0, 1), (0, 1)) if num_critics == 2 else None  # None: the pairs
    estimator = TwinBackPropEstimator.for_loss(
        td3, gamma=0.9, max_horizon=1, twin_groups=groups
    )
    batch = trajectory_batch(32, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    _, metadata = td3.value_loss(batch.clone())
    torch.manual_seed(3)
    returns = estimator(batch.clone())["memory_return"]
    torch.testing.assert_close(returns.min(-1).values, metadata["target_value"])
    if num_critics == 2:
        torch.testing.assert_close(returns[:, 0], returns[:, 1])
    else:
        assert not torch.equal(returns[:, 0], returns[:, 1])  # two different pairs


@pytest.mark.parametrize("cross_evaluation", [True, False])
def test_matches_functional_core_on_its_own_values(generator, cross_evaluation):
    loss = tiny_loss().make_value_estimator(
        gamma=0.95, cross_evaluation=cross_evaluation
    )
    estimator = loss.value_estimator
    batch = trajectory_batch(3, 12, generator=generator)
    estimator.policy_noise = 0.0  # deterministic, so both calls see equal values
    values = estimator.next_state_value(batch["next"])
    inputs = [batch["next", key] for key in ("reward", "done", "terminated")]
    expected = twin_backprop_return(
        0.95, values, *inputs, cross_evaluation=cross_evaluation
    )
    other = twin_backprop_return(
        0.95, values, *inputs, cross_evaluation=not cross_evaluation
    )
    out = estimator(batch)
    torch.testing.assert_close(out["memory_return"], expected)
    assert not torch.allclose(out["memory_return"], other)  # the option matters
    torch.testing.assert_close(
        out["value_target"], expected.min(-1, keepdim=True).values
    )


def test_uses_target_parameters_only(generator):
    loss = tiny_loss(policy_noise=0.0)
    estimator = loss.make_value_estimator(gamma=0.9).value_estimator
    batch = trajectory_batch(20, generator=generator)
    before = estimator(batch.clone())["memory_return"]
    with torch.no_grad():  # trainable parameters only: buffers are constants
        for p in loss.actor_network_params.values(True, True):
            p.add_(1.0) if p.requires_grad else None
        for p in loss.qvalue_network_params.values(True, True):
            p.add_(1.0) if p.requires_grad else None
    torch.testing.assert_close(estimator(batch.clone())["memory_return"], before)
    with torch.no_grad():
        for p in loss.target_qvalue_network_params.values(True, True):
            p.add_(0.1)
    assert not torch.allclose(estimator(batch.clone())["memory_return"], before)


def test_smoothing_noise_is_clipped_and_shared_by_critics(generator):
    loss = tiny_loss(policy_noise=10.0, noise_clip=0.05)
    estimator = loss.make_value_estimator(gamma=0.9).value_estimator
    states = trajectory_batch(50, generator=generator)["next"]
    seen = {}

    def record(module, args, output):
        seen.setdefault("actions", []).append(args[1].detach().clone())

    critic = loss.qvalue_network.module
    handle = critic.register_forward_hook(record)
    estimator.deactivate_vmap = True  # one call per critic, so each can be seen
    estimator.next_state_value(states)
    handle.remove()
    actions = seen["actions"]
    assert len(actions) == 4
    for other in actions[1:]:
        torch.testing.assert_close(other, actions[0])  # same noise for every critic
    with loss.target_actor_network_params.to_module(loss.actor_network):
        clean = loss.actor_network(states.select("observation"))["action"]
    assert (actions[0] - clean).abs().max() <= 0.05 + 1e-6
    assert (actions[0] - clean).abs().max() > 0.01


def test_chunked_equals_unchunked_and_vmap_equals_loop(generator):
    loss = tiny_loss(policy_noise=0.0)
    batch = trajectory_batch(4, 9, generator=generator)
    plain = loss.make_value_estimator(gamma=0.9).value_estimator(batch.clone())
    chunked = TwinBackPropEstimator.for_loss(loss, gamma=0.9, value_chunk_size=5)
    whole = TwinBackPropEstimator.for_loss(loss, gamma=0.9, value_chunk_size=None)
    looped = TwinBackPropEstimator.for_loss(loss, gamma=0.9, deactivate_vmap=True)
    vmapped = TwinBackPropEstimator.for_loss(loss, gamma=0.9, deactivate_vmap=False)
    for other in (chunked, whole, looped, vmapped):
        torch.testing.assert_close(
            other(batch.clone())["memory_return"], plain["memory_return"]
        )


def test_single_estimator_ablation_uses_min_of_all_critics(generator):
    loss = tiny_loss(policy_noise=0.0)
    estimator = TwinBackPropEstimator.for_loss(loss, gamma=0.9, single_estimator=True)
    batch = trajectory_batch(10, generator=generator)
    values = estimator.next_state_value(batch["next"])
    torch.testing.assert_close(values[:, 0], values[:, 1])
    twin = TwinBackPropEstimator.for_loss(loss, gamma=0.9).next_state_value(
        batch["next"]
    )
    torch.testing.assert_close(values[:, 0], twin.min(-1).values)
    returns = estimator(batch)["memory_return"]
    torch.testing.assert_close(returns[:, 0], returns[:, 1])


def test_discrete_q_networks_take_max_over_actions_of_group_min(generator):
    num_actions = 3
    nets = [
        ValueOperator(
            torch.nn.Linear(OBS, num_actions),
            in_keys=["observation"],
            out_keys=["action_value"],
        )
        for _ in range(4)
    ]
    params = TensorDict.from_modules(*nets, as_module=True)
    estimator = TwinBackPropEstimator(
        gamma=0.9,
        qvalue_network=nets[0],
        qvalue_params=params,
        action_space="discrete",
    )
    estimator.set_keys(value="action_value")
    states = trajectory_batch(6, generator=generator)["next"]
    values = estimator.next_state_value(states)
    q = torch.stack([n(states.clone())["action_value"] for n in nets])  # [4, 6, A]
    expected = torch.stack(
        [
            q[[0, 1]].min(0).values.max(-1).values,
            q[[2, 3]].min(0).values.max(-1).values,
        ],
        -1,
    )
    torch.testing.assert_close(values, expected)


def test_set_keys_and_nested_keys(generator):
    loss = tiny_loss(policy_noise=0.0)
    estimator = loss.make_value_estimator(gamma=0.9).value_estimator
    batch = trajectory_batch(8, generator=generator)
    expected = estimator(batch.clone())["memory_return"]
    estimator.set_keys(reward=("agent", "r"), memory_return=("gem", "ret"))
    renamed = batch.clone()
    renamed["next", "agent", "r"] = renamed["next"].pop("reward")
    out = estimator(renamed)
    torch.testing.assert_close(out["gem", "ret"], expected)
    assert ("next", "agent", "r") in estimator.in_keys
    with pytest.raises(KeyError, match="not an accepted"):
        estimator.set_keys(rewards="r")
    with pytest.raises(KeyError, match="Missing"):
        estimator(batch.clone())


@pytest.mark.parametrize("buffer_class", [ReplayBuffer, TensorDictReplayBuffer])
def test_replay_buffer_transform_on_slice_sampler_slices(buffer_class):
    torch.manual_seed(0)
    loss = tiny_loss(policy_noise=0.0)
    estimator = TwinBackPropEstimator.for_loss(loss, gamma=0.9)
    data = trajectory_batch(60, generator=torch.Generator().manual_seed(4), p_done=0.0)
    data["next", "done"][[19, 39, 59]] = True
    data["collector", "traj_ids"] = torch.arange(60) // 20
    data["step_count"] = torch.arange(60) % 20
    buffer = buffer_class(
        storage=LazyTensorStorage(60),
        sampler=SliceSampler(slice_len=5, traj_key=("collector", "traj_ids")),
        batch_size=40,
        transform=TwinBackPropTransform(estimator),
    )
    buffer.extend(data)
    sample = buffer.sample()
    assert sample["memory_return"].shape == (40, 2)
    # each 5-step slice is its own trajectory, cut at its last step (two slices that
    # happen to be consecutive in time may also be read as one; avoid that here by
    # comparing slice by slice only where the next slice does not continue it)
    slices = sample.reshape(8, 5).exclude("memory_return", "value_target")
    starts = slices["step_count"][:, 0]
    follows = (
        slices["collector", "traj_ids"][1:, 0]
        == slices["collector", "traj_ids"][:-1, 0]
    ) & (starts[1:] == starts[:-1] + 5)
    slices["next", "done"][:, -1] = True
    expected = estimator(slices.clone())["memory_return"]
    isolated = torch.ones(8, dtype=torch.bool)
    isolated[:-1] = ~follows
    torch.testing.assert_close(
        sample["memory_return"].reshape(8, 5, 2)[isolated], expected[isolated]
    )
    with pytest.raises(ValueError, match="not in an env"):
        TwinBackPropTransform(estimator)._call(data)


def test_value_target_of_torchrl_td3_loss():
    torch.manual_seed(0)
    td3 = TD3Loss(tiny_actor(), tiny_critics(4), action_spec=SPEC, num_qvalue_nets=4)
    estimator = TwinBackPropEstimator.for_loss(td3, gamma=0.9, policy_noise=0.0)
    td3.make_value_estimator(estimator)  # noise-free: the two passes below agree
    # a memory batch carries memory_return: the target is its min over twins
    batch = trajectory_batch(
        16, generator=torch.Generator().manual_seed(5), memory_return=True
    )
    _, metadata = td3.value_loss(batch.clone())
    torch.testing.assert_close(
        metadata["target_value"], batch["memory_return"].min(-1).values
    )
    # a slice batch without it: the estimator's returns along time, min over twins
    slices = trajectory_batch(4, 6, generator=torch.Generator().manual_seed(6))
    expected = estimator(slices.clone())["memory_return"].min(-1).values
    loss_value, metadata = td3.value_loss(slices)
    assert loss_value.isfinite()
    torch.testing.assert_close(metadata["target_value"], expected)


def test_value_target_of_torchrl_sac_loss():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(OBS, 2 * ACT), torch.nn.Unflatten(-1, (2, ACT))
    )

    class Split(torch.nn.Module):
        def forward(self, obs):
            out = net(obs)
            return out[..., 0, :], torch.nn.functional.softplus(out[..., 1, :]) + 1e-3

    from tensordict.nn import TensorDictModule

    actor = ProbabilisticActor(
        TensorDictModule(Split(), in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        spec=SPEC,
    )
    sac = SACLoss(actor, tiny_critics(2), num_qvalue_nets=2)
    sac.make_value_estimator(TwinBackPropEstimator.for_loss(sac, gamma=0.9))
    batch = trajectory_batch(
        16, generator=torch.Generator().manual_seed(7), memory_return=True
    )
    seen = batch.clone()
    assert sac(seen)["loss_qvalue"].isfinite()
    # SACLoss regresses on the min of the twin memory returns: its td_error (the
    # largest |Q_i(s, a) - target| over the critics) says which target it used
    target = batch["memory_return"].min(-1).values
    errors = []
    for params in sac.qvalue_network_params.unbind(0):
        with params.to_module(sac.qvalue_network):
            q = sac.qvalue_network(batch.clone())["state_action_value"].squeeze(-1)
        errors.append((q - target).abs())
    torch.testing.assert_close(seen["td_error"], torch.stack(errors).amax(0))


def test_bad_options_raise():
    with pytest.raises(ValueError, match="even number"):
        default_twin_groups(3)
    loss = tiny_loss()
    with pytest.raises(ValueError, match="out of range"):
        TwinBackPropEstimator.for_loss(loss, gamma=0.9, twin_groups=((0,), (7,)))
    with pytest.raises(ValueError, match="two non-empty groups"):
        TwinBackPropEstimator.for_loss(loss, gamma=0.9, twin_groups=((0, 1),))
    with pytest.raises(ValueError, match="target_reduction"):
        TwinBackPropEstimator.for_loss(loss, gamma=0.9, target_reduction="max")
    with pytest.raises(ValueError, match="gamma"):
        TwinBackPropEstimator.for_loss(loss, gamma=2.0)
    with pytest.raises(ValueError, match="batch of trajectories"):
        loss.value_estimator.twin_returns(TensorDict())


@pytest.mark.parametrize("shape", [(16,), (16, 1), (16, 3)])
def test_value_estimate_refuses_a_malformed_memory_return(shape):
    td3 = TD3Loss(tiny_actor(), tiny_critics(2), action_spec=SPEC)
    td3.make_value_estimator(TwinBackPropEstimator.for_loss(td3, gamma=0.9))
    batch = trajectory_batch(16, generator=torch.Generator().manual_seed(5))
    batch["memory_return"] = torch.zeros(shape)
    with pytest.raises(ValueError, match=r"'memory_return' must have shape \(16, 2\)"):
        td3(batch)
    batch["memory_return"] = torch.zeros(16, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="'memory_return' must be floating point"):
        td3(batch)
    batch["memory_return"] = torch.zeros(16, 2).index_fill(
        0, torch.tensor([3]), float("inf")
    )
    with pytest.raises(ValueError, match="'memory_return' has a non-finite"):
        td3(batch)


def test_a_flat_batch_without_trajectory_structure_is_refused():
    td3 = TD3Loss(tiny_actor(), tiny_critics(2), action_spec=SPEC)
    td3.make_value_estimator(TwinBackPropEstimator.for_loss(td3, gamma=0.9))
    batch = trajectory_batch(16, generator=torch.Generator().manual_seed(5))
    with pytest.raises(ValueError, match="EpisodicMemory.*SliceSampler"):
        td3(batch.exclude("step_count"))
    with pytest.raises(ValueError, match="traj_ids"):
        td3(batch.exclude(("collector", "traj_ids")))


def test_a_uniformly_sampled_batch_is_cut_between_its_trajectories():
    torch.manual_seed(0)
    loss = tiny_loss(policy_noise=0.0)
    estimator = TwinBackPropEstimator.for_loss(loss, gamma=0.9)
    data = trajectory_batch(200, generator=torch.Generator().manual_seed(8))
    buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(200), batch_size=64)
    buffer.extend(data)
    sample = buffer.sample()
    # oracle: every maximal run of consecutive steps of one trajectory on its own
    values = estimator.next_state_value(sample["next"])
    ids, steps = sample["collector", "traj_ids"], sample["step_count"].squeeze(-1)
    expected, start = [], 0
    for i in range(len(sample)):
        last = i == len(sample) - 1
        if last or not (ids[i + 1] == ids[i] and steps[i + 1] == steps[i] + 1):
            run = slice(start, i + 1)
            expected.append(
                twin_backprop_return(
                    0.9,
                    values[run],
                    sample["next", "reward"][run],
                    sample["next", "done"][run],
                    sample["next", "terminated"][run],
                )
            )
            start = i + 1
    torch.testing.assert_close(
        estimator(sample.clone())["memory_return"], torch.cat(expected)
    )
    chained = twin_backprop_return(
        0.9,
        values,
        sample["next", "reward"],
        sample["next", "done"],
        sample["next", "terminated"],
    )
    assert not torch.allclose(chained, torch.cat(expected))  # the old behaviour


def test_slice_ends_never_offer_the_zero_tail():
    # Without episode ends in the data, every trajectory end the transform sees is a
    # slice end: the zero tail must change nothing, even with V = -10 < 0.
    data = trajectory_batch(60, generator=torch.Generator().manual_seed(4), p_done=0.0)
    data["collector", "traj_ids"] = torch.arange(60) // 20
    data["step_count"] = torch.arange(60)[:, None] % 20
    results = []
    for zero_tail in (False, True):
        estimator = constant_value_estimator(-10.0, gamma=0.99, zero_tail=zero_tail)
        buffer = ReplayBuffer(
            storage=LazyTensorStorage(60),
            sampler=SliceSampler(slice_len=5, traj_key=("collector", "traj_ids")),
            batch_size=40,
            transform=TwinBackPropTransform(estimator),
        )
        buffer.extend(data)
        torch.manual_seed(1)
        results.append(buffer.sample()["memory_return"])
    torch.testing.assert_close(results[1], results[0])


def test_non_finite_rewards_and_network_outputs_are_refused():
    loss = tiny_loss()
    estimator = TwinBackPropEstimator.for_loss(loss, gamma=0.9)
    batch = trajectory_batch(8, generator=torch.Generator().manual_seed(9))
    batch["next", "reward"][5] = float("nan")
    with pytest.raises(ValueError, match=r"\('next', 'reward'\) has a non-finite"):
        estimator(batch.clone())
    batch["next", "reward"][5] = 0.0
    bias = loss.target_qvalue_network_params.get(("module", "2", "bias"), None)
    leaves = list(loss.target_qvalue_network_params.values(True, True))
    with torch.no_grad():
        (bias if bias is not None else leaves[-1]).fill_(float("inf"))
    with pytest.raises(ValueError, match="non-finite bootstrap value .* diverged"):
        estimator(batch.clone())
