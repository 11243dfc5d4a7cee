"""Pretraining end to end on a tiny synthetic world: runs, resumes exactly, and DDP == one process."""

import json
import math
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
from regionclip_cli.modeling import batchnorm_folding
from regionclip_cli.modeling.checkpoints import load_checkpoint
from regionclip_cli.modeling.clip import load_clip
from regionclip_cli.stages.pretrain.recipe import PretrainConfig
from regionclip_cli.stages.pretrain.task import PretrainTask


@pytest.fixture(scope="module")
def world(small_world, world_concepts):
    """The shared eight-image world with the concept pool beside it (recipes name both)."""
    return small_world, world_concepts


def write_recipe(world: tuple[Path, Path], out: Path, **train) -> Path:
    images, concepts = world
    recipe = {
        "teacher": {"model": "world-tiny"},
        "concepts": str(concepts),
        "data": {"images": str(images / "images"), "captions": str(images / "captions.jsonl")},
        "proposals": {"regions_per_image": 6},
        "optimizer": {"lr": 0.01, "warmup_iterations": 2, "steps": [3]},
        "train": {"iterations": 4, "batch_size": 2, "min_size": 224, "max_size": 224,
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
    """A fresh interpreter: only where the test needs a process of its own (signals, torchrun)."""
    return subprocess.run([sys.executable, "-m", "regionclip_cli", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight_run(world, regionclip, tmp_path_factory):
    """One finished 4-iteration run of `write_recipe`'s recipe, read (never written) by the tests."""
    out = tmp_path_factory.mktemp("pretrain") / "straight"
    code, _, err = regionclip("pretrain", write_recipe(world, out), "--quiet")
    assert code == 0, err
    return out


def test_pretrain_trains_and_exports_a_loadable_student(straight_run):
    out = straight_run
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


def test_resume_continues_exactly(world, straight_run, regionclip, tmp_path):
    split = tmp_path / "split"
    recipe = write_recipe(world, split)
    code, _, err = regionclip("pretrain", recipe, "-q", "--set", "train.iterations=2")
    assert code == 0, err
    code, _, err = regionclip("pretrain", recipe, "-q", "--resume")
    assert code == 0, err
    a, b = metrics(straight_run), metrics(split)
    assert [r["iteration"] for r in b] == [1, 2, 3, 4]
    for row_a, row_b in zip(a, b):
        for key in ("loss", "region_concept", "distillation", "image_text", "lr"):
            assert row_a[key] == pytest.approx(row_b[key], rel=1e-5, abs=1e-7), (row_a, row_b)
    sa = load_checkpoint(straight_run / "student.pt").state_dict
    sb = load_checkpoint(split / "student.pt").state_dict
    assert all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6) for k in sa)


def test_bad_recipe_keys_are_one_line_errors(world, tmp_path, cli):
    recipe = write_recipe(world, tmp_path / "bad")
    code, _, err = cli("pretrain", recipe, "--set", "train.iteration=3")
    assert code == 2 and "train.iteration: unknown key; did you mean 'iterations'" in err
    code, _, err = cli("pretrain", recipe, "--set", "data.images=/nope")
    assert code == 2 and "data.images: /nope does not exist" in err
    assert "Traceback" not in err


def test_two_process_ddp_matches_one_process(world, tmp_path, regionclip):
    # A threshold that leaves part of the regions out of the contrastive loss on each process;
    # batch 4 in groups of 3 makes the first loss group straddle the two processes.
    threshold = ["--set", "pseudo_labels.threshold=0.9"]
    single = tmp_path / "single"
    code, _, err = regionclip("pretrain", write_recipe(world, single, iterations=2, batch_size=4), "-q", *threshold)
    assert code == 0, err
    assert all(0.1 < row["kept_regions"] < 0.9 for row in metrics(single))
    ddp = tmp_path / "ddp"
    recipe = write_recipe(world, ddp, iterations=2, batch_size=4)
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


def test_sigterm_saves_a_checkpoint_that_resumes(world, tmp_path, regionclip):
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
    code, _, err = regionclip("pretrain", recipe, "-q", "--resume", "--set", f"train.iterations={done + 1}")
    assert code == 0, err
    assert [r["iteration"] for r in metrics(out)] == list(range(1, done + 2))


def test_folded_teacher_and_shared_layer1_change_nothing(world, tmp_path):
    """The step's exact shortcuts (teacher batch norm folded into its convolutions, the student
    taking the teacher's layer1 output) give the same losses and weights as the plain step."""
    recipe = load_recipe(PretrainConfig, write_recipe(world, tmp_path / "run"))
    fast = cpu_trainer(recipe)
    with mock.patch.object(batchnorm_folding, "fold_batchnorm", lambda tower: 0):
        plain = cpu_trainer(recipe)
    plain.task.shares_layer1 = False
    assert fast.task.shares_layer1
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.task.teacher_encoder.visual.modules())
    # folded on a copy: the loaded teacher keeps its batch norm layers
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.task.teacher.model.visual.modules())
    for iteration in range(2):
        got, expected = fast.step(iteration), plain.step(iteration)
        for term in ("region_concept", "distillation", "image_text", "top1_prob", "kept_regions"):
            assert got[term] == pytest.approx(expected[term], rel=1e-4, abs=1e-5), term
    for (name, a), b in zip(fast.task.student_visual.state_dict().items(),
                            plain.task.student_visual.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("candidates", ["pool", "captions"])
def test_precomputed_pseudo_labels_train_like_labels_computed_on_the_fly(world, tmp_path, cli, candidates):
    """`pretrain` reading a `pseudolabel` folder takes the same steps as labelling the same boxes
    itself, from the whole pool or from the concepts each image's captions name."""
    labels = tmp_path / "labels"
    images, concepts = world
    boxes = images / "annotations.json"
    restrict = ["--captions", str(images / "captions.jsonl")] if candidates == "captions" else []
    code, _, err = cli("pseudolabel", images / "images", "--concepts", concepts, *restrict,
                       "--model", "world-tiny", "--boxes", boxes, "--regions", "6", "--min-size", "128",
                       "--max-size", "128", "--out", labels, "--device", "cpu", "--pictures", "0", "-q")
    assert code == 0, err
    on_the_fly, precomputed = tmp_path / "fly", tmp_path / "pre"
    # 128 px: the 224-px world images are resized, as world-tiny's input is, so both paths must
    # resize alike (bicubic)
    common = ["-q", "--set", "train.iterations=2", "--set", "train.hflip=false",
              "--set", "train.min_size=128", "--set", "train.max_size=128",
              "--set", f"pseudo_labels.candidates={candidates}"]
    code, _, err = cli("pretrain", write_recipe(world, on_the_fly), *common,
                       "--set", "proposals.source=file", "--set", f"proposals.file={boxes}")
    assert code == 0, err
    code, _, err = cli("pretrain", write_recipe(world, precomputed), *common,
                       "--set", f"pseudo_labels.precomputed={labels}")
    assert code == 0, err
    for a, b in zip(metrics(on_the_fly), metrics(precomputed), strict=True):
        for key in ("loss", "region_concept", "distillation", "image_text", "kept_regions", "top1_prob"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (key, a, b)


def test_bf16_autocast_and_channels_last_step_close_to_fp32(world, tmp_path):
    """The mixed-precision path (bf16 autocast, channels_last) runs the same step as fp32, to bf16 precision."""
    runs = {}
    for name, overrides in {"fp32": ["train.amp=off"], "bf16": ["train.amp=bf16", "train.channels_last=true"]}.items():
        # Two regions an image: CPU bf16 convolutions are slow, and layer4 runs once per region.
        recipe = load_recipe(PretrainConfig, write_recipe(world, tmp_path / name),
                             [*overrides, "proposals.regions_per_image=2"])
        runs[name] = cpu_trainer(recipe)
    assert runs["bf16"].runtime.autocast_dtype == torch.bfloat16 and runs["fp32"].runtime.autocast_dtype is None
    full, mixed = runs["fp32"].step(0), runs["bf16"].step(0)  # the same weights: one step's terms compare
    assert mixed["image_text"] == pytest.approx(full["image_text"], rel=0.1, abs=0.05), (mixed, full)
    # The region terms and the teacher's label confidence are softmaxes at temperature 0.01: bf16's
    # ~0.4 % rounding of each region feature becomes up to ~0.4 in a logit, so the KL between two
    # bf16 copies of one model is ~0.5 where fp32 gives 0, and the top-1 probability moves by ~0.1.
    # A broken path is far off (ln 20 = 3, or NaN). After that step the weights differ, so the
    # second step is only checked to run.
    assert mixed["top1_prob"] == pytest.approx(full["top1_prob"], abs=0.15), (mixed, full)
    for term in ("region_concept", "distillation"):
        assert mixed[term] == pytest.approx(full[term], abs=0.75), (term, mixed, full)
    assert all(math.isfinite(v) for v in runs["bf16"].step(1).values())
    student = runs["bf16"].task.student_visual
    assert all(p.dtype == torch.float32 for p in student.parameters())
    assert student.layer4[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)


# --- loss scopes as the original (issue 9 item 5) -------------------------------------------------

def region_inputs(images: int, regions: int, concepts: int = 6, seed: int = 0, pass_rate: float = 0.6):
    generator = torch.Generator().manual_seed(seed)
    n = images * regions
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1)
    student, teacher, pool = unit(n, 8), unit(n, 8), unit(concepts, 8)
    labels = torch.randint(concepts, (n,), generator=generator)
    passed = torch.rand(n, generator=generator) < pass_rate
    return student, teacher, pool, labels, passed


def scoped_losses(student, teacher, pool, labels, passed, *, images, regions, group, distill="kept",
                  positions=None, dist=None):
    from regionclip_cli.stages.pretrain.recipe import LossesConfig
    from regionclip_cli.stages.pretrain.task import LossGroups, keep_by_group, pretraining_losses

    dist = dist or DistributedContext(0, 1, torch.device("cpu"))
    positions = positions if positions is not None else list(range(images))
    groups = LossGroups.build(positions, [regions] * len(positions), regions_per_image=regions,
                              batch_size=images, group_images=group, device=torch.device("cpu"))
    keep = keep_by_group(passed, groups, dist)
    config = LossesConfig(image_text=0.0, temperature=0.1, group_images=group, distillation_regions=distill)
    return pretraining_losses(student, teacher, pool, labels, keep, groups, config, dist), keep


def test_distillation_runs_over_the_kept_regions_only():
    """The original distils on the kept regions (clip_rcnn.py:584-594, filtered at :659)."""
    from regionclip_cli.modeling.losses import concept_distillation

    student, teacher, pool, labels, passed = region_inputs(images=3, regions=10)
    kept, keep = scoped_losses(student, teacher, pool, labels, passed, images=3, regions=10, group=3)
    every, _ = scoped_losses(student, teacher, pool, labels, passed, images=3, regions=10, group=3, distill="all")
    assert 0 < keep.sum() < len(keep)
    expected = concept_distillation(student[keep], teacher[keep], pool, 0.1)
    assert kept["distillation"].item() == pytest.approx(expected.item(), rel=1e-9)
    assert every["distillation"].item() == pytest.approx(concept_distillation(student, teacher, pool, 0.1).item())
    assert abs(kept["distillation"].item() - every["distillation"].item()) > 1e-3
    print(f"distillation: all regions {every['distillation'].item():.4f}, kept {kept['distillation'].item():.4f}")


def test_region_concept_contrast_is_the_mean_of_per_group_means():
    """The original contrasts within one GPU's 3 images and averages the per-GPU means; at
    8 x 3 images that differs from contrasting over the whole batch."""
    from regionclip_cli.modeling.losses import region_concept_contrastive

    images, regions = 24, 10
    student, teacher, pool, labels, passed = region_inputs(images=images, regions=regions, seed=1)
    grouped, keep = scoped_losses(student, teacher, pool, labels, passed, images=images, regions=regions, group=3)
    whole, whole_keep = scoped_losses(student, teacher, pool, labels, passed, images=images, regions=regions,
                                      group=None)
    per_group = []
    for g in range(8):
        rows = slice(g * 3 * regions, (g + 1) * 3 * regions)
        per_group.append(region_concept_contrastive(student[rows], pool, labels[rows], 0.1, keep=keep[rows]))
    assert grouped["region_concept"].item() == pytest.approx(torch.stack(per_group).mean().item(), rel=1e-9)
    expected_whole = region_concept_contrastive(student, pool, labels, 0.1, keep=whole_keep)
    assert whole["region_concept"].item() == pytest.approx(expected_whole.item(), rel=1e-9)
    assert abs(grouped["region_concept"].item() - whole["region_concept"].item()) > 0.05
    print(f"region-concept at 8 x 3 images: whole batch {whole['region_concept'].item():.4f}, "
          f"groups of 3 {grouped['region_concept'].item():.4f}")


def test_keep_all_when_none_pass_is_decided_per_group():
    """Within a group, an image none of whose regions pass stays out when another image's pass;
    a group where nothing passes keeps all its regions (clip_rcnn.py:637-661, per GPU batch)."""
    student, teacher, pool, labels, _ = region_inputs(images=6, regions=10)
    passed = torch.zeros(60, dtype=torch.bool)
    passed[:10] = True  # group 0 (images 0-2): only image 0 passes; group 1 (images 3-5): none
    _, keep = scoped_losses(student, teacher, pool, labels, passed, images=6, regions=10, group=3)
    assert keep[:10].all() and not keep[10:30].any() and keep[30:].all()


def test_precomputed_labels_drop_the_per_image_fallback():
    """`pseudolabel` files keep all regions of an image none of whose regions pass (per image);
    pretraining decides that per loss group: 40 kept regions there, 10 here."""
    from regionclip_cli.stages.pretrain.batches import _passed
    from regionclip_cli.stages.pretrain.task import LossGroups, keep_by_group

    threshold = 0.1
    records = [[{"keep": True, "score": 0.5}] * 10, [{"keep": True, "score": 0.05}] * 10,
               [{"keep": True, "score": 0.02}] * 10]  # images 2 and 3: the file's per-image fallback
    file_keep = torch.tensor([r["keep"] for image in records for r in image])
    passed = torch.tensor([_passed(r, threshold) for image in records for r in image])
    groups = LossGroups.build([0, 1, 2], [10, 10, 10], regions_per_image=10, batch_size=3, group_images=3,
                              device=torch.device("cpu"))
    keep = keep_by_group(passed, groups, DistributedContext(0, 1, torch.device("cpu")))
    assert int(file_keep.sum()) == 30 and int(keep.sum()) == 10


def _two_process_losses(rank, world, store, inputs, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        student, teacher, pool, labels, passed = inputs
        per_rank, regions = 6 // world, 10
        rows = slice(rank * per_rank * regions, (rank + 1) * per_rank * regions)
        dist = DistributedContext(rank, world, torch.device("cpu"))
        results = {}
        for group in GROUP_OPTIONS:
            mine = student[rows].clone().requires_grad_(True)
            terms, _ = scoped_losses(mine, teacher[rows], pool, labels[rows], passed[rows], images=6,
                                     regions=regions, group=group, dist=dist,
                                     positions=list(range(rank * per_rank, (rank + 1) * per_rank)))
            sum(terms.values()).backward()
            results[str(group)] = {"terms": {k: v.detach() for k, v in terms.items()}, "grad": mine.grad}
        torch.save(results, f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


GROUP_OPTIONS = (4, None)  # groups of 4 over 2 processes x 3 images straddle the processes


@pytest.mark.slow  # two spawned processes: ~35 s on a loaded 2-core machine
def test_loss_groups_on_two_processes_equal_one_process(tmp_path):
    """Region losses, keep rule and gradients of 2 processes equal one process's, per group option."""
    import torch.multiprocessing as mp

    inputs = region_inputs(images=6, regions=10, seed=3, pass_rate=0.3)
    inputs[4][30:40] = False  # image 3 passes nothing: its group decides
    mp.spawn(_two_process_losses, args=(2, tmp_path / "store", inputs, tmp_path / "out"), nprocs=2)
    parts = [torch.load(tmp_path / f"out.{rank}", weights_only=True) for rank in range(2)]
    for group in GROUP_OPTIONS:
        single_student = inputs[0].clone().requires_grad_(True)
        single, _ = scoped_losses(single_student, *inputs[1:], images=6, regions=10, group=group)
        sum(single.values()).backward()
        shares = [p[str(group)] for p in parts]
        for name, value in single.items():
            mean = torch.stack([p["terms"][name] for p in shares]).mean().item()
            assert mean == pytest.approx(value.item(), rel=1e-9), (group, name)
        grads = torch.cat([p["grad"] for p in shares]) / 2  # DDP averages the processes' gradients
        torch.testing.assert_close(grads, single_student.grad, rtol=1e-9, atol=1e-12)


# --- reliability: refused or warned about at check time (issues 12, 13) ---------------------------

def test_check_refuses_a_used_output_folder_and_overwrite_replaces_it(world, tmp_path, cli):
    """Issue 12.1: a rerun without --resume used to empty metrics.jsonl and mix two runs' files."""
    out = tmp_path / "used"
    recipe = write_recipe(world, out)
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_text("x")
    (out / "metrics.jsonl").write_text('{"iteration": 1}\n')
    code, _, err = cli("pretrain", recipe, "--check")
    assert code == 2 and "holds a previous run" in err and "--resume" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    code, out_text, _ = cli("pretrain", recipe, "--check", "--overwrite")
    assert code == 0 and "OK" in out_text


def test_batches_larger_than_the_data_or_the_memory_are_refused_at_check(world, tmp_path, cli):
    """Issue 12.9: batch 100000 on 200 images passed --check and was killed by the kernel later."""
    recipe = write_recipe(world, tmp_path / "big")
    code, _, err = cli("pretrain", recipe, "--check", "--set", "train.batch_size=100000")
    assert code == 2 and "--set train.batch_size: 100000 is larger than the 8 captioned images" in err
    code, _, err = cli("pretrain", recipe, "--check", "--set", "proposals.regions_per_image=2000000")
    assert code == 2 and "need at least" in err and "GiB per process" in err


def test_schedules_longer_than_the_run_are_warned_about_at_check(world, tmp_path, cli):
    """Issue 12.11: warm-up and lr steps past the run's end passed --check silently."""
    recipe = write_recipe(world, tmp_path / "short")
    code, _, err = cli("pretrain", recipe, "--check", "--set", "train.iterations=2")
    assert code == 0
    assert "warning: optimizer.warmup_iterations 2 >= train.iterations 2" in err
    assert "warning: optimizer.steps 3 >= train.iterations 2" in err


def test_a_bad_device_is_refused_at_check_naming_where_it_came_from(world, tmp_path, cli):
    """Issue 12.12: `--set device=tpu --check` said OK; the run then quoted a --device flag."""
    recipe = write_recipe(world, tmp_path / "tpu")
    code, _, err = cli("pretrain", recipe, "--check", "--set", "device=tpu")
    assert code == 2 and "--set device 'tpu' is not a device" in err
    recipe.write_text(recipe.read_text().replace("device: cpu", "device: tpu"))
    code, _, err = cli("pretrain", recipe, "--check")
    assert code == 2 and f"{recipe}: device 'tpu' is not a device" in err


def test_built_in_recipes_by_name_show_recipe_and_list_keys(tmp_path, cli, monkeypatch):
    """Issue 13.2: recipes ship in the package; print one, list the keys, run one by name."""
    from regionclip_cli.engine.recipe import builtin_recipes

    shipped = builtin_recipes()
    assert {"world", "coco-rn50", "cc3m-rn50"} <= set(shipped)
    code, out, _ = cli("pretrain", "--show-recipe", "world")
    assert code == 0 and out == shipped["world"].read_text()
    code, out, _ = cli("pretrain", "--list-keys")
    assert code == 0 and "losses.group_images" in out and "[default: 3]" in out
    assert any(line.split()[0] == "train.batch_size" and "[default: 96]" in line for line in out.splitlines())
    monkeypatch.chdir(tmp_path)  # relative paths in a built-in recipe resolve against the current folder
    code, _, err = cli("pretrain", "world", "--check")
    assert code == 2 and "built-in recipe world: concepts: world/concepts/concept_embeddings.pt does not exist" in err
    code, _, err = cli("pretrain", "wrold", "--check")
    assert code == 2 and "did you mean 'world'" in err


def build_wheel(tmp_path: Path) -> Path:
    import shutil

    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # a clean copy: no build/ left over from an earlier build
    shutil.copytree(root / "regionclip_cli", source / "regionclip_cli",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "-q", "-w", str(tmp_path / "wheels"), str(source)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = (tmp_path / "wheels").glob("regionclip-*.whl")
    return wheel


def test_the_wheel_ships_the_recipes(tmp_path):
    """Issue 13.2: recipes/ was not package data, so a normal install had no recipes."""
    import zipfile

    root = Path(__file__).resolve().parents[1]
    names = set(zipfile.ZipFile(build_wheel(tmp_path)).namelist())
    shipped = {f"regionclip_cli/recipes/{p.name}" for p in (root / "regionclip_cli" / "recipes").glob("*.yaml")}
    assert shipped and shipped <= names


@pytest.mark.slow
def test_recipes_from_a_wheel_installed_in_a_fresh_environment(tmp_path):
    """The README's `regionclip pretrain --show-recipe world` after a normal (non-editable) install."""
    import venv

    wheel = build_wheel(tmp_path)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)  # torch etc. from this environment
    python = env_dir / "bin" / "python"
    result = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([str(python), "-c", "import regionclip_cli, sys; print(regionclip_cli.__file__)"],
                            capture_output=True, text=True, cwd=elsewhere, timeout=600)
    assert str(env_dir) in result.stdout, result.stdout + result.stderr
    result = subprocess.run([str(env_dir / "bin" / "regionclip"), "pretrain", "--show-recipe", "world"],
                            capture_output=True, text=True, cwd=elsewhere, timeout=600)
    assert result.returncode == 0 and "teacher:" in result.stdout, result.stderr


@pytest.mark.slow
def test_kill_9_between_checkpoints_then_resume_gives_the_weights_of_an_uninterrupted_run(world, tmp_path):
    """A run killed without warning (no signal handler runs) loses only the steps since its last
    checkpoint; `--resume` redoes them and ends with exactly the uninterrupted run's weights."""
    import signal
    import time

    settings = {"iterations": 6, "checkpoint_every": 3}
    straight = tmp_path / "straight"
    assert run_cli("pretrain", str(write_recipe(world, straight, **settings)), "-q").returncode == 0
    killed = tmp_path / "killed"
    recipe = write_recipe(world, killed, **settings)
    process = subprocess.Popen([sys.executable, "-m", "regionclip_cli", "pretrain", str(recipe), "-q"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if log.exists() and '"iteration": 4' in log.read_text():
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert torch.load(killed / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 3
    assert not (killed / "student.pt").exists()

    rerun = run_cli("pretrain", str(recipe), "-q")  # issue 12.1: no silent restart over the run
    assert rerun.returncode == 2 and "--resume" in rerun.stderr and "--overwrite" in rerun.stderr
    changed = run_cli("pretrain", str(recipe), "-q", "--resume", "--set", "optimizer.lr=0.5")
    assert changed.returncode == 2 and "optimizer.lr 0.01 -> 0.5 (--set optimizer.lr)" in changed.stderr
    resumed = run_cli("pretrain", str(recipe), "-q", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert [r["iteration"] for r in metrics(killed)] == [1, 2, 3, 4, 5, 6]
    a = load_checkpoint(straight / "student.pt").state_dict
    b = load_checkpoint(killed / "student.pt").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)

    longer = run_cli("pretrain", str(recipe), "--resume", "--set", "train.iterations=7")
    assert longer.returncode == 0, longer.stderr
    assert "resume: train.iterations 6 -> 7 (--set train.iterations)" in longer.stderr
    assert [r["iteration"] for r in metrics(killed)][-1] == 7


def test_caption_candidates_label_each_region_with_a_concept_its_captions_name(world, tmp_path):
    """`pseudo_labels.candidates: captions`: every pseudo label is one of the concepts parsed
    from the region's own image's captions, and the distillation target is restricted alike."""
    from regionclip_cli.stages.concepts.parse import ConceptParser, ParseConfig
    from regionclip_cli.stages.pretrain import task as task_module

    recipe = load_recipe(PretrainConfig, write_recipe(world, tmp_path / "run"),
                         overrides=["pseudo_labels.candidates=captions"])
    trainer = cpu_trainer(recipe)
    task = trainer.task
    batch = task.batch(0)
    parser = ConceptParser(ParseConfig())
    seen = []
    with mock.patch.object(task_module, "pretraining_losses", wraps=task_module.pretraining_losses) as losses:
        trainer.step(0)
    labels, candidates = losses.call_args.args[3], losses.call_args.args[-1]
    counts = [len(r) for r in batch.regions]
    for image, (named, item_labels) in enumerate(zip(batch.mentioned, labels.split(counts), strict=True)):
        item = task.batches.items[batch_index(task, image)]
        parsed = {c for caption in parser.parse(item.captions) for c in caption}
        names = {task.concept_names[i] for i in named.tolist()}
        assert names and names == parsed & set(task.concept_names)
        assert {task.concept_names[i] for i in item_labels.tolist()} <= names
        seen += item_labels.tolist()
    assert candidates.shape == (sum(counts), len(task.concept_names))
    assert candidates.sum(1).tolist() == [len(n) for n, c in zip(batch.mentioned, counts) for _ in range(c)]
    assert len(set(seen)) > 1


def batch_index(task: PretrainTask, position: int) -> int:
    from regionclip_cli.data.captions import global_batch_indices

    train = task.recipe.train
    return global_batch_indices(len(task.batches.items), train.batch_size, 0, train.seed)[position]


def test_precomputed_labels_must_use_the_recipes_candidates(world, tmp_path, cli):
    """A `pseudolabel` folder made from the whole pool is refused by a captions recipe, and one
    made with --captions by a pool recipe: the labels would not be the ones the recipe asks for."""
    images, concepts = world
    labels = tmp_path / "labels"
    code, _, err = cli("pseudolabel", images / "images", "--concepts", concepts, "--model", "world-tiny",
                       "--regions", "4", "--out", labels, "--device", "cpu", "--pictures", "0", "-q")
    assert code == 0, err
    code, _, err = cli("pretrain", write_recipe(world, tmp_path / "run"), "--set", "pseudo_labels.candidates=captions",
                       "--set", f"pseudo_labels.precomputed={labels}")
    assert code == 2 and "labelled with candidates 'pool', but pseudo_labels.candidates is 'captions'" in err
    assert "Traceback" not in err


def test_rpn_regions_are_proposed_on_each_training_image(world, tmp_path):
    """`proposals.source: rpn`: a frozen RPN proposes each image's regions in the step, at most
    `regions_per_image` of its `rpn_candidates`, inside the image, the same draw for the same
    (iteration, position), and training runs on them."""
    from regionclip_cli.modeling.checkpoints import save_checkpoint
    from regionclip_cli.modeling.rpn import RPNConfig, build_proposal_network, rpn_checkpoint

    torch.manual_seed(0)
    clip = load_clip("world-tiny", random_init=True)
    network = build_proposal_network(RPNConfig(anchor_sizes=[16, 32, 64], pre_nms_top_n_test=300,
                                               post_nms_top_n_test=50),
                                     clip_visual=clip.model.visual, mean=clip.mean, std=clip.std)
    rpn = tmp_path / "rpn.pt"
    save_checkpoint(rpn, rpn_checkpoint(network, "world-tiny", {}))
    recipe = load_recipe(PretrainConfig, write_recipe(world, tmp_path / "run"),
                         overrides=["proposals.source=rpn", f"proposals.rpn={rpn}", "proposals.rpn_candidates=20",
                                    "proposals.rpn_nms_threshold=0.7"])
    trainer = cpu_trainer(recipe)
    task = trainer.task
    batch = task.batch(1)
    first = task.rpn_regions(batch.images, batch.whole, batch.iteration, batch.positions)
    again = task.rpn_regions(batch.images, batch.whole, batch.iteration, batch.positions)
    other = task.rpn_regions(batch.images, batch.whole, batch.iteration + 1, batch.positions)
    for boxes, whole in zip(first, batch.whole):
        assert len(boxes) == 6  # 20 candidates after NMS, 6 drawn
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= whole[0, 2]).all() and (boxes[:, 3] <= whole[0, 3]).all()
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    terms = trainer.step(0)
    assert all(math.isfinite(float(terms[k])) for k in ("region_concept", "distillation", "image_text"))


def test_rpn_regions_refuse_precomputed_labels(world, tmp_path, cli):
    code, _, err = cli("pretrain", write_recipe(world, tmp_path / "run"), "--set", "proposals.source=rpn",
                       "--set", f"proposals.rpn={tmp_path}", "--set", f"pseudo_labels.precomputed={tmp_path}")
    assert code == 2 and "proposals.source 'rpn' cannot be combined with it" in err and "Traceback" not in err


def test_the_teacher_labels_at_its_own_input_size(world, tmp_path):
    """`teacher.min_size/max_size`: the teacher sees each image resized from the original (224 px
    here, the world's own size) while the student trains at 128 px, and it embeds the same regions,
    scaled into its pixels. At the student's own size the step is the default step exactly."""
    from regionclip_cli.data.images import load_image, to_model_tensor

    images, _ = world
    boxes = images / "annotations.json"
    common = ["train.min_size=128", "train.max_size=128", "train.hflip=false", "proposals.source=file",
              f"proposals.file={boxes}"]
    own = load_recipe(PretrainConfig, write_recipe(world, tmp_path / "own"),
                      [*common, "teacher.min_size=224", "teacher.max_size=224"])
    task = cpu_trainer(own).task
    assert not task.shares_layer1
    batch = task.batch(0)
    assert batch.images.shape[-2:] == (128, 128) and batch.teacher_images.shape[-2:] == (224, 224)
    assert batch.teacher_scales == pytest.approx([224 / 128] * len(batch.positions))
    entries = {Path(e["file_name"]).name: e for e in json.loads(boxes.read_text())["images"]}
    annotations = json.loads(boxes.read_text())["annotations"]
    for position, regions in zip(batch.positions, batch.teacher_regions(batch.regions)):
        item = task.batches.items[batch_index(task, position)]
        image_id = entries[item.path.name]["id"]
        original = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                                 for a in annotations if a["image_id"] == image_id])
        # every region is one of the image's boxes, back in original (= the teacher's) pixels
        assert all(torch.isclose(original, box, atol=1e-3).all(dim=1).any() for box in regions)
        picture = to_model_tensor(load_image(item.path), task.teacher.mean, task.teacher.std)
        torch.testing.assert_close(batch.teacher_images[position - batch.positions[0]], picture)

    same_size = load_recipe(PretrainConfig, write_recipe(world, tmp_path / "same"),
                            [*common, "teacher.min_size=128", "teacher.max_size=128"])
    default = load_recipe(PretrainConfig, write_recipe(world, tmp_path / "default"), common)
    got, expected = cpu_trainer(same_size).step(0), cpu_trainer(default).step(0)
    for term in ("region_concept", "distillation", "image_text", "top1_prob"):
        assert got[term] == pytest.approx(expected[term], rel=1e-4, abs=1e-5), term
    assert expected["distillation"] == pytest.approx(0.0, abs=1e-3)  # the student starts as the teacher
    assert cpu_trainer(own).step(0)["distillation"] > 0.05  # ... who now sees more


def test_teacher_sizes_come_together(world, tmp_path, cli):
    code, _, err = cli("pretrain", write_recipe(world, tmp_path / "run"), "--set", "teacher.min_size=224", "--check")
    assert code == 2 and "teacher.min_size and teacher.max_size are set together" in err and "Traceback" not in err
