"""The reference networks: layer layout, action re-injection, bounds, init."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.data import Bounded

from torchrl_gem import GEMCritic, make_gem_actor, make_gem_critics


def test_reference_critic_layout():
    critic = GEMCritic(11, 3)
    assert critic.first.in_features == 14 and critic.first.out_features == 400
    # LayerNorm over the 400 features plus the re-injected action
    assert critic.first_norm.normalized_shape == (403,)
    linears = [m for m in critic.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (14, 400),
        (403, 300),
        (300, 1),
    ]
    assert sum(isinstance(m, nn.LayerNorm) for m in critic.modules()) == 2
    assert all((m.bias == 0).all() for m in linears)  # Glorot kernels, zero biases


def test_action_enters_twice():
    torch.manual_seed(0)
    critic = GEMCritic(2, 1, hidden_sizes=(4, 4))
    obs, action = torch.randn(5, 2), torch.randn(5, 1)
    with torch.no_grad():
        critic.first.weight[:, -1] = 0.0  # the input copy of the action is cut off
    assert not torch.allclose(critic(obs, action), critic(obs, action + 1.0))
    plain = GEMCritic(2, 1, hidden_sizes=(4, 4), reinject_action=False)
    with torch.no_grad():
        plain.first.weight[:, -1] = 0.0
    torch.testing.assert_close(plain(obs, action), plain(obs, action + 1.0))


def test_plain_mlp_option():
    critic = GEMCritic(
        11,
        3,
        hidden_sizes=(256, 256),
        layer_norm=False,
        reinject_action=False,
        init="torch",
    )
    assert not any(isinstance(m, nn.LayerNorm) for m in critic.modules())
    assert critic.first_norm.__class__ is nn.Identity
    assert critic(torch.randn(2, 11), torch.randn(2, 3)).shape == (2, 1)


def test_actor_is_rescaled_to_the_spec():
    spec = Bounded(torch.tensor([-0.4, 0.0]), torch.tensor([0.4, 2.0]), shape=(2,))
    actor = make_gem_actor(5, spec)
    out = actor(TensorDict(observation=torch.randn(1000, 5) * 100, batch_size=[1000]))
    action = out["action"]
    assert (action[:, 0].abs() <= 0.4).all() and (action[:, 1] >= 0).all()
    assert (action[:, 1] <= 2.0).all() and action[:, 1].max() > 1.9
    norms = [m for m in actor.modules() if isinstance(m, nn.LayerNorm)]
    assert [n.normalized_shape for n in norms] == [(400,), (300,)]


def test_critics_are_independent():
    critics = make_gem_critics(4, 2, num_critics=4)
    weights = [c.module.first.weight for c in critics]
    assert all(not torch.equal(weights[0], w) for w in weights[1:])
    with pytest.raises(ValueError, match="num_critics"):
        make_gem_critics(4, 2, num_critics=0)
    with pytest.raises(ValueError, match="init"):
        GEMCritic(2, 1, init="kaiming")


@pytest.mark.parametrize("layer_norm, reinject_action", [(True, True), (False, False)])
@pytest.mark.parametrize("hidden_sizes", [(8,), (8, 6), (8, 6, 5)])
@pytest.mark.parametrize("batch", [(5,), (2, 3)])
def test_ensemble_forward_equals_each_critic(
    layer_norm, reinject_action, hidden_sizes, batch
):
    torch.manual_seed(0)
    critics = [
        GEMCritic(
            4,
            2,
            hidden_sizes=hidden_sizes,
            layer_norm=layer_norm,
            reinject_action=reinject_action,
            init="torch",
        )
        for _ in range(3)
    ]
    params = TensorDict.from_modules(*critics, as_module=False)
    observation = torch.randn(*batch, 4)
    action = torch.randn(*batch, 2, requires_grad=True)  # as in the actor loss
    values = critics[0].ensemble_forward(params, observation, action)
    assert values.shape == (3, *batch, 1)
    expected = []
    for index, critic in enumerate(critics):
        with params[index].to_module(critic):
            expected.append(critic(observation, action))
    torch.testing.assert_close(values, torch.stack(expected), rtol=1e-5, atol=1e-6)
    # gradients reach each critic's own parameters, as the separate calls give them
    leaves = [*params.values(True, True), action]
    batched = torch.autograd.grad(values.square().sum(), leaves)
    reference = torch.autograd.grad(torch.stack(expected).square().sum(), leaves)
    for got, want in zip(batched, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_ensemble_linear_gradients_match_autograd_in_float64():
    from torchrl_gem.networks import _EnsembleLinear

    generator = torch.Generator().manual_seed(0)
    hidden, weight, bias = (
        torch.randn(*shape, dtype=torch.float64, generator=generator).requires_grad_()
        for shape in ((3, 5, 4), (3, 6, 4), (3, 6))
    )
    assert torch.autograd.gradcheck(_EnsembleLinear.apply, (hidden, weight, bias))
    # the first layer: one input shared by the K critics, expanded without a copy
    shared = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: _EnsembleLinear.apply(x.expand(3, 5, 4), w, b),
        (shared, weight, bias),
    )


def test_ensemble_gradients_stay_float32_under_bf16_autocast():
    critic = GEMCritic(4, 2, hidden_sizes=(8, 6))
    params = TensorDict.from_modules(critic, critic, as_module=False)
    leaves = list(params.values(True, True))
    observation, action = torch.randn(16, 4), torch.randn(16, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values = critic.ensemble_forward(params, observation, action)
    assert values.dtype == torch.bfloat16
    grads = torch.autograd.grad(values.float().sum(), leaves)
    assert all(grad.dtype == torch.float32 for grad in grads)
    reference = torch.autograd.grad(
        critic.ensemble_forward(params, observation, action).sum(), leaves
    )
    for got, want in zip(grads, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=0.1, atol=0.05)


@pytest.mark.parametrize("layer_norm", [True, False])
def test_actor_tanh_keeps_its_gradient_under_bf16_autocast(layer_norm):
    """bf16 rounds tanh(5) to 1, whose gradient is 0: the actor's squashing runs in
    float32, so a saturating output keeps the gradient that float32 gives it."""
    spec = Bounded(-1.0, 1.0, shape=(2,))
    actor = make_gem_actor(5, spec, hidden_sizes=(8,), layer_norm=layer_norm)
    last = actor.module[0].module[1]  # the output layer, before the tanh
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([5.0, -5.0]))  # pre-tanh outputs of +-5
    states = TensorDict(observation=torch.randn(4, 5), batch_size=[4])
    grads = {}
    for precision in ("fp32", "bf16"):
        last.bias.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            action = actor(states.clone())["action"]
        assert action.dtype == torch.float32
        action.sum().backward()
        grads[precision] = last.bias.grad.clone()
    expected = 4 * (1 - math.tanh(5.0) ** 2)  # 4 states; +-1 rescaled by 1
    assert grads["fp32"].tolist() == pytest.approx([expected, expected], rel=1e-3)
    torch.testing.assert_close(grads["bf16"], grads["fp32"])
