"""The engine's recipe sections, shared by every task (pretrain, finetune).

A task's recipe embeds these under the keys `optimizer` and `train`; a task that needs more
training settings (image sizes, flips, loader threads) subclasses `TrainConfig`. The engine reads
only the fields declared here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimiser and lr schedule: detectron2's WarmupMultiStepLR (linear warmup from
    lr × warmup_factor, then × gamma at each of `steps`) and gradient-norm clipping."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iterations: int = 1000
    warmup_factor: float = 0.001
    steps: list[int] = field(default_factory=lambda: [300000, 525000])
    gamma: float = 0.1
    clip_grad_norm: Optional[float] = 5.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError("optimizer.lr must be > 0")
        if self.warmup_iterations < 0:
            raise ValueError("optimizer.warmup_iterations must be >= 0")
        if list(self.steps) != sorted(self.steps):
            raise ValueError("optimizer.steps must be in increasing order")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ValueError("optimizer.clip_grad_norm must be > 0 (or null: no clipping)")


@dataclass(frozen=True)
class TrainConfig:
    """The loop: length, global batch, precision, and how often it logs and checkpoints."""

    iterations: int = 600000
    batch_size: int = 96  # global: split evenly over the processes of a torchrun launch
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, off elsewhere
    seed: int = 0
    checkpoint_every: int = 5000
    log_every: int = 20

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError("train.iterations and train.batch_size must be at least 1")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("train.checkpoint_every and train.log_every must be at least 1")


# Settings a resumed run may take from the new recipe: none changes what a step computes.
RESUMABLE_CHANGES = ("train.iterations", "train.checkpoint_every", "train.log_every", "device")


def schedule_warnings(train: TrainConfig, optimizer: OptimizerConfig) -> list[str]:
    """Schedules that do not fit the run length: legal, but rarely what was meant."""
    warnings = []
    if optimizer.warmup_iterations >= train.iterations:
        warnings.append(f"optimizer.warmup_iterations {optimizer.warmup_iterations} >= train.iterations "
                        f"{train.iterations}: the lr never reaches optimizer.lr {optimizer.lr:g}")
    late = [s for s in optimizer.steps if s >= train.iterations]
    if late:
        warnings.append(f"optimizer.steps {', '.join(map(str, late))} >= train.iterations {train.iterations}: "
                        "the lr is never lowered there")
    return warnings
