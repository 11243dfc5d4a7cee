"""`regionclip rpn`: train a class-agnostic region proposal network on your own boxes."""

from __future__ import annotations

from typing import Annotated, Optional

from regionclip_cli.cli import training as options


def rpn(
    recipe: Annotated[Optional[str], options.recipe_argument("rpn-world, rpn-coco-rn50, rpn-lvis-rn50")] = None,
    set_: options.SetOption = None,
    resume: options.ResumeOption = False,
    resume_from: options.ResumeFromOption = None,
    overwrite: options.OverwriteOption = False,
    check: options.CheckOption = False,
    show_recipe: options.ShowRecipeOption = None,
    list_keys: options.ListKeysOption = False,
    quiet: options.QuietOption = False,
) -> None:
    """Train a class-agnostic RPN on the base classes' boxes (labels ignored).

    Users of the original got near-zero AP on their own data until they trained an RPN for their domain: this does it. The backbone is the frozen CLIP trunk of `trunk` (stem → layer3, stride 16, detectron2's C4 RPN) or a torchvision ResNet-FPN trained with the head (rpn.backbone). After training, recall AR@100/300/1000 is measured on data.test, for base and for novel boxes.

    Writes OUTPUT/rpn.pt (for `finetune` recipes' `rpn:` and `zeroshot --proposals rpn --rpn`), OUTPUT/recall.json, OUTPUT/checkpoints/last.pt, OUTPUT/metrics.jsonl and OUTPUT/recipe.json.
    """  # noqa: E501 (one line per paragraph: the help wraps it to the terminal)
    from regionclip_cli.stages.rpn import runner
    from regionclip_cli.stages.rpn.recipe import RPNTrainingConfig

    outcome = options.train(
        "rpn", RPNTrainingConfig, runner, recipe=recipe, overrides=set_ or [], resume=resume,
        resume_from=resume_from, overwrite=overwrite, check=check, show_recipe=show_recipe, list_keys=list_keys,
        quiet=quiet, check_lines=options.detection_check_lines, check_summary=options.detection_check_summary)
    if outcome is not None:
        _render(outcome)


def _render(outcome) -> None:
    from rich.console import Console

    table = options.fit_table("rpn", outcome.fit, ("loss_objectness", "loss_rpn_box_reg"))
    for split, values in (outcome.recall or {}).items():
        table.add_row(f"recall {split}", "  ".join(
            f"AR@{k} {'–' if v != v else f'{v:.1f}'}" for k, v in values.items()))
    table.add_row("rpn", str(outcome.fit.artefact))
    Console().print(table)
