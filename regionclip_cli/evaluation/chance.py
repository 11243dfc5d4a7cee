"""The random-score level of each metric, on the same images and ground-truth boxes.

A figure means little without the value a model that knows nothing gets. Here that model scores
every ground-truth box with K independent uniform random numbers, one per class, and every label
of every box is kept (as `zeroshot --boxes ann.json --score-threshold 0 --nms 1` does), up to
`max_detections` per image. Its AP50 is well above zero on a small vocabulary (ground-truth boxes
are all in place); its top-1 accuracy is 1/K. Both are averaged over a few seeds.

`random_label_levels` is the same question for a real detector's output (proposals, not
ground-truth boxes): its boxes and scores kept, each detection's class drawn uniformly. What a
detector gets beyond that level is recognition; what it gets up to it is localisation alone.

Run it as a small tool:  python -m regionclip_cli.evaluation.chance ANN.json [--split world]
                         [--detections DETECTIONS.json --vocab world]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Sequence

import numpy as np

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.data.vocab import Vocabulary
from regionclip_cli.evaluation.api import SPLIT_NAMES, GroundTruth, Split, evaluate_detections, resolve_scope
from regionclip_cli.evaluation.region_accuracy import region_accuracy


def random_score_levels(
    ground_truth: GroundTruth,
    *,
    vocabulary: Vocabulary | None = None,
    split: Split = None,
    image_ids: Sequence[int] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    max_detections: int = 100,
) -> dict[str, float]:
    """Mean over `seeds` of every AP metric and of region top-1 ("top1_all", "top1_novel", ...)."""
    scope = resolve_scope(ground_truth, split=split, vocabulary=vocabulary, image_ids=image_ids)
    dataset = scope.dataset
    class_ids = np.array(sorted(vocabulary.category_ids if vocabulary is not None
                                else [c["id"] for c in dataset["categories"]]))
    by_image: dict[int, list[list[float]]] = {img["id"]: [] for img in dataset["images"]}
    for ann in dataset["annotations"]:
        if not ann.get("iscrowd", 0):
            by_image[ann["image_id"]].append(ann["bbox"])
    runs: list[dict[str, float]] = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        detections, records = [], []
        for image_id, boxes in by_image.items():
            scores = rng.random((len(boxes), len(class_ids)))
            records.append({"image_id": image_id,
                            "boxes": [[x, y, x + w, y + h] for x, y, w, h in boxes],
                            "category_ids": class_ids[scores.argmax(axis=1)].tolist() if boxes else []})
            flat = np.argsort(-scores, axis=None)[:max_detections]
            for b, k in zip(*np.unravel_index(flat, scores.shape)):
                detections.append({"image_id": image_id, "category_id": int(class_ids[k]),
                                   "bbox": list(boxes[b]), "score": float(scores[b, k])})
        ap = evaluate_detections(detections, dataset, split=split, vocabulary=vocabulary)
        top1 = region_accuracy(records, dataset, vocabulary=vocabulary, split=split)
        figures = dict(ap.metrics)
        figures.update({f"top1_{name}": group.accuracy for name, group in top1.groups.items()})
        runs.append(figures)
    return {key: _mean([run[key] for run in runs]) for key in runs[0]}


def random_label_levels(
    detections: Sequence[dict],
    ground_truth: GroundTruth,
    *,
    vocabulary: Vocabulary,
    image_ids: Sequence[int] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
) -> dict[str, float]:
    """Mean over `seeds` of every AP metric of `detections` (COCO results) with each detection's
    category replaced by one of the vocabulary's, drawn uniformly; boxes and scores unchanged."""
    class_ids = np.array(vocabulary.category_ids)
    runs = []
    for seed in seeds:
        drawn = np.random.default_rng(seed).integers(len(class_ids), size=len(detections))
        relabelled = [{**row, "category_id": int(class_ids[k])} for row, k in zip(detections, drawn)]
        runs.append(evaluate_detections(relabelled, ground_truth, vocabulary=vocabulary, image_ids=image_ids).metrics)
    return {key: _mean([run[key] for run in runs]) for key in runs[0]}


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m regionclip_cli.evaluation.chance",
                                     description="Random-score level of AP and region top-1 on a ground truth.")
    parser.add_argument("ground_truth")
    parser.add_argument("--split", choices=SPLIT_NAMES, default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--detections", help="a COCO results JSON: the random-label level of its boxes and scores")
    parser.add_argument("--vocab", default="world", help="the vocabulary the detections were made with")
    args = parser.parse_args(argv)
    try:
        if args.detections:
            from regionclip_cli.data.coco import read_json
            from regionclip_cli.data.vocab import load_vocabulary

            ground_truth = read_json(args.ground_truth, args.ground_truth)
            levels = random_label_levels(read_json(args.detections, args.detections), ground_truth,
                                         vocabulary=load_vocabulary(args.vocab), seeds=range(args.seeds),
                                         image_ids=[image["id"] for image in ground_truth["images"]])
        else:
            levels = random_score_levels(args.ground_truth, split=args.split, seeds=range(args.seeds))
    except RegionclipError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({k: (None if math.isnan(v) else round(v, 2)) for k, v in levels.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
