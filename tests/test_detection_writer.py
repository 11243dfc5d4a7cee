import json
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from regionclip_cli.data.detections import DetectionWriter, ImageDetections


def _result(name, image_id):
    return ImageDetections(
        file=Path(f"imgs/{name}"), width=64, height=48, image_id=image_id,
        detections=[{"box": [1.0, 2.0, 11.0, 22.0], "label": "star", "category_id": 3, "score": 0.9}],
    )


def test_writer_outputs_are_valid_coco_results_and_jsonl(tmp_path):
    writer = DetectionWriter(tmp_path, save_features=True)
    features = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    writer.add(_result("a.png", 1), boxes=np.zeros((2, 4)), features=features)
    writer.add(_result("a.png", 2), boxes=np.zeros((2, 4)), features=features)  # same stem twice
    assert not (tmp_path / "detections.jsonl").exists()  # only complete files get the real name
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "detections.jsonl").read_text().splitlines()]
    assert rows[0]["file"] == "imgs/a.png" and rows[0]["detections"][0]["box"] == [1.0, 2.0, 11.0, 22.0]
    results = json.loads((tmp_path / "detections_coco.json").read_text())
    assert results[0]["bbox"] == [1.0, 2.0, 10.0, 20.0]
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "width": 64, "height": 48}, {"id": 2, "width": 64, "height": 48}],
                  "annotations": [], "categories": [{"id": 3, "name": "star"}]}
    gt.createIndex()
    assert len(gt.loadRes(str(tmp_path / "detections_coco.json")).anns) == 2
    saved = sorted(p.name for p in (tmp_path / "features").iterdir())
    assert saved == ["a.npz", "a_2.npz"]
    with np.load(tmp_path / "features" / "a.npz", allow_pickle=False) as data:
        assert np.allclose(data["features"], features) and data["boxes"].shape == (2, 4)
