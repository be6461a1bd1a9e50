"""The private TorchRL/Gymnasium attributes that exact resume reads still exist.

When an upgrade removes one, these tests fail with the attribute's name and the
versions ``torchrl_gem._compat`` was written for.
"""

from __future__ import annotations

import pytest
from torchrl.collectors import Collector
from torchrl.envs import GymEnv, StepCounter, TransformedEnv

from torchrl_gem import _compat


def test_collector_carrier_and_trajectory_pool():
    env = TransformedEnv(GymEnv("Pendulum-v1"), StepCounter())
    collector = Collector(
        env,
        None,
        frames_per_batch=4,
        total_frames=8,
        auto_register_policy_transforms=False,
    )
    next(iter(collector))
    carrier = _compat.collector_carrier(collector)
    assert "observation" in carrier.keys() and (
        "collector",
        "traj_ids",
    ) in carrier.keys(True)
    pool = _compat.collector_trajectory_pool(collector)
    pool.load_state_dict(pool.state_dict())
    collector.shutdown()


def test_gym_env_and_time_limit_counter():
    env = TransformedEnv(GymEnv("Pendulum-v1", max_episode_steps=7), StepCounter())
    env.set_seed(0)
    env.rollout(3)
    gym = _compat.gym_env(env)
    chain = [gym]
    while hasattr(chain[-1], "env"):
        chain.append(chain[-1].env)
    counters = [_compat.elapsed_steps(wrapper) for wrapper in chain]
    assert 3 in counters  # the TimeLimit wrapper's step count
    time_limit = chain[counters.index(3)]
    _compat.set_elapsed_steps(time_limit, 5)
    assert _compat.elapsed_steps(time_limit) == 5


def test_a_removed_attribute_is_named_with_the_versions():
    class Collector:  # an upgrade that renamed the private fields
        pass

    with pytest.raises(AttributeError, match=r"Collector\._carrier .*torchrl 0\.14"):
        _compat.collector_carrier(Collector())


def test_a_version_drift_warns_once_naming_the_package(monkeypatch):
    monkeypatch.setitem(_compat.WRITTEN_FOR, "gymnasium", "0.1")
    with pytest.warns(UserWarning, match=r"gymnasium \S+ \(written for 0\.1\)"):
        assert [item.split()[0] for item in _compat.check_versions()] == ["gymnasium"]
