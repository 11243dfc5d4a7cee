"""`regionclip pretrain`: region-level language-image pretraining from a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def pretrain(
    recipe: Annotated[Optional[str], typer.Argument(
        help="Recipe YAML file, or a built-in recipe name: world, coco-rn50, coco-rn50x4, cc3m-rn50, "
             "cc3m-rn50x4.", metavar="RECIPE", show_default=False)] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a recipe key, e.g. --set optimizer.lr=0.01 (repeatable).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue OUTPUT/checkpoints/last.pt exactly where it stopped.")] = False,
    resume_from: Annotated[Optional[Path], typer.Option(
        help="Continue from this training-state checkpoint.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the files of a previous run in OUTPUT.")] = False,
    check: Annotated[bool, typer.Option(
        "--check", help="Only check the recipe, its files and OUTPUT, then exit.")] = False,
    show_recipe: Annotated[Optional[str], typer.Option(
        "--show-recipe", metavar="NAME", help="Print a built-in recipe's YAML (redirect it into a file).")] = None,
    list_keys: Annotated[bool, typer.Option(
        "--list-keys", help="List every recipe key with its type and default.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Pretrain a region-aware CLIP student with RegionCLIP's three losses.

    The frozen teacher labels proposed regions with concepts from the pool (`regionclip concepts`); the student learns region-concept contrast, concept distillation and image-caption contrast. Writes OUTPUT/student.pt (a CLIP checkpoint: `regionclip zeroshot --weights` loads it), OUTPUT/checkpoints/last.pt (exact resume), OUTPUT/metrics.jsonl and OUTPUT/recipe.json.

    Start from a built-in recipe: `regionclip pretrain --show-recipe world > my.yaml`.

    Several processes: `torchrun --nproc_per_node N $(which regionclip) pretrain RECIPE` (DDP; the global batch train.batch_size is split over them). Ctrl-C saves a checkpoint before exiting.
    """  # noqa: E501 (one line per paragraph: the help wraps it to the terminal)
    from regionclip_cli.core.errors import RegionclipError
    from regionclip_cli.engine.recipe import builtin_recipes, find_recipe, key_origin, load_recipe

    if show_recipe is not None:
        path = builtin_recipes().get(show_recipe.removesuffix(".yaml"))
        if path is None:
            raise RegionclipError(f"--show-recipe {show_recipe}: no built-in recipe of that name; "
                                  f"built-in: {', '.join(builtin_recipes())}")
        typer.echo(path.read_text(encoding="utf-8"), nl=False)
        return
    from regionclip_cli.stages.pretrain.recipe import PretrainConfig

    if list_keys:
        from regionclip_cli.engine.recipe import recipe_keys

        rows = recipe_keys(PretrainConfig)
        width = max(len(key) for key, _, _ in rows)
        for key, kind, default in rows:
            typer.echo(f"{key:<{width}}  {kind}  [default: {default}]")
        return
    if recipe is None:
        raise RegionclipError("pretrain: give a RECIPE (a YAML file or a built-in name such as world), "
                              "or --show-recipe NAME / --list-keys")
    path, name = find_recipe(recipe)
    overrides = set_ or []
    parsed = load_recipe(PretrainConfig, path, overrides, origin_name=name)
    origin = key_origin(name, overrides)
    if resume and resume_from is not None:
        raise RegionclipError("--resume and --resume-from: give one")
    if overwrite and (resume or resume_from is not None):
        raise RegionclipError("--overwrite starts over: it cannot be combined with --resume")
    continue_from = resume_from if resume_from is not None else resume

    from regionclip_cli.core.progress import stderr_console
    from regionclip_cli.stages import pretrain as stage

    def log(line: str) -> None:
        stderr_console.print(line, highlight=False, markup=False)

    if check:
        checked = stage.check(parsed, resume=continue_from, overwrite=overwrite, origin=origin)
        for line in checked.warnings:
            log(f"warning: {line}")
        for line in checked.resume_changes:
            log(line)
        typer.echo(f"{name}: recipe, files and output OK ({checked.images} captioned images)")
        raise typer.Exit(0)
    outcome = stage.run(parsed, resume=continue_from, overwrite=overwrite, progress=not quiet, log=log,
                        origin=origin)
    if outcome.stopped_by is not None:
        log(f"stopped after iteration {outcome.finished_iterations}; checkpoint saved to "
            f"{outcome.checkpoint}; continue with --resume")
        raise typer.Exit(130)
    _render(outcome)


def _render(outcome) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="pretrain", show_header=False, title_justify="left")
    table.add_row("iterations", str(outcome.finished_iterations))
    table.add_row("images/s", f"{outcome.images_per_second:.2f}")
    for key in ("loss", "region_concept", "distillation", "image_text", "top1_prob", "kept_regions"):
        if key in outcome.last_stats:
            table.add_row(f"last {key}", f"{outcome.last_stats[key]:.4f}")
    table.add_row("student", str(outcome.artefact))
    table.add_row("checkpoint", str(outcome.checkpoint))
    Console().print(table)
