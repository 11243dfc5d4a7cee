"""`regionclip zeroshot` end to end with the shipped world teacher, good and bad inputs."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

TINY = ["--model", "world-tiny", "--vocab", "world", "--device", "cpu", "-q"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REGIONCLIP_CACHE", str(tmp_path / "cache"))


def test_ground_truth_boxes_evaluated(cli, small_world, tmp_path, cache):
    ann = small_world / "annotations.json"
    out = tmp_path / "out"
    code, stdout, err = cli("zeroshot", small_world / "images", *TINY, "--boxes", ann, "--gt", ann,
                            "--out", out, "--save-vis")
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    gt = COCO(str(ann))
    assert {r["image_id"] for r in rows} == set(gt.getImgIds())
    for row in rows:
        for det in row["detections"]:
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 < x2 <= row["width"] and 0 <= y1 < y2 <= row["height"]
            assert 0.001 < det["score"] <= 1
    gt.loadRes(str(out / "detections_coco.json"))
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert {"AP", "AP50", "AP50_base", "AP50_novel"} <= set(metrics)
    assert 0 <= metrics["AP50"] <= 100
    assert len(list((out / "pictures").iterdir())) == 8
    assert "AP50" in stdout


def test_random_proposals_and_features(cli, small_world, tmp_path, cache):
    out = tmp_path / "out"
    images = sorted((small_world / "images").iterdir())[:2]
    code, _, err = cli("zeroshot", *images, *TINY, "--num-proposals", "20", "--save-features",
                       "--max-detections", "5", "--out", out)
    assert code == 0, err
    saved = sorted((out / "features").iterdir())
    assert len(saved) == 2
    with np.load(saved[0], allow_pickle=False) as data:
        assert data["boxes"].shape == (20, 4) and data["features"].shape[0] == 20
        assert np.allclose(np.linalg.norm(data["features"], axis=1), 1.0, atol=1e-4)
    rows = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert all(len(r["detections"]) <= 5 for r in rows)


def _bad_and_odd_images(folder, source):
    folder.mkdir()
    base = Image.open(source).convert("RGB")
    base.save(folder / "good.png")
    base.convert("L").save(folder / "gray.png")
    base.convert("RGBA").save(folder / "rgba.png")
    wide = (np.asarray(base.convert("L"), dtype=np.uint16) * 16)
    Image.fromarray(wide).save(folder / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    base.save(folder / "rotated.jpg", exif=exif)
    data = (folder / "rotated.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("not an image")


def test_bad_images_are_named_and_the_rest_processed(cli, small_world, tmp_path, cache):
    folder = tmp_path / "mixed"
    _bad_and_odd_images(folder, sorted((small_world / "images").iterdir())[0])
    out = tmp_path / "out"
    code, _, err = cli("zeroshot", folder, tmp_path / "missing.png", *TINY, "--num-proposals", "8",
                       "--out", out)
    assert code == 1
    assert "truncated.jpg" in err and "notes.jpg" in err and "missing.png" in err
    assert "Traceback" not in err
    rows = {json.loads(line)["file"].split("/")[-1]: json.loads(line)
            for line in (out / "detections.jsonl").read_text().splitlines()}
    assert set(rows) == {"good.png", "gray.png", "rgba.png", "deep16.png", "rotated.jpg"}
    assert (rows["rotated.jpg"]["width"], rows["rotated.jpg"]["height"]) == (224, 224)


def test_bad_boxes_are_skipped_with_one_line_each(cli, small_world, tmp_path, cache):
    image = sorted((small_world / "images").iterdir())[0]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({image.name: [[10, 10, 60, 60], [50, 50, 20, 20], [300, 300, 400, 400],
                                              [-20, -20, 40, 40]]}))
    out = tmp_path / "out"
    code, _, err = cli("zeroshot", image, *TINY, "--boxes", boxes, "--out", out)
    assert code == 1
    assert "box #1" in err and "inverted" in err and "box #2" in err and "no area" in err
    row = json.loads((out / "detections.jsonl").read_text())
    assert all(d["box"][0] >= 0 for d in row["detections"])


@pytest.mark.parametrize("args, message", [
    (["--vocab", "wrld"], "did you mean 'world'"),
    (["--boxes", "nope.json"], "--boxes nope.json: no such file"),
    (["--proposals", "rpn"], "not built yet"),
    (["--model", "ViT-B-32"], "ViT-B-32"),
])
def test_usage_errors_are_one_line_and_exit_2(cli, small_world, tmp_path, cache, args, message):
    image = sorted((small_world / "images").iterdir())[0]
    options = [a for a in TINY if a not in ("--vocab", "world")] if "--vocab" in args else TINY
    if "--model" in args:
        options = ["--vocab", "world", "-q"]
    code, _, err = cli("zeroshot", image, *options, *args, "--out", tmp_path / "out")
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_weights_that_are_not_a_checkpoint(cli, small_world, tmp_path, cache):
    bogus = tmp_path / "weights.pt"
    bogus.write_bytes(b"\x00" * 100)
    image = sorted((small_world / "images").iterdir())[0]
    code, _, err = cli("zeroshot", image, *TINY, "--weights", bogus, "--out", tmp_path / "out")
    assert code == 2 and "weights.pt" in err


def test_empty_folder_is_a_usage_error(cli, tmp_path, cache):
    (tmp_path / "empty").mkdir()
    code, _, err = cli("zeroshot", tmp_path / "empty", *TINY, "--out", tmp_path / "out")
    assert code == 2 and "no images found" in err
