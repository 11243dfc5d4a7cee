"""The finetuning recipe: every setting of `regionclip finetune`, typed and checked up front.

Defaults are the original's COCO settings (PAPER_NOTES.md, "Finetuning"): batch 16, lr 0.002,
warmup 5,000, 90k iterations with steps at 60k and 80k. The built-in recipes
(regionclip_cli/recipes/finetune-*.yaml) set COCO, LVIS and the synthetic world.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from regionclip_cli.engine.config import OptimizerConfig, TrainConfig
from regionclip_cli.modeling.detector.model import DetectorConfig
from regionclip_cli.modeling.detector.postprocess import PostprocessConfig
from regionclip_cli.stages.finetune.data import DetectionDataConfig


@dataclass(frozen=True)
class BoxHeadConfig:
    """The CLIP whose image tower becomes the box head (and whose text tower embeds the
    vocabulary): a `pretrain` student.pt, a plain CLIP (open_clip tag or file), or world-tiny."""

    model: Optional[str] = None  # null: the model a weights checkpoint names, else RN50
    pretrained: Optional[str] = None
    weights: Optional[Path] = None
    freeze_at: int = 2  # stem + layer1 frozen, as the original (FREEZE_AT 2)

    def __post_init__(self) -> None:
        if not 0 <= self.freeze_at <= 5:
            raise ValueError("box_head.freeze_at must be between 0 (train all) and 5 (train only the attention pool)")


@dataclass(frozen=True)
class FinetuneOptimizerConfig(OptimizerConfig):
    """The engine's optimiser section with the original's finetuning defaults (no clipping)."""

    warmup_iterations: int = 5000
    steps: list[int] = field(default_factory=lambda: [60000, 80000])
    clip_grad_norm: Optional[float] = None


@dataclass(frozen=True)
class FinetuneTrainConfig(TrainConfig):
    iterations: int = 90000
    batch_size: int = 16


@dataclass(frozen=True)
class FinetuneConfig:
    data: DetectionDataConfig
    rpn: Path  # the frozen offline RPN: a checkpoint written by `regionclip rpn`
    box_head: BoxHeadConfig = field(default_factory=BoxHeadConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    test: PostprocessConfig = field(default_factory=PostprocessConfig)
    # null: all of data.vocabulary (base + novel); a split such as world:novel detects the novel
    # classes alone (OVR-CNN's target-only setting); or any --vocab value
    test_vocabulary: Optional[str] = None
    templates: str = "ensemble"  # prompts for the class names (as `zeroshot --templates`)
    optimizer: FinetuneOptimizerConfig = field(default_factory=FinetuneOptimizerConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    output: Path = Path("runs/finetune")
    device: str = "auto"


def input_files(recipe: FinetuneConfig) -> list[tuple[str, Path]]:
    """(key, path) of every file or folder the recipe needs, checked before any work starts."""
    data = recipe.data
    files = [("rpn", recipe.rpn), ("data.train.annotations", data.train.annotations),
             ("data.train.images", data.train.images)]
    if data.test is not None:
        files += [("data.test.annotations", data.test.annotations), ("data.test.images", data.test.images)]
    if recipe.box_head.weights is not None:
        files.append(("box_head.weights", recipe.box_head.weights))
    return files
