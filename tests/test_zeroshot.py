"""`regionclip zeroshot` end to end with the shipped world teacher, good and bad inputs."""

import json

import numpy as np
import torch
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
    (["--proposals", "rpn"], "--proposals rpn needs --rpn FILE"),
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
    assert not (tmp_path / "out" / "settings.json").exists()  # a failed start claims no folder
    code, _, err = cli("zeroshot", image, *TINY, "--templates", "single", "--num-proposals", "5",
                       "--out", tmp_path / "out")
    assert code == 0, err


def test_empty_folder_is_a_usage_error(cli, tmp_path, cache):
    (tmp_path / "empty").mkdir()
    code, _, err = cli("zeroshot", tmp_path / "empty", *TINY, "--out", tmp_path / "out")
    assert code == 2 and "no images found" in err


FAST = [*TINY, "--templates", "single"]


def _images(small_world, count):
    return sorted((small_world / "images").iterdir())[:count]


def test_region_top1_and_best_labels_with_ground_truth_boxes(cli, small_world, tmp_path, cache):
    """`--boxes ann --gt ann`: every box's best class before thresholds/NMS, scored as region top-1."""
    ann = small_world / "annotations.json"
    out = tmp_path / "out"
    code, stdout, err = cli("zeroshot", small_world / "images", *FAST, "--boxes", ann, "--gt", ann,
                            "--out", out, "--score-threshold", "0.5")
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    gt = json.loads(ann.read_text())
    assert sum(len(r["best"]["boxes"]) for r in rows) == len(gt["annotations"])
    world_ids = {c["id"] for c in gt["categories"]}
    assert all(set(r["best"]["category_ids"]) <= world_ids for r in rows)
    summary = json.loads((out / "metrics.json").read_text())
    accuracy = summary["region_accuracy"]
    assert accuracy["counts"]["all"]["total"] == len(gt["annotations"])
    assert "region top-1 all" in stdout and "AP50" in stdout
    assert summary["settings"]["boxes"]["sha256"] and summary["settings"]["vocabulary"]["name"] == "world"


def test_a_lone_image_is_not_padded_to_a_multiple_of_32(cli, small_world, tmp_path, cache):
    """The original's CLIP backbone uses no size divisibility at test: features equal the unpadded image's."""
    from regionclip_cli.data.images import ImageTransform, load_image
    from regionclip_cli.modeling.clip import load_clip
    from regionclip_cli.modeling.region_encoder import frozen_region_encoder
    from regionclip_cli.stages.zeroshot.stage import resize_for

    noise = np.random.default_rng(0).integers(0, 256, (224, 350, 3), dtype=np.uint8)
    picture = Image.fromarray(noise)  # texture everywhere: padding changes what edge boxes see
    path = tmp_path / "wide.png"
    picture.save(path)
    out = tmp_path / "out"
    code, _, err = cli("zeroshot", path, *FAST, "--num-proposals", "40", "--save-features", "--out", out)
    assert code == 0, err
    with np.load(out / "features" / "wide.npz") as saved:
        boxes, features = torch.from_numpy(saved["boxes"]), torch.from_numpy(saved["features"])
    clip = load_clip("world-tiny")
    transform = ImageTransform(clip.mean, clip.std, resize_for(clip, None, None))
    tensor, scale = transform(load_image(path))
    assert tensor.shape[-2] % 32 != 0  # 224 x 350 resized to 82 x 128 (world-tiny's 128-px input)
    with torch.no_grad():
        alone = torch.nn.functional.normalize(frozen_region_encoder(clip.model.visual)(tensor[None], [boxes * scale]), dim=-1)
    torch.testing.assert_close(features, alone, atol=2e-5, rtol=1e-4)  # padded to 96 rows, edge boxes differ


def test_rerun_with_other_settings_is_refused_and_overwrite_leaves_no_stale_files(cli, small_world, tmp_path, cache):
    images = _images(small_world, 2)
    out = tmp_path / "out"
    code, _, err = cli("zeroshot", *images, *FAST, "--num-proposals", "10", "--save-vis", "--out", out)
    assert code == 0, err
    settings = json.loads((out / "settings.json").read_text())
    assert settings["model"] == "world-tiny" and settings["proposals"].startswith("random:10")
    assert settings["version"] and settings["score_threshold"] == 0.001
    assert len(list((out / "pictures").iterdir())) == 2
    code, _, err = cli("zeroshot", *images, *FAST, "--num-proposals", "12", "--out", out)
    assert code == 2 and "other settings (proposals, pictures" in err and "--overwrite" in err
    code, _, err = cli("zeroshot", *images, *FAST, "--num-proposals", "12", "--out", out, "--overwrite")
    assert code == 0, err
    assert not (out / "pictures").exists()  # the old run's pictures do not sit beside new detections
    assert json.loads((out / "settings.json").read_text())["proposals"].startswith("random:12")


def test_same_file_name_in_two_folders_is_refused_against_one_entry(cli, small_world, tmp_path, cache):
    source = _images(small_world, 2)
    for folder, image in zip("ab", source):
        (tmp_path / "imgs" / folder).mkdir(parents=True)
        Image.open(image).save(tmp_path / "imgs" / folder / "x.png")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"x.png": [[10, 10, 60, 60]]}))
    code, _, err = cli("zeroshot", tmp_path / "imgs", *FAST, "--boxes", boxes, "--out", tmp_path / "out")
    assert code == 2 and "both match the one entry 'x.png'" in err
    assert not (tmp_path / "out").exists()
    boxes.write_text(json.dumps({"a/x.png": [[10, 10, 60, 60]], "b/x.png": [[0, 0, 30, 30]]}))
    code, _, err = cli("zeroshot", tmp_path / "imgs", *FAST, "--boxes", boxes, "--out", tmp_path / "out")
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "out" / "detections.jsonl").read_text().splitlines()]
    assert len({r["image_id"] for r in rows}) == 2


def test_too_many_proposals_are_refused_before_any_work(cli, small_world, tmp_path, cache):
    code, _, err = cli("zeroshot", _images(small_world, 1)[0], *FAST, "--num-proposals", "200000",
                       "--out", tmp_path / "out")
    assert code == 2 and "at most 10,000" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_ctrl_c_says_what_was_written_and_the_rerun_finishes(cli, small_world, tmp_path, cache, monkeypatch):
    from regionclip_cli.stages.zeroshot import stage

    out = tmp_path / "out"
    args = ["zeroshot", small_world / "images", *FAST, "--num-proposals", "10", "--out", out]
    real_score, calls = stage._score, []

    def interrupted_on_the_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_score(*a, **k)

    monkeypatch.setattr(stage, "_score", interrupted_on_the_third)
    code, _, err = cli(*args)
    assert code == 130
    assert "interrupted after 2 of 8 images" in err and "rerun the same command" in err
    assert not (out / "detections.jsonl").exists() and (out / ".detections.jsonl.partial").is_file()
    monkeypatch.setattr(stage, "_score", real_score)
    code, stdout, err = cli(*args)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == [str(p) for p in sorted((small_world / "images").iterdir())]
    assert json.loads((out / "metrics.json").read_text())["resumed_images"] == 2


def test_random_proposals_say_what_they_are_for_and_pictures_do_not_overlap(cli, small_world, tmp_path, cache):
    from regionclip_cli.stages.regions import best_separated

    code, _, err = cli("zeroshot", _images(small_world, 1)[0], *FAST, "--num-proposals", "10",
                       "--out", tmp_path / "out")
    assert code == 0 and "random proposals are good for pseudo labels and region features" in err
    detections = [{"box": [0, 0, 10, 10], "score": 0.9}, {"box": [1, 0, 10, 10], "score": 0.95},
                  {"box": [20, 20, 30, 30], "score": 0.5}, {"box": [40, 40, 50, 50], "score": 0.1}]
    assert [d["score"] for d in best_separated(detections, 0.3)] == [0.95, 0.5]


def test_detect_python_api_on_paths_pil_and_arrays(small_world, cache):
    import sys

    import regionclip_cli

    path = _images(small_world, 1)[0]
    picture = Image.open(path).convert("RGB")
    options = dict(model="world-tiny", device="cpu", templates="single", num_proposals=15)
    from_path = regionclip_cli.detect(path, "world", **options)
    from_memory = regionclip_cli.detect([picture, picture], ["circle", "square", "star"], **options)
    from_array = regionclip_cli.detect(np.asarray(picture), ["circle", "square", "star"], **options)
    assert from_path[0]["file"] == str(path) and (from_path[0]["width"], from_path[0]["height"]) == (224, 224)
    assert [r["file"] for r in from_memory] == [None, None]
    assert from_memory[0]["detections"] == from_array[0]["detections"]  # same pixels, same boxes
    assert {d["label"] for d in from_memory[0]["detections"]} <= {"circle", "square", "star"}
    boxed = regionclip_cli.detect([picture], "circle,square", boxes=[[[10, 10, 100, 100]]], **options)
    assert {tuple(d["box"]) for d in boxed[0]["detections"]} == {(10.0, 10.0, 100.0, 100.0)}
    assert "torch" in sys.modules


def test_importing_the_package_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, regionclip_cli; regionclip_cli.__version__; sys.exit(int('torch' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _readme_example() -> str:
    """The README's "Python API" block that uses the building blocks, as written there."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Python API"):]
    blocks = [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]
    return next(block for block in blocks if "RegionEncoder(" in block)


def test_readme_python_api_example_runs(small_world, cache):
    """The README's "Python API" example, run as written on a real world image."""
    import torch

    from regionclip_cli.data.images import ImageTransform, load_image
    from regionclip_cli.modeling.clip import load_clip

    clip = load_clip("world-tiny")
    tensor, scale = ImageTransform(clip.mean, clip.std)(load_image(_images(small_world, 1)[0]))
    namespace = {"images": tensor[None], "boxes_per_image": torch.tensor([[0.0, 0.0, 100.0, 80.0]]) * scale}
    with torch.no_grad():
        exec(_readme_example(), namespace)
    assert namespace["embeddings"].shape == (1, 128) and namespace["classes"].shape == (2, 128)


def test_batch_size_changes_speed_not_results(cli, small_world, tmp_path, cache):
    """Issue 13.1: any --batch-size works (the model chunks what it gets); equal-size images need no padding."""
    outs = []
    for batch in ("1", "8"):
        out = tmp_path / f"b{batch}"
        code, _, err = cli("zeroshot", small_world / "images", *FAST, "--num-proposals", "10",
                           "--batch-size", batch, "--out", out)
        assert code == 0, err
        outs.append([json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()])
    for one, eight in zip(*outs):
        assert [d["label"] for d in one["detections"]] == [d["label"] for d in eight["detections"]]
        assert [d["score"] for d in one["detections"]] == pytest.approx([d["score"] for d in eight["detections"]], abs=1e-4)
