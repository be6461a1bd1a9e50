"""GEMLoss: the TorchRL loss test matrix plus GEM's own target and weight rules."""

from __future__ import annotations

import pytest
import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.modules import ValueOperator
from torchrl.objectives import SoftUpdate

from conftest import SPEC, tiny_actor, tiny_critics, tiny_loss, trajectory_batch
from torchrl_gem import GEMEstimators, GEMLoss, TwinBackPropEstimator, asymmetric_l2


def batch(n=16, seed=0):
    return trajectory_batch(
        n, generator=torch.Generator().manual_seed(seed), memory_return=True
    )


def grads(params):
    return [p.grad for p in params.values(True, True) if p.requires_grad]


def zero_grads(loss):
    for p in loss.parameters():
        p.grad = None


@pytest.mark.parametrize("target_assignment", ["broadcast", "paired"])
@pytest.mark.parametrize("actor_critics", ["mean", "first"])
def test_gradients_reach_only_their_own_networks(target_assignment, actor_critics):
    loss = tiny_loss(target_assignment=target_assignment, actor_critics=actor_critics)
    data = batch()
    loss_actor, _ = loss.actor_loss(data)
    loss_actor.backward()
    assert all(
        g is not None and g.abs().sum() > 0 for g in grads(loss.actor_network_params)
    )
    assert all(
        g is None or g.abs().sum() == 0 for g in grads(loss.qvalue_network_params)
    )
    zero_grads(loss)
    loss_value, _ = loss.value_loss(data)
    loss_value.backward()
    critic_grads = [p.grad for p in loss.qvalue_network_params.values(True, True)]
    assert all(g is not None and g.abs().sum() > 0 for g in critic_grads)
    assert all(g is None for g in grads(loss.actor_network_params))
    for params in (loss.target_actor_network_params, loss.target_qvalue_network_params):
        assert all(p.grad is None for p in params.values(True, True))


def test_forward_outputs_and_priority():
    loss = tiny_loss()
    data = batch()
    original = data.clone()
    out = loss(data)
    # entries already in the batch are untouched; only the priority is added
    assert set(data.keys(True, True)) == set(original.keys(True, True)) | {"td_error"}
    assert (data.exclude("td_error") == original).all()
    assert set(out.keys()) == {
        "loss_actor",
        "loss_qvalue",
        "pred_value",
        "target_value",
        "state_action_value_actor",
    }
    assert out["pred_value"].shape == (4, 16) and not out["pred_value"].requires_grad
    assert data["td_error"].shape == (16,)
    prediction = out["pred_value"]
    expected = (data["memory_return"].mean(-1) - prediction).abs().max(0).values
    torch.testing.assert_close(data["td_error"], expected)
    # the kwargs path returns the same numbers
    loss_actor, loss_qvalue, *_ = loss(
        observation=data["observation"],
        action=data["action"],
        memory_return=data["memory_return"],
    )
    torch.testing.assert_close(loss_qvalue, out["loss_qvalue"])
    torch.testing.assert_close(loss_actor, out["loss_actor"])


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_reduction(reduction):
    loss = tiny_loss(reduction=reduction)
    out = loss(batch())
    expected_shape = (16,) if reduction == "none" else ()
    assert out["loss_actor"].shape == expected_shape
    assert out["loss_qvalue"].shape == expected_shape
    if reduction == "sum":
        per_sample = tiny_loss(reduction="none")
        per_sample.load_state_dict(loss.state_dict())
        torch.testing.assert_close(
            per_sample(batch())["loss_qvalue"].sum(), out["loss_qvalue"]
        )


def test_set_keys_and_nested_keys():
    loss = tiny_loss()
    data = batch()
    expected = loss(data.clone())["loss_qvalue"]
    loss.set_keys(memory_return=("gem", "returns"))
    renamed = data.clone()
    renamed["gem", "returns"] = renamed.pop("memory_return")
    torch.testing.assert_close(loss(renamed)["loss_qvalue"], expected)
    assert ("gem", "returns") in loss.in_keys
    assert loss.value_estimator.tensor_keys.memory_return == ("gem", "returns")
    with pytest.raises(ValueError, match="not_a_key is not an accepted"):
        loss.set_keys(not_a_key="x")


def test_state_dict_round_trip():
    loss, other = tiny_loss(), tiny_loss()
    data = batch()
    other.load_state_dict(loss.state_dict())
    torch.testing.assert_close(
        other(data.clone())["loss_qvalue"], loss(data.clone())["loss_qvalue"]
    )
    keys = list(loss.state_dict().keys())
    assert len(keys) == len(set(keys))
    assert not any("_value_estimator" in key for key in keys)


def test_vmap_equals_loop():
    loss = tiny_loss()
    looped = tiny_loss(deactivate_vmap=True)
    looped.load_state_dict(loss.state_dict())
    data = batch()
    for key in ("loss_actor", "loss_qvalue", "pred_value"):
        torch.testing.assert_close(looped(data.clone())[key], loss(data.clone())[key])


@pytest.mark.parametrize("deactivate_vmap", [False, True])
def test_an_unbatched_transition_is_a_batch_of_one(deactivate_vmap):
    # batch_size=[] as TD3Loss accepts it: the same losses as the batch of one, and
    # outputs without its batch dimension ([K] values, [2] targets)
    loss = tiny_loss(deactivate_vmap=deactivate_vmap)
    single = batch(n=1)
    transition = single[0]
    assert transition.batch_size == torch.Size([])
    for method in (loss.actor_loss, loss.value_loss):
        value, metadata = method(transition.clone())
        value_of_one, metadata_of_one = method(single.clone())
        torch.testing.assert_close(value, value_of_one)
        for key, of_one in metadata_of_one.items():
            # [K, *B] critic values, [*B, 2] targets, [*B] errors
            batch_dim = 1 if key in ("pred_value", "state_action_value_actor") else 0
            torch.testing.assert_close(metadata[key], of_one.squeeze(batch_dim))
    out = loss(transition.clone())
    assert out["loss_qvalue"].shape == torch.Size([])
    assert out["pred_value"].shape == (loss.num_qvalue_nets,)


def test_asymmetric_weights():
    # the critic overestimates by 1: weight 1 / alpha = 2; underestimates: alpha = 0.5
    assert asymmetric_l2(torch.tensor(1.0), torch.tensor(0.0), 0.5) == 2.0
    assert asymmetric_l2(torch.tensor(0.0), torch.tensor(1.0), 0.5) == 0.5
    assert asymmetric_l2(torch.tensor(3.0), torch.tensor(1.0), 0.25) == 16.0


class ConstantCritic(nn.Module):
    """Q(s, a) = c: makes the loss a function of one number per critic."""

    def __init__(self, value=0.0):
        super().__init__()
        self.c = nn.Parameter(torch.tensor([value]))

    def forward(self, observation, action):
        return self.c.expand(*observation.shape[:-1], 1)


def constant_loss(values, **kwargs):
    critics = [
        ValueOperator(ConstantCritic(v), in_keys=["observation", "action"])
        for v in values
    ]
    return GEMLoss(tiny_actor(), critics, action_spec=SPEC, **kwargs)


def test_hand_computed_critic_loss_broadcast_and_paired():
    data = batch(1)
    data["memory_return"] = torch.tensor([[1.0, 3.0]])
    loss = constant_loss([2.0, 2.0, 2.0, 2.0])
    value, _ = loss.value_loss(data)
    # each critic: over column 0 by 1 -> 2 * 1; under column 1 by 1 -> 0.5 * 1;
    # mean over the columns = 1.25, summed over 4 critics = 5
    assert value.item() == pytest.approx(5.0)
    loss = constant_loss([2.0, 2.0, 2.0, 2.0], target_assignment="paired")
    value, _ = loss.value_loss(data)
    # critics 0, 1 on column 0: 2 each; critics 2, 3 on column 1: 0.5 each
    assert value.item() == pytest.approx(5.0)
    loss = constant_loss([0.0, 2.0, 5.0, 3.0], target_assignment="paired")
    value, _ = loss.value_loss(data)
    # column 0 (1): critic 0 under by 1 -> 0.5, critic 1 over by 1 -> 2;
    # column 1 (3): critic 2 over by 2 -> 2 * 4, critic 3 on it -> 0
    # (broadcast would give 2.5 + 1.25 + 20 + 4, swapped columns 4.5 + 0.5 + 32 + 8)
    assert value.item() == pytest.approx(0.5 + 2 + 8 + 0)
    loss = constant_loss(
        [0.0, 2.0, 3.0, 5.0], target_assignment="paired", loss_function="l2"
    )
    value, _ = loss.value_loss(data)
    assert value.item() == pytest.approx(1 + 1 + 0 + 4)


def test_hand_computed_critic_loss_min_assignment():
    data = batch(2)
    data["memory_return"] = torch.tensor([[1.0, 3.0], [4.0, 2.0]])
    loss = constant_loss([0.0, 2.0, 5.0, 3.0], target_assignment="min")
    value, metadata = loss.value_loss(data)
    # every critic against the smaller column: 1, then 2 (asymmetry 0.5)
    # sample 0 (1): critic 0 under by 1 -> 0.5; 2 over by 1 -> 2; 5 over by 4 ->
    #   32; 3 over by 2 -> 8: 42.5; sample 1 (2): 0.5 * 4 = 2; 0; 2 * 9 = 18;
    #   2 * 1 = 2: 22; the mean over the batch: 32.25
    assert value.item() == pytest.approx((42.5 + 22.0) / 2)
    torch.testing.assert_close(metadata["td_error"], torch.tensor([4.0, 3.0]))


def test_broadcast_minimiser_is_soft_min_of_twin_targets():
    data = batch(1)
    low, high = -1.0, 4.0
    data["memory_return"] = torch.tensor([[high, low]])
    loss = constant_loss([0.0, 0.0, 0.0, 0.0])
    grid = torch.linspace(-2, 5, 7001)
    values = []
    for c in grid:
        with torch.no_grad():
            for p in loss.qvalue_network_params.values(True, True):
                p.fill_(c)
        values.append(loss.value_loss(data)[0].item())
    best = grid[int(torch.tensor(values).argmin())].item()
    assert best == pytest.approx(0.8 * low + 0.2 * high, abs=2e-3)


def test_paired_critics_only_see_their_column():
    data = batch(8)
    loss = constant_loss([0.5, 0.5, 0.5, 0.5], target_assignment="paired")
    loss.value_loss(data)[0].backward()
    before = [p.grad.clone() for p in loss.qvalue_network_params.values(True, True)]
    zero_grads(loss)
    data["memory_return"][:, 1] += 10.0
    loss.value_loss(data)[0].backward()
    after = [p.grad for p in loss.qvalue_network_params.values(True, True)]
    grad_before, grad_after = before[0], after[0]  # stacked [4, 1]
    torch.testing.assert_close(grad_after[:2], grad_before[:2])
    assert not torch.allclose(grad_after[2:], grad_before[2:])


def test_actor_critics_mean_or_first():
    data = batch()
    loss = tiny_loss(actor_critics="mean")
    first = tiny_loss(actor_critics="first")
    first.load_state_dict(loss.state_dict())
    _, metadata = loss.actor_loss(data)
    values = metadata["state_action_value_actor"]
    torch.testing.assert_close(loss.actor_loss(data)[0], -values.mean())
    torch.testing.assert_close(first.actor_loss(data)[0], -values[0].mean())


def test_missing_or_malformed_memory_return():
    loss = tiny_loss()
    data = batch()
    with pytest.raises(KeyError, match="memory.refresh"):
        loss.value_loss(data.exclude("memory_return"))
    data["memory_return"] = torch.zeros(16, 3)
    with pytest.raises(ValueError, match="memory_return"):
        loss.value_loss(data)


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda r: r.long(), "memory_return.*torch.int64"),
        (lambda r: r.bool(), "memory_return.*torch.bool"),
        (
            lambda r: r.index_fill(0, torch.tensor([5, 9]), float("nan")),
            r"memory_return.*non-finite.*index \(5, 0\)",
        ),
        (
            lambda r: r.index_put((torch.tensor([7]),), torch.tensor(float("inf"))),
            r"memory_return.*non-finite.*index \(7, 0\)",
        ),
    ],
)
def test_non_float_or_non_finite_memory_return_raises(bad, message):
    loss = tiny_loss()
    data = batch()
    data["memory_return"] = bad(data["memory_return"])
    with pytest.raises(ValueError, match=message):
        loss.value_loss(data)


def test_non_finite_memory_return_names_the_batch_index_in_2d_batches():
    loss = tiny_loss()
    data = trajectory_batch(
        3, 4, generator=torch.Generator().manual_seed(0), memory_return=True
    )
    data["memory_return"][2, 1, 0] = float("-inf")
    data["memory_return"][2, 3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"'memory_return'.*index \(2, 1, 0\)"):
        loss.value_loss(data)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target_assignment": "pairs"}, "target_assignment"),
        ({"loss_function": "huber"}, "loss_function"),
        ({"asymmetry": 0.0}, "asymmetry"),
        ({"asymmetry": 1.5}, "asymmetry"),
        ({"actor_critics": "min"}, "actor_critics"),
        ({"twin_groups": ((0, 1), (1, 2)), "target_assignment": "paired"}, "disjoint"),
        ({"twin_groups": ((0,), (1,)), "target_assignment": "paired"}, "in none"),
    ],
)
def test_bad_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_loss(**kwargs)
    with pytest.raises(ValueError, match="exactly one"):
        GEMLoss(tiny_actor(), tiny_critics(), action_spec=SPEC, bounds=(-1, 1))


def test_estimator_follows_soft_update():
    loss = tiny_loss(policy_noise=0.0)
    estimator = loss.value_estimator
    data = trajectory_batch(10, generator=torch.Generator().manual_seed(3))
    before = estimator(data.clone())["memory_return"]
    with torch.no_grad():
        for p in loss.qvalue_network_params.values(True, True):
            p.add_(0.5)
    SoftUpdate(loss, tau=1.0).step()
    assert not torch.allclose(estimator(data.clone())["memory_return"], before)


def test_prioritized_weights():
    try:
        from torchrl.data import PrioritizedSampler

        PrioritizedSampler(8, alpha=0.7, beta=0.5)
    except Exception as error:  # the compiled extension does not load here
        pytest.skip(
            f"prioritized sampler unavailable: torchrl's C++ extension: {error}"
        )
    loss = tiny_loss(reduction="none")
    data = batch()
    plain = loss(data.clone())["loss_qvalue"]
    data["priority_weight"] = torch.linspace(0.5, 2.0, 16)
    torch.testing.assert_close(
        loss(data)["loss_qvalue"], data["priority_weight"] * plain
    )


def test_priority_weight_scales_the_loss():
    # GEMLoss applies importance weights itself; no sampler is needed for that.
    loss = tiny_loss(reduction="none")
    data = batch()
    plain = loss(data.clone())["loss_qvalue"]
    weights = torch.linspace(0.5, 2.0, 16)
    data["priority_weight"] = weights
    torch.testing.assert_close(loss(data)["loss_qvalue"], weights * plain)


def test_reset_parameters_recursive():
    loss = tiny_loss()
    before = loss.qvalue_network_params.clone()
    loss.reset_parameters_recursive()
    pairs = zip(
        before.values(True, True),
        loss.qvalue_network_params.values(True, True),
        strict=True,
    )
    weights = [(a, b) for a, b in pairs if a.dim() >= 3]  # [critics, out, in]
    assert weights and all(not torch.equal(a, b) for a, b in weights)


@pytest.mark.parametrize(
    "value_type", [None, "tbp", "TBP", GEMEstimators.TBP, "instance"]
)
def test_value_type_is_the_registry_member(value_type):
    loss = tiny_loss()
    # LossModule.__init__ sets it from default_value_estimator
    assert loss.value_type is GEMEstimators.TBP
    if value_type == "instance":
        loss.make_value_estimator(TwinBackPropEstimator.for_loss(loss, gamma=0.9))
    else:
        loss.make_value_estimator(value_type, gamma=0.9)
    assert loss.value_type is GEMEstimators.TBP
    assert isinstance(loss.value_estimator, TwinBackPropEstimator)
    # the member rebuilds the same kind of estimator, as TorchRL losses allow
    loss.make_value_estimator(loss.value_type)
    assert loss.value_type is GEMEstimators.TBP


class StateActionHead(nn.Module):
    def __init__(self, hidden, action):
        super().__init__()
        self.linear = nn.Linear(hidden + action, 1)

    def forward(self, hidden, action):
        return self.linear(torch.cat([hidden, action], -1))


def shared_trunk_networks(hidden=5):
    """An actor and a critic that share one observation trunk (a single module)."""
    trunk = TensorDictModule(nn.Linear(3, hidden), ["observation"], ["hidden"])
    actor_head = TensorDictModule(
        nn.Sequential(nn.Linear(hidden, 2), nn.Tanh()), ["hidden"], ["action"]
    )
    value_head = TensorDictModule(
        StateActionHead(hidden, 2), ["hidden", "action"], ["state_action_value"]
    )
    return (
        TensorDictSequential(trunk, actor_head),
        TensorDictSequential(trunk, value_head),
    )


def is_trunk(key):
    return key[:2] == ("module", "0")  # first module of the Sequential


@pytest.mark.parametrize("separate_losses", [False, True])
def test_separate_losses_shared_trunk(separate_losses):
    torch.manual_seed(0)
    actor, critic = shared_trunk_networks()
    loss = GEMLoss(actor, critic, action_spec=SPEC, separate_losses=separate_losses)
    data = batch()

    loss.actor_loss(data)[0].backward()
    assert all(
        g is not None and g.abs().sum() > 0 for g in grads(loss.actor_network_params)
    )
    assert all(
        g is None or g.abs().sum() == 0 for g in grads(loss.qvalue_network_params)
    )
    zero_grads(loss)

    loss.value_loss(data)[0].backward()
    assert all(
        g is None or g.abs().sum() == 0 for g in grads(loss.actor_network_params)
    )
    critic_grads = {
        key: value.grad for key, value in loss.qvalue_network_params.items(True, True)
    }
    assert any(is_trunk(key) for key in critic_grads)
    for key, grad in critic_grads.items():
        if separate_losses and is_trunk(key):
            assert grad is None or grad.abs().sum() == 0, key
        else:
            assert grad is not None and grad.abs().sum() > 0, key

    # a shared trunk follows the actor's updates; an unshared one is a separate copy
    actor_weight = loss.actor_network_params["module", "0", "module", "weight"]
    critic_weight = loss.qvalue_network_params["module", "0", "module", "weight"]
    assert critic_weight.shape == (4, *actor_weight.shape)
    with torch.no_grad():
        actor_weight.add_(1.0)
    assert torch.equal(critic_weight[0], actor_weight) is separate_losses
    out = loss(data)  # both losses still run end to end
    assert out["loss_qvalue"].isfinite() and out["loss_actor"].isfinite()


def test_separate_losses_rejects_a_list_of_critics():
    actor, critic = shared_trunk_networks()
    critics = [critic, shared_trunk_networks()[1]]
    with pytest.raises(ValueError, match="separate_losses"):
        GEMLoss(actor, critics, action_spec=SPEC, separate_losses=True)
    GEMLoss(actor, critics, action_spec=SPEC)  # the default still takes a list


def test_separate_losses_survives_load_state_dict_and_casts():
    torch.manual_seed(0)
    loss = GEMLoss(*shared_trunk_networks(), action_spec=SPEC, separate_losses=True)
    other = GEMLoss(*shared_trunk_networks(), action_spec=SPEC, separate_losses=True)
    data = batch()
    other.load_state_dict(loss.state_dict())
    torch.testing.assert_close(
        other(data.clone())["loss_qvalue"], loss(data.clone())["loss_qvalue"]
    )
    key = ("module", "0", "module", "weight")
    for cast in (torch.float64, torch.float32):  # as .to(device) does, via _apply
        other.to(cast)
        actor_weight = other.actor_network_params[key]
        critic_weight = other.qvalue_network_params[key]
        assert critic_weight.dtype == cast
        with torch.no_grad():
            actor_weight.add_(1.0)
        # still a view of the actor's trunk, not a frozen copy
        assert torch.equal(critic_weight[-1], actor_weight)
