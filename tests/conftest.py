"""Small shared builders: tiny networks, trajectory batches, collector-like batches."""

from __future__ import annotations

import os

# Target networks without an updater warn on every call; silence that here.
os.environ.setdefault("RL_WARNINGS", "0")

import pytest  # noqa: E402
import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from torchrl.data import Bounded  # noqa: E402

from torchrl_gem import GEMLoss, make_gem_actor, make_gem_critics  # noqa: E402

OBS, ACT = 3, 2
SPEC = Bounded(-1.0, 1.0, shape=(ACT,))


def tiny_actor():
    return make_gem_actor(OBS, SPEC, hidden_sizes=(8, 8))


def tiny_critics(num=4, **kwargs):
    return make_gem_critics(OBS, ACT, num_critics=num, hidden_sizes=(8, 8), **kwargs)


def tiny_loss(**kwargs):
    return GEMLoss(
        tiny_actor(), tiny_critics(kwargs.pop("num", 4)), action_spec=SPEC, **kwargs
    )


def trajectory_batch(*batch, generator=None, p_done=0.2, memory_return=False):
    """A [*batch] tensordict of transitions; the last dim is time."""
    shape = tuple(batch)
    rand = lambda *s: torch.randn(*s, generator=generator)  # noqa: E731
    done = torch.rand(*shape, 1, generator=generator) < p_done
    terminated = done & (torch.rand(*shape, 1, generator=generator) < 0.5)
    td = TensorDict(
        observation=rand(*shape, OBS),
        action=torch.rand(*shape, ACT, generator=generator) * 2 - 1,
        next=TensorDict(
            observation=rand(*shape, OBS),
            reward=rand(*shape, 1),
            done=done,
            terminated=terminated,
            truncated=done & ~terminated,
        ),
        batch_size=shape,
    )
    if memory_return:
        td["memory_return"] = rand(*shape, 2)
    return td


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)
