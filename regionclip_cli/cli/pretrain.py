"""`regionclip pretrain`: region-level language-image pretraining from a recipe."""

from __future__ import annotations

from typing import Annotated, Optional

from regionclip_cli.cli import training as options


def pretrain(
    recipe: Annotated[Optional[str], options.recipe_argument(
        "world, coco-rn50, coco-rn50x4, cc3m-rn50, cc3m-rn50x4")] = None,
    set_: options.SetOption = None,
    resume: options.ResumeOption = False,
    resume_from: options.ResumeFromOption = None,
    overwrite: options.OverwriteOption = False,
    check: options.CheckOption = False,
    show_recipe: options.ShowRecipeOption = None,
    list_keys: options.ListKeysOption = False,
    quiet: options.QuietOption = False,
) -> None:
    """Pretrain a region-aware CLIP student with RegionCLIP's three losses.

    The frozen teacher labels proposed regions with concepts from the pool (`regionclip concepts`); the student learns region-concept contrast, concept distillation and image-caption contrast. Writes OUTPUT/student.pt (a CLIP checkpoint: `regionclip zeroshot --weights` loads it), OUTPUT/checkpoints/last.pt (exact resume), OUTPUT/metrics.jsonl and OUTPUT/recipe.json.

    Start from a built-in recipe: `regionclip pretrain --show-recipe world > my.yaml`.

    Several processes: `torchrun --nproc_per_node N $(which regionclip) pretrain RECIPE` (DDP; the global batch train.batch_size is split over them). Ctrl-C saves a checkpoint before exiting.
    """  # noqa: E501 (one line per paragraph: the help wraps it to the terminal)
    from regionclip_cli.stages import pretrain as stage
    from regionclip_cli.stages.pretrain.recipe import PretrainConfig

    outcome = options.train(
        "pretrain", PretrainConfig, stage, recipe=recipe, overrides=set_ or [], resume=resume,
        resume_from=resume_from, overwrite=overwrite, check=check, show_recipe=show_recipe, list_keys=list_keys,
        quiet=quiet, check_lines=lambda checked: [f"warning: {w}" for w in checked.warnings] + checked.resume_changes,
        check_summary=lambda checked: f"{checked.images} captioned images", fit_of=lambda outcome: outcome)
    if outcome is not None:
        _render(outcome)


def _render(outcome) -> None:
    from rich.console import Console

    table = options.fit_table("pretrain", outcome, ("loss", "region_concept", "distillation", "image_text",
                                                    "top1_prob", "kept_regions"))
    table.add_row("student", str(outcome.artefact))
    table.add_row("checkpoint", str(outcome.checkpoint))
    Console().print(table)
