"""Option types shared by several commands, so each is spelled and documented once, and the
command class that gives every command the same plain help display."""

from __future__ import annotations

from enum import Enum
from pathlib import Path, PurePath
from typing import Annotated, Any, Optional, get_args

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

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


# Tiled prediction (predict, eval). None: the library's default, named in the help.
Tile = Annotated[Optional[int], typer.Option(  # noqa: UP045
    "--tile", metavar="S", show_default=False,
    help="Run the model on overlapping S x S tiles of each image (at least 32 px) and merge "
    "their detections in the whole image's pixels: for images much larger than the recipe's "
    "input, with small objects. An image no larger than S is one tile.")]
Overlap = Annotated[Optional[float], typer.Option(  # noqa: UP045
    "--overlap", show_default=False,
    help="With --tile: overlap of neighbouring tiles, a fraction of S in [0, 1) \\[default: "
    "0.2]; an object no larger than the overlap lies whole in some tile.")]
TileBatch = Annotated[Optional[int], typer.Option(  # noqa: UP045
    "--tile-batch", min=1, show_default=False,
    help="With --tile: tiles per forward pass \\[default: 4]; memory grows with it, not with "
    "the image.")]
MaxDetections = Annotated[Optional[int], typer.Option(  # noqa: UP045
    "--max-detections", min=1, show_default=False,
    help="With --tile: detections kept per image after merging \\[default: 1000]; each tile "
    "keeps the recipe's roi_heads.detections_per_img.")]
IgnoreDatasetMismatch = Annotated[bool, typer.Option(
    "--ignore-dataset-mismatch", help="Use a proposals file made for another dataset (whose "
    "file names differ for the same image ids): refused without it.")]
ManyTiles = Annotated[bool, typer.Option(
    "--many-tiles", help="Tile even when the tiles would cover each pixel more than 25 times "
    "over (an overlap near 1 makes thousands of tiles of a small image): refused without it.")]
MaxPixels = Annotated[Optional[int], typer.Option(  # noqa: UP045
    "--max-pixels", min=1, show_default=False,
    help="Refuse images with more pixels than this \\[default: 2^30, e.g. 32768 x 32768]; "
    "decoding takes 3 bytes a pixel.")]


# --------------------------------------------------------------------------- help display


def _value_type(param, ctx) -> str:
    """``<path>`` for a list of paths (Typer would show ``<list[Path]>``), else Typer's own."""
    desc = param.type_descriptor
    if desc.is_list and not desc.is_choice:
        (element,) = get_args(desc.annotation)
        return "<path>" if isinstance(element, type) and issubclass(element, PurePath) \
            else f"<{param._bare_type(element)}>"
    return param.display_type(ctx)


class _Argument(TyperArgument):
    """An argument as usage lines name it: CHECKPOINT, [CHECKPOINT] when optional,
    IMAGE_OR_DIR... when repeated (not ``{checkpoint}``)."""

    @property
    def display_name_raw(self) -> str:
        return self.metavar or (self.name or "").upper()

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        if self.nargs != 1 and not name.endswith("..."):
            name += "..."
        return name if self.required else f"[{name}]"

    def display_type_rich(self, ctx) -> str | None:
        return _value_type(self, ctx)


class _Option(TyperOption):
    """An option whose help shows no ``<bool>`` after a flag and ``<path>`` for repeated
    paths."""

    def display_type_rich(self, ctx) -> str | None:
        if self.is_flag or self.count:
            return None
        if self.metavar is not None:
            return self.metavar
        return _value_type(self, ctx)


def plain_params(params: list) -> list:
    """``params`` shown with :class:`_Argument`'s and :class:`_Option`'s help display."""
    for param in params:
        if type(param) is TyperArgument:
            param.__class__ = _Argument
        elif type(param) is TyperOption:
            param.__class__ = _Option
    return params


class Command(TyperCommand):
    """Every frcnn command: Typer's, with the plain help display of :func:`plain_params` (the
    help option included)."""

    def get_params(self, ctx) -> list:
        return plain_params(super().get_params(ctx))


class Group(TyperGroup):
    """A command group with the same help display as :class:`Command`."""

    def get_params(self, ctx) -> list:
        return plain_params(super().get_params(ctx))


class Typer(typer.Typer):
    """``typer.Typer`` whose groups and commands are :class:`Group` s and :class:`Command` s."""

    def __init__(self, *, cls: type[TyperGroup] | None = None, **kwargs: Any) -> None:
        super().__init__(cls=cls or Group, **kwargs)

    def command(self, name: str | None = None, *, cls: type[TyperCommand] | None = None,
                **kwargs: Any):
        return super().command(name, cls=cls or Command, **kwargs)
