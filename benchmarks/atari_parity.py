"""Numerical parity of bf16 on a trained Atari run: bf16 against fp32, same states.

Loads an Atari run's last checkpoint (its networks and its frame memory) and, on the
same inputs, compares the fp32 and the bf16 computation of:

- the Q-values of every network (GEM: 4 sub and 2 meta networks; DQN: one), on
  ``--states`` stored states;
- the refreshed memory returns (``memory.refresh`` of the whole stored memory);
- one gradient step's losses (``loss_*`` of the loss module on a sampled batch).

Each as the relative difference ``|bf16 - fp32| / (|fp32| + eps)`` (``eps`` 1% of
the fp32 values' mean magnitude, so that values near 0 do not dominate): median and
99th percentile. The recipe keeps fp32 as the default when the median exceeds 1%.

Run: ``python benchmarks/atari_parity.py docs/results/atari/<game>/gem/seed0``
(the run dir must still hold ``checkpoints/last.pt``: checkpoints are not
committed).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("RL_WARNINGS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from torchrl_gem.checkpoint import read_checkpoint  # noqa: E402
from torchrl_gem.precision import autocast  # noqa: E402


def relative(bf16: torch.Tensor, fp32: torch.Tensor) -> tuple[float, float]:
    """Median and 99th percentile of ``|bf16 - fp32| / (|fp32| + eps)``."""
    bf16, fp32 = bf16.double().flatten(), fp32.double().flatten()
    eps = 0.01 * fp32.abs().mean().clamp_min(1e-12)
    error = (bf16 - fp32).abs() / (fp32.abs() + eps)
    return error.median().item(), torch.quantile(error, 0.99).item()


def load_run(run_dir: Path):
    """The run's config, loss (trained weights) and memory, from its checkpoint."""
    import atari_builders
    from interaction import make_atari_env

    cfg = OmegaConf.load(run_dir / "config.yaml")
    payload = read_checkpoint(run_dir / "checkpoints" / "last.pt")
    spec = make_atari_env(cfg, cfg.seed, clip_rewards=True).action_spec
    loss, _ = atari_builders.make_agent(cfg, spec)
    loss.load_state_dict(payload["trainer"]["loss_module"])
    memory = atari_builders.make_memory(cfg)
    memory.load_state_dict(payload["trainer"]["replay_buffer"]["replay_buffer"])
    return cfg, loss, memory


def network_values(loss, states) -> dict[str, torch.Tensor]:
    """Q-values of every trained network of ``loss`` on ``states``."""
    from torchrl_gem import GEMDQNLoss

    with torch.no_grad():
        if isinstance(loss, GEMDQNLoss):
            return {
                "sub networks (4)": loss._action_values(
                    loss.sub_qvalue_network, loss.sub_qvalue_network_params, states
                ),
                "meta networks (2)": loss._action_values(
                    loss.meta_qvalue_network, loss.meta_qvalue_network_params, states
                ),
            }
        with loss.value_network_params.to_module(loss.value_network):
            return {"Q-network": loss.value_network(states.clone())["action_value"]}


def parity(run_dir: Path, states: int = 512, seed: int = 0) -> dict:
    """``{quantity: (median, p99)}`` of the bf16-against-fp32 differences."""
    torch.manual_seed(seed)
    cfg, loss, memory = load_run(run_dir)
    batch = memory.sample(states)
    out = {}
    computed = {}
    for precision in ("fp32", "bf16"):
        with autocast(precision):
            computed[precision] = network_values(loss, batch)
    for name in computed["fp32"]:
        out[f"Q-values, {name}"] = relative(
            computed["bf16"][name], computed["fp32"][name]
        )
    if cfg.algo.loss == "gem":
        returns = {}
        for precision in ("fp32", "bf16"):
            loss.value_estimator.precision = precision
            memory.refresh(loss.value_estimator)
            stored = memory.storage[memory.writer.occupied_slots()]
            returns[precision] = stored[memory.memory_return_key].clone()
        out["refreshed memory returns"] = relative(returns["bf16"], returns["fp32"])
    losses = {}
    sample = batch[: cfg.optim.batch_size]
    for precision in ("fp32", "bf16"):
        with autocast(precision):
            result = loss(sample.clone())
        losses[precision] = torch.stack(
            [value for key, value in result.items() if key.startswith("loss")]
        ).detach()
    out["gradient step's losses"] = relative(losses["bf16"], losses["fp32"])
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--states", type=int, default=512)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = parity(args.run_dir, args.states)
    print(f"{args.run_dir}: bf16 against fp32, relative differences")
    print("| quantity | median | 99th percentile |\n|---|---:|---:|")
    for name, (median, p99) in rows.items():
        print(f"| {name} | {median:.2%} | {p99:.2%} |")


if __name__ == "__main__":
    main()
