"""The documentation site builds with warnings as errors, and its generated references
hold what the code declares.

One build (``sphinx-build -W --keep-going`` in a fresh interpreter, into a temporary
folder, nothing fetched from the network) serves every test: a broken cross-reference,
a malformed docstring or a page left out of the table of contents fails it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

for package in ("sphinx", "myst_parser", "furo"):  # the docs extra
    pytest.importorskip(package)

from docutils.nodes import make_id  # noqa: E402
from filelock import FileLock  # noqa: E402

import atari_config  # noqa: E402 - recipes/ is on pytest's pythonpath
import config  # noqa: E402
import torchrl_gem  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = {"mujoco": config.MujocoConfig, "atari": atari_config.AtariConfig}
PRESETS = {"mujoco": config.HERE / "algo", "atari": atari_config.ATARI_DIR / "algo"}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    # one build per pytest session: under xdist the workers share it (a stolen test
    # would otherwise build again in its worker), through a folder of the session's
    out = tmp_path_factory.getbasetemp()
    if out.name.startswith("popen-"):  # an xdist worker's own, in the session's
        out = out.parent
    built, failure = out / "site-built", out / "site-failed.txt"
    with FileLock(out / "site.lock"):
        if not built.exists() and not failure.exists():
            try:
                done = build_site(out / "site")
            except subprocess.TimeoutExpired as timeout:  # not again in each worker
                failure.write_text(f"the build timed out: {timeout}")
            else:
                marker = built if done.returncode == 0 else failure
                marker.write_text(done.stderr[-6000:])
    assert not failure.exists(), failure.read_text()
    return out / "site" / "html"


def build_site(out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DOCS_INTERSPHINX"}  # offline
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
        + ["-d", str(out / "doctrees"), str(ROOT / "docs"), str(out / "html")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def ids(page: Path) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', page.read_text()))


def test_api_reference_documents_every_export(site):
    documented = ids(site / "api.html")
    missing = [n for n in torchrl_gem.__all__ if f"torchrl_gem.{n}" not in documented]
    assert not missing, f"not in the API reference: {missing}"


def test_api_reference_shows_each_exports_examples_and_own_signature(site):
    text = (site / "api.html").read_text()
    starts = sorted(
        (text.index(f'id="torchrl_gem.{name}"'), name) for name in torchrl_gem.__all__
    )
    ends = [start for start, _ in starts[1:]] + [len(text)]
    entries = {
        name: text[start:end] for (start, name), end in zip(starts, ends, strict=True)
    }
    without = [name for name, entry in entries.items() if "&gt;&gt;&gt;" not in entry]
    assert not without, f"no Examples in the API reference: {without}"
    # a class shows its own arguments, not TorchRL's metaclass's (*args, **kwargs)
    signature = re.sub(r"<[^>]+>", "", entries["GEMLoss"].split("</dt>", 1)[0])
    assert "GEMLoss(actor_network, qvalue_network, *," in signature, signature


@pytest.mark.parametrize("recipe", SCHEMAS)
def test_configuration_reference_has_every_field(site, recipe):
    """Every field of every section, read from the schema, has its row (so a field
    added to a config class appears without editing a page)."""
    documented = ids(site / "configuration.html")
    expected = []
    for item in config.describe_fields(SCHEMAS[recipe]):
        if dataclasses.is_dataclass(item.default):
            section = config.describe_fields(type(item.default))
            expected += [f"{item.name}.{field.name}" for field in section]
        else:
            expected.append(item.name)
    missing = [
        name for name in expected if make_id(f"{recipe}-{name}") not in documented
    ]
    assert len(expected) > 40 and not missing, missing


@pytest.mark.parametrize("recipe", SCHEMAS)
def test_configuration_reference_lists_every_preset(site, recipe):
    text = (site / "configuration.html").read_text()
    names = [path.stem for path in PRESETS[recipe].glob("*.yaml")]
    assert len(names) >= 3
    missing = [name for name in names if f"algo={name}</span>" not in text]
    assert not missing, missing


def test_a_preset_row_has_its_own_comment_over_its_bases(site):
    """ddpg extends td3 and sets algo.loss itself: its row carries ddpg's comment
    and td3's for what it inherits (algo.memory), beside gem's values."""
    text = (site / "configuration.html").read_text()
    ddpg = text.split("algo=ddpg</span>", 1)[1].split('class="rubric"', 1)[0]
    cells = [
        re.sub(r"<[^>]+>", "", row)
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", ddpg, re.S)
    ]
    rows = {cell.split()[0]: " ".join(cell.split()) for cell in cells if cell.strip()}
    assert rows["algo.loss"] == "algo.loss ddpg gem torchrl.objectives.DDPGLoss"
    assert rows["algo.memory"].startswith("algo.memory replay episodic TensorDict")
    assert rows["optim.batch_size"] == "optim.batch_size 100 128 batch_size=100"
    assert "algo.name" not in rows


def test_results_pages_keep_their_figures(site):
    results = site / "results"
    page = (results / "README.html").read_text()
    images = re.findall(r'<img[^>]+src="([^"]+)"', page)
    written = re.findall(r"!\[", (ROOT / "docs" / "results" / "README.md").read_text())
    assert len(images) == len(written) >= 8
    assert all((results / image).is_file() for image in images)
