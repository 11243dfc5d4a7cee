"""`regionclip rpn` and `regionclip finetune` end to end on a few synthetic-world images."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from regionclip_cli.modeling.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from regionclip_cli.modeling.clip import load_clip
from regionclip_cli.modeling.rpn import RPNConfig, build_proposal_network, rpn_checkpoint

TINY_RPN = RPNConfig(anchor_sizes=[16, 32, 64], batch_size_per_image=32, pre_nms_top_n_test=300,
                     post_nms_top_n_test=50)


@pytest.fixture(autouse=True)
def text_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("REGIONCLIP_CACHE", str(tmp_path_factory.getbasetemp() / "text-cache"))


@pytest.fixture(scope="module")
def rpn_file(tmp_path_factory):
    """An (untrained) RPN on the world-tiny trunk: enough proposals to train a detector on."""
    torch.manual_seed(0)
    clip = load_clip("world-tiny", random_init=True)
    network = build_proposal_network(TINY_RPN, clip_visual=clip.model.visual, mean=clip.mean, std=clip.std)
    path = tmp_path_factory.mktemp("rpn") / "rpn.pt"
    save_checkpoint(path, rpn_checkpoint(network, "world-tiny", {}))
    return path


def _data(world: Path) -> dict:
    dataset = {"annotations": str(world / "annotations.json"), "images": str(world / "images")}
    return {"train": dataset, "test": dataset, "vocabulary": "world", "train_splits": ["base"],
            "min_sizes": [160], "max_size": 160, "test_min_size": 160, "test_max_size": 160,
            "loader_workers": 0}


def finetune_recipe(world: Path, rpn: Path, out: Path, iterations: int = 3) -> Path:
    recipe = {
        "rpn": str(rpn), "box_head": {"model": "world-tiny"}, "templates": "single",
        "detector": {"proposals": 20, "regions_per_image": 16},
        "data": _data(world),
        "optimizer": {"lr": 0.01, "warmup_iterations": 1, "steps": [2]},
        "train": {"iterations": iterations, "batch_size": 2, "checkpoint_every": 100, "log_every": 1},
        "output": str(out), "device": "cpu",
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_finetune_trains_evaluates_and_resumes_exactly(cli, small_world, rpn_file, tmp_path, monkeypatch):
    from regionclip_cli.modeling.detector.model import OpenVocabularyDetector

    swapped_in = []  # the vocabulary sizes evaluation swaps in
    swap = OpenVocabularyDetector.set_vocabulary
    monkeypatch.setattr(OpenVocabularyDetector, "set_vocabulary",
                        lambda self, embeddings: (swapped_in.append(len(embeddings)), swap(self, embeddings))[1])
    straight = tmp_path / "straight"
    code, out, err = cli("finetune", finetune_recipe(small_world, rpn_file, straight), "-q")
    assert code == 0, err
    rows = metrics(straight)
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert all(r["loss_cls"] > 0 and r["loss_box_reg"] >= 0 for r in rows)
    evaluation = json.loads((straight / "evaluation.json").read_text())
    assert {"AP50", "AP50_base", "AP50_novel"} <= set(evaluation["metrics"])
    # The test vocabulary is base + novel (15 + 5 classes; training's is the 15 base). Whether a
    # novel class then scores above test.score_threshold after 3 steps depends on the region draws,
    # so the swap is checked, and the detections' ids against the full vocabulary.
    assert swapped_in == [20]
    detections = json.loads((straight / "detections_coco.json").read_text())
    categories = {c["id"] for c in json.loads((small_world / "annotations.json").read_text())["categories"]}
    assert detections and {d["category_id"] for d in detections} <= categories
    detector = load_checkpoint(straight / "detector.pt")
    assert detector.kind == "detector" and any(k.startswith("rpn.") for k in detector.state_dict)

    split = tmp_path / "split"
    recipe = finetune_recipe(small_world, rpn_file, split)
    no_test = ["--set", "data.test=null"]  # evaluation is the straight run's; here only training is compared
    code, _, err = cli("finetune", recipe, "-q", "--set", "train.iterations=2", *no_test)
    assert code == 0, err
    code, _, err = cli("finetune", recipe, "-q", "--resume", *no_test)
    assert code == 0, err
    for a, b in zip(rows, metrics(split)):
        for key in ("loss", "loss_cls", "loss_box_reg", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a, b)
    sa, sb = detector.state_dict, load_checkpoint(split / "detector.pt").state_dict
    assert all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6) for k in sa)


def test_two_process_ddp_matches_one_process(cli, small_world, rpn_file, tmp_path):
    # Batch 2 on one process, and one image on each of two: the same global batch, the same
    # region draws (seeded per image, not per process) and the same loss normalisation, so every
    # step's figures and the final weights agree.
    assert_two_processes_match_one(cli, "finetune", lambda out: finetune_recipe(small_world, rpn_file, out, iterations=2),
                                   tmp_path, "detector.pt", ("loss_cls", "loss_box_reg"), port=29534)


def assert_two_processes_match_one(cli, command: str, recipe_at, tmp_path: Path, artefact: str,
                                   losses: tuple[str, ...], port: int) -> None:
    """`command` on one process (batch 2) and under torchrun on two (one image each): every
    step's figures within 1e-5 and the final weights within 1e-6. A huge clip_grad_norm logs the
    gradient norm without clipping, a check of each step's global gradient too."""
    overrides = ["--set", "data.test=null", "--set", "optimizer.clip_grad_norm=1.0e6"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    code, _, err = cli(command, recipe_at(single), "-q", *overrides)
    assert code == 0, err
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
         "-m", "regionclip_cli", command, str(recipe_at(ddp)), "-q", *overrides],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows_a, rows_b = metrics(single), metrics(ddp)
    assert [r["iteration"] for r in rows_b] == [1, 2]
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        for key in ("loss", *losses, "grad_norm", "lr"):
            assert row_a[key] == pytest.approx(row_b[key], rel=1e-5, abs=1e-7), (key, row_a, row_b)
    sa = load_checkpoint(single / artefact).state_dict
    sb = load_checkpoint(ddp / artefact).state_dict
    assert sa.keys() == sb.keys()
    assert max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa) < 1e-6


def test_finetuned_detector_loads_for_any_vocabulary(cli, small_world, rpn_file, tmp_path):
    from regionclip_cli.stages.finetune.artefact import load_detector

    out = tmp_path / "run"
    recipe = finetune_recipe(small_world, rpn_file, out, iterations=1)
    code, _, err = cli("finetune", recipe, "-q", "--set", "data.test=null")
    assert code == 0, err
    assert not (out / "evaluation.json").exists()
    detector, clip = load_detector(out / "detector.pt", ["circle", "hexagon", "star"], templates="single")
    with torch.inference_mode():
        found = detector([torch.rand(3, 160, 160)])[0]
    assert (found["labels"] < 3).all() and not detector.proposal_network.training


def rpn_recipe(world: Path, out: Path, iterations: int = 2) -> Path:
    recipe = {"trunk": {"model": "world-tiny"}, "rpn": {"anchor_sizes": [16, 32, 64], "batch_size_per_image": 32},
              "data": _data(world), "recall_at": [10, 50],
              "optimizer": {"lr": 0.01, "warmup_iterations": 1, "steps": [5]},
              "train": {"iterations": iterations, "batch_size": 2, "log_every": 1}, "output": str(out),
              "device": "cpu"}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_rpn_command_trains_and_reports_recall(cli, small_world, tmp_path):
    out = tmp_path / "rpn"
    code, stdout, err = cli("rpn", rpn_recipe(small_world, out), "-q")
    assert code == 0, err
    recall = json.loads((out / "recall.json").read_text())
    assert set(recall) == {"all", "base", "novel"} and set(recall["base"]) == {"AR@10", "AR@50"}
    assert load_checkpoint(out / "rpn.pt").kind == "rpn"
    assert "recall base" in stdout


def test_rpn_two_process_ddp_matches_one_process(cli, small_world, tmp_path):
    # As test_two_process_ddp_matches_one_process for the RPN: each image's anchors are sampled
    # from its own seed (by global-batch position), and both losses are sums over an image's
    # sampled anchors divided by batch_size_per_image per image, so two processes of one image
    # train exactly as one process of two.
    assert_two_processes_match_one(cli, "rpn", lambda out: rpn_recipe(small_world, out), tmp_path, "rpn.pt",
                                   ("loss_objectness", "loss_rpn_box_reg"), port=29535)


def _write_world_copy(world: Path, tmp_path: Path, edit) -> Path:
    data = json.loads((world / "annotations.json").read_text())
    edit(data)
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def test_bad_input_is_one_line_with_exit_code_2(cli, small_world, rpn_file, tmp_path):
    recipe = finetune_recipe(small_world, rpn_file, tmp_path / "bad")

    def run(*overrides):
        code, _, err = cli("finetune", recipe, "--check", *[x for o in overrides for x in ("--set", o)])
        assert "Traceback" not in err
        return code, err

    def unknown_category(data):
        data["annotations"][3]["category_id"] = 999

    path = _write_world_copy(small_world, tmp_path, unknown_category)
    code, err = run(f"data.train.annotations={path}")
    assert code == 2 and "annotations[3] has category id 999, which is not in the file's categories" in err

    def missing_image(data):
        data["images"][0]["file_name"] = "gone.png"

    path = _write_world_copy(small_world, tmp_path, missing_image)
    code, err = run(f"data.train.annotations={path}")
    assert code == 2 and "1 of 8 images listed" in err and "gone.png" in err

    def odd_boxes(data):
        base = {c["id"] for c in data["categories"] if c["split"] == "base"}
        first, second = [a for a in data["annotations"] if a["category_id"] in base][:2]
        first["bbox"] = [500.0, 500.0, 20.0, 20.0]  # outside the 224-px image
        second["bbox"] = [10.0, 10.0, 0.0, 5.0]  # zero width
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != data["images"][1]["id"]]

    path = _write_world_copy(small_world, tmp_path, odd_boxes)
    code, err = run(f"data.train.annotations={path}")
    assert code == 0, err
    assert "2 boxes with no area inside their image were skipped" in err
    assert "images without a box of the training classes were left out" in err

    code, err = run("data.vocabulary=coco", "data.train_splits=[]")  # ids 1..20 in both, other names
    assert code == 2 and "category id 1 is 'person' in the vocabulary but 'circle'" in err

    code, err = run("data.train_splits=[rare]")
    assert code == 2 and "has no split 'rare'" in err

    clip_file = tmp_path / "clip.pt"
    save_checkpoint(clip_file, Checkpoint("clip", "world-tiny", {"x": torch.zeros(1)}))
    code, err = run(f"rpn={clip_file}")
    assert code == 2 and "--set rpn" in err and "not an RPN" in err


@pytest.mark.parametrize("name", ["rpn-world", "rpn-coco-rn50", "rpn-lvis-rn50", "finetune-world",
                                  "finetune-coco-rn50", "finetune-lvis-rn50"])
def test_built_in_recipes_load(name):
    from regionclip_cli.engine.recipe import find_recipe, load_recipe
    from regionclip_cli.stages.finetune.recipe import FinetuneConfig
    from regionclip_cli.stages.rpn.recipe import RPNTrainingConfig

    path, origin = find_recipe(name)
    recipe = load_recipe(RPNTrainingConfig if name.startswith("rpn") else FinetuneConfig, path, origin_name=origin)
    if name.endswith("rn50"):  # the paper's schedule: batch 16, COCO 90k / LVIS 180k
        assert recipe.train.batch_size == 16
        assert recipe.train.iterations == (180000 if "lvis" in name else 90000)
    if name == "finetune-lvis-rn50":
        assert recipe.data.train_splits == ["c", "f"] and recipe.data.repeat_factor_threshold == 0.001
        assert recipe.detector.focal_gamma == 0 and recipe.detector.background_weight == 0.8


def test_lvis_images_without_file_names_and_repeat_factors(tmp_path):
    from regionclip_cli.data.vocab import load_vocabulary
    from regionclip_cli.stages.finetune.data import (DatasetConfig, expanded_order, read_annotated_set,
                                                     repeat_factors)

    (tmp_path / "train2017").mkdir()
    for i in (1, 2, 3, 4):
        (tmp_path / "train2017" / f"{i:012d}.jpg").write_bytes(b"")
    lvis = load_vocabulary("lvis")
    rare, frequent = lvis.splits["r"][0], lvis.splits["f"][0]
    data = {"images": [{"id": i, "width": 100, "height": 100,
                        "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg"} for i in (1, 2, 3, 4)],
            "annotations": [{"image_id": 1, "category_id": rare, "bbox": [0, 0, 10, 10]}] +
                           [{"image_id": i, "category_id": frequent, "bbox": [5, 5, 20, 20]} for i in (2, 3, 4)],
            "categories": [{"id": c, "name": lvis.name_of(c)} for c in lvis.category_ids]}
    annotations = tmp_path / "lvis.json"
    annotations.write_text(json.dumps(data))
    found = read_annotated_set(DatasetConfig(annotations, tmp_path), lvis, where="data.train", drop_empty=True)
    assert [img.path.name for img in found.images] == [f"{i:012d}.jpg" for i in (1, 2, 3, 4)]
    # the rare class is in 1 of 4 images: r = sqrt(0.5 / 0.25) = 1.41; the frequent one in 3 of 4: 1
    factors = repeat_factors(found.images, 0.5)
    assert factors == pytest.approx([2 ** 0.5, 1.0, 1.0, 1.0])
    order = expanded_order(factors, seed=0)
    assert sorted(set(order)) == [0, 1, 2, 3] and order.count(0) in (1, 2) and len(order) == 3 + order.count(0)
