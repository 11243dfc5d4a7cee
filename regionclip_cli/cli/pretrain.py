"""`regionclip pretrain`: region-level language-image pretraining from a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def pretrain(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see recipes/: world.yaml, coco-rn50.yaml, cc3m-rn50.yaml, ...).", show_default=False)],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe key, e.g. --set optimizer.lr=0.01 --set train.iterations=200 (repeatable).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUTPUT/checkpoints/last.pt, exactly where it stopped.")] = False,
    resume_from: Annotated[Optional[Path], typer.Option(help="Continue from this training-state checkpoint.")] = None,
    check: Annotated[bool, typer.Option("--check", help="Only check the recipe and its files, then exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Pretrain a region-aware CLIP student with RegionCLIP's three losses.

    The frozen teacher labels proposed regions with concepts from the pool (`regionclip concepts`);
    the student learns region-concept contrast, concept distillation and image-caption contrast.
    Writes OUTPUT/student.pt (a CLIP checkpoint: `regionclip zeroshot --weights` loads it),
    OUTPUT/checkpoints/last.pt (exact resume), OUTPUT/metrics.jsonl and OUTPUT/recipe.json.

    Several processes: `torchrun --nproc_per_node N $(which regionclip) pretrain RECIPE` (DDP; the
    global batch train.batch_size is split over them). Ctrl-C saves a checkpoint before exiting.
    """
    from regionclip_cli.core.errors import RegionclipError
    from regionclip_cli.stages.pretrain.recipe import PretrainRecipe, input_files
    from regionclip_cli.engine.recipe import load_recipe

    parsed = load_recipe(PretrainRecipe, recipe, set_ or [])
    for key, path in input_files(parsed):
        if not path.exists():
            raise RegionclipError(f"{recipe}: {key}: {path} does not exist")
    if check:
        typer.echo(f"{recipe}: recipe and files OK")
        raise typer.Exit(0)
    resume_path = resume_from or (parsed.output / "checkpoints" / "last.pt" if resume else None)

    from regionclip_cli.stages.pretrain.pretraining import run_pretraining
    from regionclip_cli.core.progress import stderr_console

    outcome = run_pretraining(parsed, resume=resume_path, progress=not quiet,
                              log=lambda line: stderr_console.print(line, highlight=False))
    if outcome.stopped_by is not None:
        stderr_console.print(f"stopped after iteration {outcome.finished_iterations}; "
                             f"checkpoint saved to {outcome.checkpoint}; continue with --resume")
        raise typer.Exit(130)
    _render(outcome)


def _render(outcome) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="pretrain", show_header=False, title_justify="left")
    table.add_row("iterations", str(outcome.finished_iterations))
    table.add_row("images/s", f"{outcome.images / max(outcome.seconds, 1e-9):.2f}")
    for key in ("loss", "region_concept", "distillation", "image_text", "top1_prob", "kept_regions"):
        if key in outcome.last_stats:
            table.add_row(f"last {key}", f"{outcome.last_stats[key]:.4f}")
    table.add_row("student", str(outcome.student))
    table.add_row("checkpoint", str(outcome.checkpoint))
    Console().print(table)
