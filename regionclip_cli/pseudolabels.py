"""Pseudo labels: the frozen teacher names each proposed region with its best concept.

RegionCLIP has no box labels. The teacher CLIP scores every region against every concept of the
pool (cosine / 0.01, softmax over the pool); the top-1 concept is the region's pseudo label and its
probability the label's confidence. Regions whose confidence is at most a threshold (0.1) are left
out of the region-concept contrastive loss — unless none pass, in which case all are used, so a
batch never trains on nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from regionclip_cli.losses import PAPER_TEMPERATURE


@dataclass(frozen=True)
class PseudoLabelSpec:
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
                         spec: PseudoLabelSpec = PseudoLabelSpec(),
                         any_kept: Callable[[bool], bool] = bool) -> PseudoLabels:
    """Top-1 concept of each region and whether it is confident enough to contrast against.

    `any_kept` decides "did any region pass?"; in distributed training it asks all ranks, so the
    fallback to "keep all" is the same decision a single process would make for the global batch.
    """
    probabilities = concept_logits(teacher_regions, concepts, spec.temperature).softmax(dim=1)
    scores, labels = probabilities.max(dim=1)
    keep = scores > spec.threshold
    if not any_kept(bool(keep.any())):
        keep = torch.ones_like(keep)
    return PseudoLabels(labels, scores, keep)
