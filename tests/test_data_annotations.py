"""COCO JSON in memory: structure checks, label order, relative paths on save."""

from __future__ import annotations

import json

import pytest

from frcnn_cli.data.annotations import Annotations, load_annotations, save_annotations
from frcnn_cli.errors import DataError, InputError


def _coco():
    return {
        "info": {"description": "t"},
        "images": [{"id": 1, "file_name": "img/a.jpg", "width": 40, "height": 30},
                   {"id": 2, "file_name": "img/b.jpg", "width": 40, "height": 30}],
        "annotations": [{"image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 5]},
                        {"id": 5, "image_id": 1, "category_id": 3, "bbox": [0, 0, 4, 4]}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }


def test_load_fills_and_indexes(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(_coco()))
    ann = load_annotations(tmp_path / "a.json")
    assert ann.classes == [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    assert ann.label_of(7) == 2 and ann.label_of(3) == 1
    first = ann.objects(1)[0]
    assert first["id"] == 6 and first["area"] == 50.0 and first["iscrowd"] == 0
    assert ann.objects(2) == []
    assert ann.image_path(ann.image(2)) == tmp_path / "img/b.jpg"
    assert ann.extra == {"info": {"description": "t"}}


def test_save_rewrites_file_names_relative_to_new_folder(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(_coco()))
    ann = load_annotations(tmp_path / "a.json")
    out = save_annotations(ann, tmp_path / "sub" / "deeper" / "b.json")
    data = json.loads(out.read_text())
    assert data["images"][0]["file_name"] == "../../img/a.jpg"
    assert data["info"] == {"description": "t"}
    again = load_annotations(out)
    assert again.image_path(again.images[0]).resolve() == (tmp_path / "img/a.jpg").resolve()
    with pytest.raises(InputError, match="same file as the input"):
        save_annotations(ann, tmp_path / "a.json")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("images"), "missing 'images'"),
    (lambda d: d["images"][1].pop("file_name"), r"images\[1\] needs a 'file_name'"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotations\[0\].*'bbox'"),
    (lambda d: d["annotations"][1].update(image_id="x"), r"'image_id' must be an integer"),
    (lambda d: d["categories"][0].pop("name"), r"categories\[0\] needs a 'name'"),
])
def test_structure_errors_name_the_entry(tmp_path, edit, message):
    data = _coco()
    edit(data)
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=message):
        load_annotations(tmp_path / "bad.json")


def test_not_json_and_missing(tmp_path):
    (tmp_path / "x.json").write_text("{ nope")
    with pytest.raises(DataError, match=r"x.json is not valid JSON: line 1"):
        load_annotations(tmp_path / "x.json")
    with pytest.raises(InputError, match="not found"):
        load_annotations(tmp_path / "none.json")


def test_subset_keeps_categories():
    ann = Annotations(**{k: v for k, v in _coco().items() if k != "info"})
    sub = ann.subset([2])
    assert [im["id"] for im in sub.images] == [2] and sub.annotations == []
    assert sub.num_classes == 2
