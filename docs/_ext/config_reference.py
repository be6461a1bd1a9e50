"""The ``recipe-config`` directive: a recipe's configuration reference, generated.

    ```{recipe-config} mujoco
    ```

Read at build time from the recipe's Hydra structured config, so a field added to a
config class appears without editing a page:

- one section per config section (the schema's fields that are dataclasses, in their
  order; the top-level scalars such as ``seed`` first): every field with its type and
  allowed values (worded as the config's errors word them), its default and its
  comment (``config.describe_fields``);
- the ``algo`` presets: each file of the recipe's ``algo`` group with its header
  comment and every field it changes from the base (``algo=gem``), beside the base's
  value and the comment written next to the value in the preset or in a file it
  extends. Each preset is composed by Hydra, so one that extends another or sets
  shared sections (``# @package _global_``) shows all it changes.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

import atari_config
import config


class Recipe(NamedTuple):
    schema: type  # the primary config's dataclass
    load: Callable[..., Any]  # overrides -> the composed config
    presets: Path  # the algo group's folder
    base: str = "gem"  # the preset whose values are the schema's defaults


RECIPES = {
    "mujoco": Recipe(config.MujocoConfig, config.load_config, config.HERE / "algo"),
    "atari": Recipe(
        atari_config.AtariConfig,
        atari_config.load_atari_config,
        atari_config.ATARI_DIR / "algo",
    ),
}
GLOBAL = "# @package _global_"  # a preset that also sets shared sections
KEY = re.compile(r"^(\s*)([\w.]+):\s*(.*?)\s*$")  # indent, key, value
BASE = re.compile(r"^\s+-\s+(\w+)(?:@algo)?\s")  # a defaults entry: td3, td3@algo


def yaml_text(value: Any) -> str:
    """A value as it is typed on the command line: null, true, [400, 300], bf16."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(yaml_text(item) for item in value) + "]"
    return str(value)


def header_comment(path: Path) -> str:
    """The ``#`` lines that open a preset file, joined (the package line left out)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.strip() != GLOBAL:
            lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def value_comments(path: Path) -> tuple[dict[str, str], list[str]]:
    """``({dotted field: the comment beside its value}, [files it extends])``."""
    text = path.read_text()
    prefix = [] if text.startswith(GLOBAL) else ["algo"]
    comments, bases, stack = {}, [], []  # stack: (indent, key) of open mappings
    in_defaults = False
    for line in text.splitlines():
        if in_defaults and (base := BASE.match(line)) and base.group(1) != "_self_":
            bases.append(base.group(1))
            continue
        content, _, comment = line.partition(" #")
        found = KEY.match(content)
        if not found:
            continue
        indent, key, value = found.groups()
        while stack and stack[-1][0] >= len(indent):
            stack.pop()
        in_defaults = key == "defaults" and not indent
        if value:
            dotted = ".".join([*prefix, *(k for _, k in stack), key])
            comments[dotted] = comment.strip()
        elif not in_defaults:
            stack.append((len(indent), key))
    return comments, bases


@functools.cache
def composed(recipe: Recipe, preset: str) -> dict[str, Any]:
    """The config of ``algo=preset``, flat: ``{"optim.batch_size": 128, ...}``."""
    return config.flatten(config.plain(recipe.load([f"algo={preset}"])))


def preset_changes(recipe: Recipe, name: str) -> list[tuple[str, Any, Any, str]]:
    """``[(field, preset's value, base's value, why)]`` of ``algo=name``."""
    base, preset = composed(recipe, recipe.base), composed(recipe, name)
    comments: dict[str, str] = {}
    files = [name]
    while files:  # the preset first, then the files it extends
        own, bases = value_comments(recipe.presets / f"{files.pop(0)}.yaml")
        comments = {**own, **comments}
        files += bases
    return [
        (key, value, base[key], comments.get(key, ""))
        for key, value in preset.items()
        if key != "algo.name" and value != base[key]
    ]


def accepted(text: str) -> nodes.paragraph:
    """``one of ['a', 'b']``: the list as code (as typed, no curly quotes)."""
    parts = re.split(r"(\[[^\]]*\])", text)
    return paragraph(*(code(part) if part.startswith("[") else part for part in parts))


def paragraph(*children: nodes.Node | str) -> nodes.paragraph:
    node = nodes.paragraph()
    for child in children:
        node += nodes.Text(child) if isinstance(child, str) else child
    return node


def code(text: str) -> nodes.literal:
    return nodes.literal(text=text)


def table(header: list[str], rows: list[list[nodes.Node]], widths: list[int]):
    group = nodes.tgroup(cols=len(header))
    group += [nodes.colspec(colwidth=width) for width in widths]
    head, body = nodes.thead(), nodes.tbody()
    head += table_row([paragraph(text) for text in header])
    body += [table_row(cells) for cells in rows]
    group += [head, body]
    return nodes.table("", group, classes=["config-reference", "colwidths-given"])


def table_row(cells: list[nodes.Node]) -> nodes.row:
    row = nodes.row()
    row += [nodes.entry("", cell) for cell in cells]
    return row


def section(name: str, *title: nodes.Node | str) -> nodes.section:
    """A section (in the page's table of contents) whose anchor is ``name``."""
    anchor = nodes.make_id(name)
    heading = nodes.title("", "", *paragraph(*title).children)
    return nodes.section("", heading, ids=[anchor], names=[anchor])


class RecipeConfig(SphinxDirective):
    """``recipe-config NAME``: the sections and presets of a recipe in ``RECIPES``."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        if name not in RECIPES:
            raise self.error(f"unknown recipe {name!r}; choose one of {list(RECIPES)}")
        recipe = RECIPES[name]
        sources = [inspect.getsourcefile(recipe.schema), inspect.getsourcefile(config)]
        for path in [*sources, *recipe.presets.glob("*.yaml")]:
            self.env.note_dependency(str(path))  # rebuilt when they change
        fields = config.describe_fields(recipe.schema)
        scalars = [item for item in fields if not is_section(item.default)]
        sections = [item for item in fields if is_section(item.default)]
        out = [self.fields_section(name, "", "", scalars)]
        for item in sections:
            schema = type(item.default)
            out.append(
                self.fields_section(
                    name,
                    item.name,
                    schema.__doc__ or "",
                    config.describe_fields(schema),
                )
            )
            if item.name == "algo":
                out.append(self.presets_section(name, recipe))
        return out

    def fields_section(
        self, recipe: str, title: str, doc: str, fields
    ) -> nodes.section:
        prefix = f"{title}." if title else ""  # "": the top-level fields
        node = section(
            f"{recipe}-{title or 'top-level'}", code(title) if title else "Top level"
        )
        for text in re.split(r"\n\s*\n", doc.strip()):
            if text:
                node += paragraph(" ".join(text.split()))
        rows = []
        for item in fields:
            name_cell = paragraph(code(prefix + item.name))
            name_cell["ids"] = [nodes.make_id(f"{recipe}-{prefix}{item.name}")]
            rows.append(
                [
                    name_cell,
                    accepted(item.accepts),
                    paragraph(code(yaml_text(item.default))),
                    paragraph(item.comment),
                ]
            )
        node += table(
            ["field", "type and allowed values", "default", "what it is"],
            rows,
            [24, 22, 12, 42],
        )
        return node

    def presets_section(self, recipe_name: str, recipe: Recipe) -> nodes.section:
        node = section(f"{recipe_name}-algo-presets", code("algo"), " presets")
        names = sorted(path.stem for path in recipe.presets.glob("*.yaml"))
        names.sort(key=lambda preset: preset != recipe.base)  # the base first
        node += paragraph(
            "Each preset is a file of ",
            code(str(recipe.presets.relative_to(config.HERE.parent))),
            ", picked by ",
            code("algo=<name>"),
            "; the tables list what it changes from ",
            code(f"algo={recipe.base}"),
            " (the defaults above).",
        )
        for preset in names:
            path = recipe.presets / f"{preset}.yaml"
            node += nodes.rubric("", "", code(f"algo={preset}"))
            node += paragraph(header_comment(path))
            changes = preset_changes(recipe, preset)
            if changes:
                rows = [
                    [
                        paragraph(code(key)),
                        paragraph(code(yaml_text(value))),
                        paragraph(code(yaml_text(base))),
                        paragraph(why),
                    ]
                    for key, value, base, why in changes
                ]
                node += table(
                    ["field", "value", f"{recipe.base}'s", "why"],
                    rows,
                    [22, 14, 14, 50],
                )
        return node


def is_section(default: Any) -> bool:
    return dataclasses.is_dataclass(default) and not isinstance(default, type)


def setup(app):
    app.add_directive("recipe-config", RecipeConfig)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
