"""From class probabilities and boxes to detections: threshold, (soft-)NMS per class, top-k.

As detectron2's `fast_rcnn_inference_single_image`: every (region, class) pair above the score
threshold is a candidate, NMS runs per class, the best `max_detections` are kept. The original's
evaluation script switches to Gaussian soft-NMS (σ 0.5, prune 0.001): instead of deleting boxes
that overlap a kept one, their scores decay by exp(−IoU² / σ), and boxes whose score falls under
the prune threshold are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import box_iou

from regionclip_cli.modeling.scoring import DetectionConfig
from regionclip_cli.modeling.scoring import select_detections as hard_nms_detections


@dataclass(frozen=True)
class PostprocessConfig:
    """Test-time settings; defaults are the paper's COCO ones (LVIS: 0.02 and 300, objectness on)."""

    score_threshold: float = 0.001
    nms_threshold: float = 0.5
    max_detections: int = 100
    soft_nms: bool = False
    soft_nms_sigma: float = 0.5
    soft_nms_prune: float = 0.001
    multiply_objectness: bool = False  # score = sqrt(p × sigmoid(RPN logit)); see `combine_scores`

    def __post_init__(self) -> None:
        if not 0 <= self.score_threshold < 1 or not 0 < self.nms_threshold <= 1:
            raise ValueError("need 0 <= score_threshold < 1 and 0 < nms_threshold <= 1")
        if self.max_detections < 1 or self.soft_nms_sigma <= 0:
            raise ValueError("need max_detections >= 1 and soft_nms_sigma > 0")


def combine_scores(probabilities: torch.Tensor, objectness: torch.Tensor) -> torch.Tensor:
    """sqrt(class probability × objectness), objectness a *sigmoid* probability in [0, 1].

    The original (`fast_rcnn.py:707–711`) multiplies by the RPN's raw logit: rows with a negative
    logit become NaN and silently vanish, and scores exceed 1. The sigmoid keeps every proposal
    and every score in [0, 1], with the same ranking among positive-logit proposals' products.
    """
    return (probabilities * objectness[:, None].clamp(0, 1)).sqrt()


def gaussian_soft_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, *,
                      sigma: float, prune: float, limit: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian soft-NMS within each class: (indices kept, their decayed scores), best first.

    Each step keeps the highest current score, multiplies every other box of its class by
    exp(−IoU² / σ) and drops those now at or below `prune` (detectron2's `soft_nms`). Scores
    only ever decrease, so the kept scores come out in non-increasing order and the first `limit`
    picks are exactly the top `limit` of the full run: it stops there.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device), scores.new_zeros(0)
    # One shared coordinate frame with classes far apart: boxes of different classes never overlap.
    offsets = classes.to(boxes.dtype) * (boxes.max() + 1)
    shifted = boxes + offsets[:, None]
    remaining = torch.arange(len(boxes), device=boxes.device)
    current = scores.clone()
    kept, kept_scores = [], []
    limit = len(boxes) if limit is None else limit
    while remaining.numel() > 0 and len(kept) < limit:
        top = int(torch.argmax(current))
        kept.append(remaining[top])
        kept_scores.append(current[top])
        iou = box_iou(shifted[remaining[top]][None], shifted[remaining])[0]
        current = current * torch.exp(-(iou ** 2) / sigma)
        alive = current > prune
        alive[top] = False
        remaining, current = remaining[alive], current[alive]
    return torch.stack(kept), torch.stack(kept_scores)


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, config: PostprocessConfig
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class-agnostic boxes [N, 4] and scores [N, K] → (boxes [M, 4], scores [M], classes [M])."""
    if not config.soft_nms:  # the zero-shot path's selection: one implementation of hard NMS
        chosen = hard_nms_detections(boxes, scores, DetectionConfig(
            config.score_threshold, config.nms_threshold, config.max_detections))
        return chosen.boxes, chosen.scores, chosen.classes
    box_index, class_index = (scores > config.score_threshold).nonzero(as_tuple=True)
    chosen_boxes = boxes[box_index]
    keep, chosen_scores = gaussian_soft_nms(chosen_boxes, scores[box_index, class_index], class_index,
                                            sigma=config.soft_nms_sigma, prune=config.soft_nms_prune,
                                            limit=config.max_detections)
    return chosen_boxes[keep], chosen_scores, class_index[keep]
