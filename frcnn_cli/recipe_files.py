"""Recipe files: where named recipes are found, and how a file and its ``base:`` chain are read.

Named recipes (``--recipe shapes``) are looked up in the folders of ``FRCNN_RECIPE_PATH``,
then the installed package's ``recipes/``, then the source checkout's; a path to a YAML file
works too. :func:`frcnn_cli.config.load_recipe` validates what :func:`read_recipe_file`
returns against the schema.
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any

import yaml

from frcnn_cli.errors import RecipeError

_PACKAGE_DIR = Path(__file__).resolve().parent


def recipe_dirs() -> list[Path]:
    """Folders searched for named recipes: the wheel's copy, then the source checkout's."""
    dirs = [_PACKAGE_DIR / "recipes", _PACKAGE_DIR.parent / "recipes"]
    extra = os.environ.get("FRCNN_RECIPE_PATH")
    if extra:
        dirs = [Path(p) for p in extra.split(os.pathsep)] + dirs
    return [d for d in dirs if d.is_dir()]


def available_recipes() -> list[str]:
    """Names of the shipped recipes, sorted."""
    names = {p.stem for d in recipe_dirs() for p in d.glob("*.yaml")}
    return sorted(names)


def find_recipe(name_or_path: str | os.PathLike) -> Path:
    """Path of a recipe given by name (``shapes``) or by path (``my.yaml``)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or os.sep in str(name_or_path):
        if not p.is_file():
            raise RecipeError(f"recipe file not found: {p}")
        return p
    for d in recipe_dirs():
        cand = d / f"{name_or_path}.yaml"
        if cand.is_file():
            return cand
    names = available_recipes()
    hint = difflib.get_close_matches(str(name_or_path), names, n=1)
    msg = f"unknown recipe '{name_or_path}'"
    msg += f"; did you mean '{hint[0]}'?" if hint else f"; available: {', '.join(names)}"
    raise RecipeError(msg)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"recipe {path}{where} is not valid YAML: "
                          f"{getattr(e, 'problem', e)}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read recipe {path}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a mapping of sections, got "
                          f"{type(data).__name__}")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_recipe_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw dict of a recipe file, its ``base:`` chain merged in (the base's keys first)."""
    if path.resolve() in seen:
        raise RecipeError(f"recipe {path} inherits from itself through 'base'")
    data = _read_yaml(path)
    base_name = data.pop("base", None)
    if base_name is None:
        return data
    sibling = path.parent / f"{base_name}.yaml"
    base_path = sibling if sibling.is_file() else find_recipe(base_name)
    return _merge(read_recipe_file(base_path, (*seen, path.resolve())), data)
