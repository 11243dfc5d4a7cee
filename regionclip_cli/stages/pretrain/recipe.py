"""The pretraining recipe: every setting of `regionclip pretrain`, typed and checked up front.

Defaults are the paper's RN50 settings (PAPER_NOTES.md, "Pretraining setup"); the built-in
recipes (regionclip_cli/recipes/, `regionclip pretrain --show-recipe NAME`) override what differs
(the synthetic world trains a tiny model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from regionclip_cli.engine.config import OptimizerConfig, TrainConfig


@dataclass(frozen=True)
class TeacherConfig:
    """The frozen CLIP teacher: open_clip name + pretrained tag, or a local weights file.

    `min_size`/`max_size` let the teacher see each training image at its own size (resized from
    the original, after the same flip), the student's regions scaled to match: a CLIP names small
    regions better at a larger input, so its pseudo labels improve while the student still learns
    at the size it is used at. Null: the student's input (`train.min_size`/`max_size`), as the
    original.
    """

    model: str = "RN50"
    pretrained: Optional[str] = None
    weights: Optional[Path] = None
    min_size: Optional[int] = None
    max_size: Optional[int] = None

    def __post_init__(self) -> None:
        if (self.min_size is None) != (self.max_size is None):
            raise ValueError("teacher.min_size and teacher.max_size are set together (or both null)")
        if self.min_size is not None and not 0 < self.min_size <= self.max_size:
            raise ValueError("teacher.max_size must be >= teacher.min_size > 0")

    @property
    def own_input(self) -> bool:
        return self.min_size is not None


@dataclass(frozen=True)
class StudentConfig:
    """The student visual encoder; initialised from the teacher unless weights are given."""

    weights: Optional[Path] = None
    freeze_at: int = 2  # 1: stem frozen; 2: stem + layer1 frozen (the paper's FREEZE_AT 2)

    def __post_init__(self) -> None:
        if not 0 <= self.freeze_at <= 5:
            raise ValueError("student.freeze_at must be between 0 (train all) and 5 (freeze all)")


@dataclass(frozen=True)
class DataConfig:
    """Images and their captions: a captions JSONL ({"file": ..., "captions": [...]}) or COCO captions JSON."""

    images: Path
    captions: Path


@dataclass(frozen=True)
class ProposalsConfig:
    """Where the regions come from: random boxes on a grid, a boxes file, or a frozen RPN run on
    each training image (the paper's: an RPN trained on other data's base boxes, NMS 0.5, 300
    proposals kept, `regions_per_image` (100) sampled among them at random)."""

    source: Literal["random", "file", "rpn"] = "random"
    file: Optional[Path] = None  # boxes file when source is "file" (same formats as zeroshot --boxes)
    rpn: Optional[Path] = None  # RPN checkpoint written by `regionclip rpn` when source is "rpn"
    rpn_nms_threshold: float = 0.5
    rpn_candidates: int = 300  # proposals kept after NMS, of which regions_per_image are sampled
    regions_per_image: int = 100
    grid: int = 8
    min_size: int = 16

    def __post_init__(self) -> None:
        if self.source == "file" and self.file is None:
            raise ValueError("proposals.file is required when proposals.source is 'file'")
        if self.source == "rpn" and self.rpn is None:
            raise ValueError("proposals.rpn (a checkpoint written by `regionclip rpn`) is required when "
                             "proposals.source is 'rpn'")
        if self.rpn_candidates < 1:
            raise ValueError("proposals.rpn_candidates must be at least 1")
        if not 0 < self.rpn_nms_threshold <= 1:
            raise ValueError("proposals.rpn_nms_threshold must be in (0, 1]")
        if self.regions_per_image < 1:
            raise ValueError("proposals.regions_per_image must be at least 1")


@dataclass(frozen=True)
class PseudoLabelsConfig:
    """A region joins the region-concept loss if the teacher's top-1 probability exceeds
    `threshold`; where no region of a loss group does, all of the group's regions join."""

    threshold: float = 0.1
    precomputed: Optional[Path] = None  # a folder written by `regionclip pseudolabel`; else on the fly
    # pool: every concept of the pool may name a region (the original). captions: only the
    # concepts that the image's own captions mention (where they mention none, the whole pool).
    # A precomputed folder must have been labelled the same way (`pseudolabel --captions`).
    candidates: Literal["pool", "captions"] = "pool"


@dataclass(frozen=True)
class LossesConfig:
    """Weights of the three losses (0 switches one off), the student's temperature, and scopes.

    group_images: images per loss group. The original trains 3 images per GPU (96 on 32 GPUs) and
    takes, within each GPU's batch, the region-concept candidates, the "keep all when none pass"
    fallback and the means of both region losses, then averages the per-GPU means. Here groups of
    `group_images` consecutive images of the global batch play that part, whatever the number of
    processes (null: the whole global batch is one group). Default 3: the setting the paper's
    results come from; a batch that is not a multiple leaves a smaller last group.
    distillation_regions: `kept` distils on the regions that pass the pseudo-label threshold,
    as the original (clip_rcnn.py:584-594, filtered at :659); `all` on every proposed region.
    """

    region_concept: float = 1.0
    distillation: float = 1.0
    image_text: float = 1.0
    temperature: float = 0.01
    group_images: Optional[int] = 3
    distillation_regions: Literal["kept", "all"] = "kept"

    def __post_init__(self) -> None:
        if min(self.region_concept, self.distillation, self.image_text) < 0:
            raise ValueError("loss weights must be >= 0")
        if self.region_concept == self.distillation == self.image_text == 0:
            raise ValueError("all loss weights are 0: nothing to train")
        if self.group_images is not None and self.group_images < 1:
            raise ValueError("losses.group_images must be at least 1 (or null: the whole batch)")


@dataclass(frozen=True)
class PretrainTrainConfig(TrainConfig):
    """The engine's loop settings plus pretraining's input pipeline."""

    min_size: int = 800
    max_size: int = 1333
    hflip: bool = True
    channels_last: bool = False
    loader_workers: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_size < self.min_size:
            raise ValueError("train.max_size must be >= train.min_size")


@dataclass(frozen=True)
class PretrainConfig:
    teacher: TeacherConfig
    concepts: Path  # concept_embeddings.pt written by `regionclip concepts` for the teacher
    data: DataConfig
    student: StudentConfig = field(default_factory=StudentConfig)
    proposals: ProposalsConfig = field(default_factory=ProposalsConfig)
    pseudo_labels: PseudoLabelsConfig = field(default_factory=PseudoLabelsConfig)
    losses: LossesConfig = field(default_factory=LossesConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: PretrainTrainConfig = field(default_factory=PretrainTrainConfig)
    output: Path = Path("runs/pretrain")
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.pseudo_labels.precomputed is not None and self.proposals.source == "rpn":
            raise ValueError("pseudo_labels.precomputed brings its own regions; proposals.source 'rpn' "
                             "cannot be combined with it (set proposals.source=random, or label RPN boxes "
                             "with `regionclip pseudolabel --boxes`)")


# Settings a resumed run may take from a changed recipe (besides the engine's).
RESUMABLE_CHANGES = ("train.loader_workers", "output")


def input_files(recipe: PretrainConfig) -> list[tuple[str, Path]]:
    """(key, path) of every file or folder the recipe needs, to check before any work starts."""
    files = [("concepts", recipe.concepts), ("data.images", recipe.data.images),
             ("data.captions", recipe.data.captions)]
    optional = [("teacher.weights", recipe.teacher.weights), ("student.weights", recipe.student.weights),
                ("proposals.file", recipe.proposals.file if recipe.proposals.source == "file" else None),
                ("proposals.rpn", recipe.proposals.rpn if recipe.proposals.source == "rpn" else None),
                ("pseudo_labels.precomputed", recipe.pseudo_labels.precomputed)]
    return files + [(key, path) for key, path in optional if path is not None]
