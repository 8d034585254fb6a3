"""The data loader: images at their own size, flips, proposals, filtering, seeded resumable
batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn_cli.config import load_recipe
from frcnn_cli.data.annotations import Annotations, load_annotations
from frcnn_cli.data.dataset import DetectionDataset, build_train_loader
from frcnn_cli.data.sampler import TrainingSampler
from frcnn_cli.errors import RecipeError


def _recipe(*overrides):
    return load_recipe(None, ["input.min_size=100", "input.max_size=300", *overrides])


@pytest.fixture
def tiny(tmp_path):
    """One 100x50 image: a red block at x 10..30, y 5..15, and a difficult object."""
    pixels = np.zeros((50, 100, 3), np.uint8)
    pixels[5:15, 10:30] = (255, 0, 0)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    images = [{"id": 7, "file_name": "a.png", "width": 100, "height": 50}]
    anns = [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 5, 20, 10]},
            {"id": 2, "image_id": 7, "category_id": 9, "bbox": [60, 20, 10, 10], "difficult": 1},
            {"id": 3, "image_id": 7, "category_id": 9, "bbox": [90, 40, 30, 30]}]  # clipped
    cats = [{"id": 9, "name": "b"}, {"id": 3, "name": "a"}]
    return Annotations(images, anns, cats, tmp_path)


def _red_columns(image):
    red = (image[0] > 127) & (image[1] < 128)
    cols = np.nonzero(red.any(0).numpy())[0]
    rows = np.nonzero(red.any(1).numpy())[0]
    return cols.min(), cols.max() + 1, rows.min(), rows.max() + 1


def test_test_mode_keeps_the_file_size_and_every_object(tiny):
    image, target = DetectionDataset(tiny, _recipe(), train=False)[0]
    # the model resizes (min_size 100 would double it): the loader hands over the file
    assert image.shape == (3, 50, 100) and image.dtype == torch.uint8
    assert target["orig_size"] == (50, 100) and "scale" not in target
    assert target["image_id"] == 7 and target["flipped"] is False
    assert target["boxes"].tolist() == [[10, 5, 30, 15], [60, 20, 70, 30], [90, 40, 100, 50]]
    assert target["labels"].tolist() == [1, 2, 2]  # category 3 -> label 1, 9 -> 2
    assert target["difficult"].tolist() == [False, True, False]
    x0, x1, y0, y1 = _red_columns(image)
    assert (x0, x1, y0, y1) == (10, 30, 5, 15)


def test_training_flip_drops_difficult_and_moves_boxes_with_pixels(tiny):
    ds = DetectionDataset(tiny, _recipe("augment.hflip=1.0"), train=True)
    image, target = ds[(0, 123)]
    assert target["flipped"] is True
    assert target["labels"].tolist() == [1, 2]  # the difficult object is left out
    assert target["boxes"].tolist() == [[70, 5, 90, 15], [0, 40, 10, 50]]
    assert _red_columns(image) == (70, 90, 5, 15)
    with_difficult = DetectionDataset(tiny, _recipe("augment.hflip=0.0",
                                                    "data.use_difficult=true"), train=True)
    _, target = with_difficult[(0, 1)]
    assert target["flipped"] is False and target["labels"].tolist() == [1, 2, 2]


def test_crowd_boxes_are_ignore_regions_in_training_moved_with_the_pixels(tiny):
    crowd = {"id": 4, "image_id": 7, "category_id": 3, "bbox": [20, 0, 20, 10], "iscrowd": 1,
             "tile_cut": 1}
    tiny = Annotations(tiny.images, [*tiny.annotations, crowd], tiny.categories, tiny.root)
    ds = DetectionDataset(tiny, _recipe("augment.hflip=1.0"), train=True)
    _, target = ds[(0, 123)]
    assert target["labels"].tolist() == [1, 2]  # not an object
    assert target["ignore"].dtype == torch.float32
    assert target["ignore"].tolist() == [[60, 0, 80, 10]]  # x 20..40 flipped in 100 px
    recipe = _recipe("augment.hflip=0.0",
                     "augment.extra=[{name: Affine, translate_px: {x: [7, 7], y: [0, 0]}, "
                     "p: 1.0}]")
    _, target = DetectionDataset(tiny, recipe, train=True)[(0, 3)]
    assert target["ignore"][0].tolist() == pytest.approx([27, 0, 47, 10], abs=1e-3)
    # data.use_crowd trains on them as objects; test mode keeps them as flagged objects
    _, target = DetectionDataset(tiny, _recipe("data.use_crowd=true"), train=True)[(0, 1)]
    assert target["labels"].tolist() == [1, 2, 1] and target["ignore"].shape == (0, 4)
    _, target = DetectionDataset(tiny, _recipe(), train=False)[0]
    assert target["iscrowd"].tolist() == [False, False, False, True] and "ignore" not in target


def test_proposals_follow_the_flip(tiny):
    props = {7: np.array([[0, 0, 10, 10], [50, 25, 100, 50]], np.float32)}
    ds = DetectionDataset(tiny, _recipe("augment.hflip=1.0"), train=True, proposals=props)
    _, target = ds[(0, 5)]
    assert target["proposals"].dtype == torch.float32
    assert target["proposals"].tolist() == [[90, 0, 100, 10], [0, 25, 50, 50]]


def test_extra_augmentation_is_seeded_per_sample(tiny):
    recipe = _recipe("augment.extra=[{name: RandomBrightnessContrast, p: 1.0}]")
    ds = DetectionDataset(tiny, recipe, train=True)
    a, b, c = ds[(0, 11)][0], ds[(0, 11)][0], ds[(0, 12)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(RecipeError, match="did you mean 'RandomBrightnessContrast'"):
        DetectionDataset(tiny, _recipe("augment.extra=[{name: RandomBrightnesContrast}]"),
                         train=True)


def test_sampler_resume_and_shards_match_an_uninterrupted_run():
    groups = np.array([0, 1] * 10 + [0] * 7)
    full = TrainingSampler(27, 2, seed=3, group_ids=groups, world_size=2, rank=0)
    other = TrainingSampler(27, 2, seed=3, group_ids=groups, world_size=2, rank=1)
    stream, stream1 = iter(full), iter(other)
    first = [next(stream) for _ in range(40)]
    second = [next(stream1) for _ in range(40)]
    resumed = iter(TrainingSampler(27, 2, seed=3, group_ids=groups, world_size=2,
                                   rank=0, start_iter=25))
    assert [next(resumed) for _ in range(15)] == first[25:]
    for a, b in zip(first, second, strict=True):
        batch = [i for i, _ in a + b]
        assert len({int(groups[i]) for i in batch}) == 1  # aspect-homogeneous global batch
    # every image is seen once per 27 images drawn, up to the group buffers' carry-over
    seen = [i for a, b in zip(first, second, strict=True) for i, _ in a + b]
    assert set(seen) == set(range(27))


def test_train_loader_is_reproducible_resumable_and_worker_independent(shapes_data):
    ann = load_annotations(shapes_data / "train.json")
    recipe = load_recipe("shapes", ["input.min_size=64", "input.max_size=64"])

    def batches(start_iter=0, workers=0, n=3):
        r = recipe.model_copy(deep=True)
        r.data.num_workers = workers
        it = iter(build_train_loader(ann, r, 2, seed=5, start_iter=start_iter))
        return [next(it) for _ in range(n)]

    plain = batches()
    for images, targets in plain:
        assert len(images) == 2 and images[0].shape == (3, 128, 128)  # the files' size
        for t in targets:
            assert t["boxes"].shape[1] == 4 and t["labels"].dtype == torch.int64
    for other in (batches(workers=1), batches(start_iter=1, n=2)):
        ref = plain[-len(other):]
        for (ia, ta), (ib, tb) in zip(ref, other, strict=True):
            assert all(torch.equal(x, y) for x, y in zip(ia, ib, strict=True))
            assert [t["image_id"] for t in ta] == [t["image_id"] for t in tb]
            assert [t["flipped"] for t in ta] == [t["flipped"] for t in tb]
            assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(ta, tb, strict=True))


def test_inference_images_shard_in_order(shapes_data):
    from frcnn_cli.inference.images import ImageSource

    source = ImageSource.of_dataset(load_annotations(shapes_data / "val.json"))
    ids = []
    for rank in (0, 1):
        for index in source.shard(rank, world_size=2):
            image, item, skipped = source[index]
            assert image.shape == (3, 128, 128) and image.dtype == torch.uint8  # the model
            assert skipped is None and image.is_contiguous()                    # resizes it
            ids.append(item.image_id)
    assert ids == [1, 3, 5, 7, 2, 4, 6, 8]


def test_geometric_augmentation_moves_boxes_and_proposals_with_pixels(tiny):
    recipe = _recipe("augment.hflip=0.0",
                     "augment.extra=[{name: Affine, translate_px: {x: [7, 7], y: [0, 0]}, "
                     "p: 1.0}]")
    props = {7: np.array([[0, 0, 10, 10]], np.float32)}
    image, target = DetectionDataset(tiny, recipe, train=True, proposals=props)[(0, 3)]
    assert _red_columns(image) == (17, 37, 5, 15)  # 10 + 7 .. 30 + 7
    assert target["boxes"][0].tolist() == pytest.approx([17, 5, 37, 15], abs=1e-3)
    assert target["proposals"][0].tolist() == pytest.approx([7, 0, 17, 10], abs=1e-3)
    # the clipped box at the right edge is pushed further out: cut to its visible part
    assert target["boxes"][1].tolist() == pytest.approx([97, 40, 100, 50], abs=1e-3)
    with pytest.raises(RecipeError, match=r"augment.extra\[0\] \(Affine\): bad 'scale'"):
        DetectionDataset(tiny, _recipe("augment.extra=[{name: Affine, scale: x}]"), train=True)


def test_starting_a_loader_leaves_the_global_random_state_alone(shapes_data):
    ann = load_annotations(shapes_data / "train.json")
    recipe = load_recipe("shapes", ["data.num_workers=0"])
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    next(iter(build_train_loader(ann, recipe, 2, seed=1)))
    assert torch.equal(torch.rand(3), expected)
