"""``frcnn data``: make, convert, check, describe, split and merge datasets (COCO JSON)."""

from __future__ import annotations

import itertools
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from frcnn_cli.cli import console, options
from frcnn_cli.cli.data_tile import tile

data_app = options.Typer(help="Make, convert, check, describe, split and merge datasets "
                       "(COCO JSON).",
                       no_args_is_help=True)


@data_app.command("synth")
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder.", file_okay=False)],
    train: Annotated[int, typer.Option("--train", help="Training images.", min=0)] = 200,
    val: Annotated[int, typer.Option("--val", help="Validation images.", min=0)] = 50,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels.", min=32)] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the "
                                      "same files.")] = 0,
    classes: Annotated[int, typer.Option("--classes", help="Shape classes: circle, square, "
                                         "triangle, cross, diamond, star (first K).",
                                         min=1, max=6)] = 3,
    objects: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--objects", help="At most this many shapes per image (1 to N each) [default: 5].",
        show_default=False)] = None,
    min_object: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--min-object", help="Smallest shape side in pixels [default: 11 % of --size].",
        show_default=False)] = None,
    max_object: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--max-object", help="Largest shape side in pixels [default: 50 % of --size].",
        show_default=False)] = None,
) -> None:
    """Synthesise a detection set of coloured shapes on textured backgrounds.

    Writes OUT/train.json, OUT/val.json and OUT/images/; a folder that already
    holds a dataset is refused.
    Shapes have sides from 11 % to 50 % of the image and overlap, each staying
    at least 70 % visible; some images have no object.
    Boxes are the shapes' full extents. The same seed gives byte-identical JSON.
    For large images with many small objects (to try data tile), give the
    objects per image and their sides in pixels, e.g. --size 2000 --objects 150
    --min-object 12 --max-object 40.

    Example: [bold]frcnn data synth demo/ --train 200 --val 50 --size 256 --seed 0[/]
    """
    from frcnn_cli.data.synth import synthesize

    paths = synthesize(out, train=train, val=val, size=size, seed=seed, num_classes=classes,
                       max_objects=objects, min_object=min_object, max_object=max_object,
                       reporter=console.reporter())
    console.info(f"wrote {paths['train']} ({train} images) and {paths['val']} ({val} images)")


ClassMapOption = Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
    "--map", metavar="OLD=NEW[,OLD=NEW]",
    help="Rename classes; two old names given one new name become one class (repeatable).",
    show_default=False)]
OneClassOption = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--one-class", metavar="NAME", help="Make every class this one class.",
    show_default=False)]


class Format(str, Enum):
    voc = "voc"
    coco = "coco"
    yolo = "yolo"
    csv = "csv"


@data_app.command("convert")
def convert(
    src: Annotated[Path, typer.Argument(
        help="VOC folder (VOCdevkit year or flat labelImg), COCO JSON, YOLO folder or "
        "data.yaml, or CSV file.")],
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Format of SRC.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output COCO JSON file.",
                                      dir_okay=False)],
    split: Annotated[Optional[str], typer.Option(  # noqa: UP045 (Typer needs Optional)
        "--split", help="VOC: ImageSets/Main/<split>.txt; YOLO: images/<split> or a "
        "data.yaml key.")] = None,
    classes: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--classes", help="Comma-separated class names fixing the category ids 1..K "
        "(VOC, CSV) or naming YOLO indices 0..K-1.")] = None,
    images: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--images", help="COCO: the image folder, when not beside the JSON.",
        file_okay=False)] = None,
    class_map: ClassMapOption = None,
    one_class: OneClassOption = None,
) -> None:
    r"""Convert a VOC, COCO, YOLO or CSV dataset to the canonical COCO JSON.

    Boxes become continuous \[x, y, w, h]; file names are relative to OUT's folder.

    VOC: x = xmin - 1, w = xmax - xmin + 1 (inclusive pixel indices);
    difficult and truncated are kept. Category ids: the 20 VOC classes in devkit
    order (aeroplane = 1) when every name is a VOC class, else sorted names 1..K.
    YOLO: category id = class index + 1; centres become pixel boxes rounded to
    0.01 px; an image without a label file has no object.
    CSV: image_path,xmin,ymin,xmax,ymax,label, paths relative to the CSV;
    empty box fields mean an image with no object; ids 1..K in sorted order.
    COCO: ids kept; area, iscrowd and sizes filled; paths made relative.
    --map and --one-class rename and merge the classes read (--classes names
    the old ones); the new ones are numbered by the format's rule: COCO keeps
    the first old id of each, YOLO (and VOC or CSV with --classes) follows the
    old order, VOC and CSV otherwise sort the names.

    Example: [bold]frcnn data convert VOCdevkit/VOC2007 -f voc --split test -o voc07-test.json[/]
    """
    from frcnn_cli.data.annotations import save_annotations
    from frcnn_cli.data.formats import read_dataset
    from frcnn_cli.data.formats.classmap import parse_class_map

    cmap = parse_class_map(class_map, one_class)
    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    ann = read_dataset(src, fmt.value, split=split, classes=names, images=images,
                       class_map=cmap)
    path = save_annotations(ann, out, inputs=[src], written_by="data convert")
    _summary(ann)
    console.info(f"wrote {path}; look for broken images and boxes with: frcnn data check {path}")


def _summary(ann) -> None:
    counts = {c["id"]: 0 for c in ann.categories}
    for a in ann.annotations:
        counts[a["category_id"]] = counts.get(a["category_id"], 0) + 1
    empty = sum(1 for im in ann.images if not ann.objects(im["id"]))
    console.info(f"{len(ann.images)} images ({empty} without objects), "
                 f"{len(ann.annotations)} objects, {len(ann.categories)} classes")
    if not console.state.quiet:
        console.table(None, ["id", "class", "objects"],
                      [[c["id"], c["name"], counts.get(c["id"], 0)] for c in ann.classes])


@data_app.command("check")
def check(
    annotations: Annotated[Path, typer.Argument(help="COCO JSON file.", dir_okay=False)],
    fix: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--fix", help="Write a cleaned copy here (never over the input).",
        dir_okay=False)] = None,
    fast: Annotated[bool, typer.Option(
        "--fast", help="Read image headers only; skips the full decode that finds "
        "truncated files.")] = False,
    examples: Annotated[int, typer.Option("--examples", help="Examples shown per kind.",
                                          min=0)] = 3,
) -> None:
    """Report what is wrong with a dataset, by kind, with examples.

    Errors: no image at all, missing, unreadable or corrupt images, size
    mismatches, degenerate boxes (zero, negative, NaN), boxes outside the
    image, unknown categories, duplicate ids, annotations of missing
    images. Warnings: boxes partly outside,
    boxes under a pixel, duplicate boxes. Images without objects are information.
    Exit 0 when there is no error, 2 otherwise. With --fix, a cleaned copy is
    written (sizes from the files, boxes clipped, degenerate, orphaned and
    duplicate boxes and unreadable images dropped) and the exit code tells
    whether that copy is clean.

    Example: [bold]frcnn data check data/train.json --fix data/train.clean.json[/]
    """
    from frcnn_cli.data.annotations import load_annotations, save_annotations
    from frcnn_cli.data.check import ERROR, check_dataset, fix_dataset

    if fix is not None:  # refuse a bad output path before the slow part
        from frcnn_cli.files import prepare_output_file
        from frcnn_cli.outputs import dataset_kind

        prepare_output_file(fix, dataset_kind("data check --fix"), inputs=[annotations],
                            what="--fix output")
    ann = load_annotations(annotations)
    report = check_dataset(ann, decode=not fast, reporter=console.reporter())
    console.info(f"{annotations}: {len(ann.images)} images, {len(ann.annotations)} objects, "
                 f"{len(ann.categories)} categories")
    _render_report(report, examples)
    if fix is None:
        if not report.ok:
            console.error(f"{annotations} has {report.count(ERROR)} error(s); "
                          f"'frcnn data check {annotations} --fix OUT.json' writes a cleaned copy")
            raise typer.Exit(2)
        return
    fixed, changes = fix_dataset(ann, report)
    # the images --fix drops are inputs too
    path = save_annotations(fixed, fix, inputs=itertools.chain([annotations], ann.image_files()),
                            written_by="data check --fix")
    if changes:
        console.table(f"changes in {path}", ["change", "count"],
                      [[what, n] for what, n in changes.items()])
    else:
        console.info(f"nothing to change; wrote {path}")
    left = check_dataset(fixed, decode=False)
    if not left.ok:
        _render_report(left, examples, only_errors=True)
        console.error(f"{path} still has {left.count(ERROR)} error(s) that --fix cannot "
                      "repair (see above)")
        raise typer.Exit(2)
    console.info(f"wrote {path}: {len(fixed.images)} images, {len(fixed.annotations)} objects, "
                 "no errors")


@data_app.command("stats")
def stats(
    annotations: Annotated[Path, typer.Argument(help="COCO JSON file.", dir_okay=False)],
    recipe: options.OptionalRecipe = None,
    plot: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--plot", help="Write PNG histograms into this folder.", file_okay=False)] = None,
    json_out: options.JsonOut = None,
) -> None:
    """Images, objects per class and per image, box sizes and aspect ratios.

    Box sizes are in pixels after the recipe's resize (the paper's 600/1000
    without --recipe), which is what the anchors must cover. COCO's
    small/medium/large counts use the original pixels. A recipe that sets
    data.repeat_threshold adds what repeat-factor sampling makes of each
    class: its repeat factor and its images per epoch, before and after.

    Example: [bold]frcnn data stats demo/train.json --recipe shapes --plot demo/stats[/]
    """
    from frcnn_cli import config
    from frcnn_cli.analysis.stats import PLOT_FILES, dataset_stats, plot_stats
    from frcnn_cli.files import prepare_output_dir, prepare_output_file, write_result
    from frcnn_cli.outputs import DATA_STATS, PLOT

    if json_out is not None:
        prepare_output_file(json_out, DATA_STATS, inputs=[annotations], what="--json output")
    folder = prepare_output_dir(plot, inputs=[annotations], what="--plot",
                                writes=[(name, PLOT) for name in PLOT_FILES]) \
        if plot is not None else None
    from frcnn_cli.data.usable import open_dataset

    ann = open_dataset(annotations, "stats")
    if json_out is not None:
        prepare_output_file(json_out, DATA_STATS, inputs=ann.image_files(),
                            what="--json output")
    st = dataset_stats(ann, config.load_recipe(recipe))
    _print_stats(annotations, st)
    if folder is not None:
        for path in plot_stats(st, folder):
            console.info(f"wrote {path}")
    if json_out is not None:
        write_result(json_out, DATA_STATS, st.to_dict())
        console.info(f"wrote {json_out}")


def _print_stats(annotations: Path, st) -> None:
    """The tables of ``frcnn data stats`` (``st``: a DatasetStats)."""
    console.info(f"{annotations}: {st.num_images} images ({st.images_without_objects} without "
                 f"objects), {st.num_objects} objects, {len(st.classes)} classes"
                 + (f", {st.invalid_boxes} invalid boxes" if st.invalid_boxes else ""))
    console.table("per class", ["id", "class", "objects", "images", "difficult", "crowd"],
                  [[c["id"], c["name"], c["objects"], c["images"], c["difficult"], c["crowd"]]
                   for c in st.classes])
    console.table(f"distributions (box pixels after resize to {st.min_size}, max "
                  f"{st.max_size})",
                  ["measure", "min", "p5", "median", "p95", "max", "mean"],
                  [[name, *(f"{v:.2f}" if name.startswith("aspect") else f"{v:.1f}"
                            for v in q.values())]
                   for name, q in st.distributions().items()])
    console.table("COCO sizes (original pixels)", ["small (<32²)", "medium (<96²)", "large"],
                  [[st.coco_sizes["small"], st.coco_sizes["medium"], st.coco_sizes["large"]]])
    if st.repeat is not None:
        _print_repeat(st.repeat)


def _print_repeat(repeat: dict) -> None:
    """What repeat-factor sampling makes of each class (analysis.stats.repeat_summary)."""
    epoch = repeat["images_per_epoch"]
    console.table(f"repeat-factor sampling, data.repeat_threshold {repeat['threshold']:g} "
                  "(the objects training uses)",
                  ["id", "class", "f(c)", "r(c)", "images/epoch", "with repeats", "f after"],
                  [[c["id"], c["name"], f"{c['frequency']['before']:.4f}",
                    f"{c['repeat']:.2f}",
                    c["images"]["before"], f"{c['images']['after']:.1f}",
                    f"{c['frequency']['after']:.4f}"] for c in repeat["classes"]])
    console.info(f"images per epoch: {epoch['before']} -> {epoch['after']:.1f} with repeats "
                 "(expected: factors are rounded at random each epoch)")


@data_app.command("split")
def split(
    annotations: Annotated[Path, typer.Argument(help="COCO JSON file.", dir_okay=False)],
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", help="Share of the images for validation, in (0, 1).",
        min=0.0, max=1.0)] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for train.json and "
                                      "val.json.", file_okay=False)] = Path("."),
) -> None:
    """Split a dataset into OUT/train.json and OUT/val.json.

    Deterministic for a seed; every class with two or more images is kept on
    both sides where possible. File names are rewritten relative to OUT.

    Example: [bold]frcnn data split data/all.json --val-fraction 0.2 --seed 0 --out data/[/]
    """
    from frcnn_cli.data.annotations import load_annotations, save_annotations
    from frcnn_cli.data.split import class_counts, split_annotations
    from frcnn_cli.files import prepare_output_dir, prepare_output_file
    from frcnn_cli.outputs import dataset_kind

    kind = dataset_kind("data split")
    folder = prepare_output_dir(out, what="--out")
    ann = load_annotations(annotations)
    train, val = split_annotations(ann, val_fraction, seed)
    for name in ("train.json", "val.json"):  # check both outputs before writing either
        prepare_output_file(folder / name, kind, inputs=itertools.chain([annotations],
                                                                        ann.image_files()))
    paths = [save_annotations(part, folder / name, written_by="data split",
                              inputs=itertools.chain([annotations], ann.image_files()))
             for part, name in ((train, "train.json"), (val, "val.json"))]
    tc, vc = class_counts(train), class_counts(val)
    console.table(None, ["id", "class", "train objects", "train images", "val objects",
                         "val images"],
                  [[c["id"], c["name"], *tc[c["id"]], *vc[c["id"]]] for c in ann.classes])
    console.info(f"wrote {paths[0]} ({len(train.images)} images) and {paths[1]} "
                 f"({len(val.images)} images)")
    missing = [c["name"] for c in ann.classes if tc[c["id"]][1] == 0 or vc[c["id"]][1] == 0]
    if missing:
        console.info(("on one side only", "yellow"), f" (too few images): {', '.join(missing)}")


@data_app.command("merge")
def merge(
    inputs: Annotated[list[Path], typer.Argument(help="Two or more COCO JSON files.",
                                                 dir_okay=False, metavar="ANN.json...",
                                                 show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output COCO JSON file.",
                                      dir_okay=False)],
    class_map: ClassMapOption = None,
    one_class: OneClassOption = None,
) -> None:
    """Merge datasets into one, e.g. VOC 2007 + 2012 trainval to train on 07+12.

    Classes are matched by name (case-sensitive): the first file's categories
    keep their order and ids, names only later files have get the next ids.
    Image and annotation ids are renumbered 1..N; every other field (difficult,
    truncated, iscrowd, area, sizes) is kept. File names are rewritten relative
    to OUT's folder; absolute ones stay absolute. An image file listed in two
    inputs is an error naming both. --map and --one-class rename and merge
    every input's classes first (a new name keeps its first old id).

    Example: [bold]frcnn data merge data/voc07.json data/voc12.json --out data/voc0712.json[/]
    """
    from frcnn_cli.data.annotations import load_annotations
    from frcnn_cli.data.formats.classmap import parse_class_map
    from frcnn_cli.data.merge import WRITER, merge_annotations, partial_classes, save_merged
    from frcnn_cli.errors import InputError
    from frcnn_cli.files import prepare_output_file
    from frcnn_cli.outputs import dataset_kind

    cmap = parse_class_map(class_map, one_class)
    if len(inputs) < 2:
        raise InputError(f"give two or more annotation files to merge, got {len(inputs)}")
    out = prepare_output_file(out, dataset_kind(WRITER), inputs=inputs, what="--out")
    datasets = [load_annotations(p) for p in inputs]
    merged = merge_annotations(datasets, out.parent, class_map=cmap)
    path = save_merged(merged, out, inputs=itertools.chain(
        inputs, *(ann.image_files() for ann in datasets)))
    console.table(None, ["input", "images", "objects", "classes"],
                  [*([str(p), len(a.images), len(a.annotations), len(a.categories)]
                     for p, a in zip(inputs, datasets, strict=True)),
                   ["total", len(merged.images), len(merged.annotations),
                    len(merged.categories)]])
    partial = partial_classes(datasets, cmap)
    if partial:
        console.info(("note:", "yellow"), " classes in only some inputs (unlabelled, so "
                     "background, in the others): "
                     + "; ".join(f"{name} ({', '.join(files)})" for name, files in partial.items()))
    console.info(f"wrote {path}; look for broken images and boxes with: frcnn data check {path}")


def _render_report(report, examples: int, only_errors: bool = False) -> None:
    """One block per kind: a coloured heading with the count and what --fix does, then
    examples on their own lines (never cut, so every file name can be copied)."""
    from frcnn_cli.data.check import ERROR, INFO, KINDS, WARNING

    style = {ERROR: "bold red", WARNING: "yellow", INFO: "cyan"}
    groups = report.by_kind()
    if only_errors:
        groups = {k: v for k, v in groups.items() if KINDS[k][0] == ERROR}
    if not groups:
        console.info(("no problems found", "green"))
        return
    for kind, issues in groups.items():
        severity, remedy = KINDS[kind]
        console.result((severity, style[severity]), " ", (kind, "bold"), f" ({len(issues)}) ",
                       (f"--fix: {remedy}", "dim"))
        for issue in issues[:examples]:
            console.result(f"  {issue.message}")
        if len(issues) > examples:
            console.result(f"  ... and {len(issues) - examples} more")
    console.info(f"{report.count(ERROR)} error(s), {report.count(WARNING)} warning(s), "
                 f"{report.count(INFO)} note(s)")


data_app.command("tile")(tile)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data", rich_help_panel="Data")
