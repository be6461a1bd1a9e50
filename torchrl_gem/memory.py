"""EpisodicMemory: a replay buffer of whole trajectories whose targets it refreshes.

Also :func:`replay_storage`, TorchRL's lazy storages whose checkpoints hold the
transitions written rather than the capacity, and :func:`available_ram_bytes` (with
:func:`cgroup_headroom_bytes`) for the recipes' check that a memory fits.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

import torch
from tensordict import NestedKey, TensorDict, TensorDictBase, is_tensor_collection
from torchrl import timeit
from torchrl.data import (
    LazyMemmapStorage,
    LazyTensorStorage,
    TensorDictReplayBuffer,
)
from torchrl.data.replay_buffers import Sampler, Storage, Writer

from torchrl_gem.estimator import TwinBackPropEstimator, check_memory_return
from torchrl_gem.functional import discounted_returns

__all__ = [
    "EpisodicMemory",
    "available_ram_bytes",
    "cgroup_headroom_bytes",
    "replay_storage",
]

# Per-slot bookkeeping lives in the storage itself, so dumps/loads and state_dict
# carry it with the data.
EPISODE = ("_memory", "episode")  # internal episode id, unique for the memory's life
STAMP = ("_memory", "stamp")  # arrival order: sorts the steps of an episode
OCCUPIED = ("_memory", "occupied")  # False once the slot's episode is evicted
BOOKKEEPING_BYTES = 8 + 8 + 1  # EPISODE, STAMP (int64) and OCCUPIED (bool) per slot


class _StoredRows:
    """For TorchRL's lazy storages: a state dict of the rows written, not of the
    capacity.

    A lazy storage allocates its whole capacity at the first write (untouched
    pages until written), but its state dict holds the whole capacity, which
    ``torch.save`` would write. Here it holds the first ``len(storage)`` rows (the
    ones a round-robin or :class:`EpisodeWriter` has written), as views on storages
    of exactly their bytes: saving copies nothing. Loading allocates the capacity
    from the first row and copies the rows in; a state dict of the whole capacity
    (checkpoints written before) loads the same way.
    """

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.initialized and is_tensor_collection(self._storage):
            rows = self._storage[: len(self)]
            state["_storage"] = rows.apply(_own_storage).state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict["_storage"], dict):  # a tensor storage
            super().load_state_dict(state_dict)
            return
        written = int(state_dict["_len"])
        if written:
            rows = TensorDict().load_state_dict(state_dict["_storage"], strict=False)
            rows = rows.auto_batch_size_(batch_dims=1)[:written]
            self.set(slice(0, written), rows, set_cursor=False)  # allocates once
        self._len = written


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on a storage of exactly its bytes, sharing its memory.

    ``torch.save`` writes the whole storage of a tensor: for a view of the first
    rows of a memory, its whole capacity.
    """
    if not tensor.is_contiguous():  # never for a storage's rows; a copy then
        return tensor.contiguous()
    start = tensor.storage_offset() * tensor.element_size()
    own = tensor.untyped_storage()[start : start + tensor.nbytes]
    return torch.empty(0, dtype=tensor.dtype, device=tensor.device).set_(
        own, 0, tensor.shape
    )


class _StoredRowsTensorStorage(_StoredRows, LazyTensorStorage):
    """A :class:`~torchrl.data.LazyTensorStorage` checkpointing the rows written."""


class _StoredRowsMemmapStorage(_StoredRows, LazyMemmapStorage):
    """A :class:`~torchrl.data.LazyMemmapStorage` checkpointing the rows written."""


def replay_storage(
    kind: Literal["tensor", "memmap"],
    capacity: int,
    *,
    device: torch.device | str | None = None,
    scratch_dir: str | None = None,
) -> Storage:
    """TorchRL's lazy storage of ``capacity`` rows, in RAM (``"tensor"``, on
    ``device``) or on disk (``"memmap"``, under ``scratch_dir``), whose state dict
    (a checkpoint's memory) holds the rows written, not the capacity.

    Examples:
        >>> import torch
        >>> from torchrl.data import TensorDictReplayBuffer
        >>> buffer = TensorDictReplayBuffer(storage=replay_storage("tensor", 1000))
        >>> _ = buffer.extend(TensorDict(x=torch.arange(3.0), batch_size=[3]))
        >>> state = buffer.state_dict()["_storage"]
        >>> state["_len"], state["_storage"]["x"].untyped_storage().nbytes()
        (3, 12)
    """
    if kind == "tensor":
        return _StoredRowsTensorStorage(capacity, device=device or "cpu")
    if kind == "memmap":
        # existsok: a resumed run reopens the folder its interrupted run wrote
        return _StoredRowsMemmapStorage(
            capacity, scratch_dir=scratch_dir, existsok=True
        )
    raise ValueError(f"storage must be 'tensor' or 'memmap', got {kind!r}.")


def available_ram_bytes() -> int | None:
    """The RAM available for new work: Linux's ``MemAvailable`` (free memory plus
    reclaimable caches), else the free pages (``os.sysconf``), lowered to what the
    process's memory cgroup still allows (:func:`cgroup_headroom_bytes`: a
    container's or a Slurm job's limit, which ``MemAvailable`` does not see);
    ``None`` where nothing is known."""
    known = [
        value
        for value in (_meminfo_available(), cgroup_headroom_bytes())
        if value is not None
    ]
    return min(known, default=None)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # reported in kiB
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# A cgroup's files: limit, usage, and memory.stat's lines of file cache (reclaimed
# before the OOM killer acts; shared memory is not among them)
_CGROUP_V2 = ("memory.max", "memory.current", ("active_file", "inactive_file"))
_CGROUP_V1 = (
    "memory.limit_in_bytes",
    "memory.usage_in_bytes",
    ("total_active_file", "total_inactive_file"),
)
_NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63


def cgroup_headroom_bytes(
    root: str | Path = "/sys/fs/cgroup", membership: str | Path = "/proc/self/cgroup"
) -> int | None:
    """What the process's memory cgroup still lets it allocate, ``None`` where no
    limit is set or none can be read.

    The tightest over the cgroup and its ancestors (a Slurm job's limit sits above
    its steps') of the limit less the memory that cannot be reclaimed (usage less
    the file cache: a refusal must not count what the kernel would free, such as a
    checkpoint just read). Reads cgroup v2 where ``root`` is its mount, else v1's
    memory controller; a path that the namespace hides falls back to ``root``'s own
    files (a container's). A file that cannot be read (absent, not permitted) means
    nothing known there.

    Examples:
        >>> headroom = cgroup_headroom_bytes()  # None on a machine without a limit
        >>> headroom is None or headroom >= 0
        True
    """
    try:
        return _cgroup_headroom(Path(root), Path(membership))
    except OSError:  # e.g. a confined process not permitted to read /sys
        return None


def _cgroup_headroom(root: Path, membership: Path) -> int | None:
    # lines "hierarchy:controllers:path"; cgroup v2's is "0::path"
    lines = membership.read_text().splitlines()
    entries = [line.split(":", 2) for line in lines if line.count(":") >= 2]
    if (root / "cgroup.controllers").is_file():  # cgroup v2
        mount, files = root, _CGROUP_V2
        paths = [path for hierarchy, _, path in entries if hierarchy == "0"]
    else:
        mount, files = root / "memory", _CGROUP_V1
        paths = [path for _, names, path in entries if "memory" in names.split(",")]
    if not paths or not mount.is_dir():
        return None
    folder = mount / paths[0].lstrip("/")
    if not folder.is_dir():
        folder = mount
    headrooms = []
    for level in (folder, *folder.parents):
        headroom = _cgroup_level_headroom(level, *files)
        if headroom is not None:
            headrooms.append(headroom)
        if level == mount:
            break
    return min(headrooms, default=None)


def _cgroup_level_headroom(
    folder: Path, limit_file: str, usage_file: str, cache_keys: tuple[str, ...]
) -> int | None:
    try:
        limit = (folder / limit_file).read_text().strip()
        usage = int((folder / usage_file).read_text())
        limit = _NO_LIMIT if limit == "max" else int(limit)
    except (OSError, ValueError):
        return None
    if limit >= _NO_LIMIT:
        return None
    cache = 0
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in cache_keys:
                cache += int(value)
    except (OSError, ValueError):
        pass
    return max(limit - (usage - cache), 0)


class EpisodeWriter(Writer):
    """Writes flat transitions into free slots, evicting whole oldest episodes.

    Incoming steps carry the collector's trajectory id. Ids are remapped to
    internal episode ids, so that a collector restarted after a checkpoint (whose
    ids start again at 0) never continues a stored episode.
    """

    def __init__(self, trajectory_key: NestedKey, done_key: NestedKey) -> None:
        super().__init__()
        self.trajectory_key = trajectory_key
        self.done_key = done_key
        self._next_stamp = 0
        self._refreshed_stamp = 0  # slots with a smaller stamp hold refreshed returns
        self._next_episode = 0
        self._open: dict[int, int] = {}  # collector trajectory id -> internal id
        # Slots are filled lowest-first, so those ever written are [0, high_water);
        # the storage's own length may count allocated but unwritten slots.
        self._high_water = 0
        # dropped on every change
        self._occupied_cache: torch.Tensor | None = None
        self._sampleable_cache: torch.Tensor | None = None

    def add(self, data: Any) -> int:
        raise NotImplementedError("EpisodicMemory is written with extend().")

    def extend(self, data: TensorDictBase) -> torch.Tensor:
        num_new = data.numel()
        capacity = self._storage.max_size
        if num_new > capacity:
            raise ValueError(
                f"Cannot write {num_new} transitions into a memory of capacity "
                f"{capacity}."
            )
        data.set(EPISODE, self._episode_ids(data))
        data.set(STAMP, torch.arange(self._next_stamp, self._next_stamp + num_new))
        data.set(OCCUPIED, torch.ones(num_new, dtype=torch.bool))
        self._next_stamp += num_new
        slots = self._free_slots(num_new, data.get(EPISODE))
        self._storage.set(slots, data)
        self._high_water = max(self._high_water, int(slots.max()) + 1)
        self._drop_caches()
        return slots

    def mark_refreshed(self) -> None:
        """Every slot written so far now holds a refreshed return."""
        self._refreshed_stamp = self._next_stamp
        self._drop_caches()

    def _drop_caches(self) -> None:
        self._occupied_cache = self._sampleable_cache = None

    def written(self) -> TensorDictBase:
        """A view of the slots written so far (occupied or evicted)."""
        return self._storage[: self._high_water]

    def occupied_slots(self) -> torch.Tensor:
        """Indices of the slots that hold a stored transition."""
        if not self._high_water:
            return torch.zeros(0, dtype=torch.long)
        if self._occupied_cache is None:
            self._occupied_cache = self.written().get(OCCUPIED).nonzero().squeeze(-1)
        return self._occupied_cache

    def sampleable_slots(self) -> torch.Tensor:
        """Occupied slots refreshed since they were written: the ones to sample."""
        if self._sampleable_cache is None:
            occupied = self.occupied_slots()
            if len(occupied):
                stamp = self.written().get(STAMP)[occupied]
                occupied = occupied[stamp < self._refreshed_stamp]
            self._sampleable_cache = occupied
        return self._sampleable_cache

    def _episode_ids(self, data: TensorDictBase) -> torch.Tensor:
        trajectory = data.get(self.trajectory_key).reshape(-1)
        done = data.get(self.done_key).reshape(-1)
        ids = torch.empty_like(trajectory)
        # a few distinct trajectories per batch: a loop over them is cheap
        for external in trajectory.unique(sorted=False).tolist():
            steps = trajectory == external
            if external not in self._open:
                self._open[external] = self._next_episode
                self._next_episode += 1
            ids[steps] = self._open[external]
            if done[steps].any():
                del self._open[external]
        return ids

    def close_open_episodes(self) -> None:
        """Forget running episodes: the next steps start new ones."""
        self._open.clear()

    def _occupied(self) -> torch.Tensor:
        occupied = torch.zeros(self._storage.max_size, dtype=torch.bool)
        occupied[self.occupied_slots().cpu()] = True
        return occupied

    def _free_slots(self, num_new: int, new_episodes: torch.Tensor) -> torch.Tensor:
        occupied = self._occupied()
        missing = num_new - int((~occupied).sum())
        if missing > 0:
            self._evict_oldest_episodes(occupied, missing, new_episodes)
        return (~occupied).nonzero().squeeze(-1)[:num_new]

    def _evict_oldest_episodes(
        self, occupied: torch.Tensor, missing: int, new_episodes: torch.Tensor
    ) -> None:
        """Free the fewest oldest whole episodes that leave room for ``missing``;
        never one that the new steps continue (it would be stored without its start)."""
        slots = occupied.nonzero().squeeze(-1)
        written = self.written()
        episode = written.get(EPISODE)[slots].cpu()
        stamp = written.get(STAMP)[slots].cpu()
        ids, inverse, sizes = episode.unique(return_inverse=True, return_counts=True)
        first_stamp = torch.full_like(ids, torch.iinfo(torch.int64).max)
        first_stamp = first_stamp.scatter_reduce(0, inverse, stamp, "amin")
        by_age = first_stamp.argsort()
        enough = int((sizes[by_age].cumsum(0) < missing).sum()) + 1
        oldest = ids[by_age[:enough]]
        continued = oldest[torch.isin(oldest, new_episodes.cpu())]
        if len(continued):
            raise ValueError(
                f"The memory's capacity ({self._storage.max_size} transitions) is too "
                f"small for its running episodes: room for {missing} more transitions "
                f"needs the slots of episode {int(continued[0])}, which the new steps "
                "continue. Give it a capacity above the longest episode times the "
                "number of environments, plus a collected batch."
            )
        evicted = torch.isin(episode, oldest)
        freed = slots[evicted]
        occupied[freed] = False
        self._drop_caches()
        self.written().set_at_(
            OCCUPIED, torch.zeros(len(freed), dtype=torch.bool), freed
        )

    def _empty(self, empty_write_count: bool = True) -> None:
        self._next_stamp = self._refreshed_stamp = 0
        self._next_episode = self._high_water = 0
        self._drop_caches()
        self._open.clear()

    def state_dict(self) -> dict[str, Any]:
        return {
            "next_stamp": self._next_stamp,
            "refreshed_stamp": self._refreshed_stamp,
            "next_episode": self._next_episode,
            "high_water": self._high_water,
            "open": dict(self._open),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._next_stamp = int(state_dict["next_stamp"])
        self._refreshed_stamp = int(state_dict["refreshed_stamp"])
        self._next_episode = int(state_dict["next_episode"])
        self._high_water = int(state_dict["high_water"])
        self._drop_caches()
        self._open = {int(k): int(v) for k, v in state_dict["open"].items()}

    def dumps(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "episode_writer.json").write_text(json.dumps(self.state_dict()))

    def loads(self, path) -> None:
        self.load_state_dict(
            json.loads((Path(path) / "episode_writer.json").read_text())
        )


class StoredTransitionSampler(Sampler):
    """Uniform sampling, with replacement, of the refreshed transitions.

    Transitions written since the last refresh hold no return yet and are not
    sampled; a memory with none refreshed refuses to sample.
    """

    def __init__(self, writer: EpisodeWriter) -> None:
        super().__init__()
        self.writer = writer

    def sample(self, storage, batch_size: int) -> tuple[torch.Tensor, dict]:
        slots = self.writer.sampleable_slots()
        if not len(slots):
            stored = len(self.writer.occupied_slots())
            if not stored:
                raise RuntimeError("Cannot sample from an empty EpisodicMemory.")
            raise RuntimeError(
                f"None of the {stored} transitions in this EpisodicMemory has a "
                "return yet: call memory.refresh(estimator) after extend() and "
                "before sampling (transitions written since the last refresh are "
                "not sampled)."
            )
        pick = torch.randint(len(slots), (batch_size,), device=slots.device)
        return slots[pick], {}

    def _empty(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass

    def dumps(self, path) -> None:
        pass

    def loads(self, path) -> None:
        pass


class EpisodicMemory(TensorDictReplayBuffer):
    """GEM's episodic memory: trajectories in, uniformly sampled transitions out.

    Stores transitions as a collector delivers them (``[T]`` or ``[num_envs, T]``
    batches, episodes cut across batches), keeps each trajectory's order, and
    :meth:`refresh` recomputes ``memory_return`` of every stored transition in place
    with a :class:`~torchrl_gem.TwinBackPropEstimator`; a trajectory still running
    is treated as cut at its newest stored step. When full it evicts whole oldest
    episodes, so no stale partial episode remains (an episode that the new steps
    continue is never evicted: a capacity too small for the running episodes
    raises).

    Only refreshed transitions are sampled: entries written since the last
    :meth:`refresh` hold no return yet (``NaN``, or the ``memory_return`` given to
    :meth:`extend`, overwritten by the next refresh), so critics never regress onto
    placeholders, and sampling before any refresh raises.

    Keyword Args:
        capacity (int): most transitions held. Defaults to ``100_000``.
        storage (str): ``"tensor"`` (RAM or ``device``) or ``"memmap"`` (disk-backed,
            under ``scratch_dir``). Defaults to ``"tensor"``.
        batch_size (int, optional): default sample size.
        device (torch.device, optional): device of a tensor storage.
        scratch_dir (str, optional): folder of a memmap storage.
        trajectory_key (NestedKey): per-step trajectory id, as written by TorchRL
            collectors. Defaults to ``("collector", "traj_ids")``.
        memory_return_key (NestedKey): the twin-return column. Defaults to
            ``"memory_return"``.
        done_key (NestedKey): Defaults to ``("next", "done")``.
        reward_key (NestedKey): Defaults to ``("next", "reward")``.
        check_finite (sequence of NestedKey): entries checked for NaN/inf on every
            write. Defaults to observations, next observations and rewards.
        transform: optional TorchRL transform, as for any replay buffer.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> memory = EpisodicMemory(capacity=100, batch_size=4)
        >>> T = 10
        >>> batch = TensorDict(
        ...     observation=torch.randn(T, 3),
        ...     collector=TensorDict(traj_ids=torch.zeros(T, dtype=torch.long)),
        ...     next=TensorDict(observation=torch.randn(T, 3), reward=torch.ones(T, 1),
        ...                     done=torch.zeros(T, 1, dtype=torch.bool),
        ...                     terminated=torch.zeros(T, 1, dtype=torch.bool)),
        ...     batch_size=[T])
        >>> _ = memory.extend(batch)
        >>> len(memory), memory.num_episodes
        (10, 1)
        >>> # memory.refresh(loss.value_estimator); then memory.sample() is a batch
        >>> # of 4 transitions with their twin returns, "memory_return" [4, 2]
    """

    def __init__(
        self,
        *,
        capacity: int = 100_000,
        storage: Literal["tensor", "memmap"] = "tensor",
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        scratch_dir: str | None = None,
        trajectory_key: NestedKey = ("collector", "traj_ids"),
        memory_return_key: NestedKey = "memory_return",
        done_key: NestedKey = ("next", "done"),
        reward_key: NestedKey = ("next", "reward"),
        check_finite: tuple[NestedKey, ...] = (
            "observation",
            ("next", "observation"),
            ("next", "reward"),
        ),
        transform=None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}.")
        backend = replay_storage(
            storage, capacity, device=device, scratch_dir=scratch_dir
        )
        writer = EpisodeWriter(trajectory_key, done_key)
        super().__init__(
            storage=backend,
            sampler=StoredTransitionSampler(writer),
            writer=writer,
            batch_size=batch_size,
            transform=transform,
        )
        self.trajectory_key = trajectory_key
        self.memory_return_key = memory_return_key
        self.done_key = done_key
        self.reward_key = reward_key
        self.check_finite = tuple(check_finite)

    def extend(self, data: TensorDictBase, **kwargs) -> torch.Tensor:
        """Store a ``[T]`` or ``[*B, T]`` batch (time last). Returns the slots."""
        self._validate(data)
        data = data.copy()  # shallow: the caller's batch is left as it was
        if self.memory_return_key not in data.keys(include_nested=True):
            # not computed yet; never sampled before the next refresh
            reward = data.get(self.reward_key)
            data.set(
                self.memory_return_key,
                reward.new_full((*data.batch_size, 2), float("nan")),
            )
        return super().extend(data.reshape(-1), **kwargs)

    def __len__(self) -> int:
        """Number of stored transitions."""
        return len(self._writer.occupied_slots())

    def transition_bytes(self, step: TensorDictBase) -> int:
        """Bytes that one stored transition takes: the entries of ``step`` (one
        transition as the collector delivers it, e.g. zeros from the env's
        ``fake_tensordict()`` with the trajectory id) plus the memory's own.

        ``capacity`` times this is what a full memory holds.

        Examples:
            >>> import torch
            >>> from tensordict import TensorDict
            >>> step = TensorDict(
            ...     observation=torch.zeros(3),  # 12 bytes, and 12 for the next one
            ...     collector=TensorDict(traj_ids=torch.zeros((), dtype=torch.long)),
            ...     next=TensorDict(observation=torch.zeros(3),
            ...                     reward=torch.zeros(1),
            ...                     done=torch.zeros(1, dtype=torch.bool)))
            >>> EpisodicMemory(capacity=10).transition_bytes(step)  # 37 + 8 + 17
            62
        """
        step = step.reshape(-1)[0]  # one transition
        size = sum(
            value.nbytes for value in step.values(include_nested=True, leaves_only=True)
        )
        if self.memory_return_key not in step.keys(include_nested=True):
            size += 2 * step.get(self.reward_key).element_size()  # the twin returns
        return size + BOOKKEEPING_BYTES

    def sampleable(self, *keys: NestedKey) -> tuple[torch.Tensor, TensorDictBase]:
        """The slots :meth:`sample` draws from (refreshed transitions) and their
        ``keys`` entries, for samplers of one's own (e.g. prioritised)."""
        slots = self._writer.sampleable_slots()
        return slots, self._writer.written().select(*keys)[slots]

    @property
    def num_episodes(self) -> int:
        """Number of stored trajectories (finished or running)."""
        return int(self._ordered_slots()[1].sum()) if len(self) else 0

    def close_open_episodes(self) -> None:
        """Treat every running episode as cut: call it after restarting a collector."""
        self._writer.close_open_episodes()

    @torch.no_grad()
    def refresh(
        self, estimator: TwinBackPropEstimator, *, diagnostics: bool = False
    ) -> dict[str, float] | None:
        """Recompute ``memory_return`` of every stored transition, in place.

        All trajectories are laid end to end in time order, with an end flag at
        each one's last stored step (a cut where the episode still runs), and go
        through ``estimator`` in one call: one batched pass of the target networks
        over every stored next-state and one vectorised backward scan. Timed under
        ``timeit("memory/refresh")``.

        With ``diagnostics`` (a :class:`~torchrl_gem.TwinBackPropEstimator`), returns
        what the new targets look like (:func:`target_diagnostics`), timed apart
        under ``timeit("memory/diagnostics")``; else ``None``.
        """
        if not len(self):
            return None
        with timeit("memory/refresh"):
            slots, last_step = self._ordered_slots()
            stored = self._writer.written()
            data = stored.select(*estimator.in_keys, strict=True)[slots]
            cut = last_step.unsqueeze(-1)
            if diagnostics:
                returns, horizon = estimator.twin_returns(
                    data, cut=cut, return_horizon=True
                )
            else:
                returns = estimator.twin_returns(data, cut=cut)
            stored.set_at_(self.memory_return_key, returns.to(stored.device), slots)
            self._writer.mark_refreshed()
        if not diagnostics:
            return None
        with timeit("memory/diagnostics"):
            reward, done = data.get(self.reward_key), data.get(self.done_key)
            mc_return = discounted_returns(estimator.gamma, reward, done, last_step)
            return target_diagnostics(returns, horizon, mc_return)

    def _ordered_slots(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Occupied slots in (episode, arrival) order, and a mask of episode ends."""
        stored = self._writer.written()
        slots = self._writer.occupied_slots()
        episode, stamp = stored.get(EPISODE)[slots], stored.get(STAMP)[slots]
        order = stamp.argsort()
        order = order[episode[order].argsort(stable=True)]
        episode = episode[order]
        last_step = torch.ones_like(episode, dtype=torch.bool)
        last_step[:-1] = episode[1:] != episode[:-1]
        return slots[order], last_step

    def _validate(self, data: TensorDictBase) -> None:
        if data.ndim < 1:
            raise ValueError("EpisodicMemory.extend needs a batch of steps [*B, T].")
        keys = data.keys(include_nested=True, leaves_only=True)
        for key in (self.trajectory_key, self.done_key, self.reward_key):
            if key not in keys:
                hint = (
                    " TorchRL collectors write it; for hand-made data, give each "
                    "step its trajectory id."
                    if key == self.trajectory_key
                    else ""
                )
                raise KeyError(f"EpisodicMemory.extend: missing entry {key!r}.{hint}")
        flags = [self.done_key, ("next", "terminated"), ("next", "truncated")]
        for key in flags:
            value = data.get(key, None)
            if value is not None and value.dtype != torch.bool:
                raise ValueError(
                    f"EpisodicMemory.extend: {key!r} must be a bool tensor, got "
                    f"{value.dtype}."
                )
        done = data.get(self.done_key)
        for key in flags[1:]:  # TorchRL: done = terminated | truncated
            value = data.get(key, None)
            if value is not None and (value & ~done).any():
                where = (value & ~done).reshape(*data.batch_size, -1).any(-1)
                raise ValueError(
                    f"EpisodicMemory.extend: {key!r} is set where {self.done_key!r} "
                    f"is not, at batch index {where.nonzero()[0].tolist()}; done "
                    "must be terminated | truncated."
                )
        memory_return = data.get(self.memory_return_key, None)
        if memory_return is not None:
            check_memory_return(memory_return, data.batch_size, self.memory_return_key)
        for key in self.check_finite:
            value = data.get(key, None)
            if value is not None and not torch.isfinite(value).all():
                bad = (~torch.isfinite(value)).reshape(*data.batch_size, -1).any(-1)
                where = bad.nonzero()[0].tolist()
                raise ValueError(
                    f"EpisodicMemory.extend: non-finite value in {key!r} at batch "
                    f"index {where}; refusing to store it."
                )


def target_diagnostics(
    returns: torch.Tensor, horizon: torch.Tensor, mc_return: torch.Tensor
) -> dict[str, float]:
    """What a refresh's targets look like, as ``memory/*`` scalars.

    - ``target_mean``: the mean target (both twin columns) over the stored steps;
    - ``target_minus_mc``: its mean excess over the discounted Monte-Carlo return
      of the finished episodes' steps (how optimistic the targets are; ``NaN``
      before an episode ends);
    - ``horizon_mean``: the mean horizon that the twin columns are evaluated on;
    - ``multi_step_fraction``: how often that horizon is longer than one step.

    Args:
        returns (Tensor): ``[N, 2]`` twin returns.
        horizon (Tensor): ``[N, 2]`` their horizons.
        mc_return (Tensor): ``[N]`` discounted returns-to-go, ``NaN`` where the
            episode still runs.

    Examples:
        >>> import torch
        >>> returns = torch.tensor([[3.0, 1.0], [2.0, 2.0]])
        >>> horizon = torch.tensor([[2, 1], [1, 1]])
        >>> stats = target_diagnostics(returns, horizon, torch.tensor([1.0, 3.0]))
        >>> {key: round(value, 3) for key, value in stats.items()}
        {'memory/target_mean': 2.0, 'memory/target_minus_mc': 0.0, 'memory/horizon_mean': 1.25, 'memory/multi_step_fraction': 0.25}
    """  # noqa: E501
    target = returns.float().mean(-1).reshape(-1)
    finished = torch.isfinite(mc_return.reshape(-1))
    excess = target[finished] - mc_return.reshape(-1)[finished].float()
    return {
        "memory/target_mean": target.mean().item(),
        "memory/target_minus_mc": excess.mean().item() if len(excess) else math.nan,
        "memory/horizon_mean": horizon.float().mean().item(),
        "memory/multi_step_fraction": (horizon > 1).float().mean().item(),
    }
