"""`regionclip finetune`: the open-vocabulary detector, trained from a recipe, scored on held-out images."""

from __future__ import annotations

from typing import Annotated, Optional

from regionclip_cli.cli import training as options


def finetune(
    recipe: Annotated[Optional[str], options.recipe_argument("finetune-world, finetune-coco-rn50, finetune-lvis-rn50")] = None,
    set_: options.SetOption = None,
    resume: options.ResumeOption = False,
    resume_from: options.ResumeFromOption = None,
    overwrite: options.OverwriteOption = False,
    check: options.CheckOption = False,
    show_recipe: options.ShowRecipeOption = None,
    list_keys: options.ListKeysOption = False,
    quiet: options.QuietOption = False,
) -> None:
    """Finetune an open-vocabulary detector (Faster R-CNN C4 with a CLIP box head) on base classes.

    The frozen offline RPN (`regionclip rpn`) proposes regions; the box head is the CLIP image tower of box_head (a `pretrain` student.pt, a plain CLIP or world-tiny: trunk, RoIAlign, layer4, attention pool); regions are classified by cosine against the frozen text embeddings of the base classes. After training, data.test is detected with the vocabulary swapped for base + novel (or test_vocabulary) and scored: AP50 novel / base / all (LVIS: AP, APr/APc/APf, box AP only — the mask head is out of scope).

    Writes OUTPUT/detector.pt, OUTPUT/checkpoints/last.pt (exact resume), OUTPUT/metrics.jsonl, OUTPUT/recipe.json, OUTPUT/detections_coco.json and OUTPUT/evaluation.json.

    Start from a built-in recipe: `regionclip finetune --show-recipe finetune-world > my.yaml`. Several processes: `torchrun --nproc_per_node N $(which regionclip) finetune RECIPE`. Ctrl-C saves a checkpoint before exiting.
    """  # noqa: E501 (one line per paragraph: the help wraps it to the terminal)
    from regionclip_cli.stages.finetune import runner
    from regionclip_cli.stages.finetune.recipe import FinetuneConfig

    outcome = options.train(
        "finetune", FinetuneConfig, runner, recipe=recipe, overrides=set_ or [], resume=resume,
        resume_from=resume_from, overwrite=overwrite, check=check, show_recipe=show_recipe, list_keys=list_keys,
        quiet=quiet, check_lines=options.detection_check_lines, check_summary=options.detection_check_summary)
    if outcome is not None:
        _render(outcome)


def _render(outcome) -> None:
    from rich.console import Console

    table = options.fit_table("finetune", outcome.fit, ("loss", "loss_cls", "loss_box_reg"))
    table.add_row("detector", str(outcome.fit.artefact))
    if outcome.evaluation is not None:
        for key in ("AP50_novel", "AP50_base", "AP50", "AP", "APr", "APc", "APf"):
            value = outcome.evaluation.metrics.get(key)
            if value is not None:
                table.add_row(key, "–" if value != value else f"{value:.1f}")
        table.add_row("detections", str(outcome.detections))
    Console().print(table)
