"""Pretraining end to end on a tiny synthetic world: runs, resumes exactly, and DDP == one process."""

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml

from regionclip_cli.engine.distributed import DistributedContext
from regionclip_cli.engine.loop import Trainer
from regionclip_cli.engine.recipe import load_recipe
from regionclip_cli.engine.task import Runtime, autocast_dtype_for
from regionclip_cli.modeling.checkpoints import load_checkpoint
from regionclip_cli.modeling.clip import load_clip
from regionclip_cli.modeling.text import embed_names, save_text_embeddings
from regionclip_cli.stages.pretrain import task as pretrain_task
from regionclip_cli.stages.pretrain.recipe import PretrainConfig
from regionclip_cli.stages.pretrain.task import PretrainTask
from regionclip_cli.synthetic.categories import WORLD_CATEGORIES
from regionclip_cli.synthetic.world import WorldConfig, generate_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    generate_world(root, WorldConfig(num_images=8, seed=11), progress=False)
    clip = load_clip("world-tiny")
    names = [c.name for c in WORLD_CATEGORIES]
    templates = ["a photo of a {}."]
    embeddings = embed_names(clip, names, templates, cache_dir=root / "cache", progress=False)
    save_text_embeddings(root / "concepts.pt", names, embeddings, clip, templates)
    return root


def write_recipe(world: Path, out: Path, **train) -> Path:
    recipe = {
        "teacher": {"model": "world-tiny"},
        "concepts": str(world / "concepts.pt"),
        "data": {"images": str(world / "images"), "captions": str(world / "captions.jsonl")},
        "proposals": {"regions_per_image": 6},
        "optimizer": {"lr": 0.01, "warmup_iterations": 2, "steps": [3]},
        "train": {"iterations": 4, "batch_size": 4, "min_size": 224, "max_size": 224,
                  "log_every": 1, "checkpoint_every": 2, "loader_workers": 0, **train},
        "output": str(out),
        "device": "cpu",
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def cpu_trainer(recipe: PretrainConfig) -> Trainer:
    """The engine around a pretraining task in this process, on the CPU."""
    cpu = torch.device("cpu")
    runtime = Runtime(DistributedContext(0, 1, cpu), autocast_dtype_for(recipe.train.amp, cpu))
    task = PretrainTask.from_recipe(recipe, runtime, log=lambda message: None)
    return Trainer(task, runtime, train=recipe.train, optimizer=recipe.optimizer)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "regionclip_cli", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_trains_and_exports_a_loadable_student(world, tmp_path):
    out = tmp_path / "run"
    result = run_cli("pretrain", str(write_recipe(world, out)), "--quiet")
    assert result.returncode == 0, result.stderr
    rows = metrics(out)
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and r["region_concept"] >= 0 and r["distillation"] > -1e-6 for r in rows)
    student = load_checkpoint(out / "student.pt")
    assert student.kind == "clip" and student.model == "world-tiny"
    teacher = load_clip("world-tiny")
    clip = load_clip("world-tiny", weights=out / "student.pt")
    changed = [k for k, v in clip.model.state_dict().items()
               if not torch.equal(v, teacher.model.state_dict()[k])]
    assert any(k.startswith("visual.layer4") for k in changed)
    assert not any(k.startswith(("visual.conv1", "visual.layer1", "transformer")) for k in changed)


def test_resume_continues_exactly(world, tmp_path):
    straight = tmp_path / "straight"
    assert run_cli("pretrain", str(write_recipe(world, straight)), "-q").returncode == 0
    split = tmp_path / "split"
    recipe = write_recipe(world, split)
    first = run_cli("pretrain", str(recipe), "-q", "--set", "train.iterations=2")
    assert first.returncode == 0, first.stderr
    second = run_cli("pretrain", str(recipe), "-q", "--resume")
    assert second.returncode == 0, second.stderr
    a, b = metrics(straight), metrics(split)
    assert [r["iteration"] for r in b] == [1, 2, 3, 4]
    for row_a, row_b in zip(a, b):
        for key in ("loss", "region_concept", "distillation", "image_text", "lr"):
            assert row_a[key] == pytest.approx(row_b[key], rel=1e-5, abs=1e-7), (row_a, row_b)
    sa = load_checkpoint(straight / "student.pt").state_dict
    sb = load_checkpoint(split / "student.pt").state_dict
    assert all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6) for k in sa)


def test_bad_recipe_keys_are_one_line_errors(world, tmp_path):
    recipe = write_recipe(world, tmp_path / "bad")
    result = run_cli("pretrain", str(recipe), "--set", "train.iteration=3")
    assert result.returncode == 2 and "train.iteration: unknown key; did you mean 'iterations'" in result.stderr
    result = run_cli("pretrain", str(recipe), "--set", "data.images=/nope")
    assert result.returncode == 2 and "data.images: /nope does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_two_process_ddp_matches_one_process(world, tmp_path):
    # A threshold that leaves part of the regions out of the contrastive loss on each process.
    threshold = ["--set", "pseudo_labels.threshold=0.9"]
    single = tmp_path / "single"
    assert run_cli("pretrain", str(write_recipe(world, single, iterations=2)), "-q", *threshold).returncode == 0
    assert all(0.1 < row["kept_regions"] < 0.9 for row in metrics(single))
    ddp = tmp_path / "ddp"
    recipe = write_recipe(world, ddp, iterations=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         "-m", "regionclip_cli", "pretrain", str(recipe), "-q", *threshold],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for row_a, row_b in zip(metrics(single), metrics(ddp), strict=True):
        for key in ("loss", "region_concept", "distillation", "image_text", "kept_regions", "top1_prob", "grad_norm"):
            assert row_a[key] == pytest.approx(row_b[key], rel=1e-4, abs=1e-6), (key, row_a, row_b)
    sa = load_checkpoint(single / "student.pt").state_dict
    sb = load_checkpoint(ddp / "student.pt").state_dict
    worst = max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)
    assert worst < 1e-4


def test_sigterm_saves_a_checkpoint_that_resumes(world, tmp_path):
    import signal
    import time

    out = tmp_path / "stopped"
    recipe = write_recipe(world, out, iterations=50)
    process = subprocess.Popen([sys.executable, "-m", "regionclip_cli", "pretrain", str(recipe), "-q"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and log.read_text()):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert "continue with --resume" in err
    done = metrics(out)[-1]["iteration"]
    assert 1 <= done < 50
    resumed = run_cli("pretrain", str(recipe), "-q", "--resume", "--set", f"train.iterations={done + 1}")
    assert resumed.returncode == 0, resumed.stderr
    assert [r["iteration"] for r in metrics(out)] == list(range(1, done + 2))


def test_folded_teacher_and_shared_layer1_change_nothing(world, tmp_path):
    """The step's exact shortcuts (teacher batch norm folded into its convolutions, the student
    taking the teacher's layer1 output) give the same losses and weights as the plain step."""
    recipe = load_recipe(PretrainConfig, write_recipe(world, tmp_path / "run"))
    fast = cpu_trainer(recipe)
    with mock.patch.object(pretrain_task, "fold_batchnorm", lambda tower: 0):
        plain = cpu_trainer(recipe)
    plain.task.shares_layer1 = False
    assert fast.task.shares_layer1
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.task.teacher.model.visual.modules())
    for iteration in range(2):
        got, expected = fast.step(iteration), plain.step(iteration)
        for term in ("region_concept", "distillation", "image_text", "top1_prob", "kept_regions"):
            assert got[term] == pytest.approx(expected[term], rel=1e-4, abs=1e-5), term
    for (name, a), b in zip(fast.task.student_visual.state_dict().items(),
                            plain.task.student_visual.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_precomputed_pseudo_labels_train_like_labels_computed_on_the_fly(world, tmp_path):
    """`pretrain` reading a `pseudolabel` folder takes the same steps as labelling the same boxes itself."""
    labels = tmp_path / "labels"
    boxes = world / "annotations.json"
    result = run_cli("pseudolabel", str(world / "images"), "--concepts", str(world / "concepts.pt"),
                     "--model", "world-tiny", "--boxes", str(boxes), "--regions", "6", "--min-size", "224",
                     "--max-size", "224", "--out", str(labels), "--device", "cpu", "--pictures", "0", "-q")
    assert result.returncode == 0, result.stderr
    on_the_fly, precomputed = tmp_path / "fly", tmp_path / "pre"
    common = ["-q", "--set", "train.iterations=2", "--set", "train.hflip=false"]
    result = run_cli("pretrain", str(write_recipe(world, on_the_fly)), *common,
                     "--set", "proposals.source=file", "--set", f"proposals.file={boxes}")
    assert result.returncode == 0, result.stderr
    result = run_cli("pretrain", str(write_recipe(world, precomputed)), *common,
                     "--set", f"pseudo_labels.precomputed={labels}")
    assert result.returncode == 0, result.stderr
    for a, b in zip(metrics(on_the_fly), metrics(precomputed), strict=True):
        for key in ("loss", "region_concept", "distillation", "image_text", "kept_regions", "top1_prob"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (key, a, b)


def test_bf16_autocast_and_channels_last_step_close_to_fp32(world, tmp_path):
    """The mixed-precision path (bf16 autocast, channels_last) runs the same step as fp32, to bf16 precision."""
    runs = {}
    for name, overrides in {"fp32": ["train.amp=off"], "bf16": ["train.amp=bf16", "train.channels_last=true"]}.items():
        recipe = load_recipe(PretrainConfig, write_recipe(world, tmp_path / name), overrides)
        runs[name] = cpu_trainer(recipe)
    assert runs["bf16"].runtime.autocast_dtype == torch.bfloat16 and runs["fp32"].runtime.autocast_dtype is None
    for iteration in range(2):
        full, mixed = runs["fp32"].step(iteration), runs["bf16"].step(iteration)
        for term in ("region_concept", "distillation", "image_text", "top1_prob"):
            assert mixed[term] == pytest.approx(full[term], rel=0.1, abs=0.05), (term, mixed, full)
    student = runs["bf16"].task.student_visual
    assert all(p.dtype == torch.float32 for p in student.parameters())
    assert student.layer4[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
