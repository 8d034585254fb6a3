import errno
import os
import pickle

import pytest
import torch

from frcnn_cli.checkpoint import load_checkpoint, save_checkpoint
from frcnn_cli.errors import CheckpointError, FrcnnError


def _ckpt():
    return {"model": {"backbone.w": torch.arange(6.0).reshape(2, 3), "rpn.b": torch.ones(2)},
            "meta": {"iteration": 7, "classes": [{"name": "cat", "id": 3}]}}


def test_round_trip(tmp_path):
    path = save_checkpoint(_ckpt(), tmp_path / "a.pt")
    got = load_checkpoint(path)
    assert torch.equal(got["model"]["backbone.w"], torch.arange(6.0).reshape(2, 3))
    assert got["meta"] == {"iteration": 7, "classes": [{"name": "cat", "id": 3}]}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


class _Payload:
    """Unpickling this object would create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "meta": {}, "x": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="not safe to load"):
        load_checkpoint(path)
    assert not marker.exists()
    # a raw pickle file, not a torch zip, is refused the same way
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_truncated_file(tmp_path):
    path = save_checkpoint(_ckpt(), tmp_path / "a.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a PyTorch file"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"hello world", b"PK\x03\x04garbage"])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_wrong_kind_of_dict(tmp_path):
    path = tmp_path / "opt.pt"
    torch.save({"state": {}, "param_groups": []}, path)
    with pytest.raises(CheckpointError, match="not an frcnn checkpoint"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_disk_full_keeps_previous(tmp_path, monkeypatch):
    path = save_checkpoint(_ckpt(), tmp_path / "last.pt")
    before = path.read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(FrcnnError, match="no space left on device.*intact"):
        save_checkpoint({"model": {}, "meta": {}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
