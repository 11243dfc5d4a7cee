"""Detection metrics on hand-made ground truth where the right answer is known."""

from __future__ import annotations

import json
import math

import pytest

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.evaluation.coco import EvalResult, evaluate_coco, evaluate_lvis

# Three images, 100x100 boxes well inside 400x400 pictures (large objects). Categories 1 and 2 are
# "base", 3 is "novel", 4 has no annotations at all.
BOXES = {
    (1, 1): [10, 10, 100, 100],
    (1, 3): [200, 200, 100, 100],
    (2, 2): [50, 50, 100, 100],
    (2, 1): [220, 220, 100, 120],
    (3, 3): [30, 30, 120, 100],
}


def _coco_gt() -> dict:
    return {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 400, "height": 400} for i in (1, 2, 3)],
        "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3, 4)],
        "annotations": [
            {"id": n, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
            for n, ((img, cat), box) in enumerate(BOXES.items(), start=1)
        ],
    }


def _perfect(score: float = 0.9) -> list[dict]:
    return [{"image_id": img, "category_id": cat, "bbox": list(box), "score": score} for (img, cat), box in BOXES.items()]


SPLIT = {"base": [1, 2], "novel": [3]}


def test_perfect_detections_score_100_everywhere():
    result = evaluate_coco(_coco_gt(), _perfect(), split=SPLIT)
    for key in ("AP", "AP50", "AP75", "APl", "AP50_base", "AP50_novel", "AP_base", "AP_novel"):
        assert result.metrics[key] == pytest.approx(100.0), key
    assert math.isnan(result.metrics["APs"]) and math.isnan(result.metrics["APm"])  # no small/medium GT
    assert result.per_category == pytest.approx({1: 100.0, 2: 100.0, 3: 100.0})  # 4 has no GT
    assert result.notes == []


def test_detections_only_on_base_categories():
    base_only = [d for d in _perfect() if d["category_id"] in SPLIT["base"]]
    result = evaluate_coco(_coco_gt(), base_only, split=SPLIT)
    assert result.metrics["AP50_base"] == pytest.approx(100.0)
    assert result.metrics["AP50_novel"] == pytest.approx(0.0)
    # "all" is the mean over the three categories with ground truth, consistent with the splits.
    assert result.metrics["AP50"] == pytest.approx(200.0 / 3)
    assert result.per_category[3] == 0.0


def test_iou_060_counts_for_ap50_but_not_ap75():
    gt = _coco_gt()
    gt["annotations"] = gt["annotations"][:1]  # one box [10, 10, 100, 100] of category 1
    shifted_by = 25.0  # overlap 75x100 / union 125x100 = 0.6
    detection = {"image_id": 1, "category_id": 1, "bbox": [10 + shifted_by, 10, 100, 100], "score": 0.8}
    result = evaluate_coco(gt, [detection])
    assert result.metrics["AP50"] == pytest.approx(100.0)
    assert result.metrics["AP75"] == pytest.approx(0.0)
    # Matches at IoU thresholds 0.50, 0.55, 0.60 out of the ten from 0.50 to 0.95.
    assert result.metrics["AP"] == pytest.approx(30.0)


def test_a_higher_scored_duplicate_lowers_precision():
    gt = _coco_gt()
    gt["annotations"] = gt["annotations"][:1]
    true = {"image_id": 1, "category_id": 1, "bbox": [10, 10, 100, 100], "score": 0.5}
    wrong = {"image_id": 1, "category_id": 1, "bbox": [250, 250, 100, 100], "score": 0.9}
    assert evaluate_coco(gt, [true]).metrics["AP50"] == pytest.approx(100.0)
    # The false positive ranks first: at recall 1 the precision is 1/2.
    assert evaluate_coco(gt, [true, wrong]).metrics["AP50"] == pytest.approx(50.0)
    # A lower-scored duplicate of a matched box does not change AP (precision is interpolated).
    duplicate = {**true, "score": 0.1}
    assert evaluate_coco(gt, [true, duplicate]).metrics["AP50"] == pytest.approx(100.0)


def test_empty_detections_give_zeros_not_a_crash():
    result = evaluate_coco(_coco_gt(), [], split=SPLIT)
    assert result.metrics["AP"] == 0.0 and result.metrics["AP50_novel"] == 0.0
    assert result.per_category == {1: 0.0, 2: 0.0, 3: 0.0}


def test_unknown_image_id_is_a_clear_error():
    bad = _perfect() + [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(RegionclipError, match="image ids not in the ground truth: 99"):
        evaluate_coco(_coco_gt(), bad)


def test_unknown_category_is_ignored_with_a_note():
    extra = _perfect() + [{"image_id": 1, "category_id": 77, "bbox": [0, 0, 50, 50], "score": 0.99}]
    result = evaluate_coco(_coco_gt(), extra)
    assert result.metrics["AP"] == pytest.approx(100.0)
    assert result.notes == ["1 detections have category ids not in the ground truth and were ignored: 77"]


def test_malformed_detection_names_its_index():
    with pytest.raises(RegionclipError, match="detection 1: needs image_id"):
        evaluate_coco(_coco_gt(), [_perfect()[0], {"image_id": 1, "bbox": [0, 0, 1, 1], "score": 1}])


def test_ground_truth_from_file_without_area_or_iscrowd(tmp_path):
    gt = _coco_gt()
    for ann in gt["annotations"]:
        del ann["area"], ann["iscrowd"]
        ann["id"] = 1  # duplicate ids are renumbered, not silently merged
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    result = evaluate_coco(path, _perfect())
    assert result.metrics["AP"] == pytest.approx(100.0)
    assert "area" not in gt["annotations"][0]  # the caller's dict is not modified


def test_bad_ground_truth_files(tmp_path):
    with pytest.raises(RegionclipError, match="no such ground-truth file"):
        evaluate_coco(tmp_path / "absent.json", [])
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [\n')
    with pytest.raises(RegionclipError, match="not valid JSON"):
        evaluate_coco(broken, [])
    with pytest.raises(RegionclipError, match="missing the 'categories' list"):
        evaluate_coco({"images": [], "annotations": []}, [])


def test_split_without_ground_truth_is_nan_with_a_note():
    result = evaluate_coco(_coco_gt(), _perfect(), split={"empty": [4]})
    assert math.isnan(result.metrics["AP50_empty"])
    assert "split 'empty'" in result.notes[0]


def test_segmentation_masks():
    gt = _coco_gt()
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    detections = [
        {**d, "segmentation": ann["segmentation"]} for d, ann in zip(_perfect(), gt["annotations"])
    ]
    assert evaluate_coco(gt, detections, iou_type="segm").metrics["AP"] == pytest.approx(100.0)


def test_result_json_has_null_for_undefined_figures():
    result = EvalResult({"AP": 42.123456, "APs": math.nan}, {3: 50.0}, ["note"])
    data = json.loads(result.to_json())
    assert data == {"metrics": {"AP": 42.1235, "APs": None}, "per_category": {"3": 50.0}, "notes": ["note"]}


# ---------------------------------------------------------------------------------------------- LVIS


def _lvis_gt(with_rare: bool = True) -> dict:
    """Categories 1 (rare), 2 (common), 3 (frequent), 4 (rare, never annotated)."""
    images = [
        {"id": 1, "width": 400, "height": 400, "neg_category_ids": [2], "not_exhaustive_category_ids": []},
        {"id": 2, "width": 400, "height": 400, "neg_category_ids": [], "not_exhaustive_category_ids": [3]},
        {"id": 3, "width": 400, "height": 400, "neg_category_ids": [1, 3], "not_exhaustive_category_ids": []},
    ]
    annotations = [
        {"image_id": 1, "category_id": 3, "bbox": [10, 10, 100, 100], "area": 10000},
        {"image_id": 2, "category_id": 2, "bbox": [50, 50, 100, 100], "area": 10000},
        {"image_id": 2, "category_id": 3, "bbox": [200, 200, 100, 100], "area": 10000},
        {"image_id": 3, "category_id": 2, "bbox": [20, 20, 150, 150], "area": 22500},
    ]
    if with_rare:
        annotations.append({"image_id": 1, "category_id": 1, "bbox": [200, 200, 80, 80], "area": 6400})
    categories = [{"id": c, "name": f"c{c}", "frequency": f} for c, f in ((1, "r"), (2, "c"), (3, "f"), (4, "r"))]
    return {"images": images, "annotations": annotations, "categories": categories}


def _lvis_perfect(gt: dict) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
    ]


def test_lvis_perfect_detections_give_100_per_frequency_group():
    gt = _lvis_gt()
    result = evaluate_lvis(gt, _lvis_perfect(gt))
    for key in ("AP", "AP50", "APr", "APc", "APf"):
        assert result.metrics[key] == pytest.approx(100.0), key
    assert result.per_category == pytest.approx({1: 100.0, 2: 100.0, 3: 100.0})


def test_lvis_federated_rules():
    gt = _lvis_gt()
    detections = _lvis_perfect(gt) + [
        # Image 3 has no verdict on category 4: the detection is dropped, not a false positive.
        {"image_id": 3, "category_id": 4, "bbox": [0, 0, 50, 50], "score": 0.99},
        # Category 3 is not exhaustively annotated on image 2: an unmatched box is not penalised.
        {"image_id": 2, "category_id": 3, "bbox": [0, 300, 60, 60], "score": 0.99},
    ]
    assert evaluate_lvis(gt, detections).metrics["AP"] == pytest.approx(100.0)
    # Category 3 is known absent from image 3: a detection there is a false positive ranked first.
    false_positive = {"image_id": 3, "category_id": 3, "bbox": [300, 300, 50, 50], "score": 0.99}
    result = evaluate_lvis(gt, _lvis_perfect(gt) + [false_positive])
    assert result.metrics["APf"] < 100.0
    assert result.metrics["APr"] == pytest.approx(100.0) and result.metrics["APc"] == pytest.approx(100.0)


def test_lvis_missing_group_is_nan_and_empty_detections_zero():
    gt = _lvis_gt(with_rare=False)
    result = evaluate_lvis(gt, _lvis_perfect(gt))
    assert math.isnan(result.metrics["APr"])
    assert result.metrics["APc"] == pytest.approx(100.0) and result.metrics["AP"] == pytest.approx(100.0)
    empty = evaluate_lvis(gt, [])
    assert empty.metrics["AP"] == 0.0 and empty.metrics["APc"] == 0.0 and math.isnan(empty.metrics["APr"])


def test_lvis_keeps_only_the_best_detections_per_image():
    gt = _lvis_gt()
    # Many confident false positives of a category image 1 is known to contain push the true
    # box out of the per-image budget; with a larger budget it is found again.
    noise = [
        {"image_id": 1, "category_id": 3, "bbox": [300 + i % 5, 300, 20, 20], "score": 0.95} for i in range(5)
    ]
    detections = _lvis_perfect(gt) + noise
    assert evaluate_lvis(gt, detections, max_detections_per_image=2).per_category[1] == 0.0
    assert evaluate_lvis(gt, detections).per_category[1] == pytest.approx(100.0)


def test_lvis_needs_frequencies():
    gt = _lvis_gt()
    del gt["categories"][1]["frequency"]
    with pytest.raises(RegionclipError, match="category ids 2 lack one"):
        evaluate_lvis(gt, [])
