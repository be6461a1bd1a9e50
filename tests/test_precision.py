"""bf16 autocast: networks in bf16; parameters, optimiser states, scan in fp32."""

from __future__ import annotations

import pytest
import torch

from conftest import LossHost, tiny_loss, trajectory_batch
from torchrl_gem import TwinBackPropEstimator, precision
from torchrl_gem.trainer import DelayedActorStepper


def test_resolve_falls_back_to_fp32_without_fast_bf16(monkeypatch, torchrl_log):
    monkeypatch.setattr(precision, "bf16_is_fast", lambda device: False)
    monkeypatch.setattr(precision, "_warned", set())
    assert precision.resolve("bf16", "cpu") == "fp32"
    assert precision.resolve("bf16", "cpu") == "fp32"
    # said once per device, not at every call
    assert sum("running fp32" in r.message for r in torchrl_log.records) == 1
    assert precision.resolve("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="precision must be"):
        precision.resolve("fp16", "cpu")


# bf16 autocast runs on any CPU (slowly without bf16 units): no skip needed below
def test_bf16_refresh_values_are_fp32_and_close_to_fp32():
    torch.manual_seed(0)
    loss = tiny_loss(policy_noise=0.0)
    batch = trajectory_batch(64, generator=torch.Generator().manual_seed(1))
    returns = {}
    for mode in ("fp32", "bf16"):
        estimator = TwinBackPropEstimator.for_loss(loss, gamma=0.9, precision=mode)
        returns[mode] = estimator(batch.clone())["memory_return"]
    assert returns["bf16"].dtype == torch.float32
    assert not torch.equal(returns["bf16"], returns["fp32"])  # autocast did run
    torch.testing.assert_close(returns["bf16"], returns["fp32"], rtol=0.05, atol=0.05)


def test_bf16_steps_keep_fp32_parameters_and_optimiser_states():
    losses = {}
    for mode in ("fp32", "bf16"):
        torch.manual_seed(0)
        loss = tiny_loss()
        stepper = DelayedActorStepper(
            torch.optim.Adam(loss.actor_network_params.values(True, True)),
            torch.optim.Adam(loss.qvalue_network_params.values(True, True)),
            precision=mode,
        )

        batch = trajectory_batch(
            32, generator=torch.Generator().manual_seed(2), memory_return=True
        )
        losses[mode] = stepper.step(LossHost(loss), batch)["loss_qvalue"]
        params = list(loss.qvalue_network_params.values(True, True))
        assert all(p.dtype == torch.float32 for p in params)
        state = stepper.critic_optimizer.state_dict()["state"]
        assert all(s["exp_avg"].dtype == torch.float32 for s in state.values())
    assert not torch.equal(losses["bf16"], losses["fp32"])
    torch.testing.assert_close(losses["bf16"], losses["fp32"], rtol=0.05, atol=0.01)
