"""Training-state checkpoints: everything an exact resume needs, as plain tensors.

Written atomically (temp file + rename), so a run killed at any moment leaves the previous
checkpoint intact, and loadable with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from regionclip_cli.core.atomic import atomic_path
from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.modeling.checkpoints import read_torch_file


def save_state(path: Path, *, model_state: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               iteration: int, metadata: dict[str, Any], scaler: torch.amp.GradScaler | None = None) -> None:
    """Model, optimizer (and fp16 loss scaler) state and the number of finished iterations."""
    payload = {
        "format": "regionclip",
        "version": 1,
        "kind": "training-state",
        "model": metadata.get("model", ""),
        "state_dict": {k: v.detach().cpu() for k, v in model_state.items()},
        "optimizer": optimizer.state_dict(),
        "iteration": iteration,
        "metadata": metadata,
    }
    if scaler is not None and scaler.is_enabled():
        payload["scaler"] = scaler.state_dict()
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_state(path: Path) -> dict[str, Any]:
    payload = read_torch_file(path, "training-state checkpoint")
    if not isinstance(payload, dict) or payload.get("kind") != "training-state":
        raise RegionclipError(f"{path}: not a training-state checkpoint (written by pretrain/finetune)")
    return payload
