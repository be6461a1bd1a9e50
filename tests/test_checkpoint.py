"""Checkpoint files, RNG states and MuJoCo env states (torchrl_gem.checkpoint)."""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
import pytest
import torch

from torchrl_gem.checkpoint import (
    CheckpointError,
    RunCheckpoint,
    capture_env_state,
    read_checkpoint,
    restore_env_state,
    rng_state,
    set_rng_state,
    write_checkpoint,
)


def test_round_trip_and_damage(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    payload = {"weights": torch.arange(5.0), "frames": 300}
    write_checkpoint(path, payload)
    loaded = read_checkpoint(path, required=("weights", "frames"))
    assert loaded["frames"] == 300 and torch.equal(
        loaded["weights"], payload["weights"]
    )
    with pytest.raises(CheckpointError, match="lacks \\['memory'\\]"):
        read_checkpoint(path, required=("memory",))
    blob = path.read_bytes()
    path.write_bytes(blob[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(path)
    path.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="checksum"):
        read_checkpoint(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a torchrl-gem checkpoint"):
        read_checkpoint(path)


def test_files_are_streamed_without_a_copy_of_the_payload(tmp_path):
    """Writing and reading buffer a chunk, not the 16 MB payload: a BytesIO, its
    value and ``header + data`` (or a whole-file read and its slice) would each
    hold a copy in Python memory, which tracemalloc sees (tensors it does not)."""
    path = tmp_path / "last.pt"
    payload = {"memory": torch.arange(4_000_000, dtype=torch.float32)}
    tracemalloc.start()
    try:
        write_checkpoint(path, payload)
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        loaded = read_checkpoint(path)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert torch.equal(loaded["memory"], payload["memory"])
    assert write_peak < 4e6 and read_peak < 4e6, (write_peak, read_peak)
    assert path.stat().st_size > 16e6  # what was streamed: the whole payload


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    write_checkpoint(path, {"frames": 100})
    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda: any error
        write_checkpoint(path, {"frames": 200, "hook": lambda: None})
    assert read_checkpoint(path)["frames"] == 100
    assert [file.name for file in tmp_path.iterdir()] == ["last.pt"]  # no .tmp


def test_rng_state_round_trip():
    state = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_cuda_rng_states_are_saved_and_restored(monkeypatch):
    """On a GPU machine (faked here: CI has none) the CUDA generators travel too."""
    cuda_states = [torch.tensor([1], dtype=torch.uint8)] * 2
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: cuda_states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    state = rng_state()
    assert state["cuda"] is cuda_states
    set_rng_state(state)
    assert restored == [cuda_states]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.warns(UserWarning, match="2 CUDA devices and this process sees 1"):
        set_rng_state(state)
    assert len(restored) == 1


def test_mujoco_state_continues_bit_for_bit():
    pytest.importorskip("mujoco")
    from torchrl.envs import GymEnv

    env = GymEnv("Hopper-v5")
    env.set_seed(0)
    td = env.reset()
    action = torch.full(env.action_spec.shape, 0.3)
    for _ in range(5):
        td = env.step(td.set("action", action))["next"]
    state = capture_env_state(env)
    after = [env.step(td.clone().set("action", action))["next", "observation"]]
    other = GymEnv("Hopper-v5")
    other.set_seed(1)
    other.reset()
    restore_env_state(other, state)
    again = other.step(td.clone().set("action", action))["next", "observation"]
    torch.testing.assert_close(again, after[0], rtol=0, atol=0)


def test_identity_keys_added_later_take_their_defaults_in_older_files(tmp_path):
    path = tmp_path / "last.pt"
    old = {"identity": {"seed": 0}, "trainer": {}, "env": None, "carrier": None}
    write_checkpoint(path, {**old, "rng": rng_state()})
    now = {"seed": 0, "collector.backend": "single"}
    with pytest.raises(CheckpointError, match="collector.backend: checkpoint has None"):
        RunCheckpoint.read(path, now)
    defaults = {"collector.backend": "single"}
    assert RunCheckpoint.read(path, now, defaults=defaults)["identity"] == {"seed": 0}
    with pytest.raises(CheckpointError, match="checkpoint has 'single', this run has"):
        RunCheckpoint.read(path, {**now, "collector.backend": "ray"}, defaults=defaults)
