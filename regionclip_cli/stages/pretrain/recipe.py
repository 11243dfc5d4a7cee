"""The pretraining recipe: every setting of `regionclip pretrain`, typed and checked up front.

Defaults are the paper's RN50 settings (PAPER_NOTES.md, "Pretraining setup"); the shipped
`recipes/` override what differs (the synthetic world trains a tiny model for minutes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional


@dataclass(frozen=True)
class TeacherSpec:
    """The frozen CLIP teacher: open_clip name + pretrained tag, or a local weights file."""

    model: str = "RN50"
    pretrained: Optional[str] = None
    weights: Optional[Path] = None


@dataclass(frozen=True)
class StudentSpec:
    """The student visual encoder; initialised from the teacher unless weights are given."""

    weights: Optional[Path] = None
    freeze_at: int = 2  # 1: stem frozen; 2: stem + layer1 frozen (the paper's FREEZE_AT 2)

    def __post_init__(self) -> None:
        if not 0 <= self.freeze_at <= 5:
            raise ValueError("student.freeze_at must be between 0 (train all) and 5 (freeze all)")


@dataclass(frozen=True)
class DataSpec:
    """Images and their captions: a captions JSONL ({"file": ..., "captions": [...]}) or COCO captions JSON."""

    images: Path
    captions: Path


@dataclass(frozen=True)
class ProposalSpec:
    source: Literal["random", "file"] = "random"
    file: Optional[Path] = None  # boxes file when source is "file" (same formats as zeroshot --boxes)
    regions_per_image: int = 100
    grid: int = 8
    min_size: int = 16

    def __post_init__(self) -> None:
        if self.source == "file" and self.file is None:
            raise ValueError("proposals.file is required when proposals.source is 'file'")
        if self.regions_per_image < 1:
            raise ValueError("proposals.regions_per_image must be at least 1")


@dataclass(frozen=True)
class PseudoLabelRecipe:
    threshold: float = 0.1
    precomputed: Optional[Path] = None  # a folder written by `regionclip pseudolabel`; else on the fly


@dataclass(frozen=True)
class LossRecipe:
    """Weights of the three losses (0 switches one off) and the student's temperature."""

    region_concept: float = 1.0
    distillation: float = 1.0
    image_text: float = 1.0
    temperature: float = 0.01

    def __post_init__(self) -> None:
        if min(self.region_concept, self.distillation, self.image_text) < 0:
            raise ValueError("loss weights must be >= 0")
        if self.region_concept == self.distillation == self.image_text == 0:
            raise ValueError("all loss weights are 0: nothing to train")


@dataclass(frozen=True)
class OptimizerRecipe:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iterations: int = 1000
    warmup_factor: float = 0.001
    steps: list[int] = field(default_factory=lambda: [300000, 525000])
    gamma: float = 0.1
    clip_grad_norm: Optional[float] = 5.0


@dataclass(frozen=True)
class TrainRecipe:
    iterations: int = 600000
    batch_size: int = 96  # global: split evenly over the processes of a torchrun launch
    min_size: int = 800
    max_size: int = 1333
    hflip: bool = True
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, off on CPU
    channels_last: bool = False
    seed: int = 0
    checkpoint_every: int = 5000
    log_every: int = 20
    loader_workers: int = 2

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError("train.iterations and train.batch_size must be at least 1")
        if self.max_size < self.min_size:
            raise ValueError("train.max_size must be >= train.min_size")


@dataclass(frozen=True)
class PretrainRecipe:
    teacher: TeacherSpec
    concepts: Path  # concept_embeddings.pt written by `regionclip concepts` for the teacher
    data: DataSpec
    student: StudentSpec = field(default_factory=StudentSpec)
    proposals: ProposalSpec = field(default_factory=ProposalSpec)
    pseudo_labels: PseudoLabelRecipe = field(default_factory=PseudoLabelRecipe)
    losses: LossRecipe = field(default_factory=LossRecipe)
    optimizer: OptimizerRecipe = field(default_factory=OptimizerRecipe)
    train: TrainRecipe = field(default_factory=TrainRecipe)
    output: Path = Path("runs/pretrain")
    device: str = "auto"


def input_files(recipe: PretrainRecipe) -> list[tuple[str, Path]]:
    """(key, path) of every file or folder the recipe needs, to check before any work starts."""
    files = [("concepts", recipe.concepts), ("data.images", recipe.data.images),
             ("data.captions", recipe.data.captions)]
    optional = [("teacher.weights", recipe.teacher.weights), ("student.weights", recipe.student.weights),
                ("proposals.file", recipe.proposals.file),
                ("pseudo_labels.precomputed", recipe.pseudo_labels.precomputed)]
    return files + [(key, path) for key, path in optional if path is not None]
