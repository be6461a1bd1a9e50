"""Generalizable Episodic Memory (GEM) as TorchRL components."""

from __future__ import annotations

from torchrl_gem.functional import twin_backprop_return

__all__ = ["twin_backprop_return"]
