"""Atomic, verified checkpoints.

Each checkpoint is written to a temporary file, fsynced and renamed into place; its sha256
goes into a sidecar file written the same way after it. Loading checks the digest before
``torch.load(weights_only=True)``, so a truncated or corrupt file is refused, never unpickled.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

import resnest

log = logging.getLogger(__name__)
NAME = re.compile(r"^ckpt-e(\d{5})-s(\d{6})\.pt$")


class CheckpointError(Exception):
    """A checkpoint that cannot be trusted; the message names the file and why."""


def checkpoint_name(epoch: int, step: int) -> str:
    """``epoch`` is the epoch in progress, ``step`` the steps of it already done."""
    return f"ckpt-e{epoch:05d}-s{step:06d}.pt"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save(folder: Path, state: dict[str, Any], epoch: int, step: int, keep: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / checkpoint_name(epoch, step)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    atomic_write(path, data)
    # The sidecar lands after the checkpoint: a checkpoint without one is an unfinished write.
    atomic_write(_sidecar(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode())
    _prune(folder, keep)
    return path


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _prune(folder: Path, keep: int) -> None:
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        _sidecar(old).unlink(missing_ok=True)
        old.unlink(missing_ok=True)


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if NAME.match(p.name))


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint after checking its digest; raise CheckpointError if it fails."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    sidecar = _sidecar(path)
    if not sidecar.is_file():
        raise CheckpointError(f"{path}: no {sidecar.name} beside it (unfinished write?)")
    expected = (sidecar.read_text().split() or [""])[0]
    if sha256_file(path) != expected:
        raise CheckpointError(f"{path}: sha256 mismatch (corrupt or truncated)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable: {exc}") from None


def load_latest(folder: Path, map_location: str | torch.device = "cpu"):
    """The newest checkpoint that verifies, and the ones refused on the way, with reasons."""
    refused: list[str] = []
    for path in reversed(list_checkpoints(folder)):
        try:
            return path, load(path, map_location), refused
        except CheckpointError as exc:
            log.warning("refusing checkpoint: %s", exc)
            refused.append(str(exc))
    return None, None, refused


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_source(path: Path) -> dict[str, Any]:
    """The state a job starts from: a checkpoint file, or a job folder's latest valid one."""
    if path.is_dir():
        _, state, refused = load_latest(path / "checkpoints")
        if state is None:
            why = f" ({'; '.join(refused)})" if refused else ""
            raise CheckpointError(f"{path}: no valid checkpoint in {path / 'checkpoints'}{why}")
        return state
    return load(path)


def model_from(state: dict[str, Any], weights: dict[str, Any] | None = None) -> resnest.ResNeSt:
    """The network a saved state describes (its ``model_name``, ``num_classes`` and ``stem``,
    as checkpoints and an export's ``model.json`` hold them), with its weights: ``weights``,
    else the state's own ``model``. In eval mode; a caller that trains sets ``train()``."""
    model = resnest.create(
        state["model_name"], num_classes=state["num_classes"], stem=state.get("stem") or None
    )
    model.load_state_dict(state["model"] if weights is None else weights)
    return model.eval()
