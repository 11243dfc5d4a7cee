"""Region top-1 accuracy: with ground-truth boxes as proposals, how often is the best class right?

This is the figure that separates models when the proposals are the ground-truth boxes. AP with
ground-truth boxes only ranks recognition (every box is already in the right place, and a box that
gets all K labels is a true positive for the right one at some rank), so on a small vocabulary
uniformly random scores already reach a sizeable AP50 (about 8 on the 20-class world); top-1
accuracy has a known chance level of 1/K and no such floor.

Input records are one per image, `{"file": ..., "boxes": [[x1, y1, x2, y2], ...], "category_ids":
[...]}`: the best class of each proposal before any score threshold or NMS (optionally
`"image_id"`, used instead of matching the file name). Each box is matched to the ground-truth box
it copies (IoU >= 0.99: identical up to clipping and rounding). Accuracy is reported over all
matched ground-truth boxes, per base/novel split and per COCO size range (small < 32², medium <
96², large, by the annotation's `area` as COCOeval does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.data.proposals import FileNameIndex
from regionclip_cli.data.vocab import Vocabulary
from regionclip_cli.evaluation.api import GroundTruth, Split, _some, resolve_scope

MATCH_IOU = 0.99
SMALL_AREA = 32.0**2
MEDIUM_AREA = 96.0**2
GROUPS = ("all", "base", "novel", "small", "medium", "large")
RECOGNITION_NOTE = (
    "AP with ground-truth boxes as proposals ranks recognition, not detection: every box is already "
    "in place, so compare region top-1 accuracy (chance = 1/K) and read AP50 against its random-score level"
)


@dataclass
class AccuracyGroup:
    correct: int = 0
    total: int = 0

    @property
    def accuracy(self) -> float:
        """Percent; NaN when the group has no boxes here."""
        return 100.0 * self.correct / self.total if self.total else math.nan


@dataclass
class RegionAccuracy:
    """Top-1 accuracy per group ("all", "base", "novel", "small", "medium", "large"), in percent.

    `missed_gt`: ground-truth boxes no record's box copies (not in the accuracy); `unmatched_boxes`:
    predicted boxes that copy no ground-truth box (proposals that are not ground-truth boxes).
    `notes` end with RECOGNITION_NOTE, so a report that shows AP with these boxes says what it means.
    """

    groups: dict[str, AccuracyGroup]
    num_classes: int
    unmatched_boxes: int
    missed_gt: int
    images_evaluated: int
    images_in_ground_truth: int
    notes: list[str] = field(default_factory=list)

    @property
    def chance(self) -> float:
        return 100.0 / self.num_classes

    def to_dict(self) -> dict[str, Any]:
        return {
            "top1": {name: (None if math.isnan(g.accuracy) else round(g.accuracy, 4)) for name, g in self.groups.items()},
            "counts": {name: {"correct": g.correct, "total": g.total} for name, g in self.groups.items()},
            "num_classes": self.num_classes,
            "chance": round(self.chance, 4),
            "unmatched_boxes": self.unmatched_boxes,
            "missed_gt": self.missed_gt,
            "images_evaluated": self.images_evaluated,
            "images_in_ground_truth": self.images_in_ground_truth,
            "notes": list(self.notes),
        }


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M] IoU of x1y1x2y2 boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def _size_group(area: float) -> str:
    return "small" if area < SMALL_AREA else "medium" if area < MEDIUM_AREA else "large"


def region_accuracy(
    records: Iterable[Mapping],
    ground_truth: GroundTruth,
    *,
    vocabulary: Vocabulary | None = None,
    split: Split = None,
    where: str | None = None,
) -> RegionAccuracy:
    """Top-1 accuracy of the records' best classes on the ground-truth boxes they copy.

    Only the ground-truth images the records cover are scored ("evaluated on N of M" in `notes`);
    `vocabulary` and `split` are checked and used as in `evaluate_detections`; K for the chance
    level is the vocabulary's size (else the ground truth's number of categories).
    """
    records = list(records)
    loaded = resolve_scope(ground_truth, split=split, vocabulary=vocabulary, where=where)
    dataset = loaded.dataset
    where = where or ("ground truth" if isinstance(ground_truth, Mapping) else str(ground_truth))
    images = dataset["images"]
    by_id = {img["id"]: img for img in images}
    index = FileNameIndex([str(img.get("file_name", "")) for img in images])
    known_categories = {c["id"] for c in dataset["categories"]}
    allowed = set(vocabulary.category_ids) if vocabulary is not None else known_categories

    matched: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for number, record in enumerate(records):
        image_id, boxes, classes = _parse_record(record, number, by_id, index, images, where)
        bad = sorted(set(classes.tolist()) - allowed)
        if bad:
            raise RegionclipError(
                f"region record {number} ({record.get('file', image_id)}): category ids {_some(bad)} are not in "
                + ("the vocabulary" if vocabulary is not None else "the ground truth")
            )
        if image_id in matched:
            raise RegionclipError(f"region records {number}: image {record.get('file', image_id)} appears twice")
        matched[image_id] = (boxes, classes)

    annotations: dict[int, list[dict]] = {}
    for ann in dataset["annotations"]:
        if ann["image_id"] in matched and not ann.get("iscrowd", 0):
            annotations.setdefault(ann["image_id"], []).append(ann)

    split_of = {cid: name for name in ("base", "novel") for cid in loaded.groups.get(name, [])}
    groups = {name: AccuracyGroup() for name in GROUPS if name not in ("base", "novel") or name in loaded.groups}
    unmatched = missed = 0
    for image_id, (boxes, classes) in matched.items():
        gts = annotations.get(image_id, [])
        gt_boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                             for a in gts], dtype=np.float64).reshape(-1, 4)
        iou = box_iou(boxes, gt_boxes)
        taken_gt: set[int] = set()
        taken_box: set[int] = set()
        for flat in np.argsort(-iou, axis=None):
            b, g = divmod(int(flat), len(gts))
            if iou[b, g] < MATCH_IOU:
                break
            if b in taken_box or g in taken_gt:
                continue
            taken_box.add(b)
            taken_gt.add(g)
            ann = gts[g]
            hit = int(classes[b]) == ann["category_id"]
            names = ["all", _size_group(float(ann["area"]))]
            if ann["category_id"] in split_of:
                names.append(split_of[ann["category_id"]])
            for name in names:
                groups[name].total += 1
                groups[name].correct += hit
        unmatched += len(boxes) - len(taken_box)
        missed += len(gts) - len(taken_gt)

    num_classes = len(vocabulary) if vocabulary is not None else len(known_categories)
    total_images = len(images)
    notes = []
    if len(matched) < total_images:
        notes.append(f"evaluated on {len(matched)} of {total_images} ground-truth images (the images that were run)")
    notes += [n for n in loaded.notes if not n.startswith("evaluated on")]
    if missed:
        notes.append(f"{missed} ground-truth boxes had no identical proposal and are not in the accuracy")
    if groups["all"].total == 0 and matched:
        notes.append("no proposal copies a ground-truth box: region accuracy needs the ground-truth boxes as proposals")
    else:
        notes.append(RECOGNITION_NOTE)  # whoever prints these notes says it beside the AP
    return RegionAccuracy(groups, num_classes, unmatched, missed, len(matched), total_images, notes)


def _parse_record(record: Mapping, number: int, by_id: dict, index: FileNameIndex, images: list,
                  where: str) -> tuple[int, np.ndarray, np.ndarray]:
    label = f"region record {number}"
    try:
        boxes = np.asarray(record["boxes"], dtype=np.float64).reshape(-1, 4)
        classes = np.asarray(record["category_ids"], dtype=np.int64).reshape(-1)
    except (KeyError, TypeError, ValueError) as error:
        raise RegionclipError(
            f"{label}: needs 'boxes' [[x1, y1, x2, y2], ...] and 'category_ids' ({type(error).__name__}: {error})"
        ) from None
    if len(boxes) != len(classes):
        raise RegionclipError(f"{label}: {len(boxes)} boxes but {len(classes)} category ids")
    if record.get("image_id") is not None:
        image_id = int(record["image_id"])
        if image_id not in by_id:
            raise RegionclipError(f"{label}: image id {image_id} is not in the ground truth {where}")
        return image_id, boxes, classes
    if "file" not in record:
        raise RegionclipError(f"{label}: needs 'file' or 'image_id'")
    found = index.find(Path(str(record["file"])))
    if found is None:
        raise RegionclipError(
            f"{label}: {record['file']} matches no image of the ground truth {where} (by file_name), "
            "or more than one"
        )
    return int(images[found]["id"]), boxes, classes
