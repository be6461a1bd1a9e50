"""``torch.compile`` for the hot loss calls, with an eager fallback.

On CPU, Inductor fuses the LayerNorm, ReLU and loss arithmetic around the critics'
matmuls and removes most of the Python and TensorDict overhead of a loss call:
``benchmarks/update.py`` measures the gain. Compilation needs a working C++
toolchain (or Triton on GPU); where it fails, :class:`CompiledCall` says so once and
runs the function eagerly from then on, so a run never stops for it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch._dynamo.exc import BackendCompilerFailed, TorchDynamoException
from torchrl._utils import logger as torchrl_logger

__all__ = ["CompiledCall"]

# notes of tensordict and torch while they are traced, not problems of the caller's
_TRACE_NOTES = (
    r"torch\._dynamo\.config\.inline_inbuilt_nn_modules is deprecated",
    r"Using lock_\(\) inside a compiled graph",
    r"`torch\.jit\.script_method` is deprecated",
)


@contextlib.contextmanager
def _quiet_tracing():
    with warnings.catch_warnings():
        for note in _TRACE_NOTES:
            warnings.filterwarnings("ignore", message=note)
        yield


class CompiledCall:
    """``function`` compiled with ``torch.compile`` on its first call.

    The shapes are static (``dynamic=False``): a fixed batch size compiles once. If
    compilation fails (no C++ compiler, an unsupported platform, a torch version
    whose tracer cannot follow the function), a warning names the function and the
    error, and every later call runs ``function`` eagerly. Errors of the function
    itself (a missing key, a bad shape) propagate as they would without
    compilation.

    Args:
        function (callable): what to compile, e.g. a loss's bound ``value_loss``.

    Keyword Args:
        name (str, optional): name used in the warning. Defaults to the function's
            qualified name.
        mode (str, optional): ``torch.compile`` mode. Defaults to ``None`` (default).

    Examples:
        >>> import torch
        >>> double = CompiledCall(lambda x: 2 * x, name="double")
        >>> double.compiled
        True
        >>> double(torch.ones(3)).tolist()
        [2.0, 2.0, 2.0]
    """

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        mode: str | None = None,
    ) -> None:
        self.function = function
        self.name = name or getattr(function, "__qualname__", repr(function))
        with _quiet_tracing():
            self._compiled = torch.compile(function, dynamic=False, mode=mode)

    @property
    def compiled(self) -> bool:
        """Whether calls still go through the compiled function."""
        return self._compiled is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is None:
            return self.function(*args, **kwargs)
        try:
            with _quiet_tracing():
                return self._compiled(*args, **kwargs)
        except TorchDynamoException as error:
            if isinstance(error, BackendCompilerFailed):
                error = error.inner_exception
            self._compiled = None
            torchrl_logger.warning(
                f"torch.compile of {self.name} failed "
                f"({type(error).__name__}: {error}); running it eagerly from now on."
            )
            return self.function(*args, **kwargs)
