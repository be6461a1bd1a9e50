"""Mixed precision: bf16 autocast for the networks, fp32 for everything else.

``precision="bf16"`` runs network forward passes (and so their backward) under
``torch.autocast`` with ``bfloat16``; parameters, optimiser states, losses' reductions
and the twin-return scan stay in float32. It only pays on hardware with fast bf16
matmuls (CPUs with AVX512-BF16 or AMX, recent GPUs); elsewhere :func:`resolve`
says so once and keeps fp32.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

import torch
from torchrl._utils import logger as torchrl_logger

__all__ = ["Precision", "autocast", "bf16_is_fast", "resolve"]

Precision = Literal["fp32", "bf16"]
_warned: set[str] = set()


def bf16_is_fast(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` multiplies bf16 matrices natively."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def resolve(precision: Precision, device: torch.device | str = "cpu") -> Precision:
    """``precision``, or ``"fp32"`` (logged once) where bf16 would not be fast."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}.")
    if precision == "bf16" and not bf16_is_fast(device):
        if str(device) not in _warned:
            _warned.add(str(device))
            torchrl_logger.warning(
                f"precision='bf16' requested but {device} has no fast bf16 matmul "
                "(AVX512-BF16/AMX on CPU, bf16 support on GPU): running fp32."
            )
        return "fp32"
    return precision


def autocast(precision: Precision, device: torch.device | str = "cpu"):
    """``torch.autocast`` to bf16 for ``"bf16"``, a no-op context for ``"fp32"``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
