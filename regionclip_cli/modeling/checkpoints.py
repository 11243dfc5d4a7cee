"""Our checkpoint format: plain tensors plus plain metadata, loadable with `weights_only=True`.

A checkpoint is a dict `{"format": "regionclip", "version": 1, "kind": ..., "model": ...,
"state_dict": {name: tensor}, "metadata": {...}}`. `kind` says what the weights are ("clip" for a
whole CLIP model); `model` is the open_clip model name the state dict belongs to; metadata holds
only JSON-like values (recipe, vocabulary, recommended input sizes), so nothing in it can execute
code when loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from regionclip_cli.core.atomic import atomic_path
from regionclip_cli.core.errors import RegionclipError

FORMAT = "regionclip"
VERSION = 1


@dataclass
class Checkpoint:
    kind: str
    model: str
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> None:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "kind": checkpoint.kind,
        "model": checkpoint.model,
        "state_dict": {k: v.detach().cpu() for k, v in checkpoint.state_dict.items()},
        "metadata": checkpoint.metadata,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def is_regionclip_checkpoint(obj: object) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> object:
    """`torch.load(weights_only=True)` on CPU; a missing or unreadable file is one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise RegionclipError(f"{path}: no such {what} file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for files that are not its own
        raise RegionclipError(f"{path}: not a loadable {what} ({type(error).__name__})") from None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load one of our checkpoints; anything else is a one-line error naming the file."""
    return checkpoint_from_object(read_torch_file(path), path)


def checkpoint_from_object(obj: object, path: str | os.PathLike) -> Checkpoint:
    if not is_regionclip_checkpoint(obj):
        raise RegionclipError(f"{path}: not a regionclip checkpoint (no 'format': 'regionclip' key)")
    if obj.get("version") != VERSION:
        raise RegionclipError(
            f"{path}: checkpoint version {obj.get('version')!r} is not supported "
            f"(this regionclip reads version {VERSION})"
        )
    return Checkpoint(
        kind=str(obj.get("kind", "clip")),
        model=str(obj["model"]),
        state_dict=dict(obj["state_dict"]),
        metadata=dict(obj.get("metadata") or {}),
    )
