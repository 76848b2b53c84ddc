"""Checkpoints are atomic and verified: corrupt, truncated or unfinished ones are refused."""

import pytest
import torch

from jobs import checkpoint
from jobs.checkpoint import CheckpointError


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((4, 4), value)}, "epoch": int(value)}


def test_round_trip_with_digest_sidecar(tmp_path):
    path = checkpoint.save(tmp_path, _state(1.0), epoch=1, step=0)
    assert path.name == "ckpt-e00001-s000000.pt"
    sidecar = path.with_name(path.name + ".sha256").read_text().split()
    assert sidecar == [checkpoint.sha256_file(path), path.name]
    loaded = checkpoint.load(path)
    assert torch.equal(loaded["model"]["w"], torch.full((4, 4), 1.0))
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_sidecar"])
def test_damaged_checkpoint_is_refused_and_the_previous_one_used(tmp_path, damage):
    checkpoint.save(tmp_path, _state(1.0), epoch=1, step=0)
    newest = checkpoint.save(tmp_path, _state(2.0), epoch=2, step=0)
    if damage == "truncate":
        newest.write_bytes(newest.read_bytes()[:100])
    elif damage == "flip":
        raw = bytearray(newest.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        newest.write_bytes(bytes(raw))
    else:
        newest.with_name(newest.name + ".sha256").unlink()
    with pytest.raises(CheckpointError, match=newest.name):
        checkpoint.load(newest)
    path, state, refused = checkpoint.load_latest(tmp_path)
    assert path.name == "ckpt-e00001-s000000.pt" and state["epoch"] == 1
    assert len(refused) == 1 and newest.name in refused[0]


def test_keeps_the_newest_few(tmp_path):
    for epoch in range(1, 6):
        checkpoint.save(tmp_path, _state(float(epoch)), epoch=epoch, step=0, keep=2)
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["ckpt-e00004-s000000.pt", "ckpt-e00005-s000000.pt"]
    assert len(list(tmp_path.glob("*.sha256"))) == 2


def test_mid_epoch_checkpoints_sort_after_the_epoch_start(tmp_path):
    checkpoint.save(tmp_path, _state(1.0), epoch=3, step=0)
    checkpoint.save(tmp_path, _state(2.0), epoch=3, step=17)
    path, state, _ = checkpoint.load_latest(tmp_path)
    assert path.name == "ckpt-e00003-s000017.pt" and state["epoch"] == 2


def test_a_pickled_object_is_not_executed(tmp_path):
    # weights_only=True: a checkpoint carrying arbitrary objects is refused, not unpickled.
    path = tmp_path / checkpoint.checkpoint_name(1, 0)
    torch.save({"model": {}, "evil": object()}, path)
    digest = checkpoint.sha256_file(path)
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    with pytest.raises(CheckpointError, match="unreadable"):
        checkpoint.load(path)
