"""What a release ships: ``__version__`` from the package metadata, a changelog entry
for that version, the license that pyproject declares."""

from __future__ import annotations

import importlib
import re
from importlib import metadata
from pathlib import Path

import torchrl_gem

ROOT = Path(__file__).resolve().parents[1]


def declared_version() -> str:
    (version,) = re.findall(
        r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M
    )
    return version


def test_version_is_the_declared_one():
    # the tests run on an install (README: pip install -e), whose metadata carries
    # pyproject's version: a stale install or a misread version shows here
    assert torchrl_gem.__version__ == declared_version()


def test_version_without_metadata_is_marked_unknown(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    try:
        assert importlib.reload(torchrl_gem).__version__ == "0+unknown"
    finally:
        monkeypatch.undo()
        importlib.reload(torchrl_gem)


def test_changelog_has_an_entry_for_the_declared_version():
    headings = re.findall(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert headings and headings[0] == declared_version(), headings


def test_license_is_the_declared_one():
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
