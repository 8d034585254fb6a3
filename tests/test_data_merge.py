"""`frcnn data merge`: ids renumbered, classes matched by name, paths relative to the output."""

from __future__ import annotations

import json

import pytest

from frcnn_cli.data.annotations import load_annotations
from frcnn_cli.data.merge import merge_annotations, partial_classes
from frcnn_cli.errors import DataError, InputError


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def two_sets(tmp_path):
    """voc07/a.json (dog id 3, cat id 1) and voc12/b.json (bird id 1, dog id 2; one image given
    by an absolute path), in sibling folders."""
    a = _write(tmp_path / "voc07/a.json", {
        "info": {"year": 2007},
        "images": [{"id": 10, "file_name": "JPEGImages/000005.jpg", "width": 500, "height": 375},
                   {"id": 20, "file_name": "JPEGImages/000007.jpg", "width": 500, "height": 333}],
        "annotations": [
            {"id": 7, "image_id": 20, "category_id": 1, "bbox": [140, 49, 360, 281],
             "area": 101160.0, "iscrowd": 0, "difficult": 0, "truncated": 1},
            {"id": 8, "image_id": 10, "category_id": 3, "bbox": [262, 210, 62, 129],
             "area": 7998.0, "iscrowd": 0, "difficult": 1, "truncated": 0},
            {"id": 9, "image_id": 10, "category_id": 1, "bbox": [1, 2, 3, 4]}],
        "categories": [{"id": 3, "name": "dog"},
                       {"id": 1, "name": "cat", "supercategory": "animal"}]})
    b = _write(tmp_path / "voc12/b.json", {
        "images": [{"id": 1, "file_name": "JPEGImages/2008_000008.jpg", "width": 500,
                    "height": 442},
                   {"id": 2, "file_name": "/data/extra/x.jpg", "width": 64, "height": 48}],
        "annotations": [
            {"id": 1, "image_id": 2, "category_id": 2, "bbox": [5, 6, 7, 8], "difficult": 1},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [52, 86, 419, 334],
             "area": 139946.0, "iscrowd": 0, "truncated": 0}],
        "categories": [{"id": 1, "name": "bird"}, {"id": 2, "name": "dog"},
                       {"id": 3, "name": "Cat"}]})  # case-sensitive: not "cat"
    return a, b


def test_merge_renumbers_and_matches_classes_by_name(two_sets, tmp_path):
    a, b = (load_annotations(p) for p in two_sets)
    merged = merge_annotations([a, b], tmp_path / "out")

    # the first file's categories, order and ids; then new names after the largest id (3)
    assert [(c["id"], c["name"]) for c in merged.categories] == \
        [(3, "dog"), (1, "cat"), (4, "bird"), (5, "Cat")]
    assert merged.categories[1]["supercategory"] == "animal"
    assert [im["id"] for im in merged.images] == [1, 2, 3, 4]
    assert [a["id"] for a in merged.annotations] == [1, 2, 3, 4, 5]
    # a: image 20 -> 2, 10 -> 1; b: image 1 -> 3, 2 -> 4; b's dog (2) -> 3, bird (1) -> 4
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in merged.annotations] == [
        (2, 1, [140, 49, 360, 281]), (1, 3, [262, 210, 62, 129]), (1, 1, [1, 2, 3, 4]),
        (4, 3, [5, 6, 7, 8]), (3, 4, [52, 86, 419, 334])]
    # every other field kept (area and iscrowd filled by the loader where missing)
    assert merged.annotations[0] == {"id": 1, "image_id": 2, "category_id": 1,
                                     "bbox": [140, 49, 360, 281], "area": 101160.0,
                                     "iscrowd": 0, "difficult": 0, "truncated": 1}
    assert merged.annotations[1]["difficult"] == 1 and merged.annotations[2]["area"] == 12.0
    assert merged.annotations[3]["difficult"] == 1 and merged.annotations[4]["truncated"] == 0
    assert [(im["width"], im["height"]) for im in merged.images] == \
        [(500, 375), (500, 333), (500, 442), (64, 48)]
    # relative to the output folder, a sibling of both inputs; absolute names unchanged
    assert [im["file_name"] for im in merged.images] == [
        "../voc07/JPEGImages/000005.jpg", "../voc07/JPEGImages/000007.jpg",
        "../voc12/JPEGImages/2008_000008.jpg", "/data/extra/x.jpg"]
    assert merged.image_path(merged.images[2]).resolve() == \
        (tmp_path / "voc12/JPEGImages/2008_000008.jpg").resolve()
    # the inputs are not changed
    assert a.images[0]["id"] == 10 and b.annotations[0]["category_id"] == 2
    assert partial_classes([a, b]) == {"cat": [str(two_sets[0])],
                                       "bird": [str(two_sets[1])], "Cat": [str(two_sets[1])]}


def test_merge_cli_writes_a_file_that_works_from_its_folder(cli, two_sets, tmp_path,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)  # short relative names, as a user types them
    out = tmp_path / "merged/deeper/all.json"
    r = cli("data", "merge", "voc07/a.json", "voc12/b.json", "--out", "merged/deeper/all.json")
    assert r.exit_code == 0, r.output
    rows = [[w for w in line.split() if w != "│"] for line in r.output.splitlines()]
    # input, images, objects, classes
    assert ["voc07/a.json", "2", "3", "2"] in rows
    assert ["voc12/b.json", "2", "2", "3"] in rows
    assert ["total", "4", "5", "4"] in rows
    text = " ".join(r.output.split())  # rich wraps long lines
    assert "classes in only some inputs" in text
    assert "cat (voc07/a.json); bird (voc12/b.json); Cat (voc12/b.json)" in text
    data = json.loads(out.read_text())
    assert "info" not in data  # one input's info does not describe the union
    assert data["images"][0]["file_name"] == "../../voc07/JPEGImages/000005.jpg"
    ann = load_annotations(out)
    assert ann.image_path(ann.images[0]).resolve() == \
        (tmp_path / "voc07/JPEGImages/000005.jpg").resolve()
    assert [c["name"] for c in ann.classes] == ["cat", "dog", "bird", "Cat"]  # by id 1, 3, 4, 5


def test_merge_refuses_one_input(cli, two_sets, tmp_path):
    r = cli("data", "merge", two_sets[0], "--out", tmp_path / "m.json")
    assert r.exit_code == 2 and "give two or more" in r.output
    assert not (tmp_path / "m.json").exists()
    with pytest.raises(InputError, match="two or more"):
        merge_annotations([load_annotations(two_sets[0])], tmp_path)


def test_merge_refuses_to_write_over_an_input(cli, two_sets):
    before = two_sets[1].read_text()
    r = cli("data", "merge", *two_sets, "--out", two_sets[1])
    assert r.exit_code == 2 and "same file as the input" in r.output
    assert "Traceback" not in r.output
    assert two_sets[1].read_text() == before


def test_merge_refuses_an_image_in_two_inputs(cli, two_sets, tmp_path):
    # c.json names voc07's 000007.jpg by another relative path
    c = _write(tmp_path / "voc07/sub/c.json", {
        "images": [{"id": 1, "file_name": "../JPEGImages/000007.jpg", "width": 500,
                    "height": 333}],
        "annotations": [], "categories": [{"id": 1, "name": "cat"}]})
    r = cli("data", "merge", two_sets[0], two_sets[1], c, "--out", tmp_path / "m.json")
    assert r.exit_code == 2, r.output
    assert "000007.jpg is in both" in r.output
    assert str(two_sets[0]) in r.output and str(c) in r.output
    assert not (tmp_path / "m.json").exists()


def test_merge_refuses_the_same_file_twice_and_ambiguous_names(two_sets, tmp_path):
    a = load_annotations(two_sets[0])
    with pytest.raises(InputError, match="given twice"):
        merge_annotations([a, load_annotations(two_sets[0])], tmp_path)
    d = _write(tmp_path / "d.json", {"images": [], "categories": [
        {"id": 1, "name": "dog"}, {"id": 2, "name": "dog"}]})
    with pytest.raises(DataError, match="both named 'dog'"):
        merge_annotations([a, load_annotations(d)], tmp_path)


def test_merge_map_renames_in_every_input_before_matching(two_sets, tmp_path):
    from frcnn_cli.data.formats.classmap import parse_class_map

    a, b = (load_annotations(p) for p in two_sets)
    cmap = parse_class_map(["Cat=cat,bird=animal"])
    merged = merge_annotations([a, b], tmp_path / "out", class_map=cmap)
    # b's bird (1) becomes animal, a new name: the next id after a's largest (3)
    assert [(c["id"], c["name"]) for c in merged.categories] == \
        [(3, "dog"), (1, "cat"), (4, "animal")]
    assert [a["category_id"] for a in merged.annotations] == [1, 3, 1, 3, 4]
    assert partial_classes([a, b], cmap) == {"animal": [str(two_sets[1])]}
    with pytest.raises(InputError, match="horse that any input does not have; its classes: "
                                         "dog, cat, bird, Cat"):
        merge_annotations([a, b], tmp_path, class_map=parse_class_map(["horse=x"]))


def test_merge_one_class_cli(cli, two_sets, tmp_path):
    out = tmp_path / "m.json"
    r = cli("data", "merge", *two_sets, "--one-class", "thing", "--out", out)
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    # a's first category (dog, id 3) gives the id; b's thing matches it by name
    assert data["categories"] == [{"id": 3, "name": "thing"}]
    assert [a["category_id"] for a in data["annotations"]] == [3] * 5
    assert "classes in only some inputs" not in r.output
    r = cli("data", "merge", *two_sets, "--map", "horse=x", "--out", tmp_path / "n.json")
    assert r.exit_code == 2 and "horse" in r.output and not (tmp_path / "n.json").exists()
