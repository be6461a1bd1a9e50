"""Every public class and function of ``torchrl_gem`` carries runnable ``Examples:``
(pytest's ``--doctest-modules`` runs them), and the Markdown pages' relative links
reach their files and headings."""

from __future__ import annotations

import functools
import inspect
import re
import subprocess
from pathlib import Path

import pytest

import torchrl_gem

PUBLIC = [
    name
    for name in torchrl_gem.__all__
    if inspect.isclass(getattr(torchrl_gem, name))
    or inspect.isfunction(getattr(torchrl_gem, name))
]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_has_examples(name):
    doc = inspect.getdoc(getattr(torchrl_gem, name)) or ""
    assert "Examples:" in doc and ">>> " in doc, f"{name} has no runnable Examples"


ROOT = Path(__file__).resolve().parents[1]
CODE_BLOCK = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@functools.cache  # a page is linked many times
def anchors(page: Path) -> set[str]:
    text = CODE_BLOCK.sub("", page.read_text())
    return {
        heading_anchor(line.lstrip("#"))
        for line in text.splitlines()
        if line.startswith("#")
    }


def test_heading_anchor_by_hand():
    assert heading_anchor(" Atari: GEM-DQN against DQN (3 seeds)") == (
        "atari-gem-dqn-against-dqn-3-seeds"
    )


def markdown_pages() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True
    )
    if listed.returncode:
        pytest.skip("not a git checkout: the pages are the tracked *.md files")
    return [ROOT / name for name in listed.stdout.split()]


def test_relative_links_reach_their_file_and_heading():
    broken = []
    for page in markdown_pages():
        for target in LINK.findall(CODE_BLOCK.sub("", page.read_text())):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path) if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


# An interval as the tables write it: "0.37 [0.30, 0.46]", "1,544 [1,287, 2,050]"
NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
INTERVAL = re.compile(rf"{NUMBER} \[{NUMBER}, {NUMBER}\]")
# The intervals the hand-written pages state that no generated page holds, and why
DDQN_VS_DQN = "P(ddqn > dqn): the plot.py command written beside it"
NOT_GENERATED = {
    "1544.2 [1287.1, 2050.3]": "the stable-GEM screening's 3 seeds (stable.md: all 5)",
    "318 [72, 465]": "stable.md's 318.3 [72.3, 465.1], rounded",
    "0.56 [0.00, 1.00]": DDQN_VS_DQN,
    "0.78 [0.33, 1.00]": DDQN_VS_DQN,
    "0.67 [0.33, 0.94]": DDQN_VS_DQN,
}


@pytest.mark.parametrize(
    "page", ["README.md", "docs/summary.md", "docs/results/README.md"]
)
def test_hand_written_results_are_the_generated_ones(page):
    """A table copied by hand from report.sh's pages goes stale when they are
    regenerated: each interval it states must be one of theirs (or listed above)."""
    generated = "".join(
        path.read_text()
        for path in (ROOT / "docs" / "results").glob("*.md")
        if path.name != "README.md"
    )
    stated = INTERVAL.findall((ROOT / page).read_text())
    stale = [f for f in stated if f not in generated and f not in NOT_GENERATED]
    assert stated and not stale, f"{page}: not in report.sh's pages: {stale}"
