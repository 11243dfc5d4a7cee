"""Pretraining batches: this process's images of the global batch, augmented, with their regions.

Everything random (flip, caption, random boxes, which file boxes) is drawn from a generator seeded
by (seed, iteration, position in the global batch), so a batch is a pure function of the
iteration: resumed runs and any number of processes see exactly the data of one uninterrupted
process (data/captions.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from regionclip_cli.data.captions import CaptionedImage, global_batch_indices, sample_generator
from regionclip_cli.data.images import (PRETRAINING_INTERPOLATION, ResizeConfig, load_image, pad_batch,
                                        resize_for_model, to_model_tensor)
from regionclip_cli.data.proposals import BoxFile, RandomBoxConfig, random_boxes, sanitize_boxes
from regionclip_cli.data.pseudolabel_shards import PrecomputedLabels
from regionclip_cli.stages.concepts.mentions import CaptionMentions
from regionclip_cli.stages.pretrain.recipe import ProposalsConfig, PretrainTrainConfig, TeacherConfig


@dataclass
class RegionLabels:
    """Per region: pseudo label (index into the pool), its probability, and whether it passed the
    threshold (before the per-group "keep all when none pass" fallback)."""

    labels: torch.Tensor
    scores: torch.Tensor
    passed: torch.Tensor


@dataclass
class Batch:
    iteration: int
    positions: list[int]  # each image's position in the global batch
    images: torch.Tensor  # [B, 3, H, W] padded, normalised
    regions: list[torch.Tensor]  # per image [R, 4] in input pixels
    whole: list[torch.Tensor]  # per image [1, 4] whole-image box, input pixels
    captions: list[str]
    labels: RegionLabels | None = None  # read from a `pseudolabel` folder, else computed on the fly
    mentioned: list[torch.Tensor] | None = None  # per image, the pool concepts its captions name
    teacher_images: torch.Tensor | None = None  # the teacher's own input (`teacher.min_size`), else None
    teacher_scales: list[float] | None = None  # per image, teacher input pixels per student input pixel

    def teacher_regions(self, regions: list[torch.Tensor]) -> list[torch.Tensor]:
        """`regions` (student input pixels) in the teacher's input pixels."""
        if self.teacher_scales is None:
            return regions
        return [boxes * scale for boxes, scale in zip(regions, self.teacher_scales)]


def _passed(row: dict, threshold: float) -> bool:
    """Whether a stored region passed the threshold its labels were made with. The file's `keep`
    also holds `pseudolabel`'s per-image "keep all when none pass"; training decides that
    fallback per loss group instead, so it is taken out here."""
    return bool(row["keep"]) and float(row["score"]) > threshold


class BatchBuilder:
    """Builds the images at `positions` of the global batch (decoded in `loader_workers` threads)."""

    def __init__(self, items: list[CaptionedImage], positions: range, *, train: PretrainTrainConfig,
                 proposals: ProposalsConfig, mean, std, precomputed: PrecomputedLabels | None = None,
                 mentions: CaptionMentions | None = None, teacher: TeacherConfig = TeacherConfig()):
        self.items = items
        self.positions = positions
        self.train = train
        self.proposals = proposals
        self.mean, self.std = mean, std
        self.resize = ResizeConfig(train.min_size, train.max_size, interpolation=PRETRAINING_INTERPOLATION)
        self.teacher_resize = ResizeConfig(teacher.min_size, teacher.max_size,
                                           interpolation=PRETRAINING_INTERPOLATION) if teacher.own_input else None
        self.box_file = BoxFile(proposals.file) if proposals.source == "file" else None
        self.precomputed = precomputed
        self.mentions = mentions
        self.random_spec = RandomBoxConfig(count=proposals.regions_per_image, grid=proposals.grid,
                                           min_size=proposals.min_size, seed=train.seed)
        self.problems: list[str] = []
        workers = train.loader_workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="regionclip-data") if workers > 0 else None

    def _regions(self, item: CaptionedImage, width: int, height: int, key: str,
                 generator: torch.Generator) -> torch.Tensor:
        if self.proposals.source == "rpn":  # proposed on the augmented image, in the step
            return torch.zeros((0, 4))
        if self.box_file is None:
            return random_boxes(width, height, self.random_spec, key=key)
        boxes, problems = sanitize_boxes(self.box_file.entry_for(item.path).boxes, width, height,
                                         str(item.path))
        self.problems.extend(problems)
        count = self.proposals.regions_per_image
        if len(boxes) > count:
            boxes = boxes[torch.randperm(len(boxes), generator=generator)[:count]]
        return boxes

    def _precomputed(self, item: CaptionedImage, generator: torch.Generator) -> tuple[torch.Tensor, RegionLabels]:
        record = self.precomputed.for_image(item.path)
        threshold = float(self.precomputed.settings["threshold"])
        rows = record["regions"]
        count = self.proposals.regions_per_image
        if len(rows) > count:
            rows = [rows[i] for i in torch.randperm(len(rows), generator=generator)[:count].tolist()]
        boxes = torch.tensor([r["box"] for r in rows], dtype=torch.float32).reshape(-1, 4)
        labels = RegionLabels(torch.tensor([r["concept_index"] for r in rows], dtype=torch.long),
                              torch.tensor([r["score"] for r in rows], dtype=torch.float32),
                              torch.tensor([_passed(r, threshold) for r in rows], dtype=torch.bool))
        return boxes, labels

    def _sample(self, iteration: int, position: int, index: int):
        train = self.train
        item = self.items[index]
        generator = sample_generator(train.seed, iteration, position)
        original = load_image(item.path)
        width, height = original.size
        labels = None
        if self.precomputed is not None:
            boxes, labels = self._precomputed(item, generator)
        else:
            boxes = self._regions(item, width, height, f"{iteration}:{position}", generator)
        if train.hflip and bool(torch.rand((), generator=generator) < 0.5):
            original = original.transpose(0)  # PIL FLIP_LEFT_RIGHT
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        resized, scale = resize_for_model(original, self.resize)
        caption = item.captions[int(torch.randint(len(item.captions), (), generator=generator))]
        whole = torch.tensor([[0.0, 0.0, resized.width, resized.height]])
        teacher = None
        if self.teacher_resize is not None:
            teacher_view, teacher_scale = resize_for_model(original, self.teacher_resize)
            teacher = (to_model_tensor(teacher_view, self.mean, self.std), teacher_scale / scale)
        return to_model_tensor(resized, self.mean, self.std), boxes * scale, whole, caption, labels, teacher

    def build(self, iteration: int) -> Batch:
        """Decode, augment and propose for this process's images of the batch at `iteration`."""
        train = self.train
        indices = global_batch_indices(len(self.items), train.batch_size, iteration, train.seed)
        jobs = [(iteration, position, indices[position]) for position in self.positions]
        if self._pool is None:
            samples = [self._sample(*job) for job in jobs]
        else:
            samples = list(self._pool.map(lambda job: self._sample(*job), jobs))
        tensors, regions, whole, captions, labels, teacher = (list(column) for column in zip(*samples))
        labels = [x for x in labels if x is not None]
        joined = None
        if labels:
            joined = RegionLabels(*(torch.cat([getattr(x, f) for x in labels]) for f in ("labels", "scores", "passed")))
        mentioned = None if self.mentions is None else self.mentions.for_images([index for *_, index in jobs])
        batch = Batch(iteration, list(self.positions), pad_batch(tensors), regions, whole, captions, joined, mentioned)
        if self.teacher_resize is not None:
            batch.teacher_images = pad_batch([view for view, _ in teacher])
            batch.teacher_scales = [scale for _, scale in teacher]
        return batch
