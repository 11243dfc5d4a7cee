"""`regionclip demo`: the whole pipeline on the built-in world, ending in teacher vs student.

The steps are command lines (see `plan.py`) run by a `runner` the caller supplies — the CLI passes
its own entry point — so the demo does exactly what the printed commands do, and this stage never
imports the CLI layer. What it adds on top is the comparison: one table read from the two zero-shot
runs' `metrics.json`, and pictures of the same held-out images as each model labels them.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.stages.demo.plan import QUICK, FULL, DemoConfig, Step, demo_steps

Runner = Callable[[Sequence[str]], int]


@dataclass(frozen=True)
class ModelScores:
    """One model's figures on the held-out images (percent; NaN where a split has no boxes)."""

    top1: float
    top1_base: float
    top1_novel: float
    ap50: float
    ap50_base: float
    ap50_novel: float
    correct: int  # ground-truth boxes whose best class is right


@dataclass
class DemoResult:
    teacher: ModelScores
    student: ModelScores
    chance: float
    boxes: int
    pictures: list[Path] = field(default_factory=list)
    steps_run: int = 0
    steps_skipped: int = 0
    seconds: float = 0.0


def run(config: DemoConfig, *, runner: Runner, announce: Callable[[Step, bool], None] = lambda step, skipped: None) -> DemoResult:
    """Run every step whose output is missing, then compare teacher and student."""
    started = time.perf_counter()
    config.out.mkdir(parents=True, exist_ok=True)
    ran = skipped = 0
    for step in demo_steps(config):
        if step.done.exists():
            announce(step, True)
            skipped += 1
            continue
        announce(step, False)
        code = runner(step.argv)
        if code != 0 or not step.done.exists():
            raise RegionclipError(f"demo step failed (exit {code}): {step.command}")
        ran += 1
    teacher_dir, student_dir = config.out / "zeroshot-teacher", config.out / "zeroshot-student"
    teacher, chance, boxes = _scores(teacher_dir / "metrics.json")
    student, _, _ = _scores(student_dir / "metrics.json")
    size = QUICK if config.quick else FULL
    from regionclip_cli.stages.demo.compare import side_by_side

    pictures = side_by_side(
        config.out / "eval" / "annotations.json", teacher_dir / "detections.jsonl", student_dir / "detections.jsonl",
        config.out / "compare", limit=size.pictures,
    )
    return DemoResult(teacher, student, chance, boxes, pictures, ran, skipped, time.perf_counter() - started)


def _number(value) -> float:
    return math.nan if value is None else float(value)


def _scores(path: Path) -> tuple[ModelScores, float, int]:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        metrics, accuracy = summary["metrics"], summary["region_accuracy"]
        top1 = accuracy["top1"]
        scores = ModelScores(
            top1=_number(top1["all"]), top1_base=_number(top1.get("base")), top1_novel=_number(top1.get("novel")),
            ap50=_number(metrics["AP50"]), ap50_base=_number(metrics.get("AP50_base")),
            ap50_novel=_number(metrics.get("AP50_novel")),
            correct=int(accuracy["counts"]["all"]["correct"]),
        )
        return scores, float(accuracy["chance"]), int(accuracy["counts"]["all"]["total"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RegionclipError(f"{path}: not a zero-shot evaluation with ground-truth boxes ({error}); "
                              "delete the folder and rerun the demo") from None
