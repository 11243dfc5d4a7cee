import json

import pytest
import torch

from regionclip_cli.core.errors import InputError, RegionclipError
from regionclip_cli.data.proposals import (BoxFile, FileNameIndex, RandomBoxConfig, random_boxes,
                                      sanitize_boxes)


def test_random_boxes_are_inside_on_grid_and_deterministic():
    spec = RandomBoxConfig(count=500, grid=8, min_size=16, seed=3)
    boxes = random_boxes(1333, 800, spec, key="a.jpg")
    assert boxes.shape == (500, 4)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 1333).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 800).all()
    assert ((boxes[:, 2] - boxes[:, 0]) >= 8).all() and ((boxes[:, 3] - boxes[:, 1]) >= 8).all()
    on_grid = (boxes[:, :2] % 8 == 0).all()
    assert on_grid
    assert torch.equal(boxes, random_boxes(1333, 800, spec, key="a.jpg"))
    assert not torch.equal(boxes, random_boxes(1333, 800, spec, key="b.jpg"))
    # Sizes span small to whole-image scale.
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert areas.min() < 32 * 32 and areas.max() > 400 * 400


def test_sanitize_clips_and_reports_bad_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [5, 5, 1, 1], [-10, -10, -5, -5],
                          [90, 90, 200, 200], [float("nan"), 0, 1, 1], [3, 3, 3, 9]])
    kept, problems = sanitize_boxes(boxes, 100, 100, "img.jpg")
    assert kept.tolist() == [[0, 0, 10, 10], [90, 90, 100, 100]]
    assert len(problems) == 4
    assert "box #1" in problems[0] and "inverted" in problems[0]
    assert "no area" in problems[1] and "not finite" in problems[2] and "degenerate" in problems[3]
    assert all(p.startswith("img.jpg: ") for p in problems)


def test_file_name_index_matches_longest_tail_and_refuses_ambiguity(tmp_path):
    index = FileNameIndex(["val2017/a.jpg", "train2017/a.jpg", "b.jpg"])
    assert index.find(tmp_path / "val2017" / "a.jpg") == 0
    assert index.find(tmp_path / "a.jpg") is None
    assert index.find(tmp_path / "x" / "b.jpg") == 2


def test_box_file_reads_coco_json_and_jsonl(tmp_path):
    coco = {"images": [{"id": 5, "file_name": "a.png", "width": 50, "height": 40}],
            "annotations": [{"id": 1, "image_id": 5, "bbox": [1, 2, 10, 20], "category_id": 1},
                            {"id": 2, "image_id": 5, "bbox": [0, 0, 5, 5], "category_id": 1, "iscrowd": 1}],
            "categories": [{"id": 1, "name": "star"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    entry = BoxFile(tmp_path / "coco.json").entry_for(tmp_path / "imgs" / "a.png")
    assert entry.image_id == 5 and entry.boxes.tolist() == [[1, 2, 11, 22]]
    (tmp_path / "boxes.jsonl").write_text(
        json.dumps({"file": "a.png", "boxes": [[1, 1, 4, 4]]}) + "\n\n"
        + json.dumps({"file": "b.png", "detections": [{"box": [2, 2, 3, 3], "score": 1}]}) + "\n")
    boxes = BoxFile(tmp_path / "boxes.jsonl")
    assert boxes.entry_for(tmp_path / "b.png").boxes.tolist() == [[2, 2, 3, 3]]
    with pytest.raises(InputError, match="c.png: no boxes"):
        boxes.entry_for(tmp_path / "c.png")


def test_box_file_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"file": "a.png", "boxes": [[1, 2, 3, 4]]}) + "\n{oops\n")
    with pytest.raises(RegionclipError, match=r"bad.jsonl:2"):
        BoxFile(bad)
    shape = tmp_path / "shape.json"
    shape.write_text(json.dumps({"a.png": [[1, 2, 3]]}))
    with pytest.raises(RegionclipError, match="four numbers"):
        BoxFile(shape)
    with pytest.raises(RegionclipError, match="no such file"):
        BoxFile(tmp_path / "missing.json")


def test_ambiguous_names_are_refused_before_any_work(tmp_path):
    from pathlib import Path

    index = FileNameIndex(["x.png", "val/y.png", "train/y.png"])
    index.check_unambiguous([Path("a/x.png"), Path("b/val/y.png")], "--boxes f.json")
    with pytest.raises(RegionclipError, match=r"a/x\.png and b/x\.png both match the one entry 'x\.png'"):
        index.check_unambiguous([Path("a/x.png"), Path("b/x.png")], "--boxes f.json")
    with pytest.raises(RegionclipError, match=r"y\.png matches several entries \('val/y\.png', 'train/y\.png'\)"):
        index.check_unambiguous([Path("y.png")], "--boxes f.json")


def test_a_json_lines_file_with_one_line_is_read_as_json_lines(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text('{"file": "a.png", "boxes": [[1, 2, 3, 4]]}\n')
    assert BoxFile(path).entry_for(tmp_path / "a.png").boxes.tolist() == [[1, 2, 3, 4]]


def test_proposal_count_is_bounded_with_a_reason():
    from regionclip_cli.data.proposals import ProposalConfig

    with pytest.raises(RegionclipError, match=r"--num-proposals 200000: at most 10,000 per image"):
        ProposalConfig("random", None, RandomBoxConfig(count=200_000))
