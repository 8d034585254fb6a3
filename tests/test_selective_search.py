"""Selective Search proposals: the OpenCV install, boxes, order, determinism, workers, size cap."""

import subprocess
import sys
import threading
import types

import numpy as np
import pytest

from frcnn_cli.data.annotations import load_annotations
from frcnn_cli.data.images import opencv, read_image
from frcnn_cli.errors import FrcnnError, InputError
from frcnn_cli.proposals import search as ss
from frcnn_cli.proposals.search import (
    MAX_PROPOSALS,
    contrib_fix_command,
    rank_scores,
    selective_search,
    selective_search_dataset,
)


def test_install_has_contrib_opencv_and_albumentations_works():
    # albumentations pulls opencv-python-headless and we add the contrib wheel: both install
    # cv2, and the environment must end with the contrib build (see pyproject.toml).
    cv2 = opencv()
    assert hasattr(cv2.ximgproc.segmentation, "createSelectiveSearchSegmentation")
    from frcnn_cli.data.augment import Augmentation

    shift = Augmentation([{"name": "Affine", "translate_px": {"x": 10, "y": 0}, "p": 1.0}])
    image = np.zeros((80, 100, 3), np.uint8)
    image[20:40, 10:30] = 255
    out, boxes, labels, index = shift(image, np.array([[10, 20, 30, 40]], np.float32),
                                      np.array([1]), np.random.default_rng(0))
    np.testing.assert_allclose(boxes, [[20, 20, 40, 40]])
    assert out[30, 35].tolist() == [255, 255, 255] and out[30, 15].tolist() == [0, 0, 0]


@pytest.fixture(scope="module")
def val(shapes_data):
    return load_annotations(shapes_data / "val.json")


def _opencv_boxes(image: np.ndarray) -> np.ndarray:
    """OpenCV's own fast-mode ranking of an image, as x1 y1 x2 y2."""
    cv2 = opencv()
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.ascontiguousarray(image[:, :, ::-1]))
    search.switchToSelectiveSearchFast()
    ss._seed_c_rand(ss.SEED)
    rects = np.asarray(search.process()).reshape(-1, 4)
    return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)


def test_boxes_inside_best_first_and_the_same_every_time(val):
    for im in val.images[:4]:
        image = read_image(val.image_path(im))
        h, w = image.shape[:2]
        boxes = selective_search(image)
        assert boxes.dtype == np.float32 and boxes.shape[1] == 4 and len(boxes) >= 1
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert len(np.unique(boxes, axis=0)) == len(boxes)
        # OpenCV's order (x, y, w, h -> x, y, x + w, y + h), whatever it computed before
        np.testing.assert_array_equal(boxes, _opencv_boxes(image)[:MAX_PROPOSALS])
        np.testing.assert_array_equal(selective_search(image), boxes)
    # the whole image is the last merge of every hierarchy: its box spans [0, W] x [0, H]
    assert [0, 0, w, h] in boxes.tolist()


def test_max_proposals_keeps_the_best_and_quality_finds_more(val):
    image = read_image(val.image_path(val.images[2]))
    every = selective_search(image, max_proposals=None)
    np.testing.assert_array_equal(selective_search(image, max_proposals=5), every[:5])
    quality = selective_search(image, mode="quality")
    assert len(quality) > len(every)
    np.testing.assert_array_equal(selective_search(image, mode="quality"), quality)


def test_large_image_is_searched_shrunk_and_boxes_come_back_to_its_pixels():
    cv2 = opencv()
    rng = np.random.default_rng(1)
    image = rng.integers(90, 110, (900, 1200, 3), dtype=np.uint8)
    image[100:500, 200:700] = (200, 30, 30)
    image[450:850, 800:1100] = (30, 30, 200)
    boxes = selective_search(image, max_side=300)
    small = cv2.resize(image, (300, 225), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(boxes, selective_search(small, max_side=None) * 4)
    assert [0, 0, 1200, 900] in boxes.tolist()
    # the two squares, found at a quarter of the size: multiples of 4 around their edges
    assert np.abs(boxes - [200, 100, 700, 500]).max(axis=1).min() <= 4
    # an image no larger than max_side is searched as it is
    np.testing.assert_array_equal(selective_search(small, max_side=300),
                                  selective_search(small, max_side=None))


def test_a_thread_calling_rand_does_not_reorder_the_boxes(val, monkeypatch):
    """OpenCV ranks regions with C's rand(), which onnxruntime's thread also draws from once
    it is imported: in such a process the search runs in a process of its own."""
    image = read_image(val.image_path(val.images[0]))
    monkeypatch.setattr(ss, "RAND_THREAD_MODULES", ("sys",))  # as with onnxruntime imported
    quiet = selective_search(image)
    c_rand, stop = ss._c_library().rand, threading.Event()

    def draw() -> None:  # OpenCV lets go of the GIL while it searches
        while not stop.is_set():
            c_rand()

    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    try:
        noisy = [selective_search(image) for _ in range(3)]
    finally:
        stop.set()
        thread.join()
    for boxes in noisy:
        np.testing.assert_array_equal(boxes, quiet)


def test_propose_never_imports_onnxruntime(shapes_data, tmp_path):
    """The command that searches a dataset runs the search in its own process."""
    run = ("import sys; from typer.testing import CliRunner; from frcnn_cli.cli.app import app; "
           "r = CliRunner().invoke(app, ['propose', '--method', 'selective-search', '--data', "
           f"{str(shapes_data / 'val.json')!r}, '--out', {str(tmp_path / 'ss.pt')!r}]); "
           "assert r.exit_code == 0, r.output; print('onnxruntime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.split()[-1] == "False", out.stdout + out.stderr


def test_dataset_in_workers_equals_one_process(val, tmp_path):
    one = selective_search_dataset(val, workers=1)
    two = selective_search_dataset(val, workers=2)
    assert one.image_ids == two.image_ids == [im["id"] for im in val.images]
    for image_id, im in zip(one.image_ids, val.images, strict=True):
        boxes, scores = one.proposals[image_id]
        np.testing.assert_array_equal(boxes.numpy(), two.proposals[image_id][0].numpy())
        np.testing.assert_array_equal(boxes.numpy(),
                                      selective_search(read_image(val.image_path(im))))
        np.testing.assert_array_equal(scores.numpy(), rank_scores(len(boxes)))
    assert rank_scores(3).tolist() == pytest.approx([1, 1 / 2, 1 / 3])
    assert len(one.seconds) == len(val.images) and all(s > 0 for s in one.seconds)
    assert one.meta["method"] == "selective-search" and one.meta["mode"] == "fast"
    assert one.meta["seconds_per_image"] == pytest.approx(np.mean(one.seconds))

    from frcnn_cli.proposals.files import read_raw, save_proposals

    path = save_proposals(one.proposals, val.images, tmp_path / "ss.pt", one.meta)
    back = read_raw(path)
    assert back["meta"]["mode"] == "fast" and back["counts"].tolist() == [
        len(one.proposals[i][0]) for i in one.image_ids]


def test_bad_options_are_input_errors(val):
    image = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(InputError, match="fast, quality"):
        selective_search(image, mode="slow")
    with pytest.raises(InputError, match="at least 1"):
        selective_search(image, max_proposals=0)
    with pytest.raises(InputError, match="uint8"):
        selective_search(np.zeros((16, 16), np.uint8))
    with pytest.raises(InputError, match="workers"):
        selective_search_dataset(val, workers=0)


@pytest.mark.parametrize("broken", ["missing", "stubs only"])
def test_plain_opencv_build_names_the_fix(monkeypatch, broken):
    cv2 = opencv()
    if broken == "missing":
        monkeypatch.delattr(cv2, "ximgproc")
    else:  # what a plain wheel installed over the contrib one leaves: an empty namespace
        monkeypatch.setattr(cv2, "ximgproc", types.ModuleType("cv2.ximgproc"))
    with pytest.raises(FrcnnError) as caught:
        selective_search(np.zeros((16, 16, 3), np.uint8))
    message = str(caught.value)
    assert "\n" not in message and message.endswith(contrib_fix_command())
    assert "-m pip install --force-reinstall --no-deps opencv-contrib-python-headless==" \
        in message
