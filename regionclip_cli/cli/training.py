"""What the training commands (`pretrain`, `rpn`, `finetune`) share: their recipe options, declared
once, and the steps around a run (built-in recipes, --list-keys, resume rules, the stop message)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override a recipe key, e.g. --set optimizer.lr=0.01 (repeatable).")]
ResumeOption = Annotated[bool, typer.Option(
    "--resume", help="Continue OUTPUT/checkpoints/last.pt exactly where it stopped.")]
ResumeFromOption = Annotated[Optional[Path], typer.Option(help="Continue from this training-state checkpoint.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace the files of a previous run in OUTPUT.")]
CheckOption = Annotated[bool, typer.Option(
    "--check", help="Only check the recipe, its files and OUTPUT, then exit.")]
ShowRecipeOption = Annotated[Optional[str], typer.Option(
    "--show-recipe", metavar="NAME", help="Print a built-in recipe's YAML (redirect it into a file).")]
ListKeysOption = Annotated[bool, typer.Option("--list-keys", help="List every recipe key with its type and default.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]


def recipe_argument(names: str):
    """The RECIPE argument, listing the command's built-in recipes."""
    return typer.Argument(help=f"Recipe YAML file, or a built-in recipe name: {names}.", metavar="RECIPE",
                          show_default=False)


def log(line: str) -> None:
    from regionclip_cli.core.progress import stderr_console

    stderr_console.print(line, highlight=False, markup=False)


def handle_recipe_options(command: str, recipe: Optional[str], config_class: type, *, overrides: list[str],
                          show_recipe: Optional[str], list_keys: bool, resume: bool, resume_from: Optional[Path],
                          overwrite: bool) -> tuple[Any, Callable[[str], str], str, bool | Path] | None:
    """--show-recipe and --list-keys print and return None; else (parsed recipe, key origin,
    recipe name, what to resume: False, True for OUTPUT's last checkpoint, or a path)."""
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


def train(command: str, config_class: type, stage, *, recipe: Optional[str], overrides: list[str], resume: bool,
          resume_from: Optional[Path], overwrite: bool, check: bool, show_recipe: Optional[str], list_keys: bool,
          quiet: bool, check_lines: Callable[[Any], list[str]], check_summary: Callable[[Any], str],
          fit_of: Callable[[Any], Any] = lambda outcome: outcome.fit) -> Any | None:
    """A training command from its options to its outcome: print a recipe, list keys, check, or
    run `stage.run` (exit 130 when stopped). Returns the outcome to render, or None."""
    handled = handle_recipe_options(command, recipe, config_class, overrides=overrides, show_recipe=show_recipe,
                                    list_keys=list_keys, resume=resume, resume_from=resume_from,
                                    overwrite=overwrite)
    if handled is None:
        return None
    parsed, origin, name, continue_from = handled
    if check:
        checked = stage.check(parsed, resume=continue_from, overwrite=overwrite, origin=origin)
        for line in check_lines(checked):
            log(line)
        typer.echo(f"{name}: recipe, files and output OK ({check_summary(checked)})")
        raise typer.Exit(0)
    outcome = stage.run(parsed, resume=continue_from, overwrite=overwrite, progress=not quiet, log=log,
                        origin=origin)
    exit_if_stopped(fit_of(outcome))
    return outcome


def detection_check_lines(checked) -> list[str]:
    """What `rpn --check` and `finetune --check` print: data notes, warnings, resume changes."""
    return checked.data.notes + [f"warning: {w}" for w in checked.warnings] + checked.resume_changes


def detection_check_summary(checked) -> str:
    return f"{len(checked.data.training.images)} training images"


def fit_table(title: str, fit, stat_keys: tuple[str, ...]):
    """The head of a training command's result table: iterations, speed, the last logged losses."""
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_row("iterations", str(fit.finished_iterations))
    table.add_row("images/s", f"{fit.images_per_second:.2f}")
    for key in stat_keys:
        if key in fit.last_stats:
            table.add_row(f"last {key}", f"{fit.last_stats[key]:.4f}")
    return table


def exit_if_stopped(fit) -> None:
    """A run stopped by Ctrl-C/SIGTERM: say where its checkpoint is and exit 130."""
    if fit.stopped_by is not None:
        log(f"stopped after iteration {fit.finished_iterations}; checkpoint saved to {fit.checkpoint}; "
            "continue with --resume")
        raise typer.Exit(130)
