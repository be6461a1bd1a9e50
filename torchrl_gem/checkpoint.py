"""Interruptible runs: self-checking checkpoint files, RNG and MuJoCo states, a hook.

- :func:`write_checkpoint` / :func:`read_checkpoint`: one file per checkpoint,
  ``MAGIC | sha256 | length | torch.save(payload)``, streamed (no copy of the payload
  in RAM) and written atomically; a damaged or foreign file raises
  :class:`CheckpointError` before anything is loaded.
- :func:`rng_state` / :func:`set_rng_state`: torch (CPU and CUDA), NumPy and Python
  generators.
- :func:`capture_env_state` / :func:`restore_env_state`: the exact state of a
  Gymnasium MuJoCo or Atari (ale-py) environment wrapped by TorchRL's ``GymEnv``.
- :class:`RunCheckpoint`: everything that resumes a :class:`torchrl.trainers.Trainer`
  run bit for bit (trainer, collector step, environment, RNG), tagged with the run's
  identity and checked against the run that loads it.
- :class:`StopSignal` and :class:`CheckpointHook`: a :class:`torchrl.trainers.Trainer`
  hook that saves periodically, at the end and on SIGINT/SIGTERM, then stops.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl import timeit
from torchrl._utils import logger as torchrl_logger
from torchrl.envs import EnvBase
from torchrl.trainers import Trainer, TrainerHookBase

from torchrl_gem._compat import (
    check_versions,
    collector_carrier,
    collector_trajectory_pool,
    elapsed_steps,
    gym_env,
    set_elapsed_steps,
)

__all__ = [
    "CheckpointError",
    "CheckpointHook",
    "RunCheckpoint",
    "StopSignal",
    "capture_env_state",
    "read_checkpoint",
    "restore_env_state",
    "rng_state",
    "set_rng_state",
    "write_checkpoint",
]

MAGIC = b"TORCHRL-GEM-CHECKPOINT-1\n"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used by this run; nothing has been loaded."""


HEADER_SIZE = len(MAGIC) + 32 + 8  # magic, sha256 of the payload, its length
_CHUNK = 1 << 20  # bytes hashed at a time when a checkpoint is read


class _HashingWriter:
    """A file-like sink that hashes and counts what passes on to ``file``."""

    def __init__(self, file) -> None:
        self.file = file
        self.sha256 = hashlib.sha256()
        self.length = 0

    def write(self, data) -> int:
        self.file.write(data)
        self.sha256.update(data)
        size = memoryview(data).nbytes
        self.length += size
        return size

    def flush(self) -> None:
        self.file.flush()


def write_checkpoint(path: Path, payload: dict) -> None:
    """``MAGIC | sha256 | length | torch.save(payload)``, via a temporary file.

    ``torch.save`` streams into the file, hashed and counted on the way (the
    payload is never copied into one buffer); the header is filled in last, and
    the file replaces ``path`` only once complete and synced.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = Path(folder) / "last.pt"
        ...     write_checkpoint(path, {"frames": 300, "weights": torch.ones(2)})
        ...     read_checkpoint(path, required=["frames"])["frames"]
        300
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as file:
            file.write(MAGIC + bytes(HEADER_SIZE - len(MAGIC)))  # filled in below
            body = _HashingWriter(file)
            torch.save(payload, body)
            file.seek(len(MAGIC))
            file.write(body.sha256.digest() + body.length.to_bytes(8, "little"))
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # a partial file (disk full, interrupt) is no use
        raise
    os.replace(tmp, path)


def read_checkpoint(path: Path, required: Iterable[str] = ()) -> dict:
    """Read and verify a checkpoint written by :func:`write_checkpoint`.

    Raises :class:`CheckpointError` on any damage (foreign file, truncation,
    checksum mismatch, unreadable payload) or when a ``required`` key is missing.
    The file is hashed a chunk at a time, then loaded straight from it: the
    payload is held once, as the loaded tensors.
    """
    with open(path, "rb") as file:
        if file.read(len(MAGIC)) != MAGIC:
            raise CheckpointError(f"{path} is not a torchrl-gem checkpoint.")
        header = file.read(HEADER_SIZE - len(MAGIC))
        if len(header) < HEADER_SIZE - len(MAGIC):
            raise CheckpointError(f"{path} is truncated (header incomplete).")
        digest, length = header[:32], int.from_bytes(header[32:], "little")
        size = os.fstat(file.fileno()).st_size - HEADER_SIZE
        if size != length:
            raise CheckpointError(
                f"{path} is truncated or corrupt: {size} payload bytes, "
                f"{length} expected."
            )
        if _sha256(file) != digest:
            raise CheckpointError(f"{path} is corrupt: checksum mismatch.")
        file.seek(HEADER_SIZE)  # torch.load reads the archive from here on
        try:  # onto the CPU: a run saved on a GPU resumes on any machine
            payload = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - reported as an unusable checkpoint
            raise CheckpointError(f"{path} cannot be read: {err}") from err
    missing = set(required) - (set(payload) if isinstance(payload, dict) else set())
    if missing:
        raise CheckpointError(f"{path} lacks {sorted(missing)}.")
    return payload


def _sha256(file) -> bytes:
    """The sha256 of the rest of ``file``, read a chunk at a time."""
    digest = hashlib.sha256()
    chunk = bytearray(_CHUNK)
    view = memoryview(chunk)
    while size := file.readinto(chunk):
        digest.update(view[:size])
    return digest.digest()


def rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = torch.from_numpy(numpy_state["state"]["key"].copy())
    state = {
        "torch": torch.get_rng_state(),
        "numpy": numpy_state,
        "python": random.getstate(),
    }
    if torch.cuda.is_available():  # smoothing noise and sampling on a GPU
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        else:  # another machine: the run goes on, no longer bit for bit
            warnings.warn(
                f"The checkpoint holds the RNG states of {len(cuda)} CUDA devices and "
                f"this process sees {count}: CUDA generators are not restored.",
                stacklevel=2,
            )
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = dict(numpy_state["state"])
    numpy_state["state"]["key"] = numpy_state["state"]["key"].numpy()
    np.random.set_state(numpy_state)
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))


# Exact resume. TorchRL's Collector.load_state_dict restores its counters but starts
# a fresh episode, since a runtime env state is not serialisable in general. For
# MuJoCo it is: mj_getState(mjSTATE_INTEGRATION) holds everything the next mj_step
# reads (time, qpos, qvel, act, warm-start accelerations, controls, applied forces),
# Gymnasium's TimeLimit holds the step count of the running episode and the env's
# np_random draws the noise of the next reset. Saving those three, plus the
# collector's carrier (current observation, StepCounter/RewardSum entries and the
# trajectory id the memory knows the running episode by), continues the episode
# bit for bit. Other envs resume approximately: a fresh episode, the stored partial
# one treated as cut.
def capture_env_state(env: EnvBase) -> dict[str, Any] | None:
    """The MuJoCo or ALE env's full state, or ``None`` for other environments.

    ``env=None`` (the collector's envs live in worker processes) gives ``None``.
    """
    if env is None:
        return None
    gym = gym_env(env)
    core = gym.unwrapped
    if hasattr(core, "ale"):
        return _capture_ale_state(env, gym, core)
    if not (hasattr(core, "model") and hasattr(core, "data")):
        return None
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(core.model, spec))
    mujoco.mj_getState(core.model, core.data, state, spec)
    elapsed = [elapsed_steps(wrapper) for wrapper in _wrappers(gym)]
    return {
        "mujoco": torch.from_numpy(state),
        "elapsed_steps": elapsed,
        "np_random": core.np_random.bit_generator.state,
    }


def restore_env_state(env: EnvBase, state: dict[str, Any]) -> None:
    gym = gym_env(env)
    core = gym.unwrapped
    if "ale" in state:
        _restore_ale_state(env, gym, core, state)
        return
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    mujoco.mj_setState(core.model, core.data, state["mujoco"].numpy(), spec)
    for wrapper, elapsed in zip(_wrappers(gym), state["elapsed_steps"], strict=True):
        if elapsed is not None:
            set_elapsed_steps(wrapper, elapsed)
    core.np_random.bit_generator.state = state["np_random"]


# Atari (ale-py) likewise: the emulator's state with its RNG (ALEState bytes), the
# env's np_random (no-op resets), AtariPreprocessing's max-pool buffer and lives,
# and the TorchRL transforms' buffers (CatFrames keeps the frames it stacks).
def _capture_ale_state(env: EnvBase, gym, core) -> dict[str, Any]:
    ale_bytes = core.ale.cloneState(include_rng=True).__getstate__()
    wrappers = []
    for wrapper in _wrappers(gym):
        if type(wrapper).__name__ == "AtariPreprocessing":
            wrappers.append(
                {
                    "obs_buffer": [
                        torch.from_numpy(b.copy()) for b in wrapper.obs_buffer
                    ],
                    "lives": int(wrapper.lives),
                    "game_over": bool(wrapper.game_over),
                }
            )
        else:
            wrappers.append({"elapsed_steps": elapsed_steps(wrapper)})
    transform = getattr(env, "transform", None)
    return {
        "ale": torch.frombuffer(bytearray(ale_bytes), dtype=torch.uint8),
        "np_random": core.np_random.bit_generator.state,
        "wrappers": wrappers,
        "transform": {} if transform is None else dict(transform.state_dict()),
    }


def _restore_ale_state(env: EnvBase, gym, core, state: dict[str, Any]) -> None:
    from ale_py import ALEState

    core.ale.restoreState(ALEState(state["ale"].numpy().tobytes()))
    core.np_random.bit_generator.state = state["np_random"]
    for wrapper, saved in zip(_wrappers(gym), state["wrappers"], strict=True):
        if "obs_buffer" in saved:
            for buffer, value in zip(
                wrapper.obs_buffer, saved["obs_buffer"], strict=True
            ):
                buffer[...] = value.numpy()
            wrapper.lives, wrapper.game_over = saved["lives"], saved["game_over"]
        elif saved["elapsed_steps"] is not None:
            set_elapsed_steps(wrapper, saved["elapsed_steps"])
    if state["transform"]:
        env.transform.load_state_dict(state["transform"])


def _env_layout(state: dict[str, Any] | None) -> tuple | None:
    """What a saved env state must share with the env that loads it."""
    if state is None:
        return None
    if "ale" in state:
        return ("ale", len(state["wrappers"]), sorted(state["transform"]))
    return ("mujoco", tuple(state["mujoco"].shape), len(state["elapsed_steps"]))


def _wrappers(gym_env) -> list:
    chain = [gym_env]
    while hasattr(chain[-1], "env"):
        chain.append(chain[-1].env)
    return chain


class RunCheckpoint:
    """Save and restore a whole :class:`~torchrl.trainers.Trainer` run.

    A checkpoint holds the trainer's state (networks, optimisers, replay memory and
    every registered hook), the collector's running step, the training env's exact
    state where it can be captured (MuJoCo, Atari) and all RNG states, plus
    ``identity``: the settings a resuming run must share (task, algorithm, seed,
    sizes...).
    :meth:`read` refuses a damaged file or one of another run before anything is
    built; :meth:`restore` checks that the built run has the saved layout, then loads
    it. Envs whose state cannot be captured resume with a fresh episode, the stored
    running one closed as a cut (``memory.close_open_episodes()``), with a warning.

    Args:
        trainer (Trainer): the run, all modules registered.
        collector: its TorchRL ``Collector``.
        env (EnvBase): the collector's environment; ``None`` when the collector
            steps its envs in worker processes or Ray actors (inexact resume).
        path (Path): where :meth:`save` writes.
        identity (dict): settings a resuming run must share.

    Keyword Args:
        memory: the replay memory (``close_open_episodes`` on inexact resumes;
            its storage is put back on its device after loading).
        extra (dict): small JSON-like values saved alongside (e.g. the run dir).
    """

    KEYS = ("identity", "trainer", "env", "carrier", "rng")

    def __init__(
        self, trainer, collector, env, path, identity, *, memory=None, extra=None
    ):
        self.trainer, self.collector, self.env = trainer, collector, env
        self.path = Path(path)
        self.identity = identity
        self.memory = memory
        self.extra = dict(extra or {})
        check_versions()  # exact resume reads private attributes: warn on drift

    def save(self) -> Path:
        payload = {
            **self.extra,
            "identity": self.identity,
            "frames": self.trainer.collected_frames,
            "trainer": self.trainer.state_dict(),
            "env": capture_env_state(self.env),
            "carrier": None
            if self.env is None
            else collector_carrier(self.collector).clone().to_dict(),
            "rng": rng_state(),
        }
        write_checkpoint(self.path, payload)
        return self.path

    @classmethod
    def read(cls, path: Path, identity: dict, *, defaults: dict | None = None) -> dict:
        """Read ``path``, refusing it when its identity differs from ``identity``.

        ``defaults``: the values of identity keys added after older checkpoints were
        written, which those checkpoints stand for.
        """
        payload = read_checkpoint(path, required=cls.KEYS)
        saved = {**(defaults or {}), **payload["identity"]}
        problems = [
            f"{key}: checkpoint has {saved.get(key)!r}, this run has {value!r}"
            for key, value in identity.items()
            if saved.get(key) != value
        ]
        if problems:
            raise CheckpointError(
                f"{path} belongs to another run and was not loaded:\n  "
                + "\n  ".join(problems)
            )
        return payload

    def restore(self, payload: dict, path: Path) -> None:
        """Load a payload from :meth:`read` into this freshly built run."""
        self._check_layout(payload, path)
        self.trainer.load_state_dict(payload["trainer"])
        if self.memory is not None:
            _place_storage(self.memory.storage)
        if payload["env"] is not None:
            restore_env_state(self.env, payload["env"])
            carrier = collector_carrier(self.collector)
            carrier.update(TensorDict(payload["carrier"], carrier.batch_size))
            # Collector.load_state_dict drew a fresh trajectory id: continue the old
            collector_trajectory_pool(self.collector).load_state_dict(
                payload["trainer"]["collector"]["traj_pool"]
            )
        else:
            warnings.warn(
                "This environment's state cannot be saved: the run resumes with a "
                "new episode and is not bit-identical to an uninterrupted one.",
                stacklevel=2,
            )
            if hasattr(self.memory, "close_open_episodes"):
                self.memory.close_open_episodes()
        set_rng_state(payload["rng"])

    def _check_layout(self, payload: dict, path: Path) -> None:
        """Same components, parameter shapes, optimiser layout and env state."""
        saved, current = payload["trainer"], self.trainer.state_dict()
        problems = []
        env_now, env_saved = capture_env_state(self.env), payload["env"]
        if _env_layout(env_now) != _env_layout(env_saved):
            problems.append("the environment's state layout differs")
        if set(saved) != set(current):
            problems.append(f"components {sorted(saved)} != {sorted(current)}")
        else:
            want = _shapes(current["loss_module"])
            have = _shapes(saved["loss_module"])
            if want != have:
                diff = sorted(set(want.items()) ^ set(have.items()))[:5]
                problems.append(f"network parameters differ, e.g. {diff}")
            for name, groups in _param_groups(saved["optimization_stepper"]).items():
                expected = _param_groups(current["optimization_stepper"]).get(name)
                if groups != expected:
                    problems.append(
                        f"{name} has {groups} parameters, expected {expected}"
                    )
        if problems:
            raise CheckpointError(
                f"{path} does not fit this run and was not loaded: "
                + "; ".join(problems)
            )


def _place_storage(storage) -> None:
    """Move a replay buffer's storage to the device it was built for.

    A plain TorchRL lazy storage loaded before its first write takes the tensors of
    the state dict as they come (:func:`read_checkpoint` puts them on the CPU), not
    its ``device``: a memory meant for the GPU would stay on the CPU. (The storages
    of :func:`~torchrl_gem.memory.replay_storage`, the recipes', allocate on their
    device as they load: for them this does nothing.)
    """
    data, device = getattr(storage, "_storage", None), getattr(storage, "device", None)
    if data is None or device in (None, "auto") or torch.device(device).type == "cpu":
        return  # (a CPU or memmap storage is where it belongs)
    if data.device != torch.device(device):
        storage._storage = data.to(device)


def _shapes(tree, prefix: str = "") -> dict[str, Any]:
    """Flattened key -> shape (tensors) / type name (leaves) of a state dict."""
    out = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(_shapes(value, f"{prefix}/{key}"))
    elif isinstance(tree, torch.Tensor):
        out[prefix] = tuple(tree.shape)
    else:
        out[prefix] = type(tree).__name__
    return out


def _param_groups(stepper_state: dict) -> dict[str, list[int]]:
    """Parameter count per group of each optimiser state in ``stepper_state``."""
    return {
        name: [len(group["params"]) for group in state["param_groups"]]
        for name, state in stepper_state.items()
        if isinstance(state, dict) and "param_groups" in state
    }


class StopSignal:
    """SIGINT/SIGTERM set a flag (the run stops after the batch, checkpointed).

    A second signal interrupts at once.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        torchrl_logger.warning(
            f"{signal.Signals(signum).name} received: stopping after this batch "
            "with a checkpoint (send it again to stop now)."
        )

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class CheckpointHook(TrainerHookBase):
    """Save periodically, at the end, and (then stop) on a signal or ``stop_after``.

    Registered last at ``"post_steps_log"``, so a checkpoint is the state between two
    batches, evaluation included.
    """

    def __init__(self, save, *, interval: int, stop_after: int | None, stop_signal):
        self.save = save
        self.interval = interval
        self.stop_after = stop_after
        self.stop_signal = stop_signal
        self.last_save = 0
        self.path: Path | None = None
        self.stopped_by: str | None = None
        self._trainer: Trainer | None = None

    def __call__(self, batch: TensorDictBase | None = None) -> None:
        trainer = self._trainer
        frames = trainer.collected_frames
        stop = None
        if self.stop_signal.signum is not None:
            stop = signal.Signals(self.stop_signal.signum).name
        elif self.stop_after is not None and frames >= self.stop_after:
            stop = f"checkpoint.stop_after={self.stop_after}"
        periodic = (
            self.interval and frames // self.interval > self.last_save // self.interval
        )
        if stop or periodic or frames >= trainer.total_frames:
            self.last_save = frames
            with timeit("checkpoint"):
                self.path = self.save()
        if stop and frames < trainer.total_frames:
            self.stopped_by = stop
            trainer.request_stop(stop)

    def state_dict(self) -> dict[str, Any]:
        return {"last_save": self.last_save}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_save = int(state_dict["last_save"])

    def register(self, trainer: Trainer, name: str = "checkpoint") -> None:
        self._trainer = trainer
        trainer.register_module(name, self)
        trainer.register_op("post_steps_log", self)
        with timeit("checkpoint"):  # named before the first save, so that the
            pass  # totals saved with it (RunTiming) hold it: a resume logs it on
