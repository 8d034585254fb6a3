"""Option types shared by several commands, so each is spelled and documented once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Recipe = Annotated[str, typer.Option(
    "--recipe", "-r", help="Recipe name (see [bold]frcnn recipe list[/]) or path to a YAML file.")]
OptionalRecipe = Annotated[Optional[str], typer.Option(  # noqa: UP045 (Typer needs Optional)
    "--recipe", "-r", help="Recipe name (see [bold]frcnn recipe list[/]) or path to a YAML file.")]
Overrides = Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
    "--set", "-s", metavar="KEY=VALUE",
    help="Override a recipe key, e.g. [bold]--set solver.lr=0.01[/] (repeatable).")]
Device = Annotated[str, typer.Option(
    "--device", "-d", help="auto (CUDA when present), cpu, cuda or cuda:N.")]
JsonOut = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    "--json", help="Also write the result as JSON to this file.", dir_okay=False)]
