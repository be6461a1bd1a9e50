"""GEMDQNLoss (GEM's Atari variant), its Nature-CNN Q-network and its policy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import Categorical, OneHot
from torchrl.modules import EGreedyModule
from torchrl.objectives import HardUpdate, SoftUpdate

from torchrl_gem import (
    EpisodicMemory,
    GEMDQNLoss,
    GEMEstimators,
    TwinBackPropEstimator,
    make_gem_dqn_policy,
    make_nature_cnn_qnet,
    released_huber,
)

S, A, B = 3, 2, 8  # tabular states, actions, batch


def linear_qnet(obs=S, actions=A):
    return TensorDictModule(nn.Linear(obs, actions), ["observation"], ["action_value"])


def table_qnet(table):
    """Q(s, a) = table[s, a] on one-hot states."""
    linear = nn.Linear(S, A, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(table, dtype=torch.float32).T)
    return TensorDictModule(linear, ["observation"], ["action_value"])


def table_loss(sub_tables, meta_tables=None, *, gamma=0.5, **kwargs):
    meta_tables = meta_tables or [torch.zeros(S, A)] * 2
    loss = GEMDQNLoss(
        [table_qnet(t) for t in sub_tables],
        [table_qnet(t) for t in meta_tables],
        **kwargs,
    )
    return loss.make_value_estimator(gamma=gamma)


def states(*index):
    return F.one_hot(torch.tensor(index), S).float()


def batch(n=B, seed=0, obs=S):
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        observation=torch.randn(n, obs, generator=g),
        action=F.one_hot(torch.randint(A, (n,), generator=g), A),
        memory_return=torch.randn(n, 2, generator=g),
        next=TensorDict(
            observation=torch.randn(n, obs, generator=g),
            reward=torch.randn(n, 1, generator=g),
            done=torch.zeros(n, 1, dtype=torch.bool),
            terminated=torch.rand(n, 1, generator=g) < 0.3,
        ),
        batch_size=[n],
    )


def tiny_loss(**kwargs):
    torch.manual_seed(0)
    return GEMDQNLoss(linear_qnet(), linear_qnet(), **kwargs)


def leaves(params):
    return list(params.values(True, True))


def test_gradients_reach_only_their_own_networks():
    loss = tiny_loss()
    data = batch()
    loss.sub_loss(data)[0].backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for p in leaves(loss.sub_qvalue_network_params)
    )
    assert all(p.grad is None for p in leaves(loss.meta_qvalue_network_params))
    for p in loss.sub_qvalue_network_params.values(True, True):
        p.grad = None
    loss.meta_loss(data)[0].backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for p in leaves(loss.meta_qvalue_network_params)
    )
    assert all(p.grad is None for p in leaves(loss.sub_qvalue_network_params))
    targets = leaves(loss.target_sub_qvalue_network_params)
    assert all(not p.requires_grad and p.grad is None for p in targets)


def test_losses_and_optimiser_steps_leave_targets_untouched():
    loss = tiny_loss()
    before = loss.target_sub_qvalue_network_params.clone()
    online = loss.sub_qvalue_network_params.clone()
    optimiser = torch.optim.SGD(loss.parameters(), lr=0.1)
    for seed in range(2):
        out = loss(batch(seed=seed))
        optimiser.zero_grad()
        (out["loss_sub"] + out["loss_meta"]).backward()
        optimiser.step()
    assert (loss.target_sub_qvalue_network_params == before).all()
    assert not (loss.sub_qvalue_network_params == online).all()
    # the optimiser sees the six online networks only
    assert {id(p) for p in loss.parameters()} == {
        id(p)
        for params in (loss.sub_qvalue_network_params, loss.meta_qvalue_network_params)
        for p in leaves(params)
    }


# target sub Q-tables at the state s1 = 1 (rows: states, columns: actions)
Q_TARGET = [
    [[0.0, 0.0], [1.0, 3.0], [0.0, 0.0]],
    [[0.0, 0.0], [2.0, 0.0], [0.0, 0.0]],
    [[0.0, 0.0], [5.0, 4.0], [0.0, 0.0]],
    [[0.0, 0.0], [6.0, 7.0], [0.0, 0.0]],
]


def test_twin_bootstrap_equals_hand_computation_on_a_q_table():
    loss = table_loss(Q_TARGET)
    with torch.no_grad():  # the online nets drift; the estimator must not see it
        for p in leaves(loss.sub_qvalue_network_params):
            p.add_(100.0)
    estimator = loss.value_estimator
    # V^1(s1) = max_a min(Q'_0, Q'_1) = max(1, 0) = 1 (min of the maxes would be 2)
    # V^2(s1) = max_a min(Q'_2, Q'_3) = max(5, 4) = 5
    next_td = TensorDict(observation=states(1), batch_size=[1])
    value = estimator.next_state_value(next_td)
    torch.testing.assert_close(value, torch.tensor([[1.0, 5.0]]))

    # a two-step episode s0 -> s1 -> s2 (terminated), r = (0, 2), gamma = 0.5:
    # G^1_0 = (0 + .5 * 1, 0 + .5 * 2) = (0.5, 1.0): estimator 1 picks n = 2
    # G^2_0 = (0 + .5 * 5, 1.0) = (2.5, 1.0): estimator 2 picks n = 1
    # column c = max(G^c(n^{c'}), G^c(1)): (max(0.5, 0.5), max(1.0, 2.5))
    episode = TensorDict(
        observation=states(0, 1).unsqueeze(0),
        next=TensorDict(
            observation=states(1, 2).unsqueeze(0),
            reward=torch.tensor([[[0.0], [2.0]]]),
            done=torch.tensor([[[False], [True]]]),
            terminated=torch.tensor([[[False], [True]]]),
        ),
        batch_size=[1, 2],
    )
    returns = estimator(episode)["memory_return"]
    torch.testing.assert_close(returns, torch.tensor([[[0.5, 2.5], [2.0, 2.0]]]))


def test_each_sub_net_bootstraps_from_its_own_target_copy():
    loss = table_loss(Q_TARGET, gamma=0.5)
    with torch.no_grad():  # online tables all zero: the predictions are 0
        for p in leaves(loss.sub_qvalue_network_params):
            p.zero_()
    data = TensorDict(
        observation=states(0, 0),
        action=F.one_hot(torch.tensor([0, 1]), A),
        memory_return=torch.zeros(2, 2),
        next=TensorDict(
            observation=states(1, 1),
            reward=torch.tensor([[1.0], [1.0]]),
            done=torch.tensor([[False], [True]]),
            terminated=torch.tensor([[False], [True]]),
        ),
        batch_size=[2],
    )
    value, metadata = loss.sub_loss(data)
    # y_k = r + 0.5 max_a Q'_k(s1, a): max_a = (3, 2, 5, 7); terminated -> y = r
    expected = torch.tensor([[2.5, 1.0], [2.0, 1.0], [3.5, 1.0], [4.5, 1.0]])
    torch.testing.assert_close(metadata["sub_target_value"], expected)
    assert (metadata["sub_pred_value"] == 0).all()
    # Huber(delta=1) of |y - 0|: |u| - 0.5 beyond 1, 0.5 u^2 within; summed over the
    # 4 nets, averaged over the batch of 2
    huber = torch.where(expected > 1, expected - 0.5, 0.5 * expected**2)
    assert value.item() == pytest.approx(huber.sum(0).mean().item())


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_reductions(reduction):
    loss = tiny_loss(reduction=reduction)
    out = loss(batch())
    shape = (B,) if reduction == "none" else ()
    assert out["loss_sub"].shape == shape and out["loss_meta"].shape == shape
    assert out["sub_pred_value"].shape == (4, B)
    assert out["pred_value"].shape == (2, B) and out["target_value"].shape == (B, 2)
    per_sample = tiny_loss(reduction="none")(batch())
    reduce = {"none": lambda x: x, "mean": torch.mean, "sum": torch.sum}[reduction]
    for key in ("loss_sub", "loss_meta"):
        torch.testing.assert_close(out[key], reduce(per_sample[key]))


def test_set_keys():
    loss = tiny_loss()
    data = batch()
    expected = loss(data.clone())
    loss.set_keys(
        reward="r",
        done="d",
        terminated="term",
        action=("agent", "act"),
        memory_return=("gem", "returns"),
    )
    renamed = data.clone()
    renamed["agent", "act"] = renamed.pop("action")
    renamed["gem", "returns"] = renamed.pop("memory_return")
    for old, new in (("reward", "r"), ("done", "d"), ("terminated", "term")):
        renamed["next", new] = renamed["next"].pop(old)
    out = loss(renamed)
    for key in ("loss_sub", "loss_meta"):
        torch.testing.assert_close(out[key], expected[key])
    keys = loss.value_estimator.tensor_keys
    assert (keys.reward, keys.done, keys.terminated) == ("r", "d", "term")
    assert keys.memory_return == ("gem", "returns")
    assert keys.value == "action_value"
    assert {("agent", "act"), ("gem", "returns"), ("next", "r")} <= set(loss.in_keys)
    with pytest.raises(ValueError, match="not_a_key is not an accepted"):
        loss.set_keys(not_a_key="x")


def test_state_dict_round_trip():
    loss, other = tiny_loss(), GEMDQNLoss(linear_qnet(), linear_qnet())
    other.load_state_dict(loss.state_dict())
    data = batch()
    for key in ("loss_sub", "loss_meta"):
        torch.testing.assert_close(other(data.clone())[key], loss(data.clone())[key])
    keys = list(loss.state_dict())
    assert any(k.startswith("target_sub_qvalue_network_params") for k in keys)
    assert not any(k.startswith("target_meta") for k in keys)  # no meta targets


def test_released_huber_by_hand():
    prediction, target = torch.tensor([0.5, 2.0, -0.5]), torch.zeros(3)
    torch.testing.assert_close(
        released_huber(prediction, target), torch.tensor([0.25, 2.5, 0.25])
    )
    # in the loss: times 10, weight 1 above the target and alpha below
    data = TensorDict(
        observation=states(0, 0),
        action=F.one_hot(torch.tensor([0, 0]), A),
        memory_return=torch.tensor([[0.0, 2.0], [0.0, 0.0]]),
        next=TensorDict(
            observation=states(0, 0),
            reward=torch.zeros(2, 1),
            done=torch.zeros(2, 1, dtype=torch.bool),
            terminated=torch.zeros(2, 1, dtype=torch.bool),
        ),
        batch_size=[2],
    )
    meta = [torch.full((S, A), 0.5), torch.zeros(S, A)]  # P_0 = 0.5, P_1 = 0
    loss = table_loss(
        [torch.zeros(S, A)] * 4,
        meta,
        meta_loss_function="released_huber",
        underestimation_weight=0.5,
        reduction="none",
    )
    value, _ = loss.meta_loss(data)
    # sample 0: P_0 over by 0.5 -> 0.25; P_1 under by 2 -> 0.5 * (0.5 + 2) = 1.25
    # sample 1: P_0 over by 0.5 -> 0.25; P_1 exact -> 0
    torch.testing.assert_close(value, 10 * torch.tensor([0.25 + 1.25, 0.25]))
    standard = table_loss([torch.zeros(S, A)] * 4, meta, reduction="none")
    torch.testing.assert_close(
        standard.meta_loss(data)[0], torch.tensor([0.125 + 1.5, 0.125])
    )


def test_missing_memory_return_says_how_to_get_it():
    loss = tiny_loss()
    with pytest.raises(KeyError, match=r"memory\.refresh\(loss\.value_estimator\)"):
        loss(batch().exclude("memory_return"))
    data = batch()
    data["memory_return"] = torch.zeros(B, 4)
    with pytest.raises(ValueError, match="memory_return"):
        loss(data)


def test_categorical_actions_match_one_hot():
    loss = tiny_loss()
    index = tiny_loss(action_space=Categorical(A))
    assert index.action_space == "categorical"
    assert tiny_loss(action_space=OneHot(A)).action_space == "one_hot"
    data = batch()
    expected = loss(data.clone())
    for action in (data["action"].argmax(-1), data["action"].argmax(-1, keepdim=True)):
        out = index(data.clone().set("action", action))
        for key in ("loss_sub", "loss_meta"):
            torch.testing.assert_close(out[key], expected[key])
    with pytest.raises(ValueError, match="categorical"):
        loss(data.set("action", data["action"].argmax(-1)))
    # as many indices as actions: no broadcast of indices as one-hot weights
    square = batch()[:A]
    with pytest.raises(ValueError, match="one_hot' needs 'action' of shape"):
        loss(square.set("action", square["action"].argmax(-1)))
    with pytest.raises(ValueError, match="categorical' needs 'action' of shape"):
        index(batch())  # one-hot actions where indices are expected


def test_estimator_is_discrete_tbp_on_target_sub_nets():
    loss = tiny_loss()
    estimator = loss.value_estimator
    assert isinstance(estimator, TwinBackPropEstimator)
    assert loss.value_type is GEMEstimators.TBP
    assert estimator.action_space == "discrete"
    assert estimator.qvalue_params is loss.target_sub_qvalue_network_params
    assert estimator.twin_groups == ((0, 1), (2, 3))
    assert (estimator.floor, estimator.zero_tail, estimator.max_horizon) == (
        "own",
        False,
        None,
    )
    assert loss.make_value_estimator(gamma=0.9, zero_tail=True)._gamma() == 0.9
    assert loss.value_estimator.zero_tail


@pytest.mark.parametrize("updater", ["soft", "hard"])
def test_torchrl_updaters_move_the_target_sub_nets(updater):
    loss = tiny_loss()
    make = {
        "soft": lambda: SoftUpdate(loss, tau=0.5),
        "hard": lambda: HardUpdate(loss, value_network_update_interval=1),
    }
    target_updater = make[updater]()
    estimator = loss.value_estimator
    next_td = batch()["next"]
    before = estimator.next_state_value(next_td)
    target_before = torch.cat(
        [p.flatten() for p in leaves(loss.target_sub_qvalue_network_params)]
    )
    with torch.no_grad():
        for p in leaves(loss.sub_qvalue_network_params):
            p.add_(1.0)
    target_updater.step()
    if updater == "hard":  # HardUpdate copies on the step after `interval` steps
        target_updater.step()
    target, online = (
        torch.cat([p.flatten() for p in leaves(params)])
        for params in (
            loss.target_sub_qvalue_network_params,
            loss.sub_qvalue_network_params,
        )
    )
    if updater == "hard":
        torch.testing.assert_close(target, online)
    else:  # one Polyak step of weight tau = 0.5
        torch.testing.assert_close(
            target, target_before + 0.5 * (online - target_before)
        )
    assert not torch.allclose(estimator.next_state_value(next_td), before)


def test_policy_is_greedy_on_the_mean_of_the_meta_nets():
    meta = [
        torch.tensor([[1.0, 0.0], [0.0, 3.0], [0.0, 0.0]]),
        torch.tensor([[0.0, 2.0], [2.0, 0.0], [0.0, 0.0]]),
    ]
    loss = table_loss([torch.zeros(S, A)] * 4, meta)
    policy = make_gem_dqn_policy(loss)
    out = policy(TensorDict(observation=states(0, 1), batch_size=[2]))
    # means: s0 (0.5, 1.0) -> action 1; s1 (1.0, 1.5) -> action 1
    torch.testing.assert_close(
        out["action_value"], torch.tensor([[0.5, 1.0], [1.0, 1.5]])
    )
    assert out["action"].tolist() == [[0, 1], [0, 1]]
    with torch.no_grad():  # the policy reads the live meta parameters
        loss.meta_qvalue_network_params["module", "weight"][:, 0, 0] += 10.0
    assert policy(TensorDict(observation=states(0), batch_size=[1]))[
        "action"
    ].tolist() == [[1, 0]]
    explore = TensorDictSequential(
        policy, EGreedyModule(OneHot(A), eps_init=1.0, eps_end=1.0)
    )
    action = explore(TensorDict(observation=states(0, 1, 2), batch_size=[3]))["action"]
    assert action.shape == (3, A) and (action.sum(-1) == 1).all()


def test_bad_options_raise():
    with pytest.raises(ValueError, match="list of 2"):
        GEMDQNLoss(linear_qnet(), [linear_qnet()] * 3)
    for kwargs, message in (
        ({"meta_loss_function": "l2"}, "meta_loss_function must be one of"),
        ({"loss_function": "huber"}, "loss_function must be one of"),
        ({"action_space": "binary"}, "action_space must be"),
        ({"underestimation_weight": 0.0}, "underestimation_weight must be positive"),
        ({"num_sub_nets": 3}, "even number"),
    ):
        with pytest.raises(ValueError, match=message):
            GEMDQNLoss(linear_qnet(), linear_qnet(), **kwargs)


def test_nature_cnn_shape_and_parameter_count():
    torch.manual_seed(0)
    qnet = make_nature_cnn_qnet(6)
    pixels = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    out = qnet(TensorDict(pixels=pixels, batch_size=[2]))["action_value"]
    assert out.shape == (2, 6) and out.dtype == torch.float32
    # 'same' padding: 84 -> 21 -> 11 -> 11, so the FC layer sees 64 * 11 * 11 inputs
    convs = (4 * 32 * 64 + 32) + (32 * 64 * 16 + 64) + (64 * 64 * 9 + 64)
    expected = convs + (64 * 11 * 11 * 512 + 512) + (512 * 6 + 6)
    assert sum(p.numel() for p in qnet.parameters()) == expected == 4_046_502
    assert all((p == 0).all() for name, p in qnet.named_parameters() if "bias" in name)
    # uint8 frames are scaled by 1/255: the same as float frames in [0, 1]
    scaled = make_nature_cnn_qnet(6, pixel_scale=1.0)
    scaled.load_state_dict(qnet.state_dict())
    torch.testing.assert_close(scaled.module(pixels.float() / 255), out)
    # leading batch dims are kept
    assert qnet.module(pixels.unsqueeze(0)).shape == (1, 2, 6)


def test_loss_runs_on_small_nature_cnns():
    torch.manual_seed(0)
    size = 36  # 36 -> 9 -> 5 -> 5 keeps the test small

    def qnet():
        return make_nature_cnn_qnet(3, height=size, width=size)

    loss = GEMDQNLoss(qnet(), qnet()).make_value_estimator(gamma=0.99)
    pixels = torch.randint(0, 256, (2, 2, 4, size, size), dtype=torch.uint8)
    data = TensorDict(
        pixels=pixels[0],
        action=F.one_hot(torch.tensor([0, 2]), 3),
        memory_return=torch.randn(2, 2),
        next=TensorDict(
            pixels=pixels[1],
            reward=torch.ones(2, 1),
            done=torch.zeros(2, 1, dtype=torch.bool),
            terminated=torch.zeros(2, 1, dtype=torch.bool),
        ),
        batch_size=[2],
    )
    out = loss(data)
    (out["loss_sub"] + out["loss_meta"]).backward()
    looped = GEMDQNLoss(qnet(), qnet(), deactivate_vmap=True)
    looped.load_state_dict(loss.state_dict())
    torch.testing.assert_close(looped(data.clone())["loss_sub"], out["loss_sub"])


def test_refreshed_memory_feeds_the_loss():
    torch.manual_seed(0)
    loss = tiny_loss()
    memory = EpisodicMemory(capacity=16, batch_size=4)
    T = 5
    observation = torch.randn(T + 1, S)
    done = torch.zeros(T, 1, dtype=torch.bool)
    done[-1] = True
    memory.extend(
        TensorDict(
            observation=observation[:-1],
            action=F.one_hot(torch.randint(A, (T,)), A),
            collector=TensorDict(traj_ids=torch.zeros(T, dtype=torch.long)),
            next=TensorDict(
                observation=observation[1:],
                reward=torch.randn(T, 1),
                done=done,
                terminated=done.clone(),
            ),
            batch_size=[T],
        )
    )
    memory.refresh(loss.value_estimator)
    out = loss(memory.sample())
    assert out["loss_meta"].isfinite() and out["target_value"].shape == (4, 2)


def test_forward_writes_priority_and_takes_keyword_arguments():
    loss = tiny_loss()
    data = batch()
    out = loss(data)
    expected = (data["memory_return"].T - out["pred_value"]).abs().max(0).values
    torch.testing.assert_close(data["td_error"], expected)
    next_td = data["next"]
    loss_sub, loss_meta, *_ = loss(
        observation=data["observation"],
        action=data["action"],
        memory_return=data["memory_return"],
        next_observation=next_td["observation"],
        next_reward=next_td["reward"],
        next_done=next_td["done"],
        next_terminated=next_td["terminated"],
    )
    torch.testing.assert_close(loss_sub, out["loss_sub"])
    torch.testing.assert_close(loss_meta, out["loss_meta"])


def test_without_delay_the_online_sub_nets_give_the_targets():
    loss = table_loss(Q_TARGET, delay_value=False)
    assert "target_sub_qvalue_network_params" not in dict(loss.named_children())
    next_td = TensorDict(observation=states(1), batch_size=[1])
    with torch.no_grad():
        for p in leaves(loss.sub_qvalue_network_params):
            p.mul_(2.0)
    # V = (2 * 1, 2 * 5): the estimator reads the online nets, detached
    value = loss.value_estimator.next_state_value(next_td)
    torch.testing.assert_close(value, torch.tensor([[2.0, 10.0]]))


def _explicitly_padded_forward(qnet, pixels):
    """The Nature CNN with TF 'same' padding spelled out: every layer padded by
    ``F.pad`` (the odd pixel at the end), then an unpadded convolution."""
    import torch.nn.functional as F

    x = pixels.float() * qnet.pixel_scale
    for conv in qnet.conv:
        kernel, stride = conv.kernel_size[0], conv.stride[0]
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # width, then height
            total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        x = F.conv2d(F.pad(x, pads), conv.weight, conv.bias, stride)
        x = torch.relu(x)
    x = torch.relu(qnet.hidden(x.flatten(1)))
    return qnet.head(x)


@pytest.mark.parametrize("size", [84, 36, 41])
def test_nature_cnn_pads_as_tf_same(size):
    """The padding inside the convolutions (the odd pixel added at the end first)
    equals TF's 'same' padding done explicitly, for even and odd sizes."""
    torch.manual_seed(0)
    qnet = make_nature_cnn_qnet(5, height=size, width=size).module
    pixels = torch.randint(0, 256, (3, 4, size, size), dtype=torch.uint8)
    torch.testing.assert_close(qnet(pixels), _explicitly_padded_forward(qnet, pixels))


def test_nature_cnn_casts_once_to_bf16_under_autocast():
    torch.manual_seed(0)
    qnet = make_nature_cnn_qnet(5).module
    pixels = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = qnet(pixels)
    assert out.dtype == torch.bfloat16
    reference = _explicitly_padded_forward(qnet, pixels)
    torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.02)
    with pytest.raises(ValueError, match=r"\[\*, 4, 84, 84\], got \(8, 4, 80, 84\)"):
        qnet(pixels[..., :80, :])
