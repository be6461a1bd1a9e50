"""Cost of a full refresh of GEM's Atari frame memory, per 100k stored transitions.

Fills a ``FrameEpisodicMemory`` with synthetic 84x84 frames in episodes of
``--episode-length`` steps, then times ``memory.refresh(loss.value_estimator)`` of
a ``GEMDQNLoss`` with Nature-CNN networks (18 actions): the stacks are rebuilt in
chunks of ``--chunk`` next states and the 4 target sub networks evaluated on each.
Prints the bytes stored per transition and the refresh time scaled to 100k
transitions. Run: ``python benchmarks/atari_refresh.py --transitions 20000``.
"""

from __future__ import annotations

import argparse
import time

import torch
from tensordict import TensorDict

from torchrl_gem import GEMDQNLoss, make_nature_cnn_qnet
from torchrl_gem.frames import FrameEpisodicMemory


def fill(memory: FrameEpisodicMemory, transitions: int, length: int, batch: int):
    """Write ``transitions`` steps, ``batch`` at a time, episodes of ``length``."""
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (64, 84, 84), dtype=torch.uint8, generator=generator)
    step = 0
    while step < transitions:
        t = torch.arange(step, step + batch)
        episode, depth = t // length, t % length
        window = torch.stack(
            [(t - 3 + c).clamp_min(episode * length) for c in range(5)], 1
        )
        stack = frames[window % 64]  # [batch, 5, 84, 84]: s_t is 0..3, s_t+1 is 1..4
        done = (depth == length - 1).unsqueeze(-1)
        memory.extend(
            TensorDict(
                pixels=stack[:, :4],
                action=torch.zeros(batch, 18, dtype=torch.long),
                collector=TensorDict(traj_ids=episode),
                next=TensorDict(
                    pixels=stack[:, 1:],
                    reward=torch.ones(batch, 1),
                    done=done,
                    terminated=done,
                ),
                batch_size=[batch],
            )
        )
        step += batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=20_000)
    parser.add_argument("--episode-length", type=int, default=1_000)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    loss = GEMDQNLoss(
        [make_nature_cnn_qnet(18) for _ in range(4)],
        [make_nature_cnn_qnet(18) for _ in range(2)],
        deactivate_vmap=device.type == "cpu",
    ).to(device)
    loss.make_value_estimator(gamma=0.99, value_chunk_size=args.chunk)
    memory = FrameEpisodicMemory(capacity=args.transitions)
    fill(memory, args.transitions, args.episode_length, batch=500)
    storage = memory._writer.written()
    stored = sum(v.numel() * v.element_size() for v in storage.values(True, True))
    per = stored / len(memory) + (
        memory.stored_pixels_bytes() - 7056 * len(memory)
    ) / len(memory)
    print(
        f"device {device}, threads {torch.get_num_threads()}, {len(memory)} "
        f"transitions in {memory.num_episodes} episodes"
    )
    print(
        f"bytes per transition: {per:.0f} (of which one 84x84 frame: 7056; "
        f"stacked pixels and next pixels would take {2 * 4 * 7056})"
    )
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        memory.refresh(loss.value_estimator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    best = min(times)
    print(
        f"full refresh: {best:.2f} s for {len(memory)} transitions = "
        f"{best * 100_000 / len(memory):.1f} s per 100k transitions"
    )


if __name__ == "__main__":
    main()
