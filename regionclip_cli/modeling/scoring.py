"""From region embeddings to detections, the way RegionCLIP scores them.

Classifier: cosine(region, class) / temperature (0.01), softmax over the K classes plus a
background whose embedding is all zeros, so its logit is 0. A region that matches no class well
puts its mass on background, which is what makes the scores usable as detection confidences.
Detections: every (box, class) pair above the score threshold, per-class NMS, top-k per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms

from regionclip_cli.modeling.losses import PAPER_TEMPERATURE


@dataclass(frozen=True)
class DetectionConfig:
    """Post-processing settings; defaults are the paper's COCO ones."""

    score_threshold: float = 0.001
    nms_threshold: float = 0.5
    max_detections: int = 100
    temperature: float = PAPER_TEMPERATURE


def class_probabilities(region_embeddings: torch.Tensor, class_embeddings: torch.Tensor,
                        temperature: float = PAPER_TEMPERATURE) -> torch.Tensor:
    """[N, K] class probabilities of N regions; the background's share is 1 - row sum."""
    regions = torch.nn.functional.normalize(region_embeddings.float(), dim=-1)
    classes = torch.nn.functional.normalize(class_embeddings.float(), dim=-1)
    logits = regions @ classes.t() / temperature
    background = logits.new_zeros(logits.shape[0], 1)
    return torch.cat([logits, background], dim=1).softmax(dim=1)[:, :-1]


@dataclass
class Detections:
    """Detections of one image: boxes [M, 4] (x1y1x2y2), scores [M], class indices [M] into the vocabulary."""

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor


def select_detections(boxes: torch.Tensor, probabilities: torch.Tensor, spec: DetectionConfig) -> Detections:
    """Every (box, class) above threshold, per-class NMS, best `max_detections` by score."""
    candidates = probabilities > spec.score_threshold
    box_index, class_index = candidates.nonzero(as_tuple=True)
    scores = probabilities[box_index, class_index]
    chosen_boxes = boxes[box_index].float()
    keep = batched_nms(chosen_boxes, scores, class_index, spec.nms_threshold)[: spec.max_detections]
    return Detections(chosen_boxes[keep], scores[keep], class_index[keep])
