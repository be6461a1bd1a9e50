"""Sphinx configuration of the torchrl-gem site.

Build it from the repository root (the ``docs`` extra installs what it needs):

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The pages are the Markdown files of ``docs/`` (MyST), the results of ``docs/results/``
where they stand, and three references generated at build time: the API (autodoc of
``torchrl_gem``'s ``__all__``), the recipes' configuration and their ``algo`` presets
(``_ext/config_reference.py``, read from the Hydra structured configs). Nothing is
fetched from the network unless ``DOCS_INTERSPHINX=1`` is set (links to the Python,
PyTorch, TensorDict and TorchRL references).
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# the package from this tree, the recipes' flat modules, the site's own extension
sys.path[:0] = [str(ROOT), str(ROOT / "recipes"), str(DOCS / "_ext")]

import torchrl_gem  # noqa: E402

project = "torchrl-gem"
author = "the torchrl-gem authors"
copyright = f"2026, {author}"
release = torchrl_gem.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the docstrings' Google style (Args:, Returns:, Examples:)
    "config_reference",  # _ext/: the recipes' configuration, generated
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = [
    "_build",
    # run folders: logs, figures and run_info.json, no pages
    "results/runs",
    "results/runs_1m",
    "results/atari",
    "results/atari_pilot",
    "results/bf16",
    "results/stable",
]

myst_heading_anchors = 4  # GitHub's heading anchors, as the pages link them

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"torchrl-gem {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]

if os.environ.get("DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "torch": ("https://docs.pytorch.org/docs/stable", None),
        "tensordict": ("https://docs.pytorch.org/tensordict/stable", None),
        "torchrl": ("https://docs.pytorch.org/rl/stable", None),
    }

# report.sh writes these pages without a title (tables under a generated-by line)
GENERATED_TITLES = {
    "results/comparison": "The comparison's tables",
    "results/ablations": "Part 3's tables: ablations and TorchRL's losses",
    "results/stable": "The stable-GEM screening's tables",
    "results/atari": "The Atari comparison's tables",
    "results/runs_1m": "The 1M-frame study's tables",  # with results/runs_1m.md
}


def add_title(app, docname: str, source: list[str]) -> None:
    if docname in GENERATED_TITLES:
        source[0] = f"# {GENERATED_TITLES[docname]}\n\n{source[0]}"


def init_signature(app, what, name, obj, options, signature, return_annotation):
    """A class of this package shows its own ``__init__``'s arguments: TorchRL's
    losses (a metaclass ``__call__``) and replay buffers (a ``__new__``) would show
    ``(*args, **kwargs)`` instead."""
    init = getattr(obj, "__init__", None) if what == "class" else None
    if not getattr(init, "__module__", "").startswith("torchrl_gem"):
        return None
    parameters = list(inspect.signature(init).parameters.values())[1:]  # no self
    bare = [parameter.replace(annotation=parameter.empty) for parameter in parameters]
    return str(inspect.Signature(bare)), None


def setup(app):
    app.connect("source-read", add_title)
    app.connect("autodoc-process-signature", init_signature)
