"""What ``frcnn recipe`` lists: the recipes found, and every recipe key with its type, default
and meaning, read from the schema in :mod:`frcnn_cli.config` (``docs/recipe-reference.md`` is
:func:`reference_markdown`'s output)."""

from __future__ import annotations

import types
import typing
from typing import Any

import yaml

from frcnn_cli.config import Recipe, all_keys, load_recipe
from frcnn_cli.errors import RecipeError
from frcnn_cli.recipe_files import available_recipes


def recipe_summaries() -> list[tuple[str, Recipe | None, str]]:
    """``(name, recipe, line)`` for each of :func:`available_recipes`: the loaded recipe and
    the first line of its description, or None and the error of a recipe that does not load
    (one broken file on FRCNN_RECIPE_PATH hides no other)."""
    out: list[tuple[str, Recipe | None, str]] = []
    for name in available_recipes():
        try:
            r = load_recipe(name)
        except RecipeError as e:
            out.append((name, None, str(e)))
            continue
        out.append((name, r, r.description.splitlines()[0] if r.description else ""))
    return out


def key_table() -> list[tuple[str, str, str, str]]:
    """``(key, type, default, meaning)`` for every recipe key, in schema order."""
    defaults = Recipe().to_dict()
    rows = []
    for key, field in all_keys().items():
        node: Any = defaults
        for part in key.split("."):
            node = node[part]
        rows.append((key, _type_name(field.annotation), _short(node), field.description or ""))
    return rows


def reference_markdown() -> str:
    """A Markdown table of every recipe key, its default and meaning, generated from the schema."""
    lines = [
        "# Recipe reference",
        "",
        "Generated from the schema in `frcnn_cli/config.py` by `frcnn recipe keys --markdown`; "
        "do not edit by hand.",
        "",
        "| key | type | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for key, typ, default, desc in key_table():
        desc = desc.replace("|", "\\|")
        lines.append(f"| `{key}` | {typ} | `{default}` | {desc} |")
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _type_name(ann: Any) -> str:
    """A key's type in words: ``float``, ``list[float > 0] or None``, ``Literal[...]``."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Annotated:
        marks = [part for m in args[1:] for part in (*getattr(m, "metadata", ()), m)]
        bounds = [f"{sign} {getattr(m, key)}" for m in marks for key, sign in _BOUNDS
                  if getattr(m, key, None) is not None]
        return " ".join([_type_name(args[0]), *bounds])
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if ann is type(None):
        return "None"
    text = getattr(ann, "__name__", None) if isinstance(ann, type) else None
    return (text or str(ann).replace("typing.", "")).replace("|", "or")
