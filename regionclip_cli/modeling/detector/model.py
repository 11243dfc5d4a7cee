"""RegionCLIP's open-vocabulary detector: Faster R-CNN C4 with CLIP as the box head.

- Proposals: a frozen offline RPN (`modeling/rpn.py`), always in eval mode — 1,000 proposals after
  NMS 0.7 in training too, as the original runs it.
- Box head: the CLIP image tower's trunk (stem → layer3) on the whole image, RoIAlign (aligned,
  1/16, 2P × 2P), CLIP's layer4 and attention pool: the region encoder (`modeling/region_encoder`),
  trainable except what the caller froze (stem and layer1, frozen batch norm, in the paper).
- Predictor: cosine against the vocabulary's frozen text embeddings / 0.01 with a zero-logit
  background, class-agnostic box deltas (`heads.py`); the vocabulary is swapped at test time.

torchvision style: images (raw RGB [3, h, w] in [0, 1], resized) and targets in, a dict of losses
in training, `[{"boxes", "labels", "scores"}]` at inference; boxes are in the input tensors'
pixels both ways, labels index the current vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
from torch import nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import clip_boxes_to_image

from regionclip_cli.modeling.detector.heads import (OpenVocabularyPredictor, box_regression_loss,
                                                    classification_loss, sample_regions)
from regionclip_cli.modeling.detector.postprocess import PostprocessConfig, combine_scores, select_detections
from regionclip_cli.modeling.region_encoder import RegionEncoder
from regionclip_cli.modeling.rpn import ProposalNetwork, freeze, normalise_and_pad


@dataclass(frozen=True)
class DetectorConfig:
    """Box head training settings; defaults are the original's COCO finetuning (LVIS: focal_gamma
    0, background_weight 0.8)."""

    temperature: float = 0.01
    proposals: int = 1000  # RPN proposals per image after NMS, training and test
    rpn_nms_threshold: float = 0.7
    regions_per_image: int = 512
    positive_fraction: float = 0.25
    iou_threshold: float = 0.5
    box_weights: list[float] = field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])
    focal_gamma: float = 0.5  # 0: plain (weighted) cross-entropy
    background_weight: float = 0.2
    # raw: box deltas from the attention pool's output, as the original. normalized: from it
    # L2-normalised and scaled by sqrt(D), for towers whose outputs are far from CLIP RN50's scale
    # (world-tiny's have norms near 1,500: at lr 0.002 the raw regression diverges in 40 steps).
    box_regression_input: Literal["raw", "normalized"] = "raw"
    # The background class's logit: the original's all-zero embedding gives 0 (a region is
    # background when its cosine with every class is negative); b moves that line to cosine b × τ.
    background_logit: float = 0.0

    def __post_init__(self) -> None:
        if self.temperature <= 0 or self.proposals < 1 or self.regions_per_image < 1:
            raise ValueError("need temperature > 0, proposals >= 1 and regions_per_image >= 1")
        if not 0 < self.positive_fraction <= 1 or not 0 < self.iou_threshold <= 1:
            raise ValueError("need 0 < positive_fraction <= 1 and 0 < iou_threshold <= 1")
        if len(self.box_weights) != 4 or self.focal_gamma < 0 or self.background_weight < 0:
            raise ValueError("need 4 box_weights, focal_gamma >= 0 and background_weight >= 0")


class OpenVocabularyDetector(nn.Module):
    def __init__(self, proposal_network: ProposalNetwork, visual: nn.Module, class_embeddings: torch.Tensor,
                 config: DetectorConfig, *, mean: Sequence[float], std: Sequence[float],
                 postprocess: PostprocessConfig = PostprocessConfig()):
        super().__init__()
        self.config = config
        self.postprocess = postprocess
        self.mean, self.std = tuple(mean), tuple(std)
        self.proposal_network = freeze(proposal_network)
        self.proposal_network.set_test_limits(config.rpn_nms_threshold, config.proposals)
        self.encoder = RegionEncoder(visual)
        self.predictor = OpenVocabularyPredictor(class_embeddings, self.encoder.output_dim, config.temperature,
                                                 normalize_box_input=config.box_regression_input == "normalized",
                                                 background_logit=config.background_logit)
        self.box_coder = BoxCoder(tuple(config.box_weights))

    def train(self, mode: bool = True) -> OpenVocabularyDetector:
        super().train(mode)
        self.proposal_network.eval()  # offline RPN: test-time top-k and no target checks, always
        return self

    def set_vocabulary(self, class_embeddings: torch.Tensor) -> None:
        self.predictor.set_vocabulary(class_embeddings)

    def propose(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        with torch.no_grad():
            return self.proposal_network(images)

    def forward(self, images: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]] | None = None,
                generator: torch.Generator | Sequence[torch.Generator] | None = None):
        """`targets` (training): per image {"boxes": [G, 4], "labels": [G] vocabulary indices}.
        `generator` draws the region samples (reproducible runs): one for the batch, or one per
        image (draws independent of how a global batch is split over processes)."""
        proposals = self.propose(images)
        batch, sizes = normalise_and_pad(images, self.mean, self.std)
        features = self.encoder.trunk(batch)
        if self.training:
            if targets is None:
                raise ValueError("the detector in training mode needs targets")
            return self._losses(features, proposals, targets, generator)
        boxes = [p["boxes"] for p in proposals]
        logits, deltas = self.predictor(self.encoder.pool(features, boxes))
        return self._detections(logits, deltas, proposals, sizes)

    def _losses(self, features, proposals, targets, generator) -> dict[str, torch.Tensor]:
        config, background = self.config, self.predictor.num_classes
        generators = generator if isinstance(generator, Sequence) else [generator] * len(proposals)
        if len(generators) != len(proposals):
            raise ValueError(f"{len(generators)} generators for {len(proposals)} images")
        sampled = [sample_regions(p["boxes"], t["boxes"].to(features.device), t["labels"].to(features.device),
                                  background, regions=config.regions_per_image,
                                  positive_fraction=config.positive_fraction,
                                  iou_threshold=config.iou_threshold, generator=g)
                   for p, t, g in zip(proposals, targets, generators)]
        boxes = [s[0] for s in sampled]
        labels = torch.cat([s[1] for s in sampled])
        matched = torch.cat([s[2] for s in sampled])
        logits, deltas = self.predictor(self.encoder.pool(features, boxes))
        target_deltas = self.box_coder.encode_single(matched, torch.cat(boxes))
        return {
            "loss_cls": classification_loss(logits, labels, focal_gamma=config.focal_gamma,
                                            background_weight=config.background_weight),
            "loss_box_reg": box_regression_loss(deltas, target_deltas, labels != background),
        }

    def _detections(self, logits, deltas, proposals, sizes) -> list[dict[str, torch.Tensor]]:
        results = []
        counts = [len(p["boxes"]) for p in proposals]
        for logit, delta, found, size in zip(logits.split(counts), deltas.split(counts), proposals, sizes):
            probabilities = logit.softmax(dim=1)[:, :-1]
            if self.postprocess.multiply_objectness:
                probabilities = combine_scores(probabilities, found["scores"])
            boxes = self.box_coder.decode_single(delta.float(), found["boxes"].float())
            boxes = clip_boxes_to_image(boxes, size)
            kept_boxes, scores, labels = select_detections(boxes, probabilities, self.postprocess)
            results.append({"boxes": kept_boxes, "labels": labels, "scores": scores})
        return results
