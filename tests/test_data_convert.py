"""Conversions to COCO: box numbers per format, ids, relative paths, bad input."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from frcnn_cli.data.annotations import load_annotations


def _image(path, w, h):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (90, 120, 150)).save(path)


def _voc_xml(filename, w, h, objects):
    objs = "".join(
        f"<object><name>{n}</name><truncated>{t}</truncated><difficult>{d}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax>"
        f"</bndbox></object>" for n, b, d, t in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>")


def _load(path):
    data = json.loads(path.read_text())
    return data, {a["id"]: a for a in data["annotations"]}


def test_voc_devkit_split_plus_one_rule(cli, tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    for stem in ("000005", "000007", "000009"):
        _image(voc / "JPEGImages" / f"{stem}.jpg", 50, 40)
    (voc / "Annotations").mkdir()
    (voc / "Annotations/000005.xml").write_text(_voc_xml("000005.jpg", 50, 40, [
        ("dog", (1, 2, 10, 20), 1, 0), ("person", (5, 5, 5, 5), 0, 1)]))
    (voc / "Annotations/000007.xml").write_text(_voc_xml("000007.jpg", 50, 40, []))
    (voc / "Annotations/000009.xml").write_text(_voc_xml("000009.jpg", 50, 40, [
        ("cat", (3, 3, 8, 8), 0, 0)]))
    (voc / "ImageSets/Main").mkdir(parents=True)
    (voc / "ImageSets/Main/test.txt").write_text("000005\n000007\n")

    out = tmp_path / "out" / "voc07-test.json"
    r = cli("data", "convert", tmp_path / "VOCdevkit", "--format", "voc", "--split", "test",
            "--out", out)
    assert r.exit_code == 0, r.output
    data, anns = _load(out)
    assert [im["id"] for im in data["images"]] == [5, 7]  # the no-object image stays
    assert data["images"][0]["file_name"] == "../VOCdevkit/VOC2007/JPEGImages/000005.jpg"
    assert len(data["categories"]) == 20
    assert data["categories"][11] == {"id": 12, "name": "dog"}
    dog, person = anns[1], anns[2]
    assert dog["bbox"] == [0.0, 1.0, 10.0, 19.0] and dog["category_id"] == 12
    assert dog["difficult"] == 1 and dog["truncated"] == 0 and dog["area"] == 190.0
    assert person["bbox"] == [4.0, 4.0, 1.0, 1.0] and person["category_id"] == 15
    assert person["difficult"] == 0 and person["truncated"] == 1
    ann = load_annotations(out)
    assert ann.image_path(ann.images[0]).is_file()

    r = cli("data", "convert", voc, "--format", "voc", "--split", "tset", "--out", out)
    assert r.exit_code == 2 and "split file not found" in r.output and "test" in r.output


def test_flat_labelimg_folder(cli, tmp_path):
    src = tmp_path / "labelled"
    _image(src / "a.png", 64, 48)
    _image(src / "b.png", 64, 48)  # no XML: not labelled yet, left out
    _image(src / "c.png", 30, 20)
    # labelImg's <filename> may be stale and <size> zero: the stem and the header win
    (src / "a.xml").write_text(_voc_xml("a.jpg", 0, 0, [("widget", (11, 21, 30, 40), 0, 0)]))
    (src / "c.xml").write_text(_voc_xml("c.png", 30, 20, [("gadget", (1, 1, 30, 20), 0, 0),
                                                         ("widget", (2, 3, 4, 5), 1, 0)]))
    out = src / "coco.json"
    r = cli("data", "convert", src, "--format", "voc", "--out", out)
    assert r.exit_code == 0, r.output
    data, anns = _load(out)
    assert data["categories"] == [{"id": 1, "name": "gadget"}, {"id": 2, "name": "widget"}]
    assert [(im["id"], im["file_name"], im["width"], im["height"]) for im in data["images"]] \
        == [(1, "a.png", 64, 48), (2, "c.png", 30, 20)]
    assert anns[1]["bbox"] == [10.0, 20.0, 20.0, 20.0] and anns[1]["category_id"] == 2
    assert anns[2]["bbox"] == [0.0, 0.0, 30.0, 20.0] and anns[2]["category_id"] == 1
    assert anns[3]["bbox"] == [1.0, 2.0, 3.0, 3.0] and anns[3]["difficult"] == 1


def test_voc_broken_xml_is_one_line(cli, tmp_path):
    src = tmp_path / "flat"
    _image(src / "a.png", 10, 10)
    (src / "a.xml").write_text("<annotation><object>")
    r = cli("data", "convert", src, "--format", "voc", "--out", tmp_path / "o.json")
    assert r.exit_code == 2 and "a.xml is not valid XML" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("names", ["names: {0: cat, 1: dog}", "names: [cat, dog]", None])
def test_yolo_boxes_and_rounding(cli, tmp_path, names):
    src = tmp_path / "yolo"
    _image(src / "images/train/x.jpg", 64, 48)
    _image(src / "images/train/y.jpg", 64, 48)  # no label file: no object
    _image(src / "images/val/z.jpg", 64, 48)
    (src / "labels/train").mkdir(parents=True)
    (src / "labels/train/x.txt").write_text("1 0.5 0.5 0.25 0.5\n0 0.123457 0.2 0.1 0.1\n\n")
    if names:
        (src / "data.yaml").write_text(f"path: /nowhere/on/this/machine\n{names}\n")
    else:
        (src / "classes.txt").write_text("cat\ndog\n")
    out = tmp_path / "yolo-train.json"
    r = cli("data", "convert", src, "--format", "yolo", "--split", "train", "--out", out)
    assert r.exit_code == 0, r.output
    data, anns = _load(out)
    assert data["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert [im["file_name"] for im in data["images"]] == ["yolo/images/train/x.jpg",
                                                          "yolo/images/train/y.jpg"]
    assert anns[1]["bbox"] == [24.0, 12.0, 16.0, 24.0] and anns[1]["category_id"] == 2
    # (0.123457 - 0.05) * 64 = 4.701248 -> 4.7; 0.15 * 48 = 7.2; 0.1 * 64 = 6.4; 0.1 * 48 = 4.8
    assert anns[2]["bbox"] == [4.7, 7.2, 6.4, 4.8] and anns[2]["category_id"] == 1
    assert len(anns) == 2


def test_yolo_bad_class_index_names_file_and_line(cli, tmp_path):
    src = tmp_path / "yolo"
    _image(src / "images/a.jpg", 20, 20)
    (src / "labels").mkdir(parents=True)
    (src / "labels/a.txt").write_text("0 0.5 0.5 0.1 0.1\n4 0.5 0.5 0.1 0.1\n")
    (src / "classes.txt").write_text("only\n")
    r = cli("data", "convert", src, "--format", "yolo", "--out", tmp_path / "o.json")
    assert r.exit_code == 2 and "a.txt:2: class index 4 is outside 0..0" in r.output


def test_csv_rows_and_empty_images(cli, tmp_path):
    _image(tmp_path / "data/imgs/a.png", 100, 80)
    _image(tmp_path / "data/imgs/b.png", 40, 30)
    (tmp_path / "data/boxes.csv").write_text(
        "image_path,xmin,ymin,xmax,ymax,label\n"
        "imgs/a.png,10,20,30,50,zebra\n"
        "imgs/a.png,0.5,1.5,99.5,79,ant\n"
        "imgs/b.png,,,,,\n")
    out = tmp_path / "converted/all.json"
    r = cli("data", "convert", tmp_path / "data/boxes.csv", "--format", "csv", "--out", out)
    assert r.exit_code == 0, r.output
    data, anns = _load(out)
    assert data["categories"] == [{"id": 1, "name": "ant"}, {"id": 2, "name": "zebra"}]
    assert [(im["file_name"], im["width"], im["height"]) for im in data["images"]] == \
        [("../data/imgs/a.png", 100, 80), ("../data/imgs/b.png", 40, 30)]
    assert anns[1]["bbox"] == [10.0, 20.0, 20.0, 30.0] and anns[1]["category_id"] == 2
    assert anns[2]["bbox"] == [0.5, 1.5, 99.0, 77.5] and anns[2]["category_id"] == 1

    (tmp_path / "data/bad.csv").write_text("imgs/a.png,1,2,3,,cat\n")
    r = cli("data", "convert", tmp_path / "data/bad.csv", "--format", "csv", "--out", out)
    assert r.exit_code == 2 and "bad.csv:1: give all of xmin,ymin,xmax,ymax,label" in r.output


def test_coco_normalised_and_never_over_input(cli, tmp_path):
    _image(tmp_path / "ds/val/a.png", 32, 24)
    _image(tmp_path / "ds/val/b.png", 10, 12)
    src = tmp_path / "ds/annotations/instances_val.json"
    src.parent.mkdir(parents=True)
    src.write_text(json.dumps({
        "images": [{"id": "a", "file_name": "a.png", "width": 32, "height": 24},
                   {"id": "b", "file_name": "b.png"}],
        "annotations": [{"id": 10, "image_id": "b", "category_id": 4, "bbox": [1, 2, 3, 4]}],
        "categories": [{"id": 4, "name": "thing"}]}))
    out = tmp_path / "canon/val.json"
    r = cli("data", "convert", src, "--format", "coco", "--out", out)
    assert r.exit_code == 0, r.output
    data, anns = _load(out)
    assert [(im["id"], im["file_name"], im["width"], im["height"]) for im in data["images"]] \
        == [(1, "../ds/val/a.png", 32, 24), (2, "../ds/val/b.png", 10, 12)]
    assert anns[10] == {"id": 10, "image_id": 2, "category_id": 4, "bbox": [1, 2, 3, 4],
                        "iscrowd": 0, "area": 12.0}
    before = src.read_bytes()
    r = cli("data", "convert", src, "--format", "coco", "--out", src)
    assert r.exit_code == 2 and "same file as the input" in r.output
    assert src.read_bytes() == before


def _class_counts(path):
    data = json.loads(path.read_text())
    counts = {}
    for a in data["annotations"]:
        counts[a["category_id"]] = counts.get(a["category_id"], 0) + 1
    return [(c["id"], c["name"], counts.get(c["id"], 0)) for c in data["categories"]]


@pytest.fixture
def labelled(tmp_path):
    """A flat labelImg folder: 2 car, 1 truck, 1 van, 1 person."""
    src = tmp_path / "labelled"
    _image(src / "a.png", 64, 48)
    _image(src / "b.png", 64, 48)
    (src / "a.xml").write_text(_voc_xml("a.png", 64, 48, [
        ("car", (1, 1, 10, 10), 0, 0), ("truck", (11, 11, 30, 30), 0, 0),
        ("person", (31, 1, 40, 20), 0, 0)]))
    (src / "b.xml").write_text(_voc_xml("b.png", 64, 48, [
        ("van", (1, 1, 20, 20), 0, 0), ("car", (21, 21, 40, 40), 0, 0)]))
    return src


def test_map_merges_and_renames_voc_classes_numbered_in_sorted_order(cli, labelled, tmp_path):
    out = tmp_path / "o.json"
    r = cli("data", "convert", labelled, "-f", "voc", "--map", "truck=lorry,van=lorry",
            "--map", "person=pedestrian", "--out", out)
    assert r.exit_code == 0, r.output
    # sorted new names (the old ones were car, person, truck, van)
    assert _class_counts(out) == [(1, "car", 2), (2, "lorry", 2), (3, "pedestrian", 1)]
    data = json.loads(out.read_text())
    by_box = sorted((a["image_id"], a["bbox"][0], a["category_id"]) for a in data["annotations"])
    assert by_box == [(1, 0.0, 1), (1, 10.0, 2), (1, 30.0, 3), (2, 0.0, 2), (2, 20.0, 1)]
    # with --classes (old names) the new classes follow that order
    r = cli("data", "convert", labelled, "-f", "voc", "--classes", "van,person,car,truck",
            "--map", "truck=vehicle,van=vehicle", "--out", out)
    assert r.exit_code == 0, r.output
    assert _class_counts(out) == [(1, "vehicle", 2), (2, "person", 1), (3, "car", 2)]


def test_one_class_makes_one_category(cli, labelled, tmp_path):
    out = tmp_path / "o.json"
    r = cli("data", "convert", labelled, "-f", "voc", "--one-class", "object", "--out", out)
    assert r.exit_code == 0, r.output
    assert _class_counts(out) == [(1, "object", 5)]


def test_mapped_voc_names_drop_the_devkit_numbering(cli, tmp_path):
    src = tmp_path / "voc"
    _image(src / "a.png", 64, 48)
    (src / "a.xml").write_text(_voc_xml("a.png", 64, 48, [
        ("motorbike", (1, 1, 10, 10), 0, 0), ("bicycle", (11, 11, 20, 20), 0, 0),
        ("person", (21, 1, 30, 10), 0, 0)]))
    out = tmp_path / "o.json"
    r = cli("data", "convert", src, "-f", "voc", "--out", out)
    assert r.exit_code == 0 and len(_class_counts(out)) == 20  # the devkit's 20, unmapped
    r = cli("data", "convert", src, "-f", "voc", "--map", "motorbike=bicycle", "--out", out)
    assert r.exit_code == 0, r.output
    counts = _class_counts(out)
    assert len(counts) == 19 and counts[:2] == [(1, "aeroplane", 0), (2, "bicycle", 2)]
    assert ("person", 1) in [(n, k) for _, n, k in counts]


def test_map_on_yolo_csv_and_coco_keeps_each_formats_numbering(cli, tmp_path):
    src = tmp_path / "yolo"
    _image(src / "images/x.jpg", 64, 48)
    (src / "labels").mkdir(parents=True)
    (src / "labels/x.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.2 0.2 0.1 0.1\n"
                                      "2 0.8 0.8 0.1 0.1\n2 0.7 0.3 0.1 0.1\n")
    (src / "classes.txt").write_text("cat\ndog\nfox\n")
    out = tmp_path / "y.json"
    r = cli("data", "convert", src, "-f", "yolo", "--map", "fox=dog", "--out", out)
    assert r.exit_code == 0, r.output
    assert _class_counts(out) == [(1, "cat", 1), (2, "dog", 3)]
    r = cli("data", "convert", src, "-f", "yolo", "--map", "cat=feline", "--out", out)
    assert _class_counts(out) == [(1, "feline", 1), (2, "dog", 1), (3, "fox", 2)]

    _image(tmp_path / "c/a.png", 50, 50)
    (tmp_path / "c/boxes.csv").write_text("a.png,1,1,5,5,zebra\na.png,6,6,9,9,bee\n"
                                          "a.png,10,10,20,20,ant\n")
    r = cli("data", "convert", tmp_path / "c/boxes.csv", "-f", "csv", "--map", "bee=ant",
            "--out", out)
    assert r.exit_code == 0 and _class_counts(out) == [(1, "ant", 2), (2, "zebra", 1)]

    coco = tmp_path / "coco/ann.json"
    _image(tmp_path / "coco/a.png", 50, 50)
    coco.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 50, "height": 50}],
        "annotations": [{"id": i, "image_id": 1, "category_id": c, "bbox": [i, i, 5, 5]}
                        for i, c in ((1, 4), (2, 9), (3, 2), (4, 9))],
        "categories": [{"id": 4, "name": "thing", "supercategory": "x"},
                       {"id": 9, "name": "other"}, {"id": 2, "name": "stuff"}]}))
    r = cli("data", "convert", coco, "-f", "coco", "--map", "other=thing", "--out", out)
    assert r.exit_code == 0, r.output
    assert _class_counts(out) == [(4, "thing", 3), (2, "stuff", 1)]
    assert json.loads(out.read_text())["categories"][0]["supercategory"] == "x"


def test_map_refusals_name_the_known_classes(cli, labelled, tmp_path):
    out = tmp_path / "o.json"
    for args, match in ((("--map", "lorry=vehicle"), "--map names class(es) lorry that"),
                        (("--map", "truck"), "OLD=NEW pairs"),
                        (("--map", "truck=a,truck=b"), "two new names"),
                        (("--map", "truck=a", "--one-class", "x"), "not both")):
        r = cli("data", "convert", labelled, "-f", "voc", *args, "--out", out)
        assert r.exit_code == 2 and match in r.output and "Traceback" not in r.output, r.output
    r = cli("data", "convert", labelled, "-f", "voc", "--map", "lorry=vehicle", "--out", out)
    assert "its classes: car, person, truck, van" in " ".join(r.output.split())
    assert not out.exists()
