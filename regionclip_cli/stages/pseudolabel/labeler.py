"""Pseudo labels: the frozen teacher names each proposed region with its best concept.

RegionCLIP has no box labels. The teacher CLIP scores every region against every concept of the
pool (cosine / 0.01, softmax over the pool); the top-1 concept is the region's pseudo label and its
probability the label's confidence. Regions whose confidence is at most a threshold (0.1) are left
out of the region-concept contrastive loss — unless none pass, in which case all are used, so a
batch never trains on nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from regionclip_cli.modeling.losses import PAPER_TEMPERATURE


@dataclass(frozen=True)
class LabelRuleConfig:
    threshold: float = 0.1
    temperature: float = PAPER_TEMPERATURE


@dataclass
class PseudoLabels:
    """Per region: label (index into the pool), score (its probability), keep (use in contrastive loss)."""

    labels: torch.Tensor
    scores: torch.Tensor
    keep: torch.Tensor


def concept_logits(regions: torch.Tensor, concepts: torch.Tensor, temperature: float) -> torch.Tensor:
    """[N, K] cosine / temperature of normalised region and concept embeddings."""
    regions = torch.nn.functional.normalize(regions.float(), dim=-1)
    return regions @ torch.nn.functional.normalize(concepts.float(), dim=-1).t() / temperature


def assign_pseudo_labels(teacher_regions: torch.Tensor, concepts: torch.Tensor,
                         spec: LabelRuleConfig = LabelRuleConfig(),
                         any_kept: Callable[[torch.Tensor], torch.Tensor] = lambda passed: passed
                         ) -> PseudoLabels:
    """Top-1 concept of each region and whether it is confident enough to contrast against.

    `any_kept` turns "did a region here pass?" (a 0-d bool tensor) into the decision; in
    distributed training it asks all ranks, so the fallback to "keep all" is the same decision a
    single process would make for the global batch. It stays a tensor: no wait on the device.
    """
    probabilities = concept_logits(teacher_regions, concepts, spec.temperature).softmax(dim=1)
    scores, labels = probabilities.max(dim=1)
    keep = scores > spec.threshold
    keep = keep | ~any_kept(keep.any())
    return PseudoLabels(labels, scores, keep)


@dataclass
class LabelledImage:
    """One image's proposals with the teacher's pseudo labels, boxes in original pixels."""

    path: Path
    width: int
    height: int
    boxes: torch.Tensor
    labels: PseudoLabels


class PseudoLabeler:
    """The frozen teacher + the concept pool: images in, labelled regions out (for `pseudolabel`).

    The teacher's image-tower batch norm is folded into its convolutions (exact, faster).
    """

    def __init__(self, clip, concepts: torch.Tensor, spec: LabelRuleConfig = LabelRuleConfig()):
        from regionclip_cli.modeling.batchnorm_folding import fold_batchnorm
        from regionclip_cli.modeling.region_encoder import RegionEncoder

        self.clip = clip
        fold_batchnorm(clip.model.visual.eval())
        self.encoder = RegionEncoder(clip.model.visual).eval()
        self.concepts = torch.nn.functional.normalize(concepts.float(), dim=-1).to(clip.device)
        self.spec = spec

    @torch.inference_mode()
    def label(self, images: list, boxes: list[torch.Tensor]) -> list[LabelledImage]:
        """Label a batch of `LoadedImage`s with their proposals (original pixels), keep rule per image."""
        from regionclip_cli.modeling.region_encoder import embed_image_regions

        embeddings = embed_image_regions(self.encoder, images, boxes, self.clip.device)
        results = []
        for image, image_boxes, emb in zip(images, boxes, embeddings):
            labels = assign_pseudo_labels(emb, self.concepts, self.spec)
            width, height = image.original_size
            results.append(LabelledImage(image.path, width, height, image_boxes.cpu(),
                                         PseudoLabels(labels.labels.cpu(), labels.scores.cpu(), labels.keep.cpu())))
        return results


def label_records(labeler: PseudoLabeler, paths: list[Path], proposals, *, resize, batch_size: int,
                  concept_names: list[str], problems: list[str]) -> list[dict]:
    """JSON-ready records for `paths`, in order: labelled regions, or an error for a bad image.

    `proposals` gives each image's regions; an InputError (no boxes for that image) or an image
    left with no usable box becomes that image's error record; skipped boxes go to `problems`.
    """
    from regionclip_cli.core.errors import InputError
    from regionclip_cli.data.images import ImageLoader, LoadedImage

    records: list[dict | None] = []
    pending: list[tuple[int, LoadedImage, torch.Tensor]] = []

    def flush() -> None:
        labelled = labeler.label([p[1] for p in pending], [p[2] for p in pending])
        for (slot, _, _), item in zip(pending, labelled):
            records[slot] = {
                "file": str(item.path), "width": item.width, "height": item.height,
                "regions": [
                    {"box": [round(v, 2) for v in box], "concept": concept_names[label],
                     "concept_index": label, "score": round(score, 5), "keep": keep}
                    for box, label, score, keep in zip(item.boxes.tolist(), item.labels.labels.tolist(),
                                                       item.labels.scores.tolist(), item.labels.keep.tolist())
                ],
            }
        pending.clear()

    loader = ImageLoader(paths, mean=labeler.clip.mean, std=labeler.clip.std, resize=resize)
    for item in loader:
        records.append(None)
        if not isinstance(item, LoadedImage):
            records[-1] = {"file": str(item.path), "error": item.message}
            continue
        try:
            found = proposals.for_image(item.path, *item.original_size)
        except InputError as error:
            records[-1] = {"file": str(item.path), "error": str(error)}
            continue
        problems.extend(found.problems)
        if len(found.boxes) == 0:
            records[-1] = {"file": str(item.path), "error": f"{item.path}: no usable boxes"}
            continue
        pending.append((len(records) - 1, item, found.boxes))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return records
