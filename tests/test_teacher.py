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


def test_short_training_runs_all_three_phases_and_saves(tmp_path):
    history: list[float] = []
    config = TeacherConfig(tagging_steps=3, locked_steps=3, clip_steps=2, batch_size=8, warmup_steps=1,
                           pool_images=16)
    initial = create_world_model().state_dict()
    state_dict = train_teacher(config, torch.device("cpu"), progress=False, history=history)
    assert len(history) == 8 and all(torch.isfinite(torch.tensor(history)))
    assert set(state_dict) == set(initial)  # the warm-up head is not part of the CLIP
    # every phase moved what it trains: the image tower (1 and 3) and the text tower (2 and 3)
    assert not torch.equal(state_dict["visual.conv1.weight"], initial["visual.conv1.weight"])
    assert not torch.equal(state_dict["transformer.resblocks.0.mlp.c_fc.weight"],
                           initial["transformer.resblocks.0.mlp.c_fc.weight"])
    path = tmp_path / "teacher.pt"
    save_teacher(path, state_dict, config)
    checkpoint = load_checkpoint(path)
    assert checkpoint.kind == "clip" and checkpoint.model == MODEL_NAME
    assert checkpoint.metadata["dtype"] == "float16" and checkpoint.metadata["teacher_config"]["tagging_steps"] == 3
    assert checkpoint.metadata["input_min_size"] == 128
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
    assert json.loads((tmp_path / "f.json").read_text())["input_size"] == 128 and "at 128 px" in out
    code, out, err = cli("world", "evaluate-teacher", "--images", "6", "--region-images", "3", "--input-size", "224",
                         "--json", tmp_path / "g.json", "--device", "cpu")
    assert code == 0, err
    assert json.loads((tmp_path / "g.json").read_text())["input_size"] == 224 and "at 224 px" in out


def test_teacher_needs_steps_and_a_pool_that_fills_a_batch():
    with pytest.raises(RegionclipError, match="--tagging-steps"):
        train_teacher(TeacherConfig(tagging_steps=0, locked_steps=0, clip_steps=0), torch.device("cpu"),
                      progress=False)
    with pytest.raises(RegionclipError, match="--pool-images"):
        train_teacher(TeacherConfig(pool_images=8, batch_size=16), torch.device("cpu"), progress=False)


def test_new_residual_blocks_start_with_live_gains():
    """open_clip zeroes every bottleneck's bn3 gain; the teacher starts them at one (module docstring)."""
    from regionclip_cli.synthetic.teacher import start_residual_gains_at_one

    visual = create_world_model().visual
    gains = [m.weight for name, m in visual.named_modules() if name.endswith(".bn3")]
    assert len(gains) == 4
    start_residual_gains_at_one(visual)
    assert all(torch.equal(g, torch.ones_like(g)) for g in gains)


def test_swapped_caption_changes_exactly_one_shape():
    import random
    import re

    from regionclip_cli.synthetic.captions import mentioned_categories, swapped_caption

    rng = random.Random(0)
    assert swapped_caption("a striped background", rng) is None
    for caption in ("An orange hexagon near an ellipse.", "three discs and a hex", "A big dot."):
        for _ in range(20):
            swap = swapped_caption(caption, rng)
            before, after = mentioned_categories(caption), mentioned_categories(swap)
            assert len(before - after) == 1 and len(after - before) == 1, (caption, swap)
            assert not re.search(r"\ba [aeiou]|\ban [^aeiouh]", swap, re.IGNORECASE), swap  # articles fixed


def test_shipped_teacher_loads_strictly_and_retrieves_captions():
    import open_clip

    register_world_config()
    checkpoint = load_checkpoint(shipped_teacher_path())
    assert checkpoint.model == MODEL_NAME and checkpoint.metadata["input_min_size"] == 128
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
    code, _, err = cli("world", "teacher", "--out", shipped, "--tagging-steps", "1", "-q")
    assert code == 2 and "shipped inside the package" in err
    existing = tmp_path / "taken.pt"
    existing.write_bytes(b"keep")
    code, _, err = cli("world", "teacher", "--out", existing, "--tagging-steps", "1", "-q")
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
