"""Write the checkpoints and outputs that tests/test_old_checkpoints.py compares against.

Run once, on the code whose behaviour the test pins (it was run on main 98f431e, before the
model package became one detector for one map or many):

    python tests/data/make_old_checkpoints.py

For each of the recipes ``shapes`` (one stride-16 map) and ``shapes-fpn`` (a pyramid): a model
with random weights from a fixed seed, BatchNorm statistics and prediction layers spread (as
tests/random_weights.py does) so that scores are distinct, saved as an ordinary checkpoint
(``tests/data/old-RECIPE.pt``, ``model.head_dim`` and ``rpn.channels`` shrunk to keep it
small); and what it gives
on three fixed images of different sizes (``tests/data/old-outputs.pt``): detections at score
threshold 0 with their proposals, image by image and as one batch, detections on given
proposals, and the training losses of one batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/random_weights.py
sys.path.insert(0, str(HERE.parents[1]))  # the checkout

from random_weights import spread_weights  # noqa: E402

from frcnn_cli import build_model  # noqa: E402
from frcnn_cli.checkpoint import checkpoint_meta, save_checkpoint  # noqa: E402
from frcnn_cli.config import load_recipe  # noqa: E402

SMALL = ["model.head_dim=16", "rpn.channels=32"]  # the tiny stack itself is 1.7 MB
RECIPES = {"shapes": SMALL, "shapes-fpn": SMALL}
SIZES = [(90, 140), (200, 150), (256, 256)]  # (height, width): resized up, up, not at all


def images() -> list[torch.Tensor]:
    """Smooth random uint8 images (low-resolution noise upsampled), so maps vary in space."""
    g = torch.Generator().manual_seed(11)
    out = []
    for h, w in SIZES:
        coarse = torch.rand(1, 3, h // 8, w // 8, generator=g)
        smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[0]
        noise = torch.rand(3, h, w, generator=g) * 0.2
        out.append(((smooth * 0.8 + noise) * 255).round().to(torch.uint8))
    return out


def targets() -> list[dict[str, torch.Tensor]]:
    """Objects for the training losses, in each image's pixels (the third image has none)."""
    return [{"boxes": torch.tensor([[10.0, 12, 70, 80], [60, 5, 130, 60]]),
             "labels": torch.tensor([1, 2])},
            {"boxes": torch.tensor([[20.0, 30, 120, 190]]), "labels": torch.tensor([3])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]


GIVEN = [torch.tensor([[5.0, 5, 60, 70], [30, 20, 130, 85], [0, 0, 140, 90]]),
         torch.tensor([[10.0, 10, 100, 150], [50, 60, 140, 190]]),
         torch.tensor([[0.0, 0, 32, 32], [40, 40, 250, 250], [100, 20, 180, 230]])]


def spread(model: torch.nn.Module) -> None:
    spread_weights(model, torch.Generator().manual_seed(1))


def outputs(model: torch.nn.Module) -> dict:
    """What the test recomputes: the model in eval mode first, then one training step's
    losses (BatchNorm in training mode, the samplers seeded)."""
    ims = images()
    model.eval()
    with torch.inference_mode():
        single = [model.detect([im], score_thresh=0.0, return_proposals=True)[0] for im in ims]
        batch = model.detect(ims, score_thresh=0.0, return_proposals=True)
        given = model.detect(ims, GIVEN, score_thresh=0.0)
    model.train()
    torch.manual_seed(3)
    losses = model([im.float() / 255 for im in ims], targets())
    model.eval()
    return {"single": single, "batch": batch, "given": given,
            "losses": {k: v.detach() for k, v in losses.items()}}


def main() -> None:
    torch.set_num_threads(1)  # the test runs on one thread too: the same summation order
    result = {"torch": str(torch.__version__), "cpu": torch.backends.cpu.get_cpu_capability(),
              "images": images()}
    for name, overrides in RECIPES.items():
        torch.manual_seed(0)
        model = build_model(load_recipe(name, overrides), 3)
        spread(model)
        model.eval()
        save_checkpoint({"model": model.state_dict(), "meta": checkpoint_meta(model, 0, "joint")},
                        HERE / f"old-{name}.pt")
        result[name] = outputs(model)
    torch.save(result, HERE / "old-outputs.pt")


if __name__ == "__main__":
    main()
