"""`regionclip evaluate`: score a detections file against a COCO or LVIS ground truth."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer


class SplitName(str, Enum):
    coco = "coco"
    coco_ovd = "coco-ovd"
    lvis = "lvis"
    world = "world"


def evaluate(
    detections: Annotated[Path, typer.Argument(help="Detections: a COCO results JSON array or a detections.jsonl written by zeroshot or finetune.", show_default=False)],
    gt: Annotated[Path, typer.Option(help="Ground truth: a COCO or LVIS annotation JSON.", show_default=False)],
    split: Annotated[Optional[SplitName], typer.Option(help="Category groups to report: coco-ovd or world (AP50 novel/base/all), lvis (APr/APc/APf), coco. [default: read from the ground truth's categories]", show_default=False)] = None,
    vocab: Annotated[Optional[str], typer.Option(help="The vocabulary the detections were made with (as zeroshot --vocab); checked against the ground truth, and only its classes are scored.")] = None,
    regions: Annotated[Optional[Path], typer.Option(help="Region records (JSON Lines: file, boxes, category_ids) for top-1 accuracy on ground-truth boxes. [default: those in a detections.jsonl made with --boxes ann.json]", show_default=False)] = None,
    only_detected_images: Annotated[bool, typer.Option("--only-detected-images", help="Score only the images that have detections (a COCO results array cannot say which images were run).")] = False,
    random_baseline: Annotated[bool, typer.Option("--random-baseline", help="Also show each metric for uniformly random scores on the ground-truth boxes of the same images.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Write the metrics and the inputs to this JSON file.")] = None,
) -> None:
    """Score detections against a COCO or LVIS ground truth.

    COCO AP/AP50 (AP50 novel/base/all for split vocabularies) or LVIS AP and APr/APc/APf.

    Files that do not belong together are refused, never scored low: image ids or category ids
    the ground truth does not have, or class names that differ from the ground truth's at the
    same id. COCO metrics come from pycocotools, LVIS ones from faster-coco-eval's LVIS mode (the
    300 best detections per image, as the LVIS API).

    Examples:

      regionclip evaluate runs/zeroshot/detections.jsonl --gt world/annotations.json

      regionclip evaluate detections_coco.json --gt instances_val2017.json --split coco-ovd

    Exit codes: 0 done; 2 a usage or input error (files that do not match each other included).
    """
    from regionclip_cli.stages.evaluate import EvaluateConfig, run

    report = run(EvaluateConfig(
        detections=detections, gt=gt, split=split.value if split is not None else None, vocab=vocab,
        regions=regions, only_detected_images=only_detected_images, random_baseline=random_baseline, out=out,
    ))
    render_evaluation(report.detection, region=report.region, random_levels=report.random_levels)
    if out is not None:
        typer.echo(str(out))


def _number(value: Any) -> str:
    return "–" if value is None or value != value else f"{value:.1f}"  # NaN: not measurable here


def render_evaluation(result, *, region=None, random_levels: dict | None = None, console=None) -> None:
    """The metrics table (and its notes) that evaluate, zeroshot and finetune all print."""
    from rich.console import Console
    from rich.table import Table

    from regionclip_cli.evaluation.api import describe

    console = console or Console()
    table = Table(title=f"evaluation ({result.kind})", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if random_levels is not None:
        table.add_column("random scores", justify="right")
    keys = {"AP50 novel": "AP50_novel", "AP50 base": "AP50_base", "AP novel": "AP_novel", "AP base": "AP_base"}
    for label, value in describe(result):
        row = [label, _number(value)]
        if random_levels is not None:
            row.append(_number(random_levels.get(keys.get(label, label))))
        table.add_row(*row)
    if region is not None:
        for name, group in region.groups.items():
            row = [f"top-1 {name}", f"{_number(group.accuracy)} ({group.correct}/{group.total})"]
            if random_levels is not None:
                row.append(_number(random_levels.get(f"top1_{name}")))
            table.add_row(*row)
        table.add_row("top-1 chance", f"{region.chance:.1f}", *([""] if random_levels is not None else []))
    console.print(table)
    if result.images_evaluated is not None:
        console.print(f"images: {result.images_evaluated} of {result.images_in_ground_truth} ground-truth images",
                      highlight=False, markup=False)
    for note in dict.fromkeys(list(result.notes) + (list(region.notes) if region is not None else [])):
        console.print(f"note: {note}", highlight=False, markup=False)
