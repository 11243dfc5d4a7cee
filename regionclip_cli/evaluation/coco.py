"""Detection metrics as the RegionCLIP paper reports them: COCO AP (also per base/novel split) and LVIS AP.

COCO goes through pycocotools, LVIS through faster-coco-eval's LVIS mode (the `lvis` package does
not work with NumPy 2). Every figure, split ones included, is read from the one precision array an
evaluation over all categories produces: a split's AP50 is the mean of its categories' AP50, the way
OVR-CNN and RegionCLIP compute "novel / base / all", so the three numbers are always consistent.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from regionclip_cli.core.errors import RegionclipError

LVIS_MAX_DETECTIONS_PER_IMAGE = 300
LVIS_FREQUENCIES = ("r", "c", "f")
_AREAS = ("all", "small", "medium", "large")


@dataclass
class EvalResult:
    """Detection metrics, in percent (0-100) like the paper's tables.

    `metrics` holds "AP" (IoU 0.50:0.95), "AP50", "AP75", "APs", "APm", "APl"; with a split, also
    "AP50_<name>" and "AP_<name>" per split (e.g. "AP50_novel"); for LVIS, "APr", "APc", "APf".
    A figure that cannot be measured (no ground truth in that split, frequency group or size
    range) is NaN here and null in JSON, never -1, so it cannot be averaged by mistake.
    `per_category` is AP50 per category id, for the categories that have ground truth.
    `notes` says what was left out of the evaluation and why.
    """

    metrics: dict[str, float]
    per_category: dict[int, float]
    notes: list[str] = field(default_factory=list)
    kind: str = "coco"  # "coco" (pycocotools) or "lvis" (faster-coco-eval's LVIS mode)
    images_evaluated: int | None = None
    images_in_ground_truth: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None, category ids become string keys."""
        return {
            "kind": self.kind,
            "images_evaluated": self.images_evaluated,
            "images_in_ground_truth": self.images_in_ground_truth,
            "metrics": {k: _json_number(v) for k, v in self.metrics.items()},
            "per_category": {str(k): _json_number(v) for k, v in self.per_category.items()},
            "notes": list(self.notes),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 4)


def evaluate_coco(
    gt: str | os.PathLike | Mapping,
    detections: Sequence[Mapping],
    *,
    split: Mapping[str, Sequence[int]] | None = None,
    iou_type: str = "bbox",
) -> EvalResult:
    """COCO AP of `detections` (COCO results: image_id, category_id, bbox [x, y, w, h], score).

    `gt` is a COCO annotation file or its parsed dict. `split` maps a name to category ids (e.g.
    {"novel": [...], "base": [...]}) for per-split AP50 and AP; ids without ground truth are
    ignored. Detections of categories or on images not in the ground truth are errors: the two
    files do not belong together (`evaluate_detections` drops a vocabulary's extra classes, with
    a note, before calling this).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _check_iou_type(iou_type)
    dataset = load_ground_truth(gt)
    results, notes = _prepare_detections(detections, dataset, iou_type)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results) if results else _empty_results(COCO, dataset)
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
    table = _PrecisionTable(evaluator.eval["precision"], evaluator.params)
    metrics = table.standard_metrics()
    for name, category_ids in (split or {}).items():
        indices = table.indices_of(category_ids)
        metrics[f"AP50_{name}"] = table.mean(iou=0.5, categories=indices)
        metrics[f"AP_{name}"] = table.mean(categories=indices)
        if math.isnan(metrics[f"AP50_{name}"]):
            notes.append(f"split '{name}': none of its categories has ground truth here, so its AP is undefined")
    return EvalResult(metrics, table.per_category_ap50(), notes)


def evaluate_lvis(
    gt: str | os.PathLike | Mapping,
    detections: Sequence[Mapping],
    *,
    iou_type: str = "bbox",
    max_detections_per_image: int = LVIS_MAX_DETECTIONS_PER_IMAGE,
) -> EvalResult:
    """LVIS AP, AP50, AP75, APs/m/l and APr/APc/APf, following the LVIS rules.

    LVIS is federated: an image is only judged on the categories it is known to contain or known
    not to contain (`neg_category_ids`); other detections are dropped, and unmatched detections of
    a category listed in `not_exhaustive_category_ids` are not counted as false positives. Only the
    `max_detections_per_image` best detections of an image count (300 in LVIS). The frequency
    groups come from the ground-truth categories' `frequency` field ("r", "c" or "f"); a group
    without ground truth in this set gives NaN.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    _check_iou_type(iou_type)
    dataset = load_ground_truth(gt)
    missing = [c["id"] for c in dataset["categories"] if c.get("frequency") not in LVIS_FREQUENCIES]
    if missing:
        raise RegionclipError(
            f"ground truth: LVIS evaluation needs a 'frequency' of r, c or f on every category; "
            f"category ids {_some(missing)} lack one (is this an LVIS annotation file?)"
        )
    results, notes = _prepare_detections(detections, dataset, iou_type)
    results = _best_per_image(results, max_detections_per_image)

    def silent(*_args: Any, **_kwargs: Any) -> None:
        return None

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(dataset, print_function=silent)
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type, lvis_style=True, print_function=silent)
        evaluator.params.maxDets = [max_detections_per_image]
        evaluator.evaluate()
        evaluator.accumulate()
    table = _PrecisionTable(np.asarray(evaluator.eval["precision"]), evaluator.params)
    metrics = table.standard_metrics()
    frequency_of = {int(c["id"]): c["frequency"] for c in dataset["categories"]}
    for frequency in LVIS_FREQUENCIES:
        ids = [cid for cid, f in frequency_of.items() if f == frequency]
        metrics[f"AP{frequency}"] = table.mean(categories=table.indices_of(ids))
    return EvalResult(metrics, table.per_category_ap50(), notes, kind="lvis")


class _PrecisionTable:
    """COCOeval's precision array [IoU thresholds, recall points, categories, areas, max detections].

    Entries are -1 where a category has no ground truth; they are left out of every mean, exactly
    as COCOeval.summarize does, so a category counts only where it has ground truth.
    """

    def __init__(self, precision: np.ndarray, params: Any) -> None:
        self.precision = precision
        self.iou_thresholds = np.asarray(params.iouThrs)
        self.category_ids = [int(c) for c in params.catIds]
        self.area_labels = list(params.areaRngLbl)

    def indices_of(self, category_ids: Sequence[int]) -> list[int]:
        wanted = {int(c) for c in category_ids}
        return [k for k, cid in enumerate(self.category_ids) if cid in wanted]

    def mean(self, *, iou: float | None = None, categories: list[int] | None = None, area: str = "all") -> float:
        values = self.precision[..., self.area_labels.index(area), -1]
        if iou is not None:
            values = values[np.flatnonzero(np.isclose(self.iou_thresholds, iou))]
        if categories is not None:
            values = values[:, :, categories]
        valid = values[values > -1]
        return float(valid.mean() * 100.0) if valid.size else math.nan

    def standard_metrics(self) -> dict[str, float]:
        metrics = {"AP": self.mean(), "AP50": self.mean(iou=0.5), "AP75": self.mean(iou=0.75)}
        for area, key in zip(_AREAS[1:], ("APs", "APm", "APl")):
            metrics[key] = self.mean(area=area)
        return metrics

    def per_category_ap50(self) -> dict[int, float]:
        scores = {}
        for k, category_id in enumerate(self.category_ids):
            value = self.mean(iou=0.5, categories=[k])
            if not math.isnan(value):
                scores[category_id] = value
        return scores


def _check_iou_type(iou_type: str) -> None:
    if iou_type not in ("bbox", "segm"):
        raise RegionclipError(f"iou_type '{iou_type}' is not supported; use 'bbox' or 'segm'")


def _some(values: Sequence[Any], limit: int = 5) -> str:
    shown = ", ".join(str(v) for v in list(values)[:limit])
    return shown + (f" ... ({len(values)} in all)" if len(values) > limit else "")


def load_ground_truth(gt: str | os.PathLike | Mapping, *, where: str | None = None,
                      need_file_names: bool = False) -> dict:
    """A private, normalised copy (data.coco.read_coco): unique annotation ids, `iscrowd`, `area`.

    pycocotools indexes annotations by id and reads `iscrowd` and `area` unconditionally, and
    both libraries write into the dicts they are given, so the caller's data is never handed over.
    Evaluation matches images by id, so `file_name` is only required when asked for (LVIS v1
    files have none).
    """
    from regionclip_cli.data.coco import read_coco

    return read_coco(gt, where, need_file_names=need_file_names).data


def _prepare_detections(detections: Sequence[Mapping], dataset: dict, iou_type: str) -> tuple[list[dict], list[str]]:
    """Fresh, checked result dicts; detections of unknown categories are dropped with a note."""
    image_ids = {img["id"] for img in dataset["images"]}
    sizes = {img["id"]: (img.get("height"), img.get("width")) for img in dataset["images"]}
    category_ids = {cat["id"] for cat in dataset["categories"]}
    results: list[dict] = []
    unknown_images: set[int] = set()
    unknown_categories: dict[int, int] = defaultdict(int)
    for index, detection in enumerate(detections):
        try:
            result = {
                "image_id": int(detection["image_id"]),
                "category_id": int(detection["category_id"]),
                "bbox": [float(v) for v in detection["bbox"]],
                "score": float(detection["score"]),
            }
            if len(result["bbox"]) != 4:
                raise ValueError("bbox needs 4 numbers")
            if iou_type == "segm":
                result["segmentation"] = _as_rle(detection["segmentation"], sizes.get(result["image_id"]))
                del result["bbox"]  # else pycocotools takes the box area as the mask area
        except (KeyError, TypeError, ValueError) as error:
            needs = "image_id, category_id, bbox [x, y, w, h], score" + (", segmentation" if iou_type == "segm" else "")
            raise RegionclipError(f"detection {index}: needs {needs} ({type(error).__name__}: {error})") from None
        if result["image_id"] not in image_ids:
            unknown_images.add(result["image_id"])
        elif result["category_id"] not in category_ids:
            unknown_categories[result["category_id"]] += 1
        else:
            results.append(result)
    if unknown_images:
        raise RegionclipError(
            f"detections refer to image ids not in the ground truth: {_some(sorted(unknown_images))}; "
            "were they made on the images of this annotation file (image ids come from its 'images')?"
        )
    if unknown_categories:
        raise RegionclipError(
            f"{sum(unknown_categories.values())} detections have category ids not in the ground truth: "
            f"{_some(sorted(unknown_categories))}; were they made with the vocabulary of this annotation "
            "file (category ids come from its 'categories')?"
        )
    return results, []


def _as_rle(segmentation: Any, size: tuple[Any, Any] | None) -> dict:
    """COCO results carry masks as RLE; polygons (a list of [x1, y1, x2, y2, ...]) are encoded here."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, Mapping) and "counts" in segmentation and "size" in segmentation:
        return dict(segmentation)
    if not isinstance(segmentation, list) or size is None or None in size:
        raise ValueError("segmentation must be RLE {size, counts} or polygons on an image with width and height")
    height, width = int(size[0]), int(size[1])
    return mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in poly] for poly in segmentation], height, width))


def _empty_results(coco_class: type, dataset: dict) -> Any:
    """A results object with no detections (pycocotools' loadRes cannot build one)."""
    results = coco_class()
    results.dataset = {"images": dataset["images"], "categories": dataset["categories"], "annotations": []}
    results.createIndex()
    return results


def _best_per_image(results: list[dict], limit: int) -> list[dict]:
    by_image: dict[int, list[dict]] = defaultdict(list)
    for result in results:
        by_image[result["image_id"]].append(result)
    kept = []
    for image_results in by_image.values():
        image_results.sort(key=lambda r: r["score"], reverse=True)
        kept.extend(image_results[:limit])
    return kept
