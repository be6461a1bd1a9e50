"""The README's "GEM inside a TorchRL update loop" example, run as written.

The code block is read from README.md (no copy lives here); only its
``total_frames = ...`` and ``warmup_frames = ...`` lines are swapped for a tiny
budget. It runs in a fresh interpreter, as a pasted script would:

- this suite's conftest sets ``RL_WARNINGS=0`` before TorchRL is imported, which
  would hide TorchRL's "No target network updater" warning; the child gets
  ``RL_WARNINGS=1``;
- import-time warnings are then seen whatever other tests imported before;
- the example's ``torch.set_num_threads(1)`` does not leak into the test process.

Every warning is recorded (``simplefilter("always")``). The only ones allowed are
TorchRL 0.14's own import-time notices from ``torchrl.collectors.weight_update``,
which defines subclasses of its deprecated ``WeightUpdaterBase`` when
``torchrl.collectors`` is imported: no user code can avoid them, and Python's
default filters hide them (they are attributed to the ``abc`` module, not to
``__main__``), so a pasted example prints nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mujoco")

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## GEM inside a TorchRL update loop"
TOTAL_FRAMES, WARMUP_FRAMES = 300, 200  # batch 1 warm-up; 2, 3 updated
FRAMES_PER_BATCH, CRITIC_STEPS, POLICY_DELAY = 100, 200, 2

# TorchRL 0.14.1, on importing torchrl.collectors (category, exact message form).
TORCHRL_IMPORT_NOTICE = re.compile(
    r"Creating \w+WeightUpdater which inherits from WeightUpdaterBase is deprecated\. "
    r"Please use WeightSyncScheme from torchrl\.weight_update\.weight_sync_schemes "
    r"instead\. This will be removed in a future version\.\Z"
)

DRIVER = """
import json, sys, warnings
path, out = sys.argv[1], sys.argv[2]
with open(path) as file:
    code = compile(file.read(), path, "exec")
namespace = {"__name__": "__main__"}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    exec(code, namespace)
steps = lambda optim: sorted(
    {int(s["step"]) for s in optim.state.values()} or {0}
)
result = {
    "warnings": [
        {"category": w.category.__name__, "message": str(w.message),
         "where": f"{w.filename}:{w.lineno}"}
        for w in caught
    ],
    "frames": namespace["frames"],
    "critic_steps": steps(namespace["critic_optim"]),
    "actor_steps": steps(namespace["actor_optim"]),
    "stored": len(namespace["memory"]),
}
with open(out, "w") as file:
    json.dump(result, file)
"""


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    assert SECTION in text, f"README.md has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```", section, re.M | re.S)
    assert len(blocks) == 1, f"expected one python block, found {len(blocks)}"
    return blocks[0]


def with_budget(code: str, name: str, value: int) -> str:
    pattern = rf"^{name} = [\d_]+(?=\s*(#.*)?$)"
    code, count = re.subn(pattern, f"{name} = {value}", code, flags=re.M)
    assert count == 1, f"the example needs one `{name} = <int>` line, found {count}"
    return code


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    code = readme_example()
    code = with_budget(code, "total_frames", TOTAL_FRAMES)
    code = with_budget(code, "warmup_frames", WARMUP_FRAMES)
    folder = tmp_path_factory.mktemp("readme")
    example, result = folder / "example.py", folder / "result.json"
    example.write_text(code)
    env = {**os.environ, "RL_WARNINGS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(example), str(result)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {**json.loads(result.read_text()), "stderr": proc.stderr}


def test_readme_example_warns_nothing(run):
    unexpected = [
        w
        for w in run["warnings"]
        if not (
            w["category"] == "DeprecationWarning"
            and TORCHRL_IMPORT_NOTICE.match(w["message"])
        )
    ]
    assert unexpected == [], json.dumps(unexpected, indent=1)
    assert "Warning" not in run["stderr"], run["stderr"]


def test_readme_example_runs_gem_schedule_after_warmup(run):
    cycles = (TOTAL_FRAMES - WARMUP_FRAMES) // FRAMES_PER_BATCH + 1
    assert run["frames"] == TOTAL_FRAMES
    assert run["stored"] == TOTAL_FRAMES
    # no update during the warm-up: exactly 200 critic steps per later batch
    assert run["critic_steps"] == [cycles * CRITIC_STEPS]
    assert run["actor_steps"] == [cycles * CRITIC_STEPS // POLICY_DELAY]
