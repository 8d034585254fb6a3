"""``frcnn recipe``: list, show and document recipes."""

from __future__ import annotations

from typing import Annotated

import typer

from frcnn_cli import config, recipe_keys
from frcnn_cli.cli import console, options

recipe_app = options.Typer(help="List, show and document recipes.", no_args_is_help=True)


@recipe_app.command("list")
def list_recipes() -> None:
    """List the shipped recipes with their descriptions.

    Example: [bold]frcnn recipe list[/]
    """
    rows = [[name, r.model.backbone if r is not None else ("invalid", "red"), line]
            for name, r, line in recipe_keys.recipe_summaries()]
    console.table(None, ["recipe", "backbone", "description"], rows)


@recipe_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Recipe name or YAML path.")],
    overrides: options.Overrides = None,
) -> None:
    """Print a recipe fully resolved: base recipes merged, defaults filled, --set applied.

    Example: [bold]frcnn recipe show shapes --set solver.lr=0.02[/]
    """
    r = config.load_recipe(name, overrides or [])
    typer.echo(config.dump_yaml(r.to_dict()), nl=False)


@recipe_app.command("keys")
def keys(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table.")] = False,
) -> None:
    """Every recipe key with its type, default and meaning.

    Example: [bold]frcnn recipe keys --markdown > docs/recipe-reference.md[/]
    """
    if markdown:
        typer.echo(recipe_keys.reference_markdown(), nl=False)
        return
    rows = [[key, default, desc] for key, _, default, desc in recipe_keys.key_table()]
    console.table(None, ["key", "default", "meaning"], rows)


def register(app: typer.Typer) -> None:
    app.add_typer(recipe_app, name="recipe", rich_help_panel="Recipes")
