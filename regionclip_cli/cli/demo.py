"""`regionclip demo`: the pipeline on the built-in world, offline, ending in teacher vs student."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Sequence

import typer


def _run_in_process(argv: Sequence[str]) -> int:
    """Run one `regionclip …` command through the real entry point, as a shell would; its exit code."""
    from regionclip_cli.cli.app import main

    saved = sys.argv
    sys.argv = ["regionclip", *argv]
    try:
        main()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def _percent(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.1f}"


def demo(
    out: Annotated[Path, typer.Option(help="Folder for every step's output; a rerun skips finished steps.")] = Path("regionclip-demo"),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    quick: Annotated[bool, typer.Option(help="A smoke run of every step (under a minute); too short to learn.")] = False,
) -> None:
    """Show RegionCLIP's claim on a laptop, offline: world -> concepts -> pseudolabel -> pretrain
    -> zeroshot, with the teacher and the pretrained student compared on held-out images.

    Each step prints the `regionclip` command it runs, so the demo doubles as a tour of the
    pipeline. It ends with a table (region top-1 accuracy with ground-truth boxes, and AP50) and
    pictures of the same images labelled by both models, side by side, in OUT/compare/. About
    a minute on 2 CPU cores.
    """
    from rich.table import Table

    from regionclip_cli.core.progress import stderr_console
    from regionclip_cli.stages.demo.plan import DemoConfig
    from regionclip_cli.stages.demo.run import run

    def announce(step, skipped: bool) -> None:
        state = "done already, skipped" if skipped else "running"
        stderr_console.print(f"\n[bold]{step.title}[/] ({state})", highlight=False)
        stderr_console.print(f"  $ {step.command}", markup=False, highlight=False)

    result = run(DemoConfig(out=out, device=device, quick=quick), runner=_run_in_process, announce=announce)
    table = Table(title=f"Held-out world images, {result.boxes} ground-truth boxes, 20 classes",
                  caption="teacher: world-tiny; student: pretrained from it here")
    for column in ("model", "top-1", "top-1 base", "top-1 novel", "AP50", "AP50 base", "AP50 novel"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, scores in (("teacher", result.teacher), ("student", result.student)):
        table.add_row(name, *(_percent(v) for v in (scores.top1, scores.top1_base, scores.top1_novel,
                                                    scores.ap50, scores.ap50_base, scores.ap50_novel)))
    table.add_row("chance", _percent(result.chance), _percent(result.chance), _percent(result.chance),
                  "", "", "", style="dim")
    typer.echo("")
    from rich.console import Console

    Console().print(table)
    ratio = result.student.top1 / result.teacher.top1 if result.teacher.top1 else math.nan
    typer.echo(f"Student / teacher region top-1: {ratio:.2f}x ({result.student.correct} vs "
               f"{result.teacher.correct} of {result.boxes} boxes right). Top-1 is the figure to read: AP "
               "with ground-truth boxes ranks recognition, not detection.")
    if quick:
        typer.echo("--quick trains for a few iterations only: this table is a smoke test, not the claim.")
    if result.pictures:
        typer.echo(f"Pictures (teacher left, student right): {result.pictures[0].parent}/ ({len(result.pictures)})")
    typer.echo(f"{result.steps_run} steps run, {result.steps_skipped} skipped, {result.seconds:.0f} s.")
