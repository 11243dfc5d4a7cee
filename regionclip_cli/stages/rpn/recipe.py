"""The RPN recipe: the backbone, anchors/matching/NMS, data (base boxes only) and schedule.

Defaults are detectron2's C4 RPN (`modeling.rpn.RPNConfig`) on the CLIP trunk the recipe names;
labels are ignored, only the boxes of `data.train_splits` are used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from regionclip_cli.engine.config import OptimizerConfig, TrainConfig
from regionclip_cli.modeling.rpn import RPNConfig
from regionclip_cli.stages.finetune.data import DetectionDataConfig


@dataclass(frozen=True)
class TrunkConfig:
    """The CLIP whose frozen trunk (stem → layer3) carries the RPN (rpn.backbone: clip)."""

    model: Optional[str] = None  # null: the model a weights checkpoint names, else RN50
    pretrained: Optional[str] = None
    weights: Optional[Path] = None


@dataclass(frozen=True)
class RPNOptimizerConfig(OptimizerConfig):
    lr: float = 0.02  # detectron2's base lr for batch 16
    warmup_iterations: int = 1000
    steps: list[int] = field(default_factory=lambda: [60000, 80000])
    clip_grad_norm: Optional[float] = None


@dataclass(frozen=True)
class RPNTrainConfig(TrainConfig):
    iterations: int = 90000
    batch_size: int = 16


@dataclass(frozen=True)
class RPNTrainingConfig:
    data: DetectionDataConfig
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    recall_at: list[int] = field(default_factory=lambda: [100, 300, 1000])
    optimizer: RPNOptimizerConfig = field(default_factory=RPNOptimizerConfig)
    train: RPNTrainConfig = field(default_factory=RPNTrainConfig)
    output: Path = Path("runs/rpn")
    device: str = "auto"


def input_files(recipe: RPNTrainingConfig) -> list[tuple[str, Path]]:
    data = recipe.data
    files = [("data.train.annotations", data.train.annotations), ("data.train.images", data.train.images)]
    if data.test is not None:
        files += [("data.test.annotations", data.test.annotations), ("data.test.images", data.test.images)]
    if recipe.trunk.weights is not None:
        files.append(("trunk.weights", recipe.trunk.weights))
    return files
