"""torch.compile of the loss calls: same numbers as eager, eager when it fails."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.exc import BackendCompilerFailed
from torchrl.objectives import TD3Loss

from conftest import (
    SPEC,
    LossHost,
    needs_cpp_compiler,
    tiny_actor,
    tiny_critics,
    tiny_loss,
    trajectory_batch,
)
from torchrl_gem import TwinBackPropEstimator, compiling
from torchrl_gem.compiling import CompiledCall
from torchrl_gem.trainer import DelayedActorStepper


def _stepper(loss, compile):
    return DelayedActorStepper(
        torch.optim.Adam(loss.actor_network_params.values(True, True), lr=1e-2),
        torch.optim.Adam(loss.qvalue_network_params.values(True, True), lr=1e-2),
        compile=compile,
    )


@needs_cpp_compiler
def test_compiled_steps_equal_eager_steps():
    batches = [
        trajectory_batch(
            32, generator=torch.Generator().manual_seed(i), memory_return=True
        )
        for i in range(4)
    ]
    losses, params = {}, {}
    for compile in (False, True):
        torch.manual_seed(0)
        loss = tiny_loss()
        host, stepper = LossHost(loss), _stepper(loss, compile)
        losses[compile] = [stepper.step(host, batch) for batch in batches]
        params[compile] = loss.state_dict()
    assert all(call.compiled for call in stepper._compiled.values())
    assert sorted(stepper._compiled) == ["actor_loss", "value_loss"]
    for eager, compiled in zip(losses[False], losses[True], strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    for name, value in params[False].items():
        torch.testing.assert_close(params[True][name], value, rtol=1e-4, atol=1e-5)


def test_errors_of_the_function_propagate():
    loss = tiny_loss()
    batch = trajectory_batch(8)  # no memory_return
    with pytest.raises(KeyError, match="memory_return"):
        CompiledCall(loss.value_loss)(batch)


def test_a_failing_compiler_falls_back_to_eager(monkeypatch, torchrl_log):
    def broken_compile(function, **kwargs):
        def fail(*args):
            raise BackendCompilerFailed("inductor", OSError("no C++ compiler"), None)

        return fail

    monkeypatch.setattr(compiling.torch, "compile", broken_compile)
    double = CompiledCall(lambda x: 2 * x, name="double")
    assert double(torch.ones(2)).tolist() == [2.0, 2.0]
    assert not double.compiled
    assert double(torch.ones(1)).tolist() == [2.0]
    (record,) = torchrl_log.records
    assert "torch.compile of double failed" in record.message
    assert "no C++ compiler" in record.message


@needs_cpp_compiler
@pytest.mark.parametrize("loss_name", ["GEMLoss", "TD3Loss"])
def test_compiled_target_pass_equals_eager_on_padded_chunks(loss_name):
    torch.manual_seed(0)
    if loss_name == "GEMLoss":
        loss = tiny_loss()
    else:  # another loss's target networks, as the recipe's td3_tbp compiles them
        critics = tiny_critics(4)
        loss = TD3Loss(tiny_actor(), critics, action_spec=SPEC, num_qvalue_nets=4)
    batch = trajectory_batch(3, 17, generator=torch.Generator().manual_seed(1))
    returns = {}
    for compile in (False, True):
        # 51 states in chunks of 16: the last chunk of 3 is padded to 16; no
        # smoothing noise: both passes are deterministic
        estimator = TwinBackPropEstimator.for_loss(
            loss, gamma=0.9, value_chunk_size=16, compile=compile, policy_noise=0.0
        )
        returns[compile] = estimator(batch.clone())["memory_return"]
    assert estimator._compiled_chunk_value.compiled
    torch.testing.assert_close(returns[True], returns[False], rtol=1e-5, atol=1e-5)


def test_compiled_target_pass_needs_a_chunk_size():
    with pytest.raises(ValueError, match="compile=True needs a value_chunk_size"):
        TwinBackPropEstimator.for_loss(
            tiny_loss(), gamma=0.9, value_chunk_size=None, compile=True
        )


@needs_cpp_compiler
def test_compiled_frame_refresh_equals_eager():
    """GEM-DQN's refresh (discrete mode, Nature CNNs on rebuilt frame stacks) with
    the target pass compiled, against eager, in bf16 as the Atari recipe runs it."""
    from test_atari import synthetic_batches
    from torchrl_gem import GEMDQNLoss, make_nature_cnn_qnet
    from torchrl_gem.frames import FrameEpisodicMemory

    torch.manual_seed(0)
    size = 36  # small frames: 36 -> 9 -> 5 -> 5

    def qnet():
        return make_nature_cnn_qnet(3, height=size, width=size)

    loss = GEMDQNLoss([qnet(), qnet()], [qnet(), qnet()], deactivate_vmap=True)
    batches = synthetic_batches(
        2, 20, 3, "same", torch.Generator().manual_seed(1), frame_shape=(size, size)
    )
    returns = {}
    for compile in (False, True):
        loss.make_value_estimator(
            gamma=0.99, value_chunk_size=32, precision="bf16", compile=compile
        )
        memory = FrameEpisodicMemory(capacity=500)
        for batch in batches:
            memory.extend(batch.clone())
        memory.refresh(loss.value_estimator)  # 120 next states: chunks padded
        returns[compile] = memory.storage[memory.writer.occupied_slots()][
            "memory_return"
        ]
    assert loss.value_estimator._compiled_chunk_value.compiled
    torch.testing.assert_close(returns[True], returns[False], rtol=2e-2, atol=2e-2)


@needs_cpp_compiler
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_atari_gradient_steps_equal_eager(precision, monkeypatch):
    """The Atari recipe's stepper with GEM-DQN's loss compiled (``optim.compile``,
    on for gem) against eager: the losses of three steps and every weight after."""
    from torchrl.data import OneHot

    import atari_builders
    from test_atari import config, stacked_batch
    from torchrl_gem import precision as precision_module

    monkeypatch.setattr(precision_module, "bf16_is_fast", lambda device: True)
    batches = [
        stacked_batch(8, 3, torch.Generator().manual_seed(i), size=36) for i in range(3)
    ]
    metrics, weights = {}, {}
    for compile in (False, True):
        torch.manual_seed(0)  # the same networks for both
        cfg = config(
            "algo=gem",
            "env.screen_size=36",  # small frames: 36 -> 9 -> 5 -> 5
            f"optim.precision={precision}",
            f"optim.compile={str(compile).lower()}",
        )
        loss, _ = atari_builders.make_agent(cfg, OneHot(3))
        stepper, host = atari_builders.make_stepper(cfg, loss), LossHost(loss)
        metrics[compile] = [stepper.step(host, batch.clone()) for batch in batches]
        weights[compile] = loss.state_dict()
    assert stepper.compiled_loss.compiled
    # bf16 rounds differently where the compiler fuses; fp32 to float error
    tolerance = (
        {"rtol": 1e-4, "atol": 1e-5}
        if precision == "fp32"
        else {"rtol": 2e-2, "atol": 1e-3}
    )
    for eager, compiled in zip(metrics[False], metrics[True], strict=True):
        assert set(compiled.keys()) == {"loss_sub", "loss_meta", "grad_norm"}
        torch.testing.assert_close(compiled, eager, **tolerance)
    for name, value in weights[False].items():
        torch.testing.assert_close(weights[True][name], value, **tolerance)
