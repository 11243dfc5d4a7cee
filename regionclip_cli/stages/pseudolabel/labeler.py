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
                         any_kept: Callable[[torch.Tensor], torch.Tensor] = lambda passed: passed,
                         candidates: torch.Tensor | None = None) -> PseudoLabels:
    """Top-1 concept of each region and whether it is confident enough to contrast against.

    `candidates` ([K] or [N, K] bool) limits the softmax to the concepts a region may be labelled
    with (caption-restricted labels; a row without any falls back to the pool); None means the
    whole pool, the original's rule.

    `any_kept` turns "did a region here pass?" (a 0-d bool tensor) into the decision; in
    distributed training it asks all ranks, so the fallback to "keep all" is the same decision a
    single process would make for the global batch. It stays a tensor: no wait on the device.
    """
    logits = concept_logits(teacher_regions, concepts, spec.temperature)
    if candidates is not None:
        candidates = candidates | ~candidates.any(dim=-1, keepdim=True)
        logits = logits.masked_fill(~candidates, float("-inf"))
    probabilities = logits.softmax(dim=1)
    scores, labels = probabilities.max(dim=1)
    keep = scores > spec.threshold
    keep = keep | ~any_kept(keep.any())
    return PseudoLabels(labels, scores, keep)


def label_records(embedded, concepts: torch.Tensor, rule: LabelRuleConfig, concept_names: list[str],
                  problems: list[str], candidates: Callable[[Path], torch.Tensor | None] | None = None
                  ) -> list[dict]:
    """JSON-ready records, in input order, from the region pipeline's results (see `stages.regions`).

    `concepts` are L2-normalised [K, D] on the embeddings' device; `candidates` gives an image's
    [K] mask of the concepts its regions may be labelled with (None: the pool). An image that could not be
    used, or that is left with no usable box, becomes an error record; skipped boxes go to `problems`.
    """
    from regionclip_cli.stages.regions import SkippedImage

    records = []
    for item in embedded:
        if isinstance(item, SkippedImage):
            records.append({"file": str(item.path), "error": item.reason})
            continue
        problems.extend(item.problems)
        if len(item.boxes) == 0:
            records.append({"file": str(item.path), "error": f"{item.path}: no usable boxes"})
            continue
        allowed = None if candidates is None else candidates(item.path)
        labels = assign_pseudo_labels(item.embeddings, concepts, rule,
                                      candidates=None if allowed is None else allowed.to(concepts.device))
        width, height = item.image.original_size
        records.append({
            "file": str(item.path), "width": width, "height": height,
            "regions": [
                {"box": [round(v, 2) for v in box], "concept": concept_names[label],
                 "concept_index": label, "score": round(score, 5), "keep": keep}
                for box, label, score, keep in zip(item.boxes.tolist(), labels.labels.tolist(),
                                                   labels.scores.tolist(), labels.keep.tolist())
            ],
        })
    return records
