"""The detector's box predictor, region sampling and losses (the original's `fast_rcnn.py`).

torchvision's `FastRCNNPredictor`, `fastrcnn_loss` and `postprocess_detections` assume a fixed
set of classes with one box per class; RegionCLIP's classifier is a table of text embeddings that
is swapped at test time (base classes in training, base + novel or any vocabulary at test) and
its box regression is class-agnostic, so these are written here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from regionclip_cli.core.errors import RegionclipError


class OpenVocabularyPredictor(nn.Module):
    """Class logits = cosine(region, class text embedding) / τ, plus a background logit of 0; and
    one class-agnostic box delta per region.

    The class embeddings are a frozen buffer (L2-normalised), so `set_vocabulary` swaps them
    without touching anything that trained. The background is the original's frozen all-zero
    embedding: its logit is 0 for every region, the last column. Box regression is
    `Linear(D, 4)` initialised with std 0.001 and zero bias, as the original, on the raw feature
    or (`normalize_box_input`) on the unit feature × sqrt(D), whose scale no tower can change.

    `background_logit` replaces the background's 0 (the all-zero embedding) by a constant: with
    0, a background region needs a negative cosine with every training class, and training moves
    all features away from the training classes; with b, it needs only cosines below b × τ.
    """

    def __init__(self, class_embeddings: torch.Tensor, input_dim: int, temperature: float = 0.01,
                 normalize_box_input: bool = False, background_logit: float = 0.0):
        super().__init__()
        self.input_dim = input_dim
        self.temperature = temperature
        self.background_logit = background_logit
        self.register_buffer("class_embeddings", self._checked(class_embeddings), persistent=False)
        self.normalize_box_input = normalize_box_input
        self.bbox_pred = nn.Linear(input_dim, 4)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.bbox_pred.bias)

    def _checked(self, embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise RegionclipError(f"class embeddings must be a non-empty [classes, width] table, "
                                  f"got shape {list(embeddings.shape)}")
        if embeddings.shape[1] != self.input_dim:
            raise RegionclipError(
                f"the vocabulary's embeddings are {embeddings.shape[1]}-d but the detector's regions are "
                f"{self.input_dim}-d (1024 = RN50, 640 = RN50x4, 512 = RN101); embed the names with "
                f"the detector's own CLIP")
        return F.normalize(embeddings.detach().float(), dim=-1)

    @property
    def num_classes(self) -> int:
        return int(self.class_embeddings.shape[0])

    def set_vocabulary(self, class_embeddings: torch.Tensor) -> None:
        device = self.bbox_pred.weight.device
        self.class_embeddings = self._checked(class_embeddings).to(device)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, D] region features → ([N, K + 1] logits, background last; [N, 4] box deltas).

        Always float32, outside any autocast: / 0.01 turns a bf16 cosine's rounding (~0.004)
        into 0.4 of logit, and box deltas become pixel coordinates.
        """
        with torch.autocast(features.device.type, enabled=False):
            features = features.float()
            unit = F.normalize(features, dim=-1)
            cosine = unit @ self.class_embeddings.t()
            background = cosine.new_full((cosine.shape[0], 1), self.background_logit)
            logits = torch.cat([cosine / self.temperature, background], dim=1)
            box_input = unit * features.shape[-1] ** 0.5 if self.normalize_box_input else features
            return logits, self.bbox_pred(box_input)


def sample_regions(proposals: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                   background: int, *, regions: int, positive_fraction: float, iou_threshold: float,
                   generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """detectron2's ROI sampling for one image: ground truth appended to the proposals, each
    region labelled by its best ground-truth box when IoU ≥ `iou_threshold` (else background),
    then at most `regions × positive_fraction` positives and negatives filling up to `regions`,
    drawn at random. Returns (boxes [S, 4], labels [S], matched ground-truth boxes [S, 4]).

    `generator` makes the draw reproducible (exact resume); it lives on the CPU.
    """
    candidates = torch.cat([proposals.float(), gt_boxes.float()])
    if len(gt_boxes) == 0:
        labels = torch.full((len(candidates),), background, dtype=torch.long, device=candidates.device)
        matched = torch.zeros_like(candidates)
    else:
        best, index = box_iou(gt_boxes.float(), candidates).max(dim=0)
        foreground = best >= iou_threshold
        labels = torch.where(foreground, gt_labels[index], torch.full_like(index, background))
        matched = gt_boxes.float()[index]
    positives = torch.nonzero(labels != background).flatten()
    negatives = torch.nonzero(labels == background).flatten()
    num_positive = min(int(regions * positive_fraction), len(positives))
    num_negative = min(regions - num_positive, len(negatives))
    pick_positive = torch.randperm(len(positives), generator=generator)[:num_positive].to(positives.device)
    pick_negative = torch.randperm(len(negatives), generator=generator)[:num_negative].to(negatives.device)
    chosen = torch.cat([positives[pick_positive], negatives[pick_negative]])
    return candidates[chosen], labels[chosen], matched[chosen]


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, *, focal_gamma: float,
                        background_weight: float) -> torch.Tensor:
    """The original's two classification losses (`fast_rcnn.py`), background = last class.

    focal_gamma > 0 (COCO, γ = 0.5): mean over regions of w_i · CE_i · (1 − p_t,i)^γ, with
    p_t = softmax(logits)[label] not detached, w_i = `background_weight` on background rows, 1
    otherwise. focal_gamma = 0 (LVIS): PyTorch's weighted cross-entropy, class weight
    `background_weight` on background — normalised by the summed weights, as the original.
    """
    if labels.numel() == 0:
        return logits.sum() * 0.0
    background = logits.shape[1] - 1
    if focal_gamma > 0:
        ce = F.cross_entropy(logits, labels, reduction="none")
        p_t = logits.softmax(dim=1).gather(1, labels[:, None]).squeeze(1)
        weights = torch.where(labels == background, background_weight, 1.0)
        # At τ = 0.01 a confident region's p_t rounds to exactly 1, where d/dp (1 − p)^γ is
        # infinite for γ < 1 and the step turns NaN; the floor stops that gradient (its value is
        # then ~0 times a CE of ~0).
        scale = (1 - p_t).clamp(min=1e-12) ** focal_gamma
        return (ce * scale * weights).mean()
    class_weights = torch.ones(logits.shape[1], device=logits.device)
    class_weights[background] = background_weight
    return F.cross_entropy(logits, labels, weight=class_weights)


def box_regression_loss(deltas: torch.Tensor, target_deltas: torch.Tensor, foreground: torch.Tensor
                        ) -> torch.Tensor:
    """L1 (detectron2's smooth-L1 with β = 0) over the foreground regions, divided by the number of
    *sampled* regions (foreground and background), as detectron2's `_box_reg_loss`."""
    loss = F.l1_loss(deltas[foreground], target_deltas[foreground], reduction="sum")
    return loss / max(deltas.shape[0], 1)
