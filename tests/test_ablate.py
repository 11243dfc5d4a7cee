"""`regionclip ablate`: variants of a recipe trained, evaluated and compared on the tiny world."""

import csv
import json
import math
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.stages.ablate.grid import parse_variations, variants
from test_finetune import finetune_recipe, rpn_file  # noqa: F401 (rpn_file: fixture)


@pytest.fixture(autouse=True)
def text_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("REGIONCLIP_CACHE", str(tmp_path_factory.getbasetemp() / "text-cache"))


def pretrain_recipe(world: Path, concepts: Path, path: Path) -> Path:
    recipe = {
        "teacher": {"model": "world-tiny"},
        "concepts": str(concepts),
        "data": {"images": str(world / "images"), "captions": str(world / "captions.jsonl")},
        "proposals": {"regions_per_image": 4},
        "losses": {"image_text": 0.0},
        "optimizer": {"lr": 0.01, "warmup_iterations": 1, "steps": [2]},
        "train": {"iterations": 2, "batch_size": 2, "min_size": 128, "max_size": 128, "log_every": 1,
                  "checkpoint_every": 100, "loader_workers": 0},
        "device": "cpu",
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def ablate_args(world: Path, recipe: Path, out: Path, *extra) -> list:
    return ["ablate", "pretrain", recipe, "--eval-gt", world / "annotations.json", "--eval-images", world / "images",
            "--vocab", "world", "--out", out, "-q", *extra]


def test_one_change_at_a_time_or_every_combination():
    axes = parse_variations(["optimizer.lr=0.1", "losses.image_text=1", "optimizer.lr=0.2"])
    assert axes == {"optimizer.lr": ["0.1", "0.2"], "losses.image_text": ["1"]}
    rows = variants(axes)
    assert [v.name for v in rows] == ["base", "optimizer.lr=0.1", "optimizer.lr=0.2", "losses.image_text=1"]
    assert rows[0].overrides == () and rows[2].overrides == ("optimizer.lr=0.2",)
    grid = variants(axes, product=True)
    assert [v.overrides for v in grid[1:]] == [("optimizer.lr=0.1", "losses.image_text=1"),
                                               ("optimizer.lr=0.2", "losses.image_text=1")]
    assert len({v.folder for v in grid}) == len(grid)
    assert variants({"optimizer.steps": ["[10,20]"]})[1].folder == "01-optimizer.steps=_10_20_"


@pytest.mark.parametrize("option, message", [
    ("optimizer.lr", "expected KEY=VALUE"), ("=1", "expected KEY=VALUE"), ("train.seed=3", "use --seed S"),
    ("output=x", "ablate writes each run"),
])
def test_bad_variations_are_refused(option, message):
    with pytest.raises(RegionclipError, match=message):
        parse_variations([option])
    with pytest.raises(RegionclipError, match="given twice"):
        parse_variations(["optimizer.lr=1", "optimizer.lr=1"])


def test_pretrain_ablation_trains_evaluates_compares_and_resumes(cli, small_world, world_concepts, tmp_path):
    """Two variants x two seeds: every run is a real pretraining run, every figure is zeroshot's
    region top-1 of that run's student on the ground-truth boxes, the table holds mean (min-max),
    and a rerun reuses everything."""
    recipe = pretrain_recipe(small_world, world_concepts, tmp_path / "recipe.yaml")
    out = tmp_path / "ablation"
    args = ablate_args(small_world, recipe, out, "--vary", "optimizer.lr=0.05", "--seed", "0", "--seed", "1")
    code, stdout, err = cli(*args)
    assert code == 0, err
    record = json.loads((out / "ablation.json").read_text())
    assert [(r["variant"], r["seed"]) for r in record["runs"]] == [
        ("base", 0), ("base", 1), ("optimizer.lr=0.05", 0), ("optimizer.lr=0.05", 1)]
    for run in record["runs"]:
        folder = Path(run["folder"])
        assert (folder / "student.pt").exists()
        trained = json.loads((folder / "recipe.json").read_text())
        assert trained["train"]["seed"] == run["seed"]
        assert trained["optimizer"]["lr"] == (0.05 if run["overrides"] else 0.01)
        evaluation = json.loads((out / "eval" / folder.parent.name / folder.name / "metrics.json").read_text())
        assert evaluation["settings"]["weights"]["path"] == str(folder / "student.pt")
        assert run["figures"]["top1"] == pytest.approx(evaluation["region_accuracy"]["top1"]["all"], abs=1e-4)
        assert run["figures"]["AP50"] == pytest.approx(evaluation["metrics"]["AP50"], abs=1e-4)
        assert run["images_per_second"] > 0
    assert record["chance"] == pytest.approx(5.0)
    teacher = json.loads((out / "eval" / "teacher" / "metrics.json").read_text())
    assert teacher["settings"]["weights"] is None
    assert record["teacher"]["top1"] == pytest.approx(teacher["region_accuracy"]["top1"]["all"], abs=1e-4)
    # the students moved away from the teacher they started as
    assert any(r["figures"]["top1"] != record["teacher"]["top1"] for r in record["runs"])

    table = (out / "results.md").read_text().splitlines()
    base = [r["figures"]["top1"] for r in record["runs"] if r["variant"] == "base"]
    row = next(line for line in table if line.startswith("| base |"))
    assert row.split(" | ")[1] == f"{sum(base) / 2:.1f} ({min(base):.1f}–{max(base):.1f})"
    assert any(line.startswith("| teacher (frozen) |") for line in table)
    assert "Chance (a random class for every box): 5.0 %" in "\n".join(table)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and float(rows[0]["top1"]) == pytest.approx(base[0], abs=1e-3)
    svg = (out / "results.svg").read_text()
    bars = [e for e in ElementTree.fromstring(svg).iter("{http://www.w3.org/2000/svg}rect")][1:]  # after the backdrop
    assert len(bars) == 2 and "chance 5.0" in svg and "teacher" in svg
    assert "base" in stdout and "optimizer.lr=0.05" in stdout

    weights = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/student.pt")}
    code, stdout, err = cli(*args)
    assert code == 0, err
    assert "trained already" in err and "(0 trained, 4 finished before)" in stdout
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/student.pt")} == weights
    assert json.loads((out / "ablation.json").read_text())["runs"] == record["runs"]


def test_a_failing_run_is_reported_and_the_rest_finish(cli, small_world, world_concepts, tmp_path):
    recipe = pretrain_recipe(small_world, world_concepts, tmp_path / "recipe.yaml")
    out = tmp_path / "ablation"
    # 100 images a batch is refused when the run is checked (the world has 8): that run fails
    code, stdout, err = cli(*ablate_args(small_world, recipe, out, "--vary", "train.batch_size=100"))
    assert code == 1
    assert "train.batch_size=100, seed 0: failed" in err and "larger than the 8 captioned images" in err
    record = json.loads((out / "ablation.json").read_text())
    assert record["runs"][0]["error"] is None and record["runs"][0]["figures"]["top1"] >= 0
    assert "larger than the 8 captioned images" in record["runs"][1]["error"]
    assert "1 run(s) failed" in (out / "results.md").read_text() and "failed:" in stdout
    # what an attempt that died left in a run's folder (no checkpoint) is replaced on the next try
    again = tmp_path / "again"
    leftover = again / "runs" / "00-base" / "seed0"
    leftover.mkdir(parents=True)
    (leftover / "recipe.json").write_text("{}")
    code, _, err = cli(*ablate_args(small_world, recipe, again, "--vary", "optimizer.lr=0.05"))
    assert code == 0, err
    assert (leftover / "student.pt").exists() and json.loads((leftover / "recipe.json").read_text())["train"]["seed"] == 0


def test_bad_keys_and_missing_evaluation_are_refused_before_any_training(cli, small_world, world_concepts, tmp_path):
    recipe = pretrain_recipe(small_world, world_concepts, tmp_path / "recipe.yaml")
    out = tmp_path / "ablation"
    code, _, err = cli(*ablate_args(small_world, recipe, out, "--vary", "optimizer.lr=0.1",
                                    "--vary", "optimiser.lr=0.1"))
    assert code == 2 and "--vary optimiser.lr=0.1" in err and "optimizer" in err and "Traceback" not in err
    assert not (out / "runs").exists()
    code, _, err = cli("ablate", "pretrain", recipe, "--vary", "optimizer.lr=0.1", "--out", out)
    assert code == 2 and "give --eval-gt, --eval-images, --vocab" in err
    code, _, err = cli("ablate", "detect", recipe, "--vary", "optimizer.lr=0.1", "--out", out)
    assert code == 2 and "unknown stage 'detect'" in err
    code, _, err = cli("ablate", "pretrain", recipe, "--vary", "optimizer.lr=0.1", "--out", out, "--vocab", "coco",
                       "--eval-gt", small_world / "annotations.json", "--eval-images", small_world / "images")
    assert code == 2 and "--gt" in err and "Traceback" not in err  # the teacher's evaluation comes first
    assert not (out / "runs").exists()


def test_finetune_ablation_compares_held_out_ap_with_random_labels(cli, small_world, rpn_file, tmp_path):
    recipe = finetune_recipe(small_world, rpn_file, tmp_path / "finetune", iterations=2)
    out = tmp_path / "ablation"
    code, _, err = cli("ablate", "finetune", recipe, "--vary", "detector.regions_per_image=8", "--out", out, "-q")
    assert code == 0, err
    record = json.loads((out / "ablation.json").read_text())
    assert [r["variant"] for r in record["runs"]] == ["base", "detector.regions_per_image=8"]
    for run in record["runs"]:
        measured = json.loads((Path(run["folder"]) / "evaluation.json").read_text())["metrics"]
        assert run["figures"]["AP50"] == pytest.approx(measured["AP50"], abs=1e-4)
        assert run["figures"]["AP50_random"] is not None and not math.isnan(run["figures"]["AP50_random"])
    assert record["teacher"] is None and record["chance"] is None
    assert "random labels" in (out / "results.md").read_text()
    code, _, err = cli("ablate", "finetune", recipe, "--vary", "detector.regions_per_image=8", "--out", out,
                       "--eval-gt", small_world / "annotations.json")
    assert code == 2 and "--eval-gt and --eval-images are for pretrain" in err
