"""Checkpoints written before the model package became one detector (one anchor generator, RPN,
pooler and RoI head for one map or many) still load, and give bit for bit the detections,
proposals and training losses they gave then (tests/data/make_old_checkpoints.py wrote them,
on main 98f431e): a ``shapes`` model (one stride-16 map) and a ``shapes-fpn`` one (a pyramid).
"""

from pathlib import Path

import pytest
import torch

from frcnn_cli import load_model

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def old():
    import sys

    sys.path.insert(0, str(DATA))
    import make_old_checkpoints

    sys.path.remove(str(DATA))
    return make_old_checkpoints, torch.load(DATA / "old-outputs.pt", weights_only=True)


def _same(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.keys() == e.keys()
        for key in e:
            assert torch.equal(g[key], e[key]), key


@pytest.mark.parametrize("name", ["shapes", "shapes-fpn"])
def test_old_checkpoints_give_the_same_detections_proposals_and_losses(name, old, one_thread):
    script, saved = old
    if (saved["torch"], saved["cpu"]) != (str(torch.__version__),
                                          torch.backends.cpu.get_cpu_capability()):
        # another torch or instruction set sums convolutions in another order
        pytest.skip(f"outputs recorded with torch {saved['torch']} on {saved['cpu']}")
    assert all(torch.equal(a, b) for a, b in zip(script.images(), saved["images"], strict=True))
    model = load_model(DATA / f"old-{name}.pt")
    got, expected = script.outputs(model), saved[name]
    assert sum(len(d["boxes"]) for d in expected["single"]) >= 100  # enough to mean something
    for part in ("single", "batch", "given"):
        _same(got[part], expected[part])
    assert got["losses"].keys() == expected["losses"].keys()
    for key, value in expected["losses"].items():
        assert torch.equal(got["losses"][key], value), key
