"""Generalizable Episodic Memory (GEM, Hu et al., ICML 2021) as TorchRL components.

The pieces, each usable alone:

- :func:`twin_backprop_return`: the twin back-propagation core (pure tensors);
- :class:`TwinBackPropEstimator`: target networks -> twin enhanced returns, a TorchRL
  value estimator usable by any loss;
- :class:`TwinBackPropTransform`: the same on replay-buffer slices, at sample time;
- :class:`EpisodicMemory`: a replay buffer of trajectories that refreshes the returns
  of everything it stores; :class:`FrameEpisodicMemory`, the same for frame-stacked
  pixels, one frame per transition (Atari);
- :class:`GEMLoss`: TD3's losses with critics regressed onto those returns;
- :func:`make_gem_actor`, :func:`make_gem_critics`: the reference networks;
- :class:`GEMDQNLoss`, :func:`make_nature_cnn_qnet`, :func:`make_gem_dqn_policy`:
  GEM on discrete actions (the Atari variant) and its networks;
- :class:`SelfImitationLoss`, :class:`MonteCarloReturn`: the TD3+SIL baseline's
  self-imitation term and the memory returns it reads.
"""

from __future__ import annotations

from importlib import metadata

from torchrl_gem.compiling import CompiledCall
from torchrl_gem.dqn import (
    GEMDQNLoss,
    NatureQNet,
    make_gem_dqn_policy,
    make_nature_cnn_qnet,
    released_huber,
)
from torchrl_gem.estimator import GEMEstimators, TwinBackPropEstimator
from torchrl_gem.frames import FrameEpisodicMemory
from torchrl_gem.functional import twin_backprop_return
from torchrl_gem.loss import GEMLoss, asymmetric_l2
from torchrl_gem.memory import EpisodicMemory
from torchrl_gem.networks import GEMCritic, make_gem_actor, make_gem_critics
from torchrl_gem.sil import MonteCarloReturn, SelfImitationLoss
from torchrl_gem.transforms import TwinBackPropTransform

try:
    __version__ = metadata.version("torchrl-gem")
except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

__all__ = [
    "CompiledCall",
    "EpisodicMemory",
    "FrameEpisodicMemory",
    "GEMCritic",
    "GEMDQNLoss",
    "GEMEstimators",
    "GEMLoss",
    "MonteCarloReturn",
    "NatureQNet",
    "SelfImitationLoss",
    "TwinBackPropEstimator",
    "TwinBackPropTransform",
    "asymmetric_l2",
    "make_gem_actor",
    "make_gem_critics",
    "make_gem_dqn_policy",
    "make_nature_cnn_qnet",
    "released_huber",
    "twin_backprop_return",
]
