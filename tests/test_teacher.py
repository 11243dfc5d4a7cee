"""The tiny CLIP teacher: trains end to end, saves a loadable checkpoint; the shipped one loads."""

from __future__ import annotations

import json

import pytest
import torch

from regionclip_cli.modeling.checkpoints import load_checkpoint
from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.synthetic.teacher import (
    MODEL_NAME,
    TeacherConfig,
    caption_retrieval,
    clip_loss,
    create_world_model,
    load_teacher,
    register_world_config,
    save_teacher,
    shipped_teacher_path,
    train_teacher,
)


def test_clip_loss_prefers_matching_pairs():
    features = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(3.0)
    assert clip_loss(features, features, scale) < clip_loss(features, features.roll(1, 0), scale)


def test_short_training_runs_and_saves(tmp_path):
    history: list[float] = []
    config = TeacherConfig(steps=8, naming_steps=4, batch_size=8, warmup_steps=1, lr=3e-3)
    state_dict = train_teacher(config, torch.device("cpu"), progress=False, history=history)
    assert len(history) == 8 and all(torch.isfinite(torch.tensor(history)))
    assert not any(key.startswith(("visual.attnpool.0", "visual.attnpool.2")) for key in state_dict)  # no warm-up head
    path = tmp_path / "teacher.pt"
    save_teacher(path, state_dict, config)
    checkpoint = load_checkpoint(path)
    assert checkpoint.kind == "clip" and checkpoint.model == MODEL_NAME
    assert checkpoint.metadata["dtype"] == "float16" and checkpoint.metadata["teacher_config"]["steps"] == 8
    model = load_teacher(path)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    figures = caption_retrieval(model, num_images=12)
    assert 0 <= figures["zeroshot_accuracy"] <= 1 and figures["num_captions"] >= 36


def test_evaluation_reports_image_and_region_top1(cli, tmp_path):
    from regionclip_cli.modeling.clip import load_clip
    from regionclip_cli.synthetic.evaluation import EvaluationConfig, evaluate_world_clip

    figures = evaluate_world_clip(load_clip("world-tiny", random_init=True),
                                  EvaluationConfig(image_count=12, region_images=4))
    assert figures["chance"] == 0.05 and figures["image"]["all"]["count"] == 12
    region = figures["region"]
    assert region["base"]["count"] + region["novel"]["count"] == region["all"]["count"]
    assert sum(region[k]["count"] for k in ("small", "medium", "large")) == region["all"]["count"]
    assert all(0 <= row["top1"] <= 1 for row in (*figures["image"].values(), *region.values()) if row["count"])
    code, out, err = cli("world", "evaluate-teacher", "--images", "6", "--region-images", "3",
                         "--json", tmp_path / "f.json", "--device", "cpu")
    assert code == 0, err
    assert "image" in out and "region" in out and "6 single-shape images" in out
    assert json.loads((tmp_path / "f.json").read_text())["image"]["all"]["count"] == 6


def test_naming_steps_cannot_exceed_steps():
    with pytest.raises(RegionclipError, match="--naming-steps"):
        train_teacher(TeacherConfig(steps=4, naming_steps=5), torch.device("cpu"), progress=False)


def test_shipped_teacher_loads_strictly_and_retrieves_captions():
    import open_clip

    register_world_config()
    checkpoint = load_checkpoint(shipped_teacher_path())
    assert checkpoint.model == MODEL_NAME and checkpoint.metadata["input_min_size"] == 224
    model = open_clip.create_model(MODEL_NAME)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in checkpoint.state_dict.items()},
                          strict=True)
    figures = caption_retrieval(create_world_model(checkpoint.state_dict), num_images=200, seed=7)
    chance_r5 = 5 / figures["num_images"]  # each image owns about 1/num_images of the captions
    assert figures["image_to_caption_r5"] > 2 * chance_r5
    # it recognises shapes: zero-shot on each image's largest shape, 20 classes (chance 0.05;
    # the shipped teacher scores ~0.15 on held-out images, the one before it 0.057)
    assert figures["zeroshot_accuracy"] > 0.1


def test_teacher_command_never_writes_into_the_package(tmp_path, monkeypatch, cli):
    """Issue 12.2: without --out the teacher goes to the current folder, not the installed package;
    the shipped file and an existing --out are refused before any training."""
    shipped = shipped_teacher_path()
    before = shipped.stat().st_mtime_ns
    code, _, err = cli("world", "teacher", "--out", shipped, "--steps", "1", "--naming-steps", "0", "-q")
    assert code == 2 and "shipped inside the package" in err
    existing = tmp_path / "taken.pt"
    existing.write_bytes(b"keep")
    code, _, err = cli("world", "teacher", "--out", existing, "--steps", "1", "-q")
    assert code == 2 and "--overwrite" in err and existing.read_bytes() == b"keep"

    monkeypatch.chdir(tmp_path)
    trained = []
    monkeypatch.setattr("regionclip_cli.synthetic.teacher.train_and_save",
                        lambda path, config, device, progress: trained.append(path) or 0.0)
    monkeypatch.setattr("regionclip_cli.cli.world._print_evaluation", lambda *args, **kwargs: None)
    code, out, err = cli("world", "teacher", "-q")
    assert code == 0, err
    assert [p.resolve() for p in trained] == [(tmp_path / "world-tiny.pt").resolve()]
    assert shipped.stat().st_mtime_ns == before
