"""`regionclip finetune`: the open-vocabulary detector, trained from a recipe, scored on held-out images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

RECIPE_HELP = "Recipe YAML file, or a built-in recipe name: {names}."
SET_HELP = "Override a recipe key, e.g. --set optimizer.lr=0.01 (repeatable)."


def handle_recipe_options(command: str, recipe: Optional[str], config_class: type, *, overrides: list[str],
                          show_recipe: Optional[str], list_keys: bool, resume: bool, resume_from: Optional[Path],
                          overwrite: bool) -> tuple[Any, Callable[[str], str], str, bool | Path] | None:
    """The recipe options `finetune` and `rpn` share: --show-recipe and --list-keys print and
    return None; else (parsed recipe, key origin, recipe name, what to resume)."""
    from regionclip_cli.core.errors import RegionclipError
    from regionclip_cli.engine.recipe import builtin_recipes, find_recipe, key_origin, load_recipe, recipe_keys

    if show_recipe is not None:
        path = builtin_recipes().get(show_recipe.removesuffix(".yaml"))
        if path is None:
            raise RegionclipError(f"--show-recipe {show_recipe}: no built-in recipe of that name; "
                                  f"built-in: {', '.join(builtin_recipes())}")
        typer.echo(path.read_text(encoding="utf-8"), nl=False)
        return None
    if list_keys:
        rows = recipe_keys(config_class)
        width = max(len(key) for key, _, _ in rows)
        for key, kind, default in rows:
            typer.echo(f"{key:<{width}}  {kind}  [default: {default}]")
        return None
    if recipe is None:
        raise RegionclipError(f"{command}: give a RECIPE (a YAML file or a built-in name), "
                              "or --show-recipe NAME / --list-keys")
    if resume and resume_from is not None:
        raise RegionclipError("--resume and --resume-from: give one")
    if overwrite and (resume or resume_from is not None):
        raise RegionclipError("--overwrite starts over: it cannot be combined with --resume")
    path, name = find_recipe(recipe)
    parsed = load_recipe(config_class, path, overrides, origin_name=name)
    return parsed, key_origin(name, overrides), name, resume_from if resume_from is not None else resume


def finetune(
    recipe: Annotated[Optional[str], typer.Argument(
        help=RECIPE_HELP.format(names="finetune-world, finetune-coco-rn50, finetune-lvis-rn50"),
        show_default=False)] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help=SET_HELP)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue OUTPUT/checkpoints/last.pt exactly where it stopped.")] = False,
    resume_from: Annotated[Optional[Path], typer.Option(
        help="Continue from this training-state checkpoint.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the files of a previous run in OUTPUT.")] = False,
    check: Annotated[bool, typer.Option(
        "--check", help="Only check the recipe, its files, annotations and OUTPUT, then exit.")] = False,
    show_recipe: Annotated[Optional[str], typer.Option(
        "--show-recipe", metavar="NAME", help="Print a built-in recipe's YAML (redirect it into a file).")] = None,
    list_keys: Annotated[bool, typer.Option(
        "--list-keys", help="List every recipe key with its type and default.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Finetune an open-vocabulary detector (Faster R-CNN C4 with a CLIP box head) on base classes.

    The frozen offline RPN (`regionclip rpn`) proposes regions; the box head is the CLIP image tower of box_head (a `pretrain` student.pt, a plain CLIP or world-tiny: trunk, RoIAlign, layer4, attention pool); regions are classified by cosine against the frozen text embeddings of the base classes. After training, data.test is detected with the vocabulary swapped for base + novel (or test_vocabulary) and scored: AP50 novel / base / all (LVIS: AP, APr/APc/APf, box AP only — the mask head is out of scope).

    Writes OUTPUT/detector.pt, OUTPUT/checkpoints/last.pt (exact resume), OUTPUT/metrics.jsonl, OUTPUT/recipe.json, OUTPUT/detections_coco.json and OUTPUT/evaluation.json.

    Start from a built-in recipe: `regionclip finetune --show-recipe finetune-world > my.yaml`. Several processes: `torchrun --nproc_per_node N $(which regionclip) finetune RECIPE`. Ctrl-C saves a checkpoint before exiting.
    """  # noqa: E501 (one line per paragraph: the help wraps it to the terminal)
    from regionclip_cli.stages.finetune.recipe import FinetuneConfig

    handled = handle_recipe_options("finetune", recipe, FinetuneConfig, overrides=set_ or [],
                                    show_recipe=show_recipe, list_keys=list_keys, resume=resume,
                                    resume_from=resume_from, overwrite=overwrite)
    if handled is None:
        return
    parsed, origin, name, continue_from = handled

    from regionclip_cli.core.progress import stderr_console
    from regionclip_cli.stages.finetune import runner

    def log(line: str) -> None:
        stderr_console.print(line, highlight=False, markup=False)

    if check:
        checked = runner.check(parsed, resume=continue_from, overwrite=overwrite, origin=origin)
        for line in checked.data.notes + [f"warning: {w}" for w in checked.warnings] + checked.resume_changes:
            log(line)
        typer.echo(f"{name}: recipe, files and output OK ({len(checked.data.training.images)} training images)")
        raise typer.Exit(0)
    outcome = runner.run(parsed, resume=continue_from, overwrite=overwrite, progress=not quiet, log=log,
                         origin=origin)
    fit = outcome.fit
    if fit.stopped_by is not None:
        log(f"stopped after iteration {fit.finished_iterations}; checkpoint saved to {fit.checkpoint}; "
            "continue with --resume")
        raise typer.Exit(130)
    _render(outcome)


def _render(outcome) -> None:
    from rich.console import Console
    from rich.table import Table

    fit = outcome.fit
    table = Table(title="finetune", show_header=False, title_justify="left")
    table.add_row("iterations", str(fit.finished_iterations))
    table.add_row("images/s", f"{fit.images_per_second:.2f}")
    for key in ("loss", "loss_cls", "loss_box_reg"):
        if key in fit.last_stats:
            table.add_row(f"last {key}", f"{fit.last_stats[key]:.4f}")
    table.add_row("detector", str(fit.artefact))
    if outcome.evaluation is not None:
        for key in ("AP50_novel", "AP50_base", "AP50", "AP", "APr", "APc", "APf"):
            value = outcome.evaluation.metrics.get(key)
            if value is not None:
                table.add_row(key, "–" if value != value else f"{value:.1f}")
        table.add_row("detections", str(outcome.detections))
    Console().print(table)
