"""Region-level language-image pretraining (RegionCLIP, Sec. 3) as an engine task.

Per iteration, for this process's images of the global batch (`batches.py`):
1. regions: random boxes, boxes from a file, a frozen RPN or a `pseudolabel` folder, plus one
   whole-image box;
2. the frozen teacher encodes the regions; its best concept per region (of the pool, or of the
   concepts the image's captions name: `pseudo_labels.candidates`) is the pseudo label, kept if
   confident (else, where no region of a loss group passes, the whole group is kept);
3. the student encodes the same regions and the whole images in one pass;
4. losses (`pretraining_losses`): region-concept contrast within each loss group, concept
   distillation on the kept regions (or all), image-text contrast gathered over processes.

Every term is this process's share, scaled so that the mean over processes is the global value
and DDP's gradient average the global gradient: N processes train exactly as one.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from regionclip_cli.data.captions import CaptionedImage, rank_slice
from regionclip_cli.data.pseudolabel_shards import PrecomputedLabels
from regionclip_cli.engine.distributed import DistributedContext
from regionclip_cli.engine.recipe import to_plain
from regionclip_cli.engine.task import Runtime
from regionclip_cli.modeling.checkpoints import Checkpoint, save_checkpoint
from regionclip_cli.modeling.clip import LoadedClip
from regionclip_cli.modeling.freezing import (clip_state_template, freeze_batchnorm, freeze_stages,
                                              student_state_as_clip)
from regionclip_cli.modeling.losses import (concept_distillation, group_mean, image_text_contrastive,
                                            region_concept_contrastive)
from regionclip_cli.modeling.region_encoder import RegionEncoder, frozen_region_encoder
from regionclip_cli.stages.concepts.mentions import CaptionMentions, candidate_mask, pool_spacy_model
from regionclip_cli.stages.pretrain.batches import Batch, BatchBuilder, RegionLabels
from regionclip_cli.stages.pretrain.recipe import LossesConfig, PretrainConfig
from regionclip_cli.stages.pretrain.student import load_student_weights
from regionclip_cli.stages.pseudolabel.labeler import LabelRuleConfig, assign_pseudo_labels


@dataclass
class LossGroups:
    """Which loss group each of this process's regions, and each global candidate slot, is in.

    Candidates are laid out as `regions_per_image` slots per image of the global batch, in batch
    order (each process pads its images' labels to that bound), so every process builds the same
    layout without asking the others how many regions they have.
    """

    region_group: torch.Tensor  # [N] group of each local region
    slots: torch.Tensor  # [N] each local region's slot in this process's padded candidate block
    candidate_group: torch.Tensor  # [B x regions_per_image] group of each global candidate slot
    num_groups: int
    local_slots: int  # this process's block: its images x regions_per_image

    @classmethod
    def build(cls, positions: list[int], counts: list[int], *, regions_per_image: int, batch_size: int,
              group_images: int | None, device: torch.device) -> LossGroups:
        size = group_images or batch_size
        image_group = torch.tensor([p // size for p in positions], dtype=torch.long)
        counts_t = torch.tensor(counts, dtype=torch.long)
        region_group = image_group.repeat_interleave(counts_t)
        slots = torch.cat([torch.arange(c) + i * regions_per_image for i, c in enumerate(counts)]) \
            if counts else torch.zeros(0, dtype=torch.long)
        candidate_group = torch.arange(batch_size * regions_per_image) // regions_per_image // size
        return cls(region_group.to(device), slots.to(device), candidate_group.to(device),
                   math.ceil(batch_size / size), len(positions) * regions_per_image)

    def count(self, mask: torch.Tensor, dist: DistributedContext) -> torch.Tensor:
        """[num_groups] masked regions per group, over every process."""
        local = torch.zeros(self.num_groups, dtype=torch.float32, device=mask.device)
        return dist.all_sum(local.index_add(0, self.region_group, mask.float()))


def keep_by_group(passed: torch.Tensor, groups: LossGroups, dist: DistributedContext) -> torch.Tensor:
    """The regions that passed the threshold; in a group where none did, all of its regions
    (the original's rule, clip_rcnn.py:637-661, decided over one GPU's batch)."""
    any_passed = groups.count(passed, dist) > 0
    return passed | ~any_passed[groups.region_group]


def gather_candidates(labels: torch.Tensor, keep: torch.Tensor, groups: LossGroups,
                      dist: DistributedContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Every kept pseudo label of the global batch in slot layout, and which slots hold one."""
    padded = torch.full((groups.local_slots,), -1, dtype=labels.dtype, device=labels.device)
    padded[groups.slots] = torch.where(keep, labels, -1)
    everything = dist.all_gather(padded)
    return everything.clamp(min=0), everything >= 0


def pretraining_losses(student_regions: torch.Tensor, teacher_regions: torch.Tensor, concepts: torch.Tensor,
                       labels: torch.Tensor, keep: torch.Tensor, groups: LossGroups, config: LossesConfig,
                       dist: DistributedContext, student_whole: torch.Tensor | None = None,
                       captions: torch.Tensor | None = None, allowed: torch.Tensor | None = None
                       ) -> dict[str, torch.Tensor]:
    """This process's share of each loss term (weights not applied), for the terms with weight > 0.

    Region terms are means of per-group means (`group_mean`): region-concept over the kept
    regions, each against the kept labels of its own group; distillation over the kept regions
    (`distillation_regions: kept`) or all, towards the teacher's distribution over each region's
    `allowed` concepts (all when None). Image-text is CLIP's InfoNCE over the global batch.
    """
    tau, world = config.temperature, dist.world_size
    terms: dict[str, torch.Tensor] = {}
    if config.region_concept > 0:
        candidates, candidate_keep = gather_candidates(labels, keep, groups, dist)
        same_group = groups.region_group[:, None] == groups.candidate_group[None, :]
        per_region = region_concept_contrastive(student_regions, concepts, labels, tau, candidates, keep,
                                                candidate_keep[None, :] & same_group, reduction="none")
        terms["region_concept"] = world * group_mean(per_region, keep, groups.region_group, groups.count(keep, dist))
    if config.distillation > 0:
        mask = keep if config.distillation_regions == "kept" else torch.ones_like(keep)
        per_region = concept_distillation(student_regions, teacher_regions, concepts, tau, reduction="none",
                                          teacher_candidates=allowed)
        terms["distillation"] = world * group_mean(per_region, mask, groups.region_group, groups.count(mask, dist))
    if config.image_text > 0 and student_whole is not None:
        local = image_text_contrastive(student_whole, captions, tau)
        terms["image_text"] = dist.global_mean(local, len(student_whole))
    return terms


def check_candidates(settings: dict, recipe: PretrainConfig) -> None:
    """Precomputed labels must come from the candidates the recipe names (and the same captions)."""
    from regionclip_cli.core.errors import RegionclipError
    from regionclip_cli.data.pseudolabel_shards import candidates_setting

    folder = f"pseudo_labels.precomputed {recipe.pseudo_labels.precomputed}"
    made = settings.get("candidates", "pool")
    wanted = recipe.pseudo_labels.candidates
    if made.split(":", 1)[0] != wanted:
        hint = "`regionclip pseudolabel --captions`" if wanted == "captions" else "pseudo_labels.candidates: captions"
        raise RegionclipError(f"{folder}: labelled with candidates '{made.split(':', 1)[0]}', but "
                              f"pseudo_labels.candidates is '{wanted}' (use {hint})")
    if wanted == "captions" and made != candidates_setting(recipe.data.captions):
        raise RegionclipError(f"{folder}: labelled from other captions than data.captions {recipe.data.captions}")


class PretrainTask:
    """Teacher, student and concept pool of one pretraining run (an `engine.task.Task`)."""

    description = "pretrain"
    artefact = "student.pt"

    def __init__(self, recipe: PretrainConfig, runtime: Runtime, teacher: LoadedClip, concept_names: list[str],
                 concept_embeddings: torch.Tensor, items: list[CaptionedImage],
                 precomputed: PrecomputedLabels | None = None):
        self.recipe = recipe
        self.runtime = runtime
        device = runtime.device
        self.teacher = teacher
        for parameter in teacher.model.parameters():
            parameter.requires_grad_(False)
        self.concept_names = concept_names
        self.concepts = F.normalize(concept_embeddings.float(), dim=-1).to(device)
        self.clip_template = clip_state_template(teacher)
        losses = recipe.losses
        self.loss_weights = {"region_concept": losses.region_concept, "distillation": losses.distillation,
                             "image_text": losses.image_text}

        visual = copy.deepcopy(teacher.model.visual).requires_grad_(True)
        if recipe.student.weights is not None:
            load_student_weights(visual, recipe.student.weights)
        freeze_batchnorm(visual)
        freeze_stages(visual, recipe.student.freeze_at)
        self.student_visual = visual.to(device).train()
        # A student made from the teacher with its stem and layer1 frozen computes exactly the
        # teacher's layer1 features (when both see the same input), so it takes them from the
        # teacher's pass instead.
        self.shares_layer1 = (recipe.student.weights is None and recipe.student.freeze_at >= 2
                              and not recipe.teacher.own_input)
        self.teacher_encoder = frozen_region_encoder(teacher.model.visual)
        if recipe.train.channels_last:
            self.student_visual.to(memory_format=torch.channels_last)
            self.teacher_encoder.visual.to(memory_format=torch.channels_last)
        self.student_encoder = RegionEncoder(self.student_visual)
        self.student = runtime.distribute(self.student_encoder)
        self.rpn_regions = None
        if recipe.proposals.source == "rpn":
            from regionclip_cli.stages.pretrain.rpn_regions import RPNRegions

            self.rpn_regions = RPNRegions(recipe.proposals, teacher.mean, teacher.std, recipe.train.seed, device)
        positions = rank_slice(recipe.train.batch_size, runtime.dist.rank, runtime.dist.world_size)
        self.batches = BatchBuilder(items, positions, train=recipe.train, proposals=recipe.proposals,
                                    mean=teacher.mean, std=teacher.std, precomputed=precomputed,
                                    mentions=CaptionMentions(items, concept_names, pool_spacy_model(recipe.concepts))
                                    if recipe.pseudo_labels.candidates == "captions" else None,
                                    teacher=recipe.teacher)

    @classmethod
    def from_recipe(cls, recipe: PretrainConfig, runtime: Runtime, log: Callable[[str], None]) -> PretrainTask:
        """Load the teacher, the concept pool and the data the recipe names."""
        from regionclip_cli.data.captions import read_captioned_images
        from regionclip_cli.data.pseudolabel_shards import load_precomputed
        from regionclip_cli.modeling.clip import load_clip
        from regionclip_cli.modeling.text import check_matches, load_text_embeddings

        teacher_config = recipe.teacher
        teacher = load_clip(teacher_config.model, pretrained=teacher_config.pretrained,
                            weights=teacher_config.weights, device=runtime.device)
        pool = load_text_embeddings(recipe.concepts)
        check_matches(pool, teacher, origin=f"concepts {recipe.concepts}")
        data = read_captioned_images(recipe.data.images, recipe.data.captions)
        if data.images_without_captions or data.captions_without_images:
            log(f"data: {len(data.items)} captioned images; {data.images_without_captions} images "
                f"without captions and {data.captions_without_images} caption rows without images skipped")
        precomputed = None
        if recipe.pseudo_labels.precomputed is not None:
            precomputed = load_precomputed(recipe.pseudo_labels.precomputed, pool.names)
            check_candidates(precomputed.settings, recipe)
        return cls(recipe, runtime, teacher, pool.names, pool.embeddings, data.items, precomputed)

    # --- the Task protocol ---------------------------------------------------------------------

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.student_encoder.parameters() if p.requires_grad]

    def batch(self, iteration: int) -> Batch:
        return self.batches.build(iteration)

    @torch.no_grad()
    def _caption_embeddings(self, captions: list[str]) -> torch.Tensor:
        tokens = self.teacher.tokenizer(captions).to(self.runtime.device)
        return F.normalize(self.teacher.model.encode_text(tokens).float(), dim=-1)

    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        recipe, runtime = self.recipe, self.runtime
        device, dist = runtime.device, runtime.dist
        images = batch.images.to(device)
        if recipe.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        regions = [b.to(device) for b in batch.regions] if self.rpn_regions is None else \
            self.rpn_regions(images, batch.whole, batch.iteration, batch.positions)
        counts = [len(b) for b in regions]
        groups = LossGroups.build(batch.positions, counts, regions_per_image=recipe.proposals.regions_per_image,
                                  batch_size=recipe.train.batch_size, group_images=recipe.losses.group_images,
                                  device=device)
        teacher_images = images if batch.teacher_images is None else batch.teacher_images.to(device)
        if recipe.train.channels_last:
            teacher_images = teacher_images.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), runtime.autocast():
            layer1 = self.teacher_encoder.layer1(teacher_images)
            teacher_features = self.teacher_encoder.trunk(teacher_images, layer1)
            teacher_regions = F.normalize(
                self.teacher_encoder.pool(teacher_features, batch.teacher_regions(regions)).float(), dim=-1)
        labels = batch.labels
        allowed = None if batch.mentioned is None else \
            candidate_mask(batch.mentioned, counts, len(self.concept_names), device)
        if labels is None:
            rule = LabelRuleConfig(recipe.pseudo_labels.threshold, recipe.losses.temperature)
            # passed = above the threshold; the "keep all when none pass" fallback is per loss group below
            named = assign_pseudo_labels(teacher_regions, self.concepts, rule, candidates=allowed,
                                         any_kept=torch.ones_like)
            labels = RegionLabels(named.labels, named.scores, named.keep)
        labels = RegionLabels(labels.labels.to(device), labels.scores.to(device), labels.passed.to(device))
        keep = keep_by_group(labels.passed, groups, dist)
        with runtime.autocast():
            joint = [torch.cat([r, w.to(device)]) for r, w in zip(regions, batch.whole)]
            embeddings = F.normalize(
                self.student(images, joint, layer1_features=layer1 if self.shares_layer1 else None).float(), dim=-1)
        per_image = embeddings.split([c + 1 for c in counts])
        student_regions = torch.cat([e[:-1] for e in per_image])
        student_whole = torch.stack([e[-1] for e in per_image])
        captions = self._caption_embeddings(batch.captions) if recipe.losses.image_text > 0 else None
        terms = pretraining_losses(student_regions, teacher_regions, self.concepts, labels.labels, keep, groups,
                                   recipe.losses, dist, student_whole, captions, allowed)
        # Diagnostics: shares of global ratios, so their mean over processes is the global ratio.
        regions_total = dist.all_sum(torch.tensor(float(len(student_regions)), device=device)).clamp(min=1)
        share = dist.world_size / regions_total
        terms["kept_regions"] = keep.sum().float() * share
        terms["top1_prob"] = labels.scores.sum().float() * share
        return terms

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.student_visual.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.student_visual.load_state_dict(state)

    def metadata(self) -> dict[str, Any]:
        return {"model": self.teacher.name, "recipe": to_plain(self.recipe),
                "teacher_identity": self.teacher.identity, "concepts": self.concept_names}

    def export(self, path: Path, iterations: int) -> None:
        """The pretrained student as a whole CLIP checkpoint: `zeroshot --weights` loads it."""
        metadata = {**self.metadata(), "iterations": iterations,
                    "input_min_size": self.teacher.input_min_size or self.recipe.train.min_size,
                    "input_max_size": self.teacher.input_max_size or self.recipe.train.max_size,
                    "trained_by": "regionclip pretrain"}
        metadata.pop("concepts")
        save_checkpoint(path, Checkpoint(kind="clip", model=self.teacher.name,
                                         state_dict=student_state_as_clip(self.clip_template, self.student_visual),
                                         metadata=metadata))

    @property
    def problems(self) -> list[str]:
        """Skipped boxes and other input problems met while building batches."""
        return self.batches.problems
