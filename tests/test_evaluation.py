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


def test_unknown_category_is_an_error_not_a_silent_low_ap():
    extra = _perfect() + [{"image_id": 1, "category_id": 77, "bbox": [0, 0, 50, 50], "score": 0.99}]
    with pytest.raises(RegionclipError, match="1 detections have category ids not in the ground truth: 77"):
        evaluate_coco(_coco_gt(), extra)


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
    with pytest.raises(RegionclipError, match="absent.json: no such file"):
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
    assert data == {"kind": "coco", "images_evaluated": None, "images_in_ground_truth": None,
                    "metrics": {"AP": 42.1235, "APs": None}, "per_category": {"3": 50.0}, "notes": ["note"]}


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


# ------------------------------------------------------------------ evaluate_detections (checked API)

from regionclip_cli.data.vocab import load_vocabulary  # noqa: E402
from regionclip_cli.evaluation import check_vocabulary, evaluate_detections, load_ground_truth  # noqa: E402
from regionclip_cli.synthetic.categories import WORLD_CATEGORIES  # noqa: E402


def _world_gt(num_images: int = 12, seed: int = 0) -> dict:
    """A world-format ground truth (20 categories tagged base/novel) with 1-4 random boxes per image."""
    import random

    rng = random.Random(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id - 1:06d}.png", "width": 224, "height": 224})
        for _ in range(rng.randint(1, 4)):
            w, h = rng.uniform(12, 110), rng.uniform(12, 110)
            x, y = rng.uniform(0, 224 - w), rng.uniform(0, 224 - h)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0, "category_id": rng.choice(WORLD_CATEGORIES).id})
    categories = [{"id": c.id, "name": c.name, "supercategory": "shape", "synonyms": list(c.synonyms),
                   "split": c.split} for c in WORLD_CATEGORIES]
    return {"images": images, "annotations": annotations, "categories": categories}


def _noisy_detections(gt: dict, seed: int = 1) -> list[dict]:
    """Jittered copies of the ground truth with random labels and scores, plus false positives."""
    import random

    rng = random.Random(seed)
    ids = [c["id"] for c in gt["categories"]]
    out = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        for _ in range(3):
            label = ann["category_id"] if rng.random() < 0.5 else rng.choice(ids)
            jitter = [x + rng.uniform(-8, 8), y + rng.uniform(-8, 8), w * rng.uniform(0.8, 1.2), h * rng.uniform(0.8, 1.2)]
            out.append({"image_id": ann["image_id"], "category_id": label, "bbox": jitter, "score": rng.random()})
    for img in gt["images"]:
        out.append({"image_id": img["id"], "category_id": rng.choice(ids), "bbox": [5, 5, 40, 40], "score": rng.random()})
    return out


def test_agrees_with_pycocotools_run_directly_on_the_same_files(tmp_path):
    import contextlib
    import io

    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = _world_gt(num_images=20)
    detections = _noisy_detections(gt)
    gt_path, dt_path = tmp_path / "ann.json", tmp_path / "detections_coco.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(detections))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(dt_path)), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats * 100
    result = evaluate_detections(dt_path, gt_path, split="world")
    for key, index in (("AP", 0), ("AP50", 1), ("AP75", 2), ("APs", 3), ("APm", 4), ("APl", 5)):
        assert result.metrics[key] == pytest.approx(stats[index], abs=1e-9), key
    # Split AP50 = mean of the split's per-category AP50 from the same precision array.
    precision = evaluator.eval["precision"][0, :, :, 0, -1]  # IoU 0.5, all areas, 100 detections
    novel = {c.id for c in WORLD_CATEGORIES if c.split == "novel"}
    columns = [k for k, cid in enumerate(evaluator.params.catIds) if cid in novel and (precision[:, k] > -1).all()]
    assert result.metrics["AP50_novel"] == pytest.approx(np.mean(precision[:, columns]) * 100, abs=1e-9)
    assert result.kind == "coco" and result.images_evaluated == result.images_in_ground_truth == 20
    assert not any(note.startswith("evaluated on") for note in result.notes)


def test_split_is_read_from_the_ground_truths_category_tags():
    gt = _world_gt()
    detections = _noisy_detections(gt)
    tagged = evaluate_detections(detections, gt)  # no split given: world categories carry "split"
    named = evaluate_detections(detections, gt, split="world")
    assert {"AP50_base", "AP50_novel"} <= set(tagged.metrics)
    assert tagged.metrics == pytest.approx(named.metrics, nan_ok=True)


def test_ground_truth_categories_not_matching_the_vocabulary_is_an_error():
    # Issue 12.4: world annotations scored with the default COCO vocabulary: ids collide
    # (COCO "person" is 1, world "circle" is 1) and the AP was a silent 1.3.
    gt = _world_gt()
    with pytest.raises(RegionclipError, match=r"category id 1 is 'person' in the vocabulary but 'circle' "
                                              r"in the ground truth .*--vocab world"):
        check_vocabulary(load_vocabulary("coco"), gt, where="--gt ann.json")
    with pytest.raises(RegionclipError, match="do not match the vocabulary 'coco'"):
        evaluate_detections(_noisy_detections(gt), gt, vocabulary=load_vocabulary("coco"))
    with pytest.raises(RegionclipError, match="do not match the vocabulary 'coco-ovd'"):
        evaluate_detections(_noisy_detections(gt), gt, split="coco-ovd")
    check_vocabulary(load_vocabulary("world"), gt)  # the right one passes
    custom = load_vocabulary("circle,square").aligned_to(gt["categories"])
    check_vocabulary(custom, gt)
    with pytest.raises(RegionclipError, match="no category id in common"):
        check_vocabulary(load_vocabulary("apple,pear"), {**gt, "categories": [{"id": 7, "name": "x"}]})


def test_same_names_under_other_ids_is_an_error_too():
    gt = _world_gt()
    for cat in gt["categories"]:
        cat["id"] += 100
    for ann in gt["annotations"]:
        ann["category_id"] += 100
    with pytest.raises(RegionclipError, match="no category id in common .*a file of its category names"):
        check_vocabulary(load_vocabulary("world"), gt)
    names = load_vocabulary(",".join(c.name for c in WORLD_CATEGORIES)).aligned_to(gt["categories"])
    check_vocabulary(names, gt)  # a file of the names takes the ground truth's ids


def test_lvis_agrees_with_faster_coco_eval_run_directly(tmp_path):
    import contextlib
    import io

    from faster_coco_eval import COCO, COCOeval_faster

    gt = _lvis_gt()
    for number, ann in enumerate(gt["annotations"], start=1):
        ann["id"] = number  # the library run directly needs ids
    detections = _lvis_perfect(gt)[1:] + [
        {"image_id": 1, "category_id": 3, "bbox": [12, 14, 90, 100], "score": 0.4},
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 60, 60], "score": 0.95},
        {"image_id": 3, "category_id": 3, "bbox": [300, 300, 50, 50], "score": 0.5},
    ]
    gt_path, dt_path = tmp_path / "lvis.json", tmp_path / "dt.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(detections))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        evaluator = COCOeval_faster(coco_gt, coco_gt.loadRes(str(dt_path)), iouType="bbox", lvis_style=True)
        evaluator.params.maxDets = [300]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats_as_dict
    result = evaluate_detections(dt_path, gt_path)
    assert result.kind == "lvis"
    for ours, theirs in (("AP", "AP_all"), ("AP50", "AP_50"), ("APr", "APr"), ("APc", "APc"), ("APf", "APf")):
        assert result.metrics[ours] == pytest.approx(stats[theirs] * 100, abs=1e-9), ours


def test_lvis_names_and_synonyms_match_the_cleaned_vocabulary_names():
    lvis = load_vocabulary("lvis")
    gt = {"images": [], "annotations": [], "categories": [
        {"id": 3, "name": "aeroplane", "frequency": "f"}, {"id": 1, "name": "aerosol_can", "frequency": "c"}]}
    check_vocabulary(lvis, gt)  # 'aeroplane' is a synonym of id 3, 'aerosol_can' the raw LVIS name
    gt["categories"][0]["name"] = "alarm_clock"
    with pytest.raises(RegionclipError, match="category id 3 is 'airplane' in the vocabulary but 'alarm_clock'"):
        check_vocabulary(lvis, gt)


def test_vocabulary_classes_the_ground_truth_lacks_are_left_out_with_a_note():
    gt = _world_gt()
    world = load_vocabulary("world")
    larger = type(world)(world.name, world.names + ("kite",), world.category_ids + (999,),
                         world.synonyms + (("kite",),), world.splits)
    detections = _perfect_world(gt) + [{"image_id": 1, "category_id": 999, "bbox": [0, 0, 9, 9], "score": 1.0}]
    result = evaluate_detections(detections, gt, vocabulary=larger)
    assert result.metrics["AP50"] == pytest.approx(100.0)
    assert any("1 detections of 1 vocabulary classes the ground truth does not annotate" in n and "kite" in n
               for n in result.notes)
    with pytest.raises(RegionclipError, match="category ids not in the ground truth: 999"):
        evaluate_detections(detections, gt)  # without a vocabulary that explains them


def _perfect_world(gt: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt["annotations"]]


def test_ground_truth_categories_outside_the_vocabulary_are_not_scored():
    gt = _world_gt()
    base = load_vocabulary("world").subset("base")
    detections = [d for d in _perfect_world(gt) if d["category_id"] in base.category_ids]
    result = evaluate_detections(detections, gt, vocabulary=base)
    assert result.metrics["AP50"] == pytest.approx(100.0)  # novel boxes are not counted as misses
    assert any("not in the vocabulary and were not scored" in n for n in result.notes)


def test_a_subset_of_the_ground_truth_images_says_n_of_m():
    # Issue 12.6: scoring 2 of 64 annotated images printed AP 29.2 without a word.
    gt = _world_gt(num_images=8)
    run = {1, 2}
    detections = [d for d in _perfect_world(gt) if d["image_id"] in run]
    result = evaluate_detections(detections, gt, image_ids=run)
    assert result.metrics["AP50"] == pytest.approx(100.0)
    assert result.images_evaluated == 2 and result.images_in_ground_truth == 8
    assert "evaluated on 2 of 8 ground-truth images" in result.notes[0]
    assert result.to_dict()["images_evaluated"] == 2
    with pytest.raises(RegionclipError, match="image ids 99 were run but are not in the ground truth"):
        evaluate_detections(detections, gt, image_ids={1, 99})


def test_detections_jsonl_gives_the_images_run_and_labels_that_are_checked(tmp_path):
    gt = _world_gt(num_images=6)
    names = {c.id: c.name for c in WORLD_CATEGORIES}
    lines = []
    for image_id in (1, 2, 3):
        dets = [{"box": [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]],
                 "label": names[a["category_id"]], "category_id": a["category_id"], "score": 0.8}
                for a in gt["annotations"] if a["image_id"] == image_id]
        lines.append({"file": f"{image_id - 1:06d}.png", "width": 224, "height": 224, "image_id": image_id,
                      "detections": dets})
    path = tmp_path / "detections.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = evaluate_detections(path, gt)
    assert result.metrics["AP50"] == pytest.approx(100.0)
    assert result.images_evaluated == 3 and "evaluated on 3 of 6" in result.notes[0]
    # Same ids, other names: made with another vocabulary.
    coco_names = load_vocabulary("coco")
    for line in lines:
        for det in line["detections"]:
            det["label"] = coco_names.name_of(det["category_id"])
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with pytest.raises(RegionclipError, match="do not match the vocabulary 'of the detections file'"):
        evaluate_detections(path, gt)


def test_an_annotation_file_passed_as_detections_is_named(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(_world_gt()))
    with pytest.raises(RegionclipError, match="this is an annotation file"):
        evaluate_detections(path, _world_gt())


def test_ground_truth_image_without_file_name_is_one_clean_line():
    # Issue 12.7: `--gt` with an image lacking file_name was a KeyError traceback.
    gt = _world_gt(num_images=3)
    del gt["images"][1]["file_name"]
    with pytest.raises(RegionclipError, match=r"--gt a\.json: images\[1\] has no usable 'file_name'"):
        load_ground_truth(gt, where="--gt a.json", need_file_names=True)
    assert len(load_ground_truth(gt)["images"]) == 3  # AP alone does not need file names


def test_lvis_ground_truth_is_evaluated_the_lvis_way():
    gt = _lvis_gt()
    result = evaluate_detections(_lvis_perfect(gt), gt)
    assert result.kind == "lvis" and result.metrics["APr"] == pytest.approx(100.0)


def test_lvis_rules_only_on_a_federated_ground_truth():
    # faster-coco-eval's LVIS mode drops detections of classes an image neither has nor lists as
    # absent: on a COCO-style file that would hide false positives.
    gt = _lvis_gt()
    for img in gt["images"]:
        del img["neg_category_ids"], img["not_exhaustive_category_ids"]
    false_positive = {"image_id": 3, "category_id": 3, "bbox": [300, 300, 50, 50], "score": 0.99}
    from regionclip_cli.data.vocab import Vocabulary

    vocabulary = Vocabulary("mine", ("c1", "c2", "c3", "c4"), (1, 2, 3, 4), splits={"r": (1, 4), "c": (2,), "f": (3,)})
    result = evaluate_detections(_lvis_perfect(gt) + [false_positive], gt, vocabulary=vocabulary)
    assert result.kind == "coco" and result.metrics["AP50_f"] < 100.0
    assert any("not federated like LVIS" in note for note in result.notes)


# ------------------------------------------------------------------------------ region top-1 accuracy

from regionclip_cli.evaluation.chance import random_score_levels  # noqa: E402
from regionclip_cli.evaluation.region_accuracy import RECOGNITION_NOTE, region_accuracy  # noqa: E402


def _records(gt: dict, label_of) -> list[dict]:
    """One record per image, boxes = its ground-truth boxes (rounded as the JSONL does)."""
    records = []
    for img in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        records.append({
            "file": f"world/images/{img['file_name']}",
            "boxes": [[round(x, 2), round(y, 2), round(x + w, 2), round(y + h, 2)] for x, y, w, h in (a["bbox"] for a in anns)],
            "category_ids": [label_of(a) for a in anns],
        })
    return records


def test_region_top1_counts_right_labels_per_split_and_size():
    gt = _world_gt(num_images=10)
    novel = {c.id for c in WORLD_CATEGORIES if c.split == "novel"}
    # Right on every base box, wrong (shifted id) on every novel box.
    records = _records(gt, lambda a: a["category_id"] if a["category_id"] not in novel else a["category_id"] % 20 + 1)
    acc = region_accuracy(records, gt, vocabulary=load_vocabulary("world"))
    n_novel = sum(a["category_id"] in novel for a in gt["annotations"])
    assert acc.groups["all"].total == len(gt["annotations"])
    assert acc.groups["novel"].total == n_novel and acc.groups["novel"].correct == 0
    assert acc.groups["base"].accuracy == pytest.approx(100.0)
    sizes = sum(acc.groups[s].total for s in ("small", "medium", "large"))
    assert sizes == acc.groups["all"].total
    small = sum(a["area"] < 32 ** 2 for a in gt["annotations"])
    assert acc.groups["small"].total == small
    assert acc.chance == pytest.approx(5.0) and acc.missed_gt == 0 and acc.unmatched_boxes == 0
    data = acc.to_dict()
    assert data["counts"]["novel"] == {"correct": 0, "total": n_novel} and data["chance"] == 5.0
    assert "ranks recognition, not detection" in RECOGNITION_NOTE and acc.notes[-1] == RECOGNITION_NOTE


def test_region_top1_matches_only_copies_of_ground_truth_boxes():
    gt = _world_gt(num_images=4)
    records = _records(gt, lambda a: a["category_id"])
    records[0]["boxes"].append([1, 1, 30, 30])  # a proposal that is no ground-truth box
    records[0]["category_ids"].append(1)
    shifted = records[1]["boxes"][0]
    records[1]["boxes"][0] = [shifted[0] + 3, shifted[1], shifted[2] + 3, shifted[3]]  # IoU < 0.99
    acc = region_accuracy(records[:2], gt)
    assert acc.unmatched_boxes == 2 and acc.missed_gt == 1
    assert acc.groups["all"].accuracy == pytest.approx(100.0)
    assert acc.images_evaluated == 2
    assert any("evaluated on 2 of 4 ground-truth images" in n for n in acc.notes)
    assert any("1 ground-truth boxes had no identical proposal" in n for n in acc.notes)


def test_region_top1_refuses_records_that_do_not_belong():
    gt = _world_gt(num_images=3)
    records = _records(gt, lambda a: a["category_id"])
    with pytest.raises(RegionclipError, match="matches no image of the ground truth"):
        region_accuracy([{**records[0], "file": "elsewhere/zzz.png"}], gt)
    with pytest.raises(RegionclipError, match="category ids 77 are not in the ground truth"):
        region_accuracy([{**records[0], "category_ids": [77] * len(records[0]["boxes"])}], gt)
    with pytest.raises(RegionclipError, match="do not match the vocabulary 'coco'"):
        region_accuracy(records, gt, vocabulary=load_vocabulary("coco"))


def test_random_scores_reach_a_sizeable_ap50_but_chance_top1():
    # DESIGN.md: with ground-truth boxes as proposals, AP50 over 20 classes is about 8 for uniformly
    # random scores; top-1 is 1/20. Small AP differences between models mean nothing here.
    gt = _world_gt(num_images=60, seed=3)
    levels = random_score_levels(gt, split="world", seeds=(0, 1))
    assert 4.0 < levels["AP50"] < 14.0
    assert 2.5 < levels["top1_all"] < 8.0
    assert {"AP50_novel", "AP50_base", "top1_novel", "top1_small"} <= set(levels)


# ------------------------------------------------------------------------------- regionclip evaluate


def _files(tmp_path, gt: dict, detections) -> tuple:
    gt_path, dt_path = tmp_path / "ann.json", tmp_path / "detections_coco.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(detections))
    return gt_path, dt_path


def test_evaluate_command_prints_a_table_and_writes_json(cli, tmp_path):
    gt = _world_gt(num_images=6)
    gt_path, dt_path = _files(tmp_path, gt, _perfect_world(gt))
    regions = tmp_path / "regions.jsonl"
    regions.write_text("\n".join(json.dumps(r) for r in _records(gt, lambda a: a["category_id"])) + "\n")
    out = tmp_path / "metrics.json"
    code, stdout, err = cli("evaluate", dt_path, "--gt", gt_path, "--split", "world", "--regions", regions,
                            "--out", out)
    assert code == 0, err
    assert "AP50 novel" in stdout and "top-1 novel" in stdout and "ranks recognition" in stdout
    report = json.loads(out.read_text())
    assert report["detection"]["metrics"]["AP50"] == 100.0
    assert report["region_accuracy"]["top1"]["all"] == 100.0 and report["inputs"]["split"] == "world"


def test_evaluate_command_refuses_files_that_do_not_belong_together(cli, tmp_path):
    gt = _world_gt(num_images=4)
    gt_path, dt_path = _files(tmp_path, gt, _perfect_world(gt))
    code, _, err = cli("evaluate", dt_path, "--gt", gt_path, "--vocab", "coco")
    assert code == 2 and "category id 1 is 'person' in the vocabulary but 'circle'" in err
    assert len(err.strip().splitlines()) == 1
    _, other = _files(tmp_path, gt, [{"image_id": 42, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1.0}])
    code, _, err = cli("evaluate", other, "--gt", gt_path)
    assert code == 2 and "image ids not in the ground truth: 42" in err
    _, broken = _files(tmp_path, gt, [{"image_id": 1, "bbox": [0, 0, 5, 5], "score": 1.0}])
    code, _, err = cli("evaluate", broken, "--gt", gt_path)
    assert code == 2 and f"{broken}: detection 0 lacks category_id" in err
    regions = tmp_path / "regions.jsonl"
    regions.write_text('{"file": "000000.png"}\n')
    _, dt_path = _files(tmp_path, gt, _perfect_world(gt))
    code, _, err = cli("evaluate", dt_path, "--gt", gt_path, "--regions", regions)
    assert code == 2 and f"--regions {regions}:1: expected an object" in err


def test_evaluate_command_says_when_only_some_images_have_detections(cli, tmp_path):
    gt = _world_gt(num_images=8)
    some = [d for d in _perfect_world(gt) if d["image_id"] <= 2]
    gt_path, dt_path = _files(tmp_path, gt, some)
    code, stdout, _ = cli("evaluate", dt_path, "--gt", gt_path)
    assert code == 0 and "detections cover 2 of 8 ground-truth images" in stdout
    code, stdout, _ = cli("evaluate", dt_path, "--gt", gt_path, "--only-detected-images")
    assert code == 0 and "evaluated on 2 of 8 ground-truth images" in stdout
def test_evaluate_takes_region_records_from_a_zeroshot_jsonl(cli, tmp_path):
    gt = _world_gt(num_images=4)
    rows = []
    for record, img in zip(_records(gt, lambda a: a["category_id"]), gt["images"]):
        rows.append({"file": record["file"], "width": 224, "height": 224, "image_id": img["id"],
                     "detections": [], "best": {"boxes": record["boxes"], "category_ids": record["category_ids"]}})
    path = tmp_path / "detections.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    gt_path = tmp_path / "ann.json"
    gt_path.write_text(json.dumps(gt))
    code, stdout, err = cli("evaluate", path, "--gt", gt_path)
    assert code == 0, err
    assert "top-1 all" in stdout and "100.0" in stdout and "top-1 chance" in stdout


def test_zeroshot_refuses_ground_truth_of_another_vocabulary_before_loading_a_model(cli, small_world, tmp_path):
    # Issue 12.4: world annotations with the default --vocab coco printed AP 1.3.
    ann = small_world / "annotations.json"
    code, _, err = cli("zeroshot", small_world / "images", "--boxes", ann, "--gt", ann, "--out", tmp_path / "o",
                       "--model", "world-tiny", "--device", "cpu", "-q")
    assert code == 2 and "do not match the vocabulary 'coco'" in err and "--vocab world" in err


def test_zeroshot_gt_image_without_file_name_is_one_line(cli, small_world, tmp_path):
    # Issue 12.7: a KeyError traceback, exit 1.
    gt = json.loads((small_world / "annotations.json").read_text())
    del gt["images"][0]["file_name"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(gt))
    code, _, err = cli("zeroshot", small_world / "images", "--gt", bad, "--vocab", "world", "--out", tmp_path / "o",
                       "--model", "world-tiny", "--device", "cpu", "-q")
    assert code == 2 and "'file_name'" in err and "images[0]" in err and len(err.strip().splitlines()) == 1


def test_zeroshot_on_some_of_the_ground_truth_images_says_n_of_m(cli, small_world, tmp_path, monkeypatch):
    # Issue 12.6: 2 of 64 annotated images scored AP 29.2 without a word about the subset.
    monkeypatch.setenv("REGIONCLIP_CACHE", str(tmp_path / "cache"))
    ann = small_world / "annotations.json"
    images = sorted((small_world / "images").iterdir())[:2]
    out = tmp_path / "o"
    code, stdout, err = cli("zeroshot", *images, "--boxes", ann, "--gt", ann, "--vocab", "world", "--out", out,
                            "--model", "world-tiny", "--device", "cpu", "--templates", "single", "-q")
    assert code == 0, err
    assert "evaluated on 2 of 8 ground-truth images" in " ".join((stdout + err).split())
    summary = json.loads((out / "metrics.json").read_text())
    assert "evaluated on 2 of 8" in json.dumps(summary)


def test_random_labels_keep_localisation_and_lose_recognition():
    """Perfect boxes with random classes: AP50 falls from 100 to about what 1 class in 20 earns."""
    from regionclip_cli.evaluation.chance import random_label_levels

    gt = _world_gt(num_images=8)
    vocabulary = load_vocabulary("world")
    perfect = _perfect_world(gt)
    assert evaluate_detections(perfect, gt, vocabulary=vocabulary).metrics["AP50"] == pytest.approx(100.0)
    levels = random_label_levels(perfect, gt, vocabulary=vocabulary)
    assert 0.0 <= levels["AP50"] < 25.0
    assert levels == random_label_levels(perfect, gt, vocabulary=vocabulary)  # seeded: reproducible
