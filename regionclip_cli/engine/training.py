"""Pieces of the training loop shared by pretrain and finetune.

- `DistributedContext`: set up from torchrun's environment (gloo on CPU, nccl on CUDA), or a
  single process when launched plainly.
- `lr_at` / `build_optimizer`: the paper's schedule — linear warmup, then ×gamma at each step.
- `save_state` / `load_state`: atomic checkpoints of plain tensors (weights_only loadable) holding
  everything an exact resume needs: model, optimizer, iteration.
- `StopRequest`: SIGINT/SIGTERM finish the current step, save, and exit.
- `MetricsLog`: metrics as JSON Lines, appended and flushed as they come.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from regionclip_cli.core.atomic import atomic_path
from regionclip_cli.modeling.checkpoints import read_torch_file
from regionclip_cli.core.errors import RegionclipError


@dataclass
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def any(self, flag: bool) -> bool:
        """True if `flag` is true on any process."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(value)
        return bool(value.item() > 0)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over processes, left on the device (no wait for the result)."""
        if not self.enabled:
            return tensor
        tensor = tensor.clone()
        torch.distributed.all_reduce(tensor)
        return tensor

    def all_any(self, flag: torch.Tensor) -> torch.Tensor:
        """A 0-d bool tensor: true if `flag` is true on any process (left on the device)."""
        return self.all_sum(flag.to(torch.int32)) > 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group torchrun set up (WORLD_SIZE > 1), else run as a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(0, 1, device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return DistributedContext(rank, world_size, device)


def lr_at(iteration: int, base_lr: float, warmup_iterations: int, warmup_factor: float,
          steps: Iterable[int], gamma: float) -> float:
    """detectron2's WarmupMultiStepLR: linear warmup from base×factor, then ×gamma per passed step."""
    lr = base_lr * gamma ** sum(1 for s in steps if iteration >= s)
    if iteration < warmup_iterations:
        alpha = iteration / warmup_iterations
        lr *= warmup_factor * (1 - alpha) + alpha
    return lr


def build_optimizer(params: list[torch.nn.Parameter], name: str, lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def save_state(path: Path, *, model_state: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               iteration: int, metadata: dict[str, Any]) -> None:
    """An exact-resume checkpoint: model, optimizer and the number of finished iterations."""
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
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_state(path: Path) -> dict[str, Any]:
    payload = read_torch_file(path, "training-state checkpoint")
    if not isinstance(payload, dict) or payload.get("kind") != "training-state":
        raise RegionclipError(f"{path}: not a training-state checkpoint (written by pretrain/finetune)")
    return payload


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (then saves and exits)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.signal is not None


class MetricsLog:
    """Append-only JSON Lines; on resume, lines past the resumed iteration are dropped first."""

    def __init__(self, path: Path, resume_from: int | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_from is None:
            path.write_text("")
        elif path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("iteration", 0) <= resume_from]
            with atomic_path(path) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept))

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
