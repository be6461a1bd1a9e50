"""The reference networks of GEM on MuJoCo: a LayerNorm actor and twin critic groups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from tensordict import NestedKey, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import TensorSpec
from torchrl.modules import TanhModule, ValueOperator

__all__ = ["GEMCritic", "make_gem_actor", "make_gem_critics"]

Init = Literal["glorot", "torch"]


class GEMCritic(nn.Module):
    """A state-action value network ``Q(s, a) -> [*, 1]``.

    With the defaults it is the released code's critic: ``[s; a]`` goes through
    ``Linear(400)``, the action is concatenated again, then ``LayerNorm`` over the
    ``400 + |A|`` features, ReLU, ``Linear(300)``, ``LayerNorm``, ReLU, ``Linear(1)``.
    ``layer_norm=False, reinject_action=False`` gives the plain TD3 MLP.

    Args:
        observation_dim (int): size of the (flat) observation.
        action_dim (int): size of the action.

    Keyword Args:
        hidden_sizes (sequence of int): widths of the hidden layers. Defaults to
            ``(400, 300)``.
        layer_norm (bool): LayerNorm after every hidden layer. Defaults to ``True``.
        reinject_action (bool): concatenate the action again after the first layer.
            Defaults to ``True``.
        init (str): ``"glorot"`` (TF's Glorot-uniform kernels and zero biases, as the
            reference) or ``"torch"`` (PyTorch defaults). Defaults to ``"glorot"``.

    Examples:
        >>> import torch
        >>> critic = GEMCritic(11, 3)
        >>> critic(torch.randn(5, 11), torch.randn(5, 3)).shape
        torch.Size([5, 1])
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        *,
        hidden_sizes: Sequence[int] = (400, 300),
        layer_norm: bool = True,
        reinject_action: bool = True,
        init: Init = "glorot",
    ) -> None:
        super().__init__()
        if len(hidden_sizes) < 1:
            raise ValueError("hidden_sizes needs at least one layer.")
        self.reinject_action = reinject_action
        self.first = nn.Linear(observation_dim + action_dim, hidden_sizes[0])
        width = hidden_sizes[0] + (action_dim if reinject_action else 0)
        self.first_norm = nn.LayerNorm(width) if layer_norm else nn.Identity()
        self.body = _mlp(width, hidden_sizes[1:], layer_norm)
        self.head = nn.Linear(hidden_sizes[-1] if len(hidden_sizes) > 1 else width, 1)
        _initialise(self, init)

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        hidden = self.first(torch.cat([observation, action], -1))
        if self.reinject_action:
            hidden = torch.cat([hidden, action], -1)
        hidden = torch.relu(self.first_norm(hidden))
        return self.head(self.body(hidden))

    def ensemble_forward(
        self, params: TensorDictBase, observation: torch.Tensor, action: torch.Tensor
    ) -> torch.Tensor:
        """``K`` critics of this architecture at once: ``[K, *B, 1]`` values.

        ``params`` holds the ``K`` critics' parameters stacked along a leading
        dimension (this module's parameter names, as ``TensorDict.from_module``
        gives them). One matmul per layer serves all critics: the first layer, whose
        input all critics share, is a single GEMM against the ``K`` weight matrices
        side by side, the later ones batched matmuls. Same numbers as ``K`` calls of
        :meth:`forward` up to float rounding.
        """
        batch = observation.shape[:-1]
        # [n, in]; reshape, not flatten, so that an unbatched transition is n = 1
        state_action = torch.cat([observation, action], -1)
        state_action = state_action.reshape(-1, self.first.in_features)
        num_critics = params["first", "weight"].shape[0]
        # the critics share their input: one [n, in] matrix seen K times (no copy)
        shared = state_action.expand(num_critics, *state_action.shape)
        hidden = _ensemble_layer(self.first, params["first"], shared)  # [K, n, width]
        if self.reinject_action:
            flat_action = action.reshape(1, -1, action.shape[-1])
            hidden = torch.cat([hidden, flat_action.expand(num_critics, -1, -1)], -1)
        norm_params = params.get("first_norm", None)
        hidden = torch.relu(_ensemble_layer(self.first_norm, norm_params, hidden))
        for name, layer in self.body.named_children():
            hidden = _ensemble_layer(layer, params.get(("body", name), None), hidden)
        value = _ensemble_layer(self.head, params["head"], hidden)
        return value.reshape(num_critics, *batch, 1)


def make_gem_actor(
    observation_dim: int,
    action_spec: TensorSpec,
    *,
    hidden_sizes: Sequence[int] = (400, 300),
    layer_norm: bool = True,
    init: Init = "glorot",
    observation_key: NestedKey = "observation",
    action_key: NestedKey = "action",
) -> TensorDictSequential:
    """A deterministic actor: MLP, tanh, rescaled affinely to the action spec bounds.

    Args:
        observation_dim (int): size of the (flat) observation.
        action_spec (TensorSpec): a bounded action spec; its bounds set the rescaling.

    Keyword Args:
        hidden_sizes (sequence of int): hidden widths. Defaults to ``(400, 300)``.
        layer_norm (bool): LayerNorm before every hidden ReLU. Defaults to ``True``.
        init (str): ``"glorot"`` or ``"torch"``. Defaults to ``"glorot"``.
        observation_key (NestedKey): input key. Defaults to ``"observation"``.
        action_key (NestedKey): output key. Defaults to ``"action"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> actor = make_gem_actor(11, Bounded(-2.0, 2.0, shape=(3,)))
        >>> td = actor(TensorDict(observation=torch.randn(4, 11), batch_size=[4]))
        >>> bool((td["action"].abs() <= 2).all())
        True
    """
    action_dim = action_spec.shape[-1]
    net = nn.Sequential(
        _mlp(observation_dim, hidden_sizes, layer_norm),
        nn.Linear(hidden_sizes[-1], action_dim),
        Float32(),  # the tanh in float32, also under bf16 autocast
    )
    _initialise(net, init)
    return TensorDictSequential(
        TensorDictModule(net, in_keys=[observation_key], out_keys=["_actor_out"]),
        TanhModule(in_keys=["_actor_out"], out_keys=[action_key], spec=action_spec),
    )


class Float32(nn.Module):
    """Casts to float32: what follows runs in float32 under bf16 autocast.

    bf16 rounds ``tanh(x)`` to exactly 1 from ``|x|`` of about 3.7 on, where its
    gradient becomes 0: an actor output that drifts that far gets no gradient to
    come back (float32 keeps one up to about 9). A bf16 DDPG run on Hopper (plain
    MLP actor) ended with every pre-tanh output beyond 7 and a constant evaluation.
    """

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.float()


def make_gem_critics(
    observation_dim: int,
    action_dim: int,
    *,
    num_critics: int = 4,
    hidden_sizes: Sequence[int] = (400, 300),
    layer_norm: bool = True,
    reinject_action: bool = True,
    init: Init = "glorot",
    observation_key: NestedKey = "observation",
    action_key: NestedKey = "action",
    value_key: NestedKey = "state_action_value",
) -> list[ValueOperator]:
    """``num_critics`` independently initialised :class:`GEMCritic` value operators.

    Pass the list to :class:`~torchrl_gem.GEMLoss` (or ``TD3Loss``): a list keeps
    each critic's own initialisation. With the default ``twin_groups`` consecutive
    halves form the twin estimators, so 4 critics are the pairs ``{0, 1}``, ``{2, 3}``.

    Args:
        observation_dim (int): size of the (flat) observation.
        action_dim (int): size of the action.

    Keyword Args:
        num_critics (int): how many critics. Defaults to ``4``.
        hidden_sizes, layer_norm, reinject_action, init: see :class:`GEMCritic`.
        observation_key (NestedKey): observation input key.
        action_key (NestedKey): action input key.
        value_key (NestedKey): output key. Defaults to ``"state_action_value"``.

    Examples:
        >>> critics = make_gem_critics(11, 3)
        >>> len(critics), critics[0].out_keys
        (4, ['state_action_value'])
    """
    if num_critics < 1:
        raise ValueError(f"num_critics must be >= 1, got {num_critics}.")
    return [
        ValueOperator(
            GEMCritic(
                observation_dim,
                action_dim,
                hidden_sizes=hidden_sizes,
                layer_norm=layer_norm,
                reinject_action=reinject_action,
                init=init,
            ),
            in_keys=[observation_key, action_key],
            out_keys=[value_key],
        )
        for _ in range(num_critics)
    ]


class _EnsembleLinear(torch.autograd.Function):
    """``K`` linear layers on their ``[K, n, in]`` inputs: ``x @ W_k^T + b_k``.

    The same numbers as ``torch.baddbmm``; the backward computes the weight gradient
    as ``grad^T @ x``, directly in the ``[K, out, in]`` layout of the weights, where
    autograd's ``x^T @ grad`` would need a transposing copy of every weight gradient
    (a tenth of a GEM update step on CPU). Under autocast the forward runs in the
    autocast dtype, as ``baddbmm`` does, and the backward in the gradient's dtype.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias):
        ctx.save_for_backward(hidden, weight)
        return torch.baddbmm(bias.unsqueeze(1), hidden, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        hidden, weight = ctx.saved_tensors
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad
        grad_hidden = torch.bmm(grad, weight.to(grad.dtype)) if needs_hidden else None
        grad_weight = (
            torch.bmm(grad.transpose(1, 2), hidden.to(grad.dtype))
            if needs_weight
            else None
        )
        grad_bias = grad.sum(1) if needs_bias else None
        return grad_hidden, grad_weight, grad_bias


def _ensemble_layer(
    layer: nn.Module, params: TensorDictBase | None, hidden: torch.Tensor
) -> torch.Tensor:
    """``layer`` applied by each of ``K`` critics to its own ``[K, n, F]`` slice."""
    if isinstance(layer, nn.Linear):
        return _EnsembleLinear.apply(hidden, params["weight"], params["bias"])
    if isinstance(layer, nn.LayerNorm):
        normed = F.layer_norm(hidden, layer.normalized_shape, eps=layer.eps)
        return torch.addcmul(
            params["bias"].unsqueeze(1), normed, params["weight"].unsqueeze(1)
        )
    if isinstance(layer, nn.ReLU):
        return torch.relu(hidden)
    if isinstance(layer, nn.Identity):
        return hidden
    raise TypeError(f"no batched form for {type(layer).__name__}")


def _mlp(in_features: int, hidden_sizes: Sequence[int], layer_norm: bool) -> nn.Module:
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [nn.Linear(in_features, width)]
        layers += [nn.LayerNorm(width)] if layer_norm else []
        layers += [nn.ReLU()]
        in_features = width
    return nn.Sequential(*layers)


def _initialise(module: nn.Module, init: Init) -> None:
    if init not in ("glorot", "torch"):
        raise ValueError(f"init must be 'glorot' or 'torch', got {init!r}.")
    if init == "torch":
        return
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
