"""Renaming and merging classes on import: ``--map OLD=NEW[,OLD=NEW]`` and ``--one-class NAME``.

``--map car=vehicle,truck=vehicle`` gives the objects of ``car`` and ``truck`` one class,
``vehicle``; ``--map tvmonitor=tv`` renames; a class mapped onto a name the dataset already
has (``--map van=car``) joins it; classes not named keep their names. ``--one-class object``
maps every class to one. Names are the source's (for YOLO, the names of its indices), compared
exactly; a name holding ``,`` or ``=`` cannot be mapped.

The new categories are numbered by the rule of the reader that found the old ones, applied to
the new names:

- ``sorted``: ids 1..K in sorted name order (VOC, CSV). A mapped VOC set is numbered so too:
  the devkit's 20 fixed ids hold for unmapped VOC names only.
- ``listed``: ids 1..K in the order of each new name's first old category by id (YOLO's
  indices; VOC and CSV with ``--classes``).
- ``keep``: each new name keeps the id, place and other fields of its first old category in
  file order (COCO, and every input of ``frcnn data merge``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from frcnn_cli.data.annotations import Annotations
from frcnn_cli.errors import InputError

NUMBERINGS = ("sorted", "listed", "keep")


@dataclass(frozen=True)
class ClassMap:
    """Old class name -> new one; names not in ``renames`` stay, unless ``one_class`` names
    the class every object becomes."""

    renames: dict[str, str]
    one_class: str | None = None

    def __call__(self, name: str) -> str:
        return self.one_class if self.one_class is not None else self.renames.get(name, name)

    def check_known(self, known: Iterable[str], source: str) -> None:
        """InputError naming the OLD names that are not among ``known`` (and the known
        ones)."""
        known = list(dict.fromkeys(known))
        unknown = [old for old in self.renames if old not in known]
        if unknown:
            raise InputError(f"--map names class(es) {', '.join(unknown)} that {source} does "
                             f"not have; its classes: {', '.join(known) or 'none'}")


def parse_class_map(pairs: Sequence[str] | None = None, one_class: str | None = None
                    ) -> ClassMap | None:
    """``["car=vehicle,truck=vehicle", "van=car"]`` (the values of ``--map``) or a
    ``--one-class`` name -> ClassMap; None when neither is given. Raises InputError for
    malformed pairs, an OLD name mapped twice, or both options."""
    pairs = [p for p in (pairs or []) if p.strip()]
    if one_class is not None:
        if pairs:
            raise InputError("give --map or --one-class, not both")
        if not one_class.strip():
            raise InputError("--one-class needs a class name")
        return ClassMap({}, one_class.strip())
    if not pairs:
        return None
    renames: dict[str, str] = {}
    for item in (part for p in pairs for part in p.split(",")):
        old, sep, new = (s.strip() for s in item.partition("="))
        if not sep or not old or not new:
            raise InputError(f"--map takes OLD=NEW pairs separated by commas, got {item!r}")
        if old in renames and renames[old] != new:
            raise InputError(f"--map gives class {old!r} two new names: {renames[old]!r} and "
                             f"{new!r}")
        renames[old] = new
    return ClassMap(renames)


def map_classes(ann: Annotations, class_map: ClassMap, numbering: str,
                source: str = "the dataset") -> Annotations:
    """``ann`` with its categories renamed and merged by ``class_map`` and numbered by
    ``numbering`` (see the module doc); annotations follow their category. Raises InputError
    when ``class_map`` names a class ``ann`` does not have."""
    if numbering not in NUMBERINGS:
        raise ValueError(f"numbering must be one of {NUMBERINGS}, got {numbering!r}")
    class_map.check_known((c["name"] for c in ann.categories), source)
    old = list(ann.categories) if numbering == "keep" else \
        sorted(ann.categories, key=lambda c: c["id"])
    first: dict[str, dict[str, Any]] = {}  # new name -> its first old category
    for c in old:
        first.setdefault(class_map(c["name"]), c)
    names = sorted(first) if numbering == "sorted" else list(first)
    if numbering == "keep":
        categories = [{**first[n], "name": n} for n in names]
    else:
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    new_id = {n: c["id"] for n, c in zip(names, categories, strict=True)}
    id_map = {c["id"]: new_id[class_map(c["name"])] for c in ann.categories}
    annotations = [{**a, "category_id": id_map.get(a["category_id"], a["category_id"])}
                   for a in ann.annotations]
    return Annotations(list(ann.images), annotations, categories, ann.root, ann.path,
                       dict(ann.extra))
