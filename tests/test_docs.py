"""Every public class and function of ``torchrl_gem`` carries runnable ``Examples:``
(pytest's ``--doctest-modules`` runs them)."""

from __future__ import annotations

import inspect

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
