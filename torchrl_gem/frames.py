"""An episodic memory of pixel trajectories that stores one frame per transition.

GEM's Atari memory holds 1M transitions (``gem-algorithm.md`` s4). Stored as the
environment delivers them, each transition carries two stacks of four 84x84 frames
(``pixels`` and ``("next", "pixels")``, 56 KiB): 56 GiB. Consecutive stacks of an
episode share all but one frame, so :class:`FrameEpisodicMemory` keeps one frame per
transition (the newest frame of its next observation, 6.9 KiB), a pointer to the
slot of the episode's previous step and the step's depth in the episode, plus the
observation stack of each episode's first stored step. Sampling and refreshing
rebuild both stacks with a few vectorised gathers; they equal what the
environment's frame stacking (TorchRL's ``CatFrames``, any padding) produced.

Because the memory evicts whole oldest episodes, a stored step's predecessors are
always stored too, and a pointer chain never dangles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from tensordict import NestedKey, TensorDict, TensorDictBase, unravel_key
from torch import Tensor
from torchrl import timeit

from torchrl_gem.estimator import TwinBackPropEstimator
from torchrl_gem.functional import check_finite
from torchrl_gem.memory import EPISODE, OCCUPIED, STAMP, EpisodicMemory

__all__ = ["FrameEpisodicMemory"]

FRAME = ("_frames", "frame")  # newest frame of ("next", pixels)
PREV = ("_frames", "prev")  # slot of the episode's previous step, -1 at its start
DEPTH = ("_frames", "depth")  # steps stored before this one in its episode
VALUE = ("_frames", "value")  # cached V^k(s'), NaN until computed with the targets
LINK_BYTES = 8 + 8 + 2 * 4  # PREV, DEPTH (int64) and VALUE (2 float32) per slot


class FrameEpisodicMemory(EpisodicMemory):
    """An :class:`~torchrl_gem.EpisodicMemory` of frame-stacked pixel observations.

    Takes the same ``[*B, T]`` collector batches (with ``pixels_key`` and
    ``("next", pixels_key)`` stacked along ``frame_dim``) and returns the same
    samples, but stores one frame per transition and rebuilds the stacks (see the
    module docstring). Anything else in the batch is stored as is.

    :meth:`refresh` computes the bootstrap values ``V^k(s')`` in chunks of the
    estimator's ``value_chunk_size`` states (a full memory never exists as stacks)
    and caches them: ``refresh(estimator, full=False)`` evaluates only the states
    written since the last refresh and rescans only their episodes. That is the
    released Atari code's schedule (returns computed at insertion with the current
    target networks, every stored return recomputed after each target update); the
    cache is only valid while the target networks stay the same, so refresh with
    ``full=True`` (the default) after every target update.

    Keyword Args:
        capacity (int): most transitions held. Defaults to ``1_000_000``.
        storage (str): ``"tensor"`` (RAM or ``device``) or ``"memmap"`` (disk-backed,
            under ``scratch_dir``). Defaults to ``"tensor"``.
        batch_size (int, optional): default sample size.
        device (torch.device, optional): device of a tensor storage.
        scratch_dir (str, optional): folder of a memmap storage.
        pixels_key (NestedKey): the stacked observation. Defaults to ``"pixels"``.
        num_frames (int): frames per stack. Defaults to ``4``.
        frame_dim (int): the stack dimension of ``pixels_key`` (negative, counted
            from the end). Defaults to ``-3`` (``[*, frames, H, W]``).
        sample_unrefreshed (bool): sample every stored transition, refreshed or not,
            for losses that read no ``memory_return`` (DQN). Defaults to ``False``.
        **kwargs: the other keyword arguments of :class:`~torchrl_gem.EpisodicMemory`
            (``trajectory_key``, ``memory_return_key``, ``done_key``,
            ``reward_key``, ``check_finite``, ``transform``).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.envs import CatFrames
        >>> T, frames = 6, torch.randint(0, 256, (7, 1, 2, 2), dtype=torch.uint8)
        >>> stack = CatFrames(N=4, dim=-3, in_keys=["pixels"])  # as an env does
        >>> steps = [stack._call(TensorDict(pixels=f)).get("pixels").clone()
        ...          for f in frames]  # the first call pads with its frame
        >>> batch = TensorDict(
        ...     pixels=torch.stack(steps[:-1]), action=torch.zeros(T, 2),
        ...     collector=TensorDict(traj_ids=torch.zeros(T, dtype=torch.long)),
        ...     next=TensorDict(pixels=torch.stack(steps[1:]),
        ...                     reward=torch.ones(T, 1),
        ...                     done=torch.zeros(T, 1, dtype=torch.bool),
        ...                     terminated=torch.zeros(T, 1, dtype=torch.bool)),
        ...     batch_size=[T])
        >>> memory = FrameEpisodicMemory(capacity=10, batch_size=3,
        ...                              sample_unrefreshed=True)
        >>> _ = memory.extend(batch)
        >>> memory.stored_pixels_bytes(), 6 * 4 * 2 * 2 * 2  # bytes stored, as stacks
        (40, 192)
        >>> sample = memory.sample()
        >>> slot = sample["index"]
        >>> torch.equal(sample["pixels"], batch["pixels"][slot])
        True
        >>> torch.equal(sample["next", "pixels"], batch["next", "pixels"][slot])
        True
    """

    def __init__(
        self,
        *,
        capacity: int = 1_000_000,
        storage: Literal["tensor", "memmap"] = "tensor",
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        scratch_dir: str | None = None,
        pixels_key: NestedKey = "pixels",
        num_frames: int = 4,
        frame_dim: int = -3,
        sample_unrefreshed: bool = False,
        **kwargs,
    ) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}.")
        if frame_dim >= 0:
            raise ValueError(
                f"frame_dim must be negative (counted from the end), got {frame_dim}."
            )
        kwargs.setdefault("check_finite", (("next", "reward"),))
        super().__init__(
            capacity=capacity,
            storage=storage,
            batch_size=batch_size,
            device=device,
            scratch_dir=scratch_dir,
            **kwargs,
        )
        self.pixels_key = unravel_key(pixels_key)
        self.next_pixels_key = unravel_key(("next", pixels_key))
        self.num_frames = int(num_frames)
        self.frame_dim = int(frame_dim)
        self.sample_unrefreshed = sample_unrefreshed
        # observation stack of each stored episode's first stored step
        self._start_stacks: dict[int, Tensor] = {}
        # running episodes: internal id -> (slot, depth, stamp) of their newest step
        self._newest: dict[int, tuple[int, int, int]] = {}

    # ---------------------------------------------------------------- writing
    def extend(self, data: TensorDictBase, **kwargs) -> Tensor:
        """Store a ``[T]`` or ``[*B, T]`` batch (time last). Returns the slots."""
        self._validate(data)
        flat = data.reshape(-1)  # row-major: every trajectory keeps its time order
        pixels = flat.get(self.pixels_key)
        next_pixels = flat.get(self.next_pixels_key)
        self._check_stack(pixels, self.pixels_key)
        self._check_stack(next_pixels, self.next_pixels_key)
        compact = flat.exclude(self.pixels_key, self.next_pixels_key)
        num = flat.numel()
        compact.set(FRAME, next_pixels.select(self.frame_dim, -1))
        compact.set(PREV, torch.full((num,), -1, dtype=torch.long))
        compact.set(DEPTH, torch.zeros(num, dtype=torch.long))
        compact.set(VALUE, torch.full((num, 2), float("nan")))
        slots = super().extend(compact, **kwargs)
        self._link(flat, pixels, slots)
        if self.sample_unrefreshed:
            self._writer.mark_refreshed()
        return slots

    def _check_stack(self, pixels: Tensor | None, key: NestedKey) -> None:
        if pixels is None:
            raise KeyError(f"FrameEpisodicMemory.extend: missing entry {key!r}.")
        if pixels.ndim < 1 - self.frame_dim or (
            pixels.shape[self.frame_dim] != self.num_frames
        ):
            raise ValueError(
                f"FrameEpisodicMemory.extend: {key!r} must stack num_frames="
                f"{self.num_frames} frames along dim {self.frame_dim}, got shape "
                f"{tuple(pixels.shape)}."
            )

    def _link(self, flat: TensorDictBase, pixels: Tensor, slots: Tensor) -> None:
        """Write each new step's predecessor slot and depth; record new starts."""
        stored = self._writer.written()
        # on the CPU with the batch (the loop indexes both), wherever it is stored
        episode = stored.get(EPISODE)[slots].cpu()
        done = flat.get(self.done_key).reshape(-1).cpu()
        prev = torch.full_like(slots, -1)
        depth = torch.zeros_like(slots)
        occupied, stamp = stored.get(OCCUPIED), stored.get(STAMP)
        # a few distinct episodes per batch: a loop over them is cheap
        for internal in episode.unique(sorted=False).tolist():
            where = (episode == internal).nonzero().squeeze(-1)
            newest = self._newest.pop(internal, None)
            if newest is not None:  # still stored? (a tiny memory may evict it)
                slot, last_depth, last_stamp = newest
                if not (occupied[slot] and int(stamp[slot]) == last_stamp):
                    newest = None
            if newest is None:
                first = 0
                self._start_stacks[internal] = pixels[where[0]].clone()
            else:
                prev[where[0]] = newest[0]
                first = newest[1] + 1
            prev[where[1:]] = slots[where[:-1]]
            depth[where] = first + torch.arange(len(where))
            if not bool(done[where].any()):
                last = int(slots[where[-1]])
                self._newest[internal] = (last, int(depth[where[-1]]), int(stamp[last]))
        stored.set_at_(PREV, prev, slots)
        stored.set_at_(DEPTH, depth, slots)
        self._forget_evicted()

    def _forget_evicted(self) -> None:
        """Drop the start stacks of evicted episodes (always the oldest ids)."""
        slots = self._writer.occupied_slots()
        oldest = int(self._writer.written().get(EPISODE)[slots].min())
        for internal in [key for key in self._start_stacks if key < oldest]:
            del self._start_stacks[internal]

    def close_open_episodes(self) -> None:
        """Treat every running episode as cut: call it after restarting a collector."""
        super().close_open_episodes()
        self._newest.clear()

    # ------------------------------------------------------------- rebuilding
    def stacks(self, slots: Tensor) -> tuple[Tensor, Tensor]:
        """The ``pixels`` and ``("next", pixels)`` stacks of the stored ``slots``."""
        stored = self._writer.written()
        frames, prev = stored.get(FRAME), stored.get(PREV)
        depth = stored.get(DEPTH)[slots]
        # hop[d]: the slot d steps back (clamped to a valid index where it is none)
        hops = [slots]
        for _ in range(self.num_frames):
            hops.append(prev[hops[-1]].clamp_min(0))
        gathered = [torch.as_tensor(frames[hop]) for hop in hops]
        n = self.num_frames
        # the window of episode frames ending at s_t: frames d = n..1 steps back,
        # and at s_{t+1}: d = n-1..0; where depth < d the start stack supplies it
        obs = torch.stack([gathered[n - c] for c in range(n)], 1)
        nxt = torch.stack([gathered[n - 1 - c] for c in range(n)], 1)
        back = torch.arange(n, 0, -1, device=depth.device)  # d of each obs channel
        from_start_obs = depth.unsqueeze(-1) < back  # [m, n]
        from_start_next = depth.unsqueeze(-1) < back - 1
        if bool(from_start_obs.any()):
            starts = self._start_frames(stored.get(EPISODE)[slots], from_start_obs)
            channel = depth.unsqueeze(-1) + torch.arange(n, device=depth.device)
            channel = channel.clamp_max(n - 1)
            obs = _fill_from(obs, from_start_obs, starts, channel)
            nxt = _fill_from(
                nxt, from_start_next, starts, (channel + 1).clamp_max(n - 1)
            )
        return obs.movedim(1, self.frame_dim), nxt.movedim(1, self.frame_dim)

    def _start_frames(self, episode: Tensor, needed: Tensor) -> Tensor:
        """``[m, n, *frame]`` start stacks (stack dim 1) of the rows that need one."""
        rows = needed.any(-1)
        ids, inverse = episode[rows].unique(return_inverse=True)
        table = torch.stack([self._start_stacks[int(i)] for i in ids.tolist()])
        # start stacks are kept where the batches came from (the CPU)
        table = table.to(episode.device).movedim(self.frame_dim, 1)
        out = table.new_zeros((len(episode), *table.shape[1:]))
        out[rows] = table[inverse]
        return out

    def sample(self, batch_size: int | None = None, return_info: bool = False, **kw):
        """Sample refreshed transitions with both stacks rebuilt (plus ``"index"``)."""
        data, info = super().sample(batch_size, return_info=True, **kw)
        slots = torch.as_tensor(info["index"]).reshape(-1)
        obs, nxt = self.stacks(slots)
        data = data.exclude("_frames")
        data.set(self.pixels_key, obs.to(data.device))
        data.set(self.next_pixels_key, nxt.to(data.device))
        return (data, info) if return_info else data

    # ------------------------------------------------------------- refreshing
    @torch.no_grad()
    def refresh(self, estimator: TwinBackPropEstimator, *, full: bool = True) -> None:
        """Recompute ``memory_return`` with ``estimator`` (chunked, cached values).

        With ``full=True`` every stored next state is evaluated again; with
        ``full=False`` only those never evaluated (written since the last refresh),
        and only their episodes are rescanned. Timed under
        ``timeit("memory/refresh")``.
        """
        if not len(self):
            return
        with timeit("memory/refresh"):
            slots, last_step = self._ordered_slots()
            stored = self._writer.written()
            values = stored.get(VALUE)[slots]
            if not full:
                stale = torch.isnan(values).any(-1)
                episode = stored.get(EPISODE)[slots]
                touched = torch.isin(episode, episode[stale])
                slots, last_step = slots[touched], last_step[touched]
                values, stale = values[touched], stale[touched]
            else:
                stale = torch.ones(len(slots), dtype=torch.bool, device=slots.device)
            if bool(stale.any()):
                values[stale] = self._values(estimator, slots[stale])
                stored.set_at_(VALUE, values.to(stored.device), slots)
            if len(slots):
                returns = self._returns(estimator, stored, slots, values, last_step)
                stored.set_at_(self.memory_return_key, returns, slots)
            self._writer.mark_refreshed()

    def _values(self, estimator: TwinBackPropEstimator, slots: Tensor) -> Tensor:
        """``[m, 2]`` bootstrap values of the next states, a chunk at a time,
        where ``slots`` are (the networks may sit elsewhere)."""
        params = next(iter(estimator.qvalue_params.values(True, True)))
        size = estimator.value_chunk_size or len(slots)
        values = []
        for chunk in slots.split(size):
            _, nxt = self.stacks(chunk)
            states = TensorDict({self.pixels_key: nxt.to(params.device)}, [len(chunk)])
            values.append(estimator.next_state_value(states).float())
        return torch.cat(values).to(slots.device)

    def _returns(self, estimator, stored, slots, values, last_step) -> Tensor:
        keys = estimator.tensor_keys
        next_td = stored.get("next")
        reward = next_td.get(keys.reward)[slots].float()
        check_finite(str(("next", keys.reward)), reward)
        returns = estimator.returns_from_values(
            values.to(reward.dtype),
            reward,
            next_td.get(keys.done)[slots],
            next_td.get(keys.terminated)[slots],
            cut=last_step.unsqueeze(-1),
        )
        return returns.to(stored.get(self.memory_return_key).dtype)

    # ---------------------------------------------------------- sizes, state
    def transition_bytes(self, step: TensorDictBase) -> int:
        """Bytes that one stored transition takes: one frame instead of the two
        stacks of ``step``, its other entries, and the memory's own (see
        :meth:`EpisodicMemory.transition_bytes`). The start stack of each stored
        episode comes on top (``num_frames`` frames per episode).

        Examples:
            >>> import torch
            >>> from tensordict import TensorDict
            >>> step = TensorDict(
            ...     pixels=torch.zeros(4, 84, 84, dtype=torch.uint8),
            ...     collector=TensorDict(traj_ids=torch.zeros((), dtype=torch.long)),
            ...     next=TensorDict(pixels=torch.zeros(4, 84, 84, dtype=torch.uint8),
            ...                     reward=torch.zeros(1),
            ...                     done=torch.zeros(1, dtype=torch.bool)))
            >>> FrameEpisodicMemory(capacity=10).transition_bytes(step)  # 84 * 84 + 62
            7118
        """
        step = step.reshape(-1)[0]
        pixels = step.get(self.pixels_key)
        frame = pixels.numel() // self.num_frames * pixels.element_size()
        rest = step.exclude(self.pixels_key, self.next_pixels_key)
        return super().transition_bytes(rest) + frame + LINK_BYTES

    def stored_pixels_bytes(self) -> int:
        """Bytes of pixel data held: the frames of the stored transitions plus the
        start stacks of the stored episodes."""
        if not len(self):
            return 0
        frames = self._writer.written().get(FRAME)
        per_frame = frames[0].numel() * frames.element_size()
        starts = sum(s.numel() * s.element_size() for s in self._start_stacks.values())
        return len(self) * per_frame + starts

    def _frame_state(self) -> dict[str, Any]:
        ids = sorted(self._start_stacks)
        newest = sorted(self._newest.items())
        return {
            "start_ids": torch.tensor(ids, dtype=torch.long),
            "start_stacks": torch.stack([self._start_stacks[i] for i in ids])
            if ids
            else torch.zeros(0),
            "newest": torch.tensor([[k, *v] for k, v in newest], dtype=torch.long)
            if newest
            else torch.zeros(0, 4, dtype=torch.long),
        }

    def _load_frame_state(self, state: dict[str, Any]) -> None:
        ids = state["start_ids"].tolist()
        self._start_stacks = dict(
            zip(ids, state["start_stacks"].unbind(0), strict=True)
        )
        self._newest = {
            int(r[0]): tuple(int(v) for v in r[1:]) for r in state["newest"]
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "frames": self._frame_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self._load_frame_state(state_dict.pop("frames"))
        super().load_state_dict(state_dict)

    def dumps(self, path) -> None:
        super().dumps(path)
        torch.save(self._frame_state(), Path(path) / "frame_memory.pt")

    def loads(self, path) -> None:
        super().loads(path)
        state = torch.load(
            Path(path) / "frame_memory.pt", map_location="cpu", weights_only=True
        )
        self._load_frame_state(state)


def _fill_from(stack: Tensor, mask: Tensor, starts: Tensor, channel: Tensor) -> Tensor:
    """``stack[i, c] = starts[i, channel[i, c]]`` where ``mask[i, c]``."""
    index = channel.reshape(*channel.shape, *[1] * (starts.ndim - 2))
    picked = starts.gather(1, index.expand(-1, -1, *starts.shape[2:]))
    shape = (*mask.shape, *[1] * (stack.ndim - 2))
    return torch.where(mask.reshape(shape), picked, stack)
