"""What a training task is, and what the engine hands it (`Runtime`).

A task owns its models, data and losses; the engine owns the loop around it (optimiser, lr,
precision, gradient clipping, DDP, checkpoints, metrics, stop signal, progress). See
/work/notes/ENGINE.md for a worked example.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import torch

from regionclip_cli.engine.distributed import DistributedContext, init_distributed


@runtime_checkable
class Task(Protocol):
    """One kind of training run (pretrain, finetune), driven by `engine.loop.Trainer`.

    - `description`: the progress bar's label; `artefact`: the file name of `export`'s output.
    - `loss_weights`: the loss terms of `step` and their weights; the engine backpropagates
      sum(weight × term). Other entries of `step`'s dict are logged, not trained on.
    - `parameters()`: every trainable tensor (the optimiser's and clipping's).
    - `batch(iteration)`: this process's share of the global batch at `iteration`. Called in a
      background thread one iteration ahead, so it must only read the task's models; it must be
      a pure function of `iteration` for exact resume and for N processes to equal one.
    - `step(batch)`: forward pass -> {name: 0-d tensor}. Each value is this process's share,
      scaled so that the mean over processes is the global-batch value (then DDP's gradient
      average is the global gradient: see `DistributedContext.global_mean`). No backward, no
      optimiser, no `.item()`: the engine reads everything back once per step.
    - `state_dict()` / `load_state_dict()`: the trainable state a checkpoint holds.
    - `metadata()`: plain JSON-ready values stored in every checkpoint (model name, recipe, ...).
    - `export(path, iterations)`: write the finished artefact (e.g. a CLIP checkpoint).
    """

    description: str
    artefact: str
    loss_weights: Mapping[str, float]

    def parameters(self) -> list[torch.nn.Parameter]: ...

    def batch(self, iteration: int) -> Any: ...

    def step(self, batch: Any) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def metadata(self) -> dict[str, Any]: ...

    def export(self, path: Path, iterations: int) -> None: ...


def autocast_dtype_for(amp: str, device: torch.device) -> torch.dtype | None:
    """`train.amp` as a dtype: auto is bf16 on CUDA and off elsewhere (CPU autocast is slow)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16


@dataclass
class Runtime:
    """Where and how a task runs: its process group, device and autocast precision."""

    dist: DistributedContext
    autocast_dtype: torch.dtype | None = None

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for the model's forward passes; losses run outside it, in fp32."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def distribute(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` wrapped in DistributedDataParallel when several processes run, else itself.

        The task calls the returned module for its trainable forward pass, so DDP's gradient
        hooks fire; its parameters stay those of `module`.
        """
        if not self.dist.enabled:
            return module
        device = self.device
        return torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)

    def close(self) -> None:
        self.dist.close()


def start_runtime(device: torch.device, amp: str = "off") -> Runtime:
    """Join torchrun's process group if there is one, and fix the autocast precision."""
    dist = init_distributed(device)
    return Runtime(dist, autocast_dtype_for(amp, dist.device))
