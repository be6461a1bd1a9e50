"""One gradient step ("update") of GEM and TD3: TorchRL losses against plain PyTorch.

Every variant is a callable doing ONE full update (critic step every call, actor step
every 2nd call, as in TD3 and GEM) on the next batch of a pre-built pool of 64
batches, with its own fused Adam optimisers (lr 3e-4). Variants (``VARIANTS``, easy to
extend: append a ``Variant``):

1. ``GEMLoss``: the package's loss as the README loop calls it,
   ``loss.value_loss(batch)[0].backward()`` and, every 2nd step,
   ``loss.actor_loss(batch)[0].backward()``; 4 ``make_gem_critics`` critics.
2. ``plain GEM`` (the reference): the same math in plain PyTorch, the 4 critics as
   one ``baddbmm`` per layer over the 4 critics (weights ``[4, in, out]``, the first
   layer's shared input broadcast), the LayerNorm actor, the asymmetric loss
   (weight ``1/alpha = 2`` where a critic overestimates, ``alpha = 0.5`` where it
   underestimates; every critic against both twin columns, summed over critics,
   averaged over columns and batch), actor loss ``-mean_k Q_k(s, pi(s))`` through
   detached critic weights.
3. ``TD3Loss``: TorchRL's ``TD3Loss`` (2 plain-MLP critics, MSE, TD(0) estimator,
   gamma 0.99, smoothing noise 0.2 clipped at 0.5), a ``SoftUpdate(tau=0.005)``
   stepped after each actor step.
4. ``plain TD3`` (the reference): the same math in plain PyTorch, batched 2-critic
   matmuls, the actor step through critic 0 only, ``torch._foreach_lerp_`` targets.
5. ``GEMLoss comp``, ``TD3Loss comp``: 1 and 3 with both loss calls through
   ``torch.compile`` (``torchrl_gem.CompiledCall``, as the recipe's
   ``optim.compile``), compiled during the warm-up updates; checked against the
   same references.

Settings: the device (``--device``: ``cpu``, or ``cuda`` with the batches, networks
and optimisers on the GPU), torch threads (``torch.set_num_threads``) and precision:
``fp32``, or ``bf16`` = ``torch.autocast(<device>, dtype=torch.bfloat16)`` around the
forward and loss computations (backward outside it; master weights and Adam in fp32).
Batch 128, HalfCheetah-sized (observation 17, action 6 in [-1, 1]).

Timing: all variants of a setting (and the matmul below) are built in one process and
timed interleaved, round-robin (the order rotates every round), ``--steps`` updates per
round after ``--warmup`` updates (on a GPU, each round ends when its work has run:
``torch.cuda.synchronize``). updates/s is the median over rounds, its spread the
(max - min) / median over rounds; ``vs ref`` is the median over rounds of the ratio
of a variant's updates/s to its reference's in the same round (< 1: slower than the
reference).

FLOP counting rule (matmuls only, 2*m*k*n per [m, k] @ [k, n]; LayerNorm, activations,
losses and Adam are not counted). A layer's forward costs F = 2*B*in*out; its backward
costs F for the weight gradient if the layer is trained, plus F for the input gradient
if its input needs one (every layer but a first layer fed with data only).

- GEM critic step: 4 critics forward + backward on the batch's (s, a), first layer
  2F, the others 3F. No target values: GEM's targets come from the memory.
- GEM actor step (every 2nd update): actor forward + backward (first layer 2F, others
  3F) plus the 4 frozen critics forward + input gradient (2F every layer).
- TD3 critic step: target actor and 2 target critics forward (F) for the TD(0) target,
  plus the 2 critics forward + backward (first layer 2F, others 3F).
- TD3 actor step (every 2nd update): actor forward + backward plus critic 0 forward +
  input gradient (``TD3Loss`` evaluates both critics and uses the first: the extra
  critic is overhead, not counted).

The "limit" is a large matmul, ``[4096 x 406] @ [406 x 300]`` (GEM's widest layer with
4096 rows), timed in the same rounds at the same threads and precision (``bf16``:
bf16 operands, fp32 accumulation, as autocast's matmuls).

Before timing, each variant with a reference is checked against it in fp32 from the
same initial weights (the reference copies them): the critic loss, the actor loss,
and both again after two updates (one critic step, one critic + actor step), to
1e-4 relative (TD3 with smoothing noise 0, its only randomness).

Run: ``python benchmarks/update.py`` (about 2 minutes on 2 cores); narrow it with
``--threads 1 --precision fp32 --sizes 256x256 --repeat 3 --steps 20``; on a GPU,
``--device cuda``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("RL_WARNINGS", "0")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torchrl.data import Bounded  # noqa: E402
from torchrl.objectives import SoftUpdate, TD3Loss, ValueEstimators  # noqa: E402

from torchrl_gem import (  # noqa: E402
    CompiledCall,
    GEMLoss,
    make_gem_actor,
    make_gem_critics,
    networks,  # BaddbmmGEMUpdate swaps its linear layer
)

OBS_DIM, ACT_DIM, BATCH, POOL = 17, 6, 128, 64
GAMMA, TAU, LR, ALPHA = 0.99, 0.005, 3e-4, 0.5
POLICY_NOISE, NOISE_CLIP = 0.2, 0.5
SEED = 0
LIMIT_SHAPE = (4096, 406, 300)  # m, k, n
SPEC = Bounded(-1.0, 1.0, shape=(ACT_DIM,))


# ----------------------------------------------------------------- batch pool
@dataclass
class Pool:
    """``POOL`` batches, as TensorDicts and as the plain tensors they hold."""

    tds: list[TensorDict]
    tensors: list[tuple[Tensor, ...]]  # obs, action, memory_return, next_obs, r, term
    device: torch.device  # of the batches, and of every network built on them


def make_pool(batch: int, generator: torch.Generator, device: torch.device) -> Pool:
    """The same numbers on every device: drawn on the CPU, then moved."""
    tds, tensors = [], []
    for _ in range(POOL):
        obs = torch.randn(batch, OBS_DIM, generator=generator)
        action = torch.rand(batch, ACT_DIM, generator=generator) * 2 - 1
        memory_return = torch.randn(batch, 2, generator=generator) * 10
        next_obs = torch.randn(batch, OBS_DIM, generator=generator)
        reward = torch.randn(batch, 1, generator=generator)
        terminated = torch.rand(batch, 1, generator=generator) < 0.05
        td = TensorDict(
            observation=obs,
            action=action,
            memory_return=memory_return,
            next=TensorDict(
                observation=next_obs,
                reward=reward,
                done=terminated.clone(),
                terminated=terminated,
                batch_size=[batch],
            ),
            batch_size=[batch],
        )
        tds.append(td.to(device))
        tensors.append(
            tuple(
                x.to(device)
                for x in (obs, action, memory_return, next_obs, reward, terminated)
            )
        )
    return Pool(tds, tensors, device)


# ------------------------------------------------------------------- networks
def gem_networks(sizes: tuple[int, ...], device: torch.device):
    """GEM's LayerNorm actor and 4 critics, the same weights on every call."""
    torch.manual_seed(SEED)
    actor = make_gem_actor(OBS_DIM, SPEC, hidden_sizes=sizes)
    critics = make_gem_critics(OBS_DIM, ACT_DIM, hidden_sizes=sizes)
    return actor.to(device), [critic.to(device) for critic in critics]


def td3_networks(sizes: tuple[int, ...], device: torch.device):
    """TD3's plain-MLP actor and 2 critics, the same weights on every call."""
    torch.manual_seed(SEED + 1)
    actor = make_gem_actor(OBS_DIM, SPEC, hidden_sizes=sizes, layer_norm=False)
    critics = make_gem_critics(
        OBS_DIM,
        ACT_DIM,
        hidden_sizes=sizes,
        num_critics=2,
        layer_norm=False,
        reinject_action=False,
    )
    return actor.to(device), [critic.to(device) for critic in critics]


def _linears_and_norms(sequential: nn.Module) -> list[tuple[nn.Linear, nn.Module]]:
    """``(Linear, LayerNorm or None)`` pairs of an ``_mlp`` Sequential."""
    pairs: list[list] = []
    for layer in sequential:
        if isinstance(layer, nn.Linear):
            pairs.append([layer, None])
        elif isinstance(layer, nn.LayerNorm):
            pairs[-1][1] = layer
    return [tuple(pair) for pair in pairs]


def _leaf(tensor: Tensor) -> Tensor:
    return tensor.detach().clone().contiguous().requires_grad_(True)


class PlainActor:
    """MLP (+ LayerNorm) -> tanh, as plain tensors; weights copied from an actor."""

    def __init__(self, actor) -> None:
        net = actor.module[0].module  # Sequential(_mlp, Linear)
        self.hidden = []
        for linear, norm in _linears_and_norms(net[0]):
            affine = None
            if norm is not None:
                affine = (_leaf(norm.weight), _leaf(norm.bias), norm.eps)
            self.hidden.append((_leaf(linear.weight), _leaf(linear.bias), affine))
        self.out = (_leaf(net[1].weight), _leaf(net[1].bias))

    def parameters(self) -> list[Tensor]:
        params = []
        for weight, bias, affine in self.hidden:
            params += [weight, bias] + ([] if affine is None else list(affine[:2]))
        return params + list(self.out)

    def target(self) -> PlainActor:
        """A copy without gradients (the target network)."""
        copy = object.__new__(PlainActor)
        copy.hidden = [
            (
                w.detach().clone(),
                b.detach().clone(),
                None
                if a is None
                else (a[0].detach().clone(), a[1].detach().clone(), a[2]),
            )
            for w, b, a in self.hidden
        ]
        copy.out = tuple(t.detach().clone() for t in self.out)
        return copy

    def __call__(self, obs: Tensor) -> Tensor:
        # bounds [-1, 1]: TanhModule's affine rescaling is the identity
        hidden = obs
        for weight, bias, affine in self.hidden:
            hidden = F.linear(hidden, weight, bias)
            if affine is not None:
                gain, shift, eps = affine
                hidden = F.layer_norm(hidden, hidden.shape[-1:], gain, shift, eps)
            hidden = torch.relu(hidden)
        return torch.tanh(F.linear(hidden, *self.out))


class BatchedCritics:
    """K critics as stacked weights: one ``baddbmm`` per layer over the K critics.

    Every layer is ``baddbmm(bias [K, 1, out], hidden [K, B, in], weight [K, in,
    out])``; the first one reads the shared ``[s; a]`` broadcast over K (stride 0,
    no copy; measured as fast as one ``[B, in] @ [in, K*h1]`` GEMM viewed as
    ``[K, B, h1]``, and faster in bf16). GEM concatenates the action again after it.
    LayerNorm normalises without affine, then applies the per-critic gain and shift.
    """

    def __init__(self, critics) -> None:
        modules = [critic.module for critic in critics]  # GEMCritic
        self.reinject = modules[0].reinject_action
        self.layers = []  # (weight [K, in, out], bias [K, 1, out], norm or None)
        layers = [
            [(m.first, m.first_norm), *_linears_and_norms(m.body), (m.head, None)]
            for m in modules
        ]
        for depth in range(len(layers[0])):
            linears = [critic[depth][0] for critic in layers]
            norms = [critic[depth][1] for critic in layers]
            norm = None
            if isinstance(norms[0], nn.LayerNorm):
                norm = (
                    _leaf(torch.stack([n.weight[None] for n in norms])),
                    _leaf(torch.stack([n.bias[None] for n in norms])),
                    norms[0].eps,
                )
            self.layers.append(
                (
                    _leaf(torch.stack([lin.weight.T for lin in linears])),
                    _leaf(torch.stack([lin.bias[None] for lin in linears])),
                    norm,
                )
            )

    def parameters(self) -> list[Tensor]:
        params = []
        for weight, bias, norm in self.layers:
            params += [weight, bias] + ([] if norm is None else list(norm[:2]))
        return params

    def _map(self, fn: Callable[[Tensor], Tensor]) -> BatchedCritics:
        """A copy with ``fn`` applied to every tensor."""
        copy = object.__new__(BatchedCritics)
        copy.reinject = self.reinject
        copy.layers = [
            (fn(w), fn(b), None if n is None else (fn(n[0]), fn(n[1]), n[2]))
            for w, b, n in self.layers
        ]
        return copy

    def detached(self) -> BatchedCritics:
        """Aliases without gradient (frozen critics); they follow the optimiser."""
        return self._map(Tensor.detach)

    def target(self) -> BatchedCritics:
        """A copy without gradients (the target networks)."""
        return self._map(lambda tensor: tensor.detach().clone())

    def first_only(self) -> BatchedCritics:
        """Critic 0 alone (views)."""
        return self._map(lambda tensor: tensor[:1])

    def __call__(self, obs: Tensor, action: Tensor) -> Tensor:
        """``[K, B]`` values."""
        (weight, bias, norm), *rest = self.layers
        num = weight.shape[0]
        inputs = torch.cat([obs, action], -1)
        hidden = torch.baddbmm(bias, inputs.expand(num, *inputs.shape), weight)
        if self.reinject:
            hidden = torch.cat([hidden, action.expand(num, *action.shape)], -1)
        hidden = _norm_relu(hidden, norm)
        for weight, bias, norm in rest[:-1]:
            hidden = _norm_relu(torch.baddbmm(bias, hidden, weight), norm)
        weight, bias, _ = rest[-1]
        return torch.baddbmm(bias, hidden, weight).squeeze(-1)


def _norm_relu(hidden: Tensor, norm) -> Tensor:
    if norm is not None:
        gain, shift, eps = norm
        hidden = F.layer_norm(hidden, hidden.shape[-1:], eps=eps)
        hidden = torch.addcmul(shift, hidden, gain)
    return torch.relu(hidden)


def fused_adam(params) -> torch.optim.Adam:
    return torch.optim.Adam([p for p in params if p.requires_grad], LR, fused=True)


# ------------------------------------------------------------------ variants
class Update:
    """One full update per call: critic step, and the actor step every 2nd call.

    Subclasses define ``critic_loss(i)`` and ``actor_loss(i)`` on pool batch ``i``
    and ``after_actor_step()``.
    """

    def __init__(self, pool: Pool, bf16: bool) -> None:
        self.pool, self.bf16, self.calls = pool, bf16, 0

    def autocast(self):
        device = self.pool.device.type
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.bf16)

    def __call__(self) -> None:
        index = self.calls % POOL
        self.critic_optim.zero_grad()
        with self.autocast():
            loss = self.critic_loss(index)
        loss.backward()
        self.critic_optim.step()
        if self.calls % 2:
            self.actor_optim.zero_grad()
            with self.autocast():
                loss = self.actor_loss(index)
            loss.backward()
            self.actor_optim.step()
            self.after_actor_step()
        self.calls += 1

    def after_actor_step(self) -> None:
        pass


class GEMLossUpdate(Update):
    def __init__(self, sizes, pool, bf16, policy_noise=POLICY_NOISE) -> None:
        super().__init__(pool, bf16)
        actor, critics = gem_networks(sizes, pool.device)
        self.loss = GEMLoss(actor, critics, action_spec=SPEC).to(pool.device)
        self.critic_optim = fused_adam(
            self.loss.qvalue_network_params.values(True, True)
        )
        self.actor_optim = fused_adam(self.loss.actor_network_params.values(True, True))

    def critic_loss(self, index: int) -> Tensor:
        return self.loss.value_loss(self.pool.tds[index])[0]

    def actor_loss(self, index: int) -> Tensor:
        return self.loss.actor_loss(self.pool.tds[index])[0]


class BaddbmmGEMUpdate(GEMLossUpdate):
    """``GEMLoss`` with the critic ensemble's linear layers left to autograd's
    ``baddbmm`` backward (the layout before ``networks._EnsembleLinear``: each weight
    gradient comes out transposed and is copied into ``[out, in]``)."""

    def __call__(self) -> None:
        saved = networks._EnsembleLinear
        networks._EnsembleLinear = _AutogradLinear
        try:
            super().__call__()
        finally:
            networks._EnsembleLinear = saved


class _AutogradLinear:
    @staticmethod
    def apply(hidden: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return torch.baddbmm(bias.unsqueeze(1), hidden, weight.transpose(1, 2))


class PlainGEMUpdate(Update):
    def __init__(self, sizes, pool, bf16, policy_noise=POLICY_NOISE) -> None:
        super().__init__(pool, bf16)
        actor, critics = gem_networks(sizes, pool.device)
        self.actor, self.critics = PlainActor(actor), BatchedCritics(critics)
        self.frozen = self.critics.detached()
        self.critic_optim = fused_adam(self.critics.parameters())
        self.actor_optim = fused_adam(self.actor.parameters())

    def critic_loss(self, index: int) -> Tensor:
        obs, action, memory_return = self.pool.tensors[index][:3]
        values = self.critics(obs, action)  # [K, B]
        error = memory_return.T.unsqueeze(0) - values.unsqueeze(1)  # [K, 2, B]
        weight = torch.where(error < 0, 1.0 / ALPHA, ALPHA)
        # summed over critics, averaged over the 2 columns and the batch
        return (weight * error.square()).sum() / error[0].numel()

    def actor_loss(self, index: int) -> Tensor:
        obs = self.pool.tensors[index][0]
        return -self.frozen(obs, self.actor(obs)).mean()


class TD3LossUpdate(Update):
    def __init__(self, sizes, pool, bf16, policy_noise=POLICY_NOISE) -> None:
        super().__init__(pool, bf16)
        actor, critics = td3_networks(sizes, pool.device)
        self.loss = TD3Loss(
            actor,
            critics,
            action_spec=SPEC,
            policy_noise=policy_noise,
            noise_clip=NOISE_CLIP,
            loss_function="l2",
        ).to(pool.device)  # its action bounds, built on the CPU
        self.loss.make_value_estimator(ValueEstimators.TD0, gamma=GAMMA)
        self.target_update = SoftUpdate(self.loss, tau=TAU)
        self.critic_optim = fused_adam(
            self.loss.qvalue_network_params.values(True, True)
        )
        self.actor_optim = fused_adam(self.loss.actor_network_params.values(True, True))

    def critic_loss(self, index: int) -> Tensor:
        return self.loss.value_loss(self.pool.tds[index])[0]

    def actor_loss(self, index: int) -> Tensor:
        return self.loss.actor_loss(self.pool.tds[index])[0]

    def after_actor_step(self) -> None:
        self.target_update.step()


class PlainTD3Update(Update):
    def __init__(self, sizes, pool, bf16, policy_noise=POLICY_NOISE) -> None:
        super().__init__(pool, bf16)
        actor, critics = td3_networks(sizes, pool.device)
        self.policy_noise = policy_noise
        self.actor, self.critics = PlainActor(actor), BatchedCritics(critics)
        self.target_actor, self.target_critics = (
            self.actor.target(),
            self.critics.target(),
        )
        self.first_critic = self.critics.detached().first_only()
        self.critic_optim = fused_adam(self.critics.parameters())
        self.actor_optim = fused_adam(self.actor.parameters())
        self.online = self.actor.parameters() + self.critics.parameters()
        self.targets = self.target_actor.parameters() + self.target_critics.parameters()

    def critic_loss(self, index: int) -> Tensor:
        obs, action, _, next_obs, reward, terminated = self.pool.tensors[index]
        with torch.no_grad():
            next_action = self.target_actor(next_obs)
            noise = torch.randn_like(next_action) * self.policy_noise
            next_action = (next_action + noise.clamp(-NOISE_CLIP, NOISE_CLIP)).clamp(
                -1.0, 1.0
            )
            next_value = self.target_critics(next_obs, next_action).min(0).values
            target = reward.squeeze(-1) + GAMMA * next_value * (~terminated.squeeze(-1))
        values = self.critics(obs, action)  # [2, B]
        return (values - target).square().mean(-1).sum()

    def actor_loss(self, index: int) -> Tensor:
        obs = self.pool.tensors[index][0]
        return -self.first_critic(obs, self.actor(obs)).mean()

    def after_actor_step(self) -> None:
        with torch.no_grad():
            torch._foreach_lerp_(self.targets, self.online, TAU)


def compiled(update_class: type[Update]) -> type[Update]:
    """``update_class`` with its two loss calls through ``torch.compile``, as the
    recipe's ``optim.compile=true`` makes them (``torchrl_gem.CompiledCall``)."""

    class CompiledUpdate(update_class):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.value_call = CompiledCall(self.loss.value_loss)
            self.actor_call = CompiledCall(self.loss.actor_loss)

        def critic_loss(self, index: int) -> Tensor:
            return self.value_call(self.pool.tds[index])[0]

        def actor_loss(self, index: int) -> Tensor:
            return self.actor_call(self.pool.tds[index])[0]

    return CompiledUpdate


@dataclass
class Variant:
    """A timed update: ``build(sizes, pool, bf16, policy_noise=...)`` -> Update.

    ``algo`` picks the FLOP count; ``reference`` names the variant it is checked
    against and divided by (``None`` for a reference).
    """

    name: str
    algo: str
    build: Callable[..., Update]
    reference: str | None = None


VARIANTS = [
    Variant("GEMLoss", "gem", GEMLossUpdate, reference="plain GEM"),
    Variant("GEMLoss comp", "gem", compiled(GEMLossUpdate), reference="plain GEM"),
    Variant("plain GEM", "gem", PlainGEMUpdate),
    Variant("GEM baddbmm", "gem", BaddbmmGEMUpdate, reference="GEMLoss"),
    Variant("TD3Loss", "td3", TD3LossUpdate, reference="plain TD3"),
    Variant("TD3Loss comp", "td3", compiled(TD3LossUpdate), reference="plain TD3"),
    Variant("plain TD3", "td3", PlainTD3Update),
]


# ---------------------------------------------------------------------- FLOPs
def _mlp_flops(dims: list[int], batch: int) -> list[int]:
    """Forward FLOPs of each layer of an MLP with layer widths ``dims``."""
    return [2 * batch * k * n for k, n in zip(dims[:-1], dims[1:], strict=True)]


def update_flops(algo: str, sizes: tuple[int, ...], batch: int) -> float:
    """FLOPs of one update (the critic step plus half an actor step); see the top."""
    actor = _mlp_flops([OBS_DIM, *sizes, ACT_DIM], batch)
    if algo == "gem":
        critic = _mlp_flops([OBS_DIM + ACT_DIM, sizes[0]], batch) + _mlp_flops(
            [sizes[0] + ACT_DIM, *sizes[1:], 1], batch
        )
        num_critics, actor_critics, target = 4, 4, 0.0
    elif algo == "td3":
        critic = _mlp_flops([OBS_DIM + ACT_DIM, *sizes, 1], batch)
        num_critics, actor_critics = 2, 1
        target = sum(actor) + num_critics * sum(critic)
    else:
        raise ValueError(f"unknown algo {algo!r}")

    def trained(layers):  # first layer fed with data: forward + weight gradient
        return 2 * layers[0] + 3 * sum(layers[1:])

    critic_step = target + num_critics * trained(critic)
    actor_step = trained(actor) + actor_critics * 2 * sum(critic)
    return critic_step + actor_step / 2


# -------------------------------------------------------------------- checking
def check_against_reference(variant, reference, sizes, pool) -> str:
    """fp32 losses of ``variant`` and ``reference`` from the same initial weights."""
    first = variant.build(sizes, pool, False, policy_noise=0.0)
    second = reference.build(sizes, pool, False, policy_noise=0.0)
    worst = 0.0
    for stage in ("initial", "after 2 updates"):
        for kind in ("critic_loss", "actor_loss"):
            with torch.no_grad():
                a = getattr(first, kind)(2).item()
                b = getattr(second, kind)(2).item()
            relative = abs(a - b) / max(abs(b), 1e-12)
            worst = max(worst, relative)
            if relative > 1e-4:
                raise AssertionError(
                    f"{variant.name} and {reference.name} ({sizes}) differ: "
                    f"{kind} {stage} {a!r} vs {b!r} (relative {relative:.2e})"
                )
        first(), first(), second(), second()
    return f"{variant.name} == {reference.name}: max relative difference {worst:.1e}"


# --------------------------------------------------------------------- timing
def limit_matmul(bf16: bool, device: torch.device) -> Callable[[], None]:
    m, k, n = LIMIT_SHAPE
    dtype = torch.bfloat16 if bf16 else torch.float32
    left = torch.randn(m, k, dtype=dtype, device=device)
    right = torch.randn(k, n, dtype=dtype, device=device)
    out = torch.empty(m, n, dtype=dtype, device=device)
    return lambda: torch.mm(left, right, out=out)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on a GPU (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_setting(threads, precision, sizes_list, variants, pool, args):
    """Interleaved rounds of every (variant, sizes) and the matmul limit."""
    torch.set_num_threads(threads)
    bf16 = precision == "bf16"
    items = {}
    for sizes in sizes_list:
        for variant in variants:
            items[variant.name, sizes] = (variant.build(sizes, pool, bf16), args.steps)
    matmul_steps = max(3, args.steps // 3)
    items["limit", None] = (limit_matmul(bf16, pool.device), matmul_steps)
    for fn, _ in items.values():
        for _ in range(args.warmup):
            fn()
    keys = list(items)
    rates = {key: [] for key in keys}
    for round_index in range(args.repeat):
        shift = round_index % len(keys)
        for key in keys[shift:] + keys[:shift]:
            fn, steps = items[key]
            gc.collect()
            synchronize(pool.device)
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            synchronize(pool.device)
            rates[key].append(steps / (time.perf_counter() - start))
    return rates


def report(threads, precision, sizes_list, variants, rates, batch) -> None:
    m, k, n = LIMIT_SHAPE
    limit_rates = rates["limit", None]
    limit = statistics.median(limit_rates) * 2 * m * k * n / 1e9
    print(
        f"\n== threads {threads}, {precision}: matmul limit [{m} x {k}] @ [{k} x {n}] "
        f"= {limit:.1f} GFLOP/s (spread {_spread(limit_rates):.0f}%)"
    )
    header = (
        f"{'variant':<11} {'sizes':>8} {'updates/s':>10} {'spread':>7} "
        f"{'MFLOP/upd':>10} {'GFLOP/s':>8} {'% limit':>8} {'vs ref':>7}  reference"
    )
    print(header)
    print("-" * len(header))
    for sizes in sizes_list:
        for variant in variants:
            samples = rates[variant.name, sizes]
            median = statistics.median(samples)
            flops = update_flops(variant.algo, sizes, batch)
            gflops = median * flops / 1e9
            ratio, ref_name = "", ""
            if variant.reference is not None and (variant.reference, sizes) in rates:
                reference = rates[variant.reference, sizes]
                ratio = statistics.median(
                    a / b for a, b in zip(samples, reference, strict=True)
                )
                ratio, ref_name = f"{ratio:.2f}", variant.reference
            row = (
                f"{variant.name:<11} {'x'.join(map(str, sizes)):>8} {median:10.1f} "
                f"{_spread(samples):6.0f}% {flops / 1e6:10.1f} {gflops:8.2f} "
                f"{100 * gflops / limit:7.1f}% {ratio:>7}  {ref_name}"
            )
            print(row.rstrip())


def _spread(samples) -> float:
    return 100 * (max(samples) - min(samples)) / statistics.median(samples)


def machine(device: torch.device) -> str:
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                name, _, value = line.partition(":")
                if name.strip() == "model name":
                    model = value.strip()
                elif name.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    advertised = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in wanted)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    gpu = ""
    if device.type == "cuda":
        gpu = (
            f"\nGPU: {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), "
            "batches, networks and optimisers on it"
        )
    return (
        f"CPU: {model}; {cores} usable cores ({os.cpu_count()} logical); "
        f"{advertised}\ntorch {torch.__version__} (CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}), python "
        f"{platform.python_version()}{gpu}"
    )


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(width) for width in text.lower().split("x"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds")
    parser.add_argument("--steps", type=int, default=30, help="updates per round")
    parser.add_argument("--warmup", type=int, default=10, help="untimed updates")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"]
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        nargs="+",
        default=[(400, 300), (256, 256)],
        help="hidden widths, e.g. 400x300 256x256",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=[v.name for v in VARIANTS],
        help="variant names (a variant's reference is added)",
    )
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--device", type=torch.device, default="cpu", help="cpu, cuda")
    args = parser.parse_args()
    by_name = {v.name: v for v in VARIANTS}
    unknown = set(args.variants) - set(by_name)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {list(by_name)}")
    names = set(args.variants) | {
        by_name[n].reference for n in args.variants if by_name[n].reference
    }
    variants = [v for v in VARIANTS if v.name in names]

    print(machine(args.device))
    print(
        f"batch {args.batch}, observation {OBS_DIM}, action {ACT_DIM}; {args.repeat} "
        f"rounds x {args.steps} updates per variant after {args.warmup} warm-up "
        f"updates, interleaved; pool of {POOL} batches"
    )
    generator = torch.Generator().manual_seed(SEED)
    pool = make_pool(args.batch, generator, args.device)

    torch.set_num_threads(max(args.threads))
    for sizes in args.sizes:
        for variant in variants:
            if variant.reference is not None:
                reference = by_name[variant.reference]
                print(
                    f"check {'x'.join(map(str, sizes))}: "
                    + check_against_reference(variant, reference, sizes, pool)
                )

    for threads in args.threads:
        for precision in args.precision:
            rates = time_setting(threads, precision, args.sizes, variants, pool, args)
            report(threads, precision, args.sizes, variants, rates, args.batch)


if __name__ == "__main__":
    main()
