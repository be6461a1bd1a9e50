"""EpisodicMemory: trajectory bookkeeping, eviction, in-place refresh, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage
from torchrl.envs import GymEnv, SerialEnv, StepCounter, TransformedEnv

from conftest import constant_value_estimator, tiny_loss
from torchrl_gem import EpisodicMemory
from torchrl_gem.checkpoint import write_checkpoint
from torchrl_gem.frames import FrameEpisodicMemory
from torchrl_gem.memory import cgroup_headroom_bytes


class FakeCollector:
    """Collector-like [num_envs, T] batches with random episode lengths."""

    def __init__(self, num_envs=2, obs_dim=3, seed=0, max_len=9, terminate_p=0.5):
        self.generator = torch.Generator().manual_seed(seed)
        self.num_envs, self.obs_dim, self.max_len = num_envs, obs_dim, max_len
        self.terminate_p = terminate_p
        self.next_id = num_envs
        self.traj = torch.arange(num_envs)
        self.step = torch.zeros(num_envs, dtype=torch.long)
        self.length = self._lengths(num_envs)

    def _lengths(self, n):
        return torch.randint(1, self.max_len + 1, (n,), generator=self.generator)

    def batch(self, steps):
        rows = []
        for env in range(self.num_envs):
            row = []
            for _ in range(steps):
                self.step[env] += 1
                done = bool(self.step[env] >= self.length[env])
                terminated = done and bool(
                    torch.rand((), generator=self.generator) < self.terminate_p
                )
                row.append(
                    (int(self.traj[env]), int(self.step[env]) - 1, done, terminated)
                )
                if done:
                    self.traj[env] = self.next_id
                    self.next_id += 1
                    self.step[env] = 0
                    self.length[env] = self._lengths(1)[0]
            rows.append(row)
        traj = torch.tensor([[r[0] for r in row] for row in rows])
        step = torch.tensor([[r[1] for r in row] for row in rows])
        done = torch.tensor([[r[2] for r in row] for row in rows]).unsqueeze(-1)
        terminated = torch.tensor([[r[3] for r in row] for row in rows]).unsqueeze(-1)
        shape = (self.num_envs, steps)
        rand = lambda *s: torch.randn(*s, generator=self.generator)  # noqa: E731
        return TensorDict(
            observation=rand(*shape, self.obs_dim),
            action=torch.rand(*shape, 2, generator=self.generator) * 2 - 1,
            step_count=step.unsqueeze(-1),
            collector=TensorDict(traj_ids=traj, batch_size=shape),
            next=TensorDict(
                observation=rand(*shape, self.obs_dim),
                reward=rand(*shape, 1),
                done=done,
                terminated=terminated,
                truncated=done & ~terminated,
                batch_size=shape,
            ),
            batch_size=shape,
        )


def stored(memory):
    """Every stored transition, as one tensordict."""
    return memory.storage[memory.writer.occupied_slots()]


def episodes_in_memory(memory):
    data = stored(memory)
    out = {}
    for traj, step in zip(
        data["collector", "traj_ids"].tolist(),
        data["step_count"].squeeze(-1).tolist(),
        strict=True,
    ):
        out.setdefault(traj, []).append(step)
    return {k: sorted(v) for k, v in out.items()}


def test_trajectories_survive_batch_and_env_interleaving():
    memory = EpisodicMemory(capacity=1000)
    collector = FakeCollector(num_envs=3)
    for _ in range(6):
        memory.extend(collector.batch(4))
    slots, last = memory._ordered_slots()
    ordered = memory.storage[slots]
    traj = ordered["collector", "traj_ids"]
    step = ordered["step_count"].squeeze(-1)
    # each episode appears as one run, in time order
    boundaries = torch.zeros_like(traj, dtype=torch.bool)
    boundaries[last] = True
    for i in range(len(traj) - 1):
        if boundaries[i]:
            assert traj[i + 1] != traj[i]
        else:
            assert traj[i + 1] == traj[i] and step[i + 1] == step[i] + 1
    assert memory.num_episodes == len(traj.unique())
    assert len(memory) == 6 * 3 * 4


def test_refresh_equals_estimator_on_each_whole_trajectory():
    torch.manual_seed(0)
    estimator = (
        tiny_loss(policy_noise=0.0).make_value_estimator(gamma=0.9).value_estimator
    )
    memory = EpisodicMemory(capacity=1000)
    collector = FakeCollector(num_envs=2, seed=1)
    batches = [collector.batch(5) for _ in range(8)]
    for data in batches:
        memory.extend(data.clone())
    memory.refresh(estimator)
    everything = torch.cat([b.reshape(-1) for b in batches])
    result = stored(memory)
    for traj in everything["collector", "traj_ids"].unique().tolist():
        steps = everything[everything["collector", "traj_ids"] == traj]
        steps = steps[steps["step_count"].squeeze(-1).argsort()]
        expected = estimator(steps.clone())["memory_return"]  # last step = a cut
        mine = result[result["collector", "traj_ids"] == traj]
        mine = mine[mine["step_count"].squeeze(-1).argsort()]
        torch.testing.assert_close(mine["memory_return"], expected)


def test_refresh_diagnostics_by_episode():
    """memory/* against each stored episode taken on its own: the mean target, its
    excess over the discounted reward-to-go of the finished episodes, and the
    horizons (a loop over candidates per step, from the definition)."""
    torch.manual_seed(0)
    gamma = 0.9
    estimator = (
        tiny_loss(policy_noise=0.0).make_value_estimator(gamma=gamma).value_estimator
    )
    memory = EpisodicMemory(capacity=1000)
    collector = FakeCollector(num_envs=2, seed=2)
    for _ in range(6):
        memory.extend(collector.batch(5))
    stats = memory.refresh(estimator, diagnostics=True)
    data = stored(memory)
    assert memory.refresh(estimator) is None  # no diagnostics unless asked
    assert torch.equal(stored(memory)["memory_return"], data["memory_return"])
    targets, excess, horizons = [], [], []
    for traj in data["collector", "traj_ids"].unique().tolist():
        steps = data[data["collector", "traj_ids"] == traj]
        steps = steps[steps["step_count"].squeeze(-1).argsort()]
        target = steps["memory_return"].double().mean(-1)
        targets.append(target)
        reward = steps["next", "reward"].squeeze(-1).double().tolist()
        finished = bool(steps["next", "done"][-1])
        values = estimator.next_state_value(steps["next"]).double()  # [T, 2]
        terminated = steps["next", "terminated"].squeeze(-1).tolist()
        for t in range(len(reward)):
            if finished:
                to_go = sum(gamma ** (j - t) * reward[j] for j in range(t, len(reward)))
                excess.append(float(target[t]) - to_go)
            # each estimator's best horizon (ties: the shortest), zero tail aside
            for k in (0, 1):
                best_n, best = 1, None
                for n in range(1, len(reward) - t + 1):
                    last = t + n - 1
                    keep = 0.0 if terminated[last] else 1.0
                    value = sum(gamma**j * reward[t + j] for j in range(n))
                    value += gamma**n * keep * float(values[last, k])
                    if best is None or value > best:
                        best_n, best = n, value
                horizons.append(best_n)
    assert stats["memory/target_mean"] == pytest.approx(
        float(torch.cat(targets).mean()), rel=1e-5
    )
    assert excess, "the collector finished no episode"
    assert stats["memory/target_minus_mc"] == pytest.approx(
        sum(excess) / len(excess), rel=1e-4, abs=1e-4
    )
    assert stats["memory/horizon_mean"] == pytest.approx(sum(horizons) / len(horizons))
    assert stats["memory/multi_step_fraction"] == pytest.approx(
        sum(n > 1 for n in horizons) / len(horizons)
    )
    assert 0 < stats["memory/multi_step_fraction"] < 1


def test_refresh_writes_in_place():
    estimator = tiny_loss().make_value_estimator(gamma=0.9).value_estimator
    memory = EpisodicMemory(capacity=100)
    memory.extend(FakeCollector().batch(10))
    column = memory.storage._storage["memory_return"]
    pointer, size = column.data_ptr(), len(memory)
    assert column[:size].isnan().all()  # unrefreshed rows
    memory.refresh(estimator)
    assert memory.storage._storage["memory_return"].data_ptr() == pointer
    assert len(memory) == size
    assert column[:size].isfinite().all()  # every stored row written, in place
    torch.testing.assert_close(column[:size], stored(memory)["memory_return"])


def test_whole_oldest_episodes_are_evicted_and_capacity_holds():
    memory = EpisodicMemory(capacity=40)
    collector = FakeCollector(num_envs=2, seed=3, max_len=12)
    seen_finished = {}
    for _ in range(30):
        data = collector.batch(3)
        memory.extend(data)
        flat = data.reshape(-1)
        for traj, step, done in zip(
            flat["collector", "traj_ids"].tolist(),
            flat["step_count"].squeeze(-1).tolist(),
            flat["next", "done"].squeeze(-1).tolist(),
            strict=True,
        ):
            if done:
                seen_finished[traj] = step + 1
        assert len(memory) <= 40
        for traj, steps in episodes_in_memory(memory).items():
            # never a partial episode: a stored episode keeps its first step, and a
            # finished one all of its steps
            assert steps == list(range(steps[0], steps[0] + len(steps)))
            assert steps[0] == 0
            if traj in seen_finished:
                assert len(steps) == seen_finished[traj]


def test_eviction_removes_the_oldest_first():
    memory = EpisodicMemory(capacity=10)

    def episode(traj, length):
        done = torch.zeros(length, 1, dtype=torch.bool)
        done[-1] = True
        return TensorDict(
            observation=torch.zeros(length, 1),
            step_count=torch.arange(length)[:, None],
            collector=TensorDict(traj_ids=torch.full((length,), traj)),
            next=TensorDict(
                reward=torch.zeros(length, 1), done=done, terminated=done.clone()
            ),
            batch_size=[length],
        )

    memory.extend(episode(0, 4))
    memory.extend(episode(1, 3))
    memory.extend(episode(2, 3))
    memory.extend(episode(3, 2))  # needs 2 slots: episode 0 (4 steps) goes
    assert sorted(episodes_in_memory(memory)) == [1, 2, 3]
    memory.extend(episode(4, 5))  # 2 free, needs 3 more: episode 1 goes
    assert sorted(episodes_in_memory(memory)) == [2, 3, 4]
    memory.extend(episode(5, 4))  # 1 free, needs 3 more: episode 2 goes, then 3
    assert sorted(episodes_in_memory(memory)) == [4, 5]
    with pytest.raises(ValueError, match="capacity"):
        memory.extend(episode(5, 11))


@pytest.mark.parametrize("finished", [False, True])
def test_an_episode_longer_than_the_capacity_is_refused(finished):
    """Evicting an episode that the new steps continue would store them without
    its start (and dangle a frame memory's predecessor pointers)."""
    memory = EpisodicMemory(capacity=10)

    def steps(first, count, done_at_end=False):
        done = torch.zeros(count, 1, dtype=torch.bool)
        done[-1] = done_at_end
        return TensorDict(
            observation=torch.zeros(count, 1),
            step_count=torch.arange(first, first + count)[:, None],
            collector=TensorDict(traj_ids=torch.zeros(count, dtype=torch.long)),
            next=TensorDict(
                reward=torch.zeros(count, 1), done=done, terminated=done.clone()
            ),
            batch_size=[count],
        )

    memory.extend(steps(0, 8))
    with pytest.raises(ValueError, match=r"capacity \(10 transitions\) is too small"):
        memory.extend(steps(8, 4, done_at_end=finished))
    assert episodes_in_memory(memory) == {0: list(range(8))}  # nothing evicted


def test_sampling_before_any_refresh_raises():
    memory = EpisodicMemory(capacity=20, batch_size=4)
    memory.extend(FakeCollector().batch(2))
    with pytest.raises(RuntimeError, match="refresh\\(estimator\\)"):
        memory.sample()


def test_only_transitions_refreshed_since_written_are_sampled():
    estimator = tiny_loss().make_value_estimator(gamma=0.9).value_estimator
    memory = EpisodicMemory(capacity=100, batch_size=512)
    collector = FakeCollector(num_envs=1, seed=4)
    first = memory.extend(collector.batch(4))
    memory.refresh(estimator)
    memory.extend(collector.batch(4))  # no return yet
    assert set(memory.sample()["index"].tolist()) == set(first.tolist())
    assert memory.sample()["memory_return"].isfinite().all()
    memory.refresh(estimator)
    sampled = set(memory.sample()["index"].tolist())
    assert sampled == set(memory.writer.occupied_slots().tolist())


def test_a_running_episode_is_cut_without_zero_tail():
    # One running episode of one step, r = 1, V(s') = -10 (negative bootstrap
    # values: early training, HalfCheetah): the cut bootstraps, 1 - 0.99 * 10.
    memory = EpisodicMemory(capacity=10)
    no = torch.zeros(1, 1, dtype=torch.bool)
    step = TensorDict(
        observation=torch.zeros(1, 3),
        collector=TensorDict(traj_ids=torch.zeros(1, dtype=torch.long)),
        next=TensorDict(
            observation=torch.zeros(1, 3),
            reward=torch.ones(1, 1),
            done=no,
            terminated=no,
        ),
        batch_size=[1],
    )
    memory.extend(step)
    memory.refresh(constant_value_estimator(-10.0, gamma=0.99, zero_tail=True))
    torch.testing.assert_close(
        stored(memory)["memory_return"], torch.full((1, 2), -8.9)
    )
    # once the environment ends the episode (truncation), the zero tail is offered
    memory.extend(step.set(("next", "done"), ~no))
    memory.refresh(constant_value_estimator(-10.0, gamma=0.99, zero_tail=True))
    returns = stored(memory)["memory_return"]
    assert returns[:, 0].tolist() == pytest.approx([1.0 + 0.99 * 1.0, 1.0])


def test_sampling_covers_only_stored_transitions():
    memory = EpisodicMemory(capacity=16, batch_size=512)
    collector = FakeCollector(num_envs=1, seed=4)
    for _ in range(6):  # 24 steps: the oldest episodes evicted
        memory.extend(collector.batch(4))
    memory.refresh(tiny_loss().make_value_estimator(gamma=0.9).value_estimator)
    occupied = set(memory.writer.occupied_slots().tolist())
    sample = memory.sample()
    assert set(sample["index"].tolist()) == occupied
    assert sample["memory_return"].shape == (512, 2)


def test_a_memmap_memory_resumes_into_the_folder_it_wrote(tmp_path):
    # a resumed run names the same memory.scratch_dir, whose files are still there
    kwargs = {"capacity": 30, "batch_size": 8, "storage": "memmap"}
    memory = EpisodicMemory(**kwargs, scratch_dir=tmp_path / "memory")
    collector = FakeCollector(num_envs=2, seed=5)
    for _ in range(4):
        memory.extend(collector.batch(3))
    state = memory.state_dict()
    expected = stored(memory)["observation"].clone()
    resumed = EpisodicMemory(**kwargs, scratch_dir=tmp_path / "memory")
    resumed.load_state_dict(state)
    assert len(resumed) == len(memory)
    torch.testing.assert_close(stored(resumed)["observation"], expected)


@pytest.mark.parametrize("storage", ["tensor", "memmap"])
def test_checkpoint_round_trip(tmp_path, storage):
    estimator = tiny_loss().make_value_estimator(gamma=0.9).value_estimator
    kwargs = {"capacity": 30, "batch_size": 8, "storage": storage}
    memory = EpisodicMemory(**kwargs, scratch_dir=tmp_path / "a")
    collector = FakeCollector(num_envs=2, seed=5)
    for _ in range(8):
        memory.extend(collector.batch(3))
    memory.refresh(estimator)
    memory.dumps(tmp_path / "dump")
    restored = EpisodicMemory(**kwargs, scratch_dir=tmp_path / "b")
    restored.loads(tmp_path / "dump")
    from_state = EpisodicMemory(**kwargs, scratch_dir=tmp_path / "c")
    from_state.load_state_dict(memory.state_dict())
    copies = (memory, restored, from_state)
    for other in copies[1:]:
        assert len(other) == len(memory)
        assert other.num_episodes == memory.num_episodes
        torch.testing.assert_close(
            stored(other)["memory_return"], stored(memory)["memory_return"]
        )
    # writing and sampling go on exactly as in the original
    next_batch = collector.batch(3)
    slots = [copy.extend(next_batch.clone()) for copy in copies]
    samples = []
    for copy in copies:
        torch.manual_seed(0)
        samples.append(copy.sample()["observation"])
    for other_slots, other_sample in zip(slots[1:], samples[1:], strict=True):
        torch.testing.assert_close(other_slots, slots[0])
        torch.testing.assert_close(other_sample, samples[0])


def frame_batch(steps, start, generator):
    """``steps`` transitions of one running episode (trajectory 0) whose
    observations stack 4 frames of 8x8, continuing at episode step ``start``."""
    frames = torch.randint(
        0, 256, (steps + 4, 8, 8), dtype=torch.uint8, generator=generator
    )
    stacks = torch.stack([frames[i : i + 4] for i in range(steps + 1)])
    no = torch.zeros(steps, 1, dtype=torch.bool)
    return TensorDict(
        pixels=stacks[:-1],
        action=torch.randn(steps, 2, generator=generator),
        step_count=torch.arange(start, start + steps).unsqueeze(-1),
        collector=TensorDict(traj_ids=torch.zeros(steps, dtype=torch.long)),
        next=TensorDict(
            pixels=stacks[1:],
            reward=torch.randn(steps, 1, generator=generator),
            done=no,
            terminated=no,
            truncated=no,
        ),
        batch_size=[steps],
    )


@pytest.mark.parametrize("kind", ["episodic", "frames"])
def test_checkpoint_size_follows_the_stored_count(tmp_path, kind):
    """A checkpoint holds the rows written (views, not copies), not the capacity."""
    capacity, sizes = 20_000, {}
    for count in (50, 250):
        generator = torch.Generator().manual_seed(0)
        if kind == "episodic":
            memory, collector = EpisodicMemory(capacity=capacity), FakeCollector()
            batches = [collector.batch(5) for _ in range(count // 10)]
        else:
            memory = FrameEpisodicMemory(capacity=capacity, sample_unrefreshed=True)
            batches = [frame_batch(10, 10 * i, generator) for i in range(count // 10)]
        for batch in batches:
            memory.extend(batch)
        assert len(memory) == count
        storage = memory._writer.written()
        slot_bytes = sum(v[0].nbytes for v in storage.values(True, True))
        assert memory.transition_bytes(batches[0][..., 0]) == slot_bytes
        state = memory.state_dict()
        rows = state["_storage"]["_storage"]
        for key, value in rows.items():
            assert len(value) == count, key
            assert value.untyped_storage().nbytes() == value.nbytes, key  # saved
            own = storage.get(tuple(key.split(".")))
            assert value.data_ptr() == own.data_ptr(), key  # no copy
        path = tmp_path / f"{count}.pt"
        write_checkpoint(path, state)
        sizes[count] = path.stat().st_size
    grown = sizes[250] - sizes[50]  # 200 more transitions
    assert grown == pytest.approx(200 * slot_bytes, rel=0.05)
    assert sizes[250] < 0.02 * capacity * slot_bytes  # a full memory's bytes


def test_a_whole_capacity_state_of_older_checkpoints_loads():
    """Checkpoints written before held the whole capacity: they load the same."""
    memory = EpisodicMemory(capacity=30, batch_size=8)
    collector = FakeCollector(num_envs=2, seed=5)
    for _ in range(4):
        memory.extend(collector.batch(3))
    old = memory.state_dict()
    old["_storage"] = LazyTensorStorage.state_dict(memory._storage)  # TorchRL's
    assert all(len(v) == 30 for v in old["_storage"]["_storage"].values())
    restored = EpisodicMemory(capacity=30, batch_size=8)
    restored.load_state_dict(old)
    assert len(restored) == len(memory) == 24
    assert len(restored._storage._storage) == 30  # the same capacity
    next_batch = collector.batch(6)  # fills it: the oldest episodes are evicted
    assert torch.equal(restored.extend(next_batch.clone()), memory.extend(next_batch))
    torch.testing.assert_close(stored(restored), stored(memory), equal_nan=True)


def test_closed_episodes_do_not_continue_after_a_restart():
    memory = EpisodicMemory(capacity=50)
    collector = FakeCollector(num_envs=1, seed=6, max_len=50)
    memory.extend(collector.batch(5))  # one running episode, id 0
    memory.close_open_episodes()
    memory.extend(collector.batch(5))  # a new collector would reuse id 0
    assert memory.num_episodes == 2


def test_bad_input_is_refused_before_writing():
    memory = EpisodicMemory(capacity=50)
    data = FakeCollector().batch(4)
    with pytest.raises(KeyError, match="traj_ids"):
        memory.extend(data.exclude(("collector", "traj_ids")))
    data["next", "reward"][1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"'next', 'reward'.*\[1, 2\]"):
        memory.extend(data)
    assert len(memory) == 0
    with pytest.raises(ValueError, match="storage"):
        EpisodicMemory(storage="disk")
    with pytest.raises(RuntimeError, match="empty"):
        EpisodicMemory(batch_size=2).sample()


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda d: d.set(("next", "done"), d["next", "done"].long()),
            r"\('next', 'done'\) must be a bool tensor, got torch.int64",
        ),
        (
            lambda d: d.set(("next", "terminated"), d["next", "terminated"].float()),
            r"\('next', 'terminated'\) must be a bool tensor",
        ),
        (
            lambda d: d.set("memory_return", torch.zeros(*d.shape, 3)),
            r"'memory_return' must have shape \(2, 4, 2\).*got \(2, 4, 3\)",
        ),
        (
            lambda d: d.set(
                "memory_return", torch.zeros(*d.shape, 2, dtype=torch.long)
            ),
            "'memory_return' must be floating point",
        ),
        (  # TorchRL's done is terminated | truncated
            lambda d: d.set(("next", "truncated"), torch.ones(*d.shape, 1).bool()),
            r"\('next', 'truncated'\) is set where \('next', 'done'\) is not, at "
            r"batch index \[0, 0\]",
        ),
    ],
)
def test_malformed_flags_and_returns_are_refused_at_extend(change, message):
    memory = EpisodicMemory(capacity=50)
    with pytest.raises(ValueError, match=message):
        memory.extend(change(FakeCollector().batch(4)))
    assert len(memory) == 0


def test_with_a_torchrl_collector_and_two_envs():
    torch.manual_seed(0)

    def make_env():
        return TransformedEnv(GymEnv("Pendulum-v1"), StepCounter(max_steps=7))

    env = SerialEnv(2, make_env)
    env.set_seed(0)
    collector = Collector(env, None, frames_per_batch=10, total_frames=60)
    memory = EpisodicMemory(capacity=1000)
    for data in collector:
        memory.extend(data)
    collector.shutdown()
    # 30 steps per env of 7-step episodes: 4 finished and one running (2 steps) each
    lengths = sorted(len(v) for v in episodes_in_memory(memory).values())
    assert lengths == [2, 2] + [7] * 8
    estimator = (
        tiny_loss(policy_noise=0.0).make_value_estimator(gamma=0.9).value_estimator
    )
    memory.refresh(estimator)
    assert stored(memory)["memory_return"].isfinite().all()


def test_extend_leaves_the_callers_batch_alone_and_refresh_is_timed():
    from torchrl import timeit

    memory = EpisodicMemory(capacity=100)
    data = FakeCollector().batch(5)
    keys = set(data.keys(True, True))
    memory.extend(data)
    assert set(data.keys(True, True)) == keys
    timeit.erase()
    memory.refresh(tiny_loss().make_value_estimator(gamma=0.9).value_estimator)
    assert "memory/refresh" in timeit.todict()


def test_sampleable_gives_the_refreshed_slots_and_their_entries():
    estimator = tiny_loss().make_value_estimator(gamma=0.9).value_estimator
    memory = EpisodicMemory(capacity=100)
    collector = FakeCollector(num_envs=1, seed=4)
    first = memory.extend(collector.batch(4))
    memory.refresh(estimator)
    memory.extend(collector.batch(4))  # not refreshed: not sampleable
    slots, entries = memory.sampleable("memory_return", ("next", "reward"))
    assert slots.tolist() == first.tolist()
    assert set(entries.keys(True, True)) == {"memory_return", ("next", "reward")}
    torch.testing.assert_close(
        entries["memory_return"], memory.storage[first]["memory_return"]
    )


def write_cgroup(folder, files: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def v2_level(limit: str, usage: int, inactive_file: int = 0, active_file: int = 0):
    # anon and shmem (tmpfs) are not reclaimable: they must not count
    stat = (
        f"anon 7\nshmem 3\nactive_file {active_file}\ninactive_file {inactive_file}\n"
    )
    return {"memory.max": limit, "memory.current": f"{usage}\n", "memory.stat": stat}


def test_cgroup_v2_headroom_is_the_limit_less_what_cannot_be_reclaimed(tmp_path):
    # a container's own cgroup at the mount's root, its file cache reclaimable:
    # 1,000,000 - (600,000 - 60,000 - 40,000)
    root, membership = tmp_path / "cgroup", tmp_path / "membership"
    write_cgroup(root, {"cgroup.controllers": "cpu memory\n"})
    level = v2_level("1000000\n", 600_000, inactive_file=60_000, active_file=40_000)
    write_cgroup(root, level)
    membership.write_text("0::/\n")
    assert cgroup_headroom_bytes(root, membership) == 500_000
    # a path the namespace hides: the mount's own files are the container's
    membership.write_text("0::/elsewhere\n")
    assert cgroup_headroom_bytes(root, membership) == 500_000


def test_cgroup_v2_headroom_is_the_tightest_over_the_ancestors(tmp_path):
    # a Slurm-like tree: the job's limit (800 - 300) binds its unlimited step...
    root, membership = tmp_path / "cgroup", tmp_path / "membership"
    write_cgroup(root, {"cgroup.controllers": "memory\n", **v2_level("max", 10**9)})
    write_cgroup(root / "job", v2_level("800", 300))
    write_cgroup(root / "job" / "step", v2_level("max\n", 200))
    membership.write_text("0::/job/step\n")
    assert cgroup_headroom_bytes(root, membership) == 500
    # ...and a step limited more tightly (1000 - 950) binds the job
    write_cgroup(root / "job" / "step", v2_level("1000", 950))
    assert cgroup_headroom_bytes(root, membership) == 50
    # over its limit (the cache reclaimable only in part): no room, not negative
    write_cgroup(root / "job" / "step", v2_level("1000", 1200, inactive_file=100))
    assert cgroup_headroom_bytes(root, membership) == 0


def test_cgroup_v1_headroom_and_no_limit(tmp_path):
    root, membership = tmp_path / "cgroup", tmp_path / "membership"
    job = root / "memory" / "job"
    write_cgroup(
        job,
        {
            "memory.limit_in_bytes": "4096\n",
            "memory.usage_in_bytes": "3000\n",
            # the hierarchy's totals count, not the cgroup's own (active_file)
            "memory.stat": "active_file 7\ntotal_active_file 500\n"
            "total_inactive_file 1000\n",
        },
    )
    unlimited = {"memory.limit_in_bytes": "9223372036854771712\n"}
    write_cgroup(root / "memory", {**unlimited, "memory.usage_in_bytes": "99\n"})
    membership.write_text("5:cpu,cpuacct:/\n4:memory:/job\n0::/\n")
    assert cgroup_headroom_bytes(root, membership) == 4096 - (3000 - 500 - 1000)
    # no limit anywhere, no memory controller, no membership file: nothing known
    write_cgroup(job, unlimited)
    assert cgroup_headroom_bytes(root, membership) is None
    membership.write_text("5:cpu,cpuacct:/\n")
    assert cgroup_headroom_bytes(root, membership) is None
    assert cgroup_headroom_bytes(root, tmp_path / "missing") is None


def test_cgroup_files_not_permitted_mean_nothing_known(tmp_path, monkeypatch):
    # a confined process (AppArmor, SELinux) may not even test /sys's files
    root, membership = tmp_path / "cgroup", tmp_path / "membership"
    write_cgroup(root, {"cgroup.controllers": "memory\n", **v2_level("800", 300)})
    membership.write_text("0::/\n")
    assert cgroup_headroom_bytes(root, membership) == 500

    def not_permitted(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Path, "is_file", not_permitted)
    assert cgroup_headroom_bytes(root, membership) is None


def test_available_ram_is_lowered_to_the_cgroups_headroom(monkeypatch):
    from torchrl_gem import memory

    monkeypatch.setattr(memory, "_meminfo_available", lambda: 10**10)
    monkeypatch.setattr(memory, "cgroup_headroom_bytes", lambda: 123)
    assert memory.available_ram_bytes() == 123
    monkeypatch.setattr(memory, "cgroup_headroom_bytes", lambda: None)
    assert memory.available_ram_bytes() == 10**10
    monkeypatch.setattr(memory, "_meminfo_available", lambda: None)
    assert memory.available_ram_bytes() is None
