"""`regionclip ablate`: a base recipe, the settings to vary, one comparison table and chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from regionclip_cli.cli import training as options


def ablate(
    stage: Annotated[str, typer.Argument(help="The stage whose recipe is varied: pretrain or finetune.",
                                         show_default=False)],
    recipe: Annotated[str, options.recipe_argument("those of `regionclip STAGE`, e.g. world, finetune-world")],
    vary: Annotated[Optional[list[str]], typer.Option(
        "--vary", metavar="KEY=VALUE",
        help="A setting to compare with the base recipe (repeatable; repeat a key for more values).")] = None,
    product: Annotated[bool, typer.Option(
        "--product", help="Run every combination of the --vary values instead of one change at a time.")] = False,
    seeds: Annotated[Optional[list[int]], typer.Option(
        "--seed", help="Train each variant with this seed (repeatable) [default: the recipe's train.seed].")] = None,
    set_: options.SetOption = None,
    eval_gt: Annotated[Optional[Path], typer.Option(
        help="pretrain: held-out COCO annotations whose boxes every student names.")] = None,
    eval_images: Annotated[Optional[Path], typer.Option(help="pretrain: the folder of those images.")] = None,
    vocab: Annotated[Optional[str], typer.Option(
        help="pretrain: the class names, as zeroshot --vocab (e.g. world, coco).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the runs and the comparison.")] = Path("runs/ablate"),
    quiet: options.QuietOption = False,
) -> None:
    """Compare variants of one recipe: train each (with each seed), evaluate, tabulate.

    One change at a time by default: the base recipe, then one run per --vary KEY=VALUE. Pretrained students are compared by region top-1 on the ground-truth boxes of held-out images (--eval-gt, --eval-images, --vocab) beside their frozen teacher and chance; detectors by the AP each finetune run measured on its data.test, beside random labels on the same detections.

    Writes OUT/runs/NN-VARIANT/seedS (ordinary runs), OUT/results.md, OUT/results.csv, OUT/results.svg and OUT/ablation.json. A rerun skips what is finished and resumes what was interrupted; a failed run is reported and the rest go on (exit 1).

    Example (the loss terms of the world recipe, three seeds):

      regionclip ablate pretrain world --vary losses.region_concept=1 --vary losses.image_text=1 --seed 0 --seed 1 --seed 2 --eval-gt eval/annotations.json --eval-images eval/images --vocab world
    """  # noqa: E501 (one line per paragraph: the help wraps it to the terminal)
    from regionclip_cli.stages.ablate import AblateConfig, run

    config = AblateConfig(stage=stage, recipe=recipe, vary=tuple(vary or ()), overrides=tuple(set_ or ()),
                          product=product, seeds=tuple(seeds or ()), out=out, eval_images=eval_images,
                          eval_gt=eval_gt, vocab=vocab)
    result = run(config, log=options.log, progress=not quiet)
    _render(result)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _render(result) -> None:
    """The main figure with its spread over seeds, three more as means: the rest are in OUT."""
    from rich.console import Console
    from rich.table import Table

    from regionclip_cli.stages.ablate.report import label, spread

    shown = (result.primary, *[m for m in ("top1_base", "top1_novel", "AP50", "AP50_novel", "AP50_random")
                               if m in result.metrics and m != result.primary][:3])
    table = Table(title=f"ablate {result.stage}: {len(result.runs)} runs ({result.trained} trained, "
                        f"{result.skipped} finished before)", title_justify="left")
    table.add_column("variant", overflow="fold")
    for metric in shown:
        table.add_column(label(metric), justify="right")
    if result.baseline is not None:
        table.add_row("teacher (frozen)", *("–" if math.isnan(result.baseline.get(m, math.nan))
                                            else f"{result.baseline[m]:.1f}" for m in shown), style="dim")
    for summary in result.summaries:
        seeds = sum(1 for r in summary.runs if r.error is None)
        table.add_row(summary.variant.name, spread(summary.mean[shown[0]], summary.low[shown[0]],
                                                   summary.high[shown[0]], seeds),
                      *(spread(summary.mean[m], 0, 0, 1) for m in shown[1:]))
    if result.chance is not None:
        table.add_row("chance", *(f"{result.chance:.1f}" if m.startswith("top1") else "" for m in shown), style="dim")
    console = Console()
    console.print(table)
    for run in result.failures:
        console.print(f"failed: {run.variant.name}, seed {run.seed}: {run.error}", markup=False, highlight=False)
    for kind in ("table", "plot", "csv"):
        console.print(f"{kind}: {result.files[kind]}", markup=False, highlight=False, soft_wrap=True)
