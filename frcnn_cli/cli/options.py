"""Option types shared by several commands, so each is spelled and documented once."""

from __future__ import annotations

from enum import Enum
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


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


PrecisionOption = Annotated[Precision, typer.Option(
    "--precision", help="fp32, or autocast to bf16 (CPU or GPU) or fp16 (GPU); the prediction "
    "layers stay in fp32.")]
