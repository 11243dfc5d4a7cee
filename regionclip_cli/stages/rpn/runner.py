"""`rpn` as one call: check, train on the engine, then measure recall on held-out images.

Recall is measured on `data.test` separately for the boxes of each vocabulary split (base:
seen in training; novel: never seen) — an RPN that finds novel objects is what lets the
detector detect them at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.engine.loop import FitOutcome
from regionclip_cli.stages.finetune.runner import CheckResult, Origin, _recipe_key, check_training, fit_task, read_training_data
from regionclip_cli.stages.rpn.recipe import RPNTrainingConfig, input_files


def check(recipe: RPNTrainingConfig, *, resume: bool | Path = False, overwrite: bool = False,
          origin: Origin = _recipe_key) -> CheckResult:
    from regionclip_cli.core.devices import resolve_device

    for key, path in input_files(recipe):
        if not path.exists():
            raise RegionclipError(f"{origin(key)}: {path} does not exist")
    resolve_device(recipe.device, option=origin("device"))
    return check_training(recipe, "rpn.pt", data=read_training_data(recipe.data, origin), resume=resume,
                          overwrite=overwrite, resumable=("data.test", "recall_at"), origin=origin)


@dataclass
class RPNOutcome:
    fit: FitOutcome
    recall: dict[str, dict[int, float]] | None  # split ("all", "base", "novel") -> {k: AR@k}


def measure_recall(network, images, vocabulary, *, limits, min_size: int, max_size: int, device,
                   progress: bool = False) -> dict[str, dict[int, float]]:
    """AR@k over IoU 0.5:0.95 for all boxes and for each vocabulary split's boxes."""
    import torch

    from regionclip_cli.core.progress import progress_bar
    from regionclip_cli.modeling.rpn import proposal_recall
    from regionclip_cli.stages.finetune.data import held_out_input

    was_training = network.training
    network.eval()
    limit = max(limits)
    if network.config.post_nms_top_n_test < limit:
        network.set_test_limits(network.config.nms_threshold, limit)
    proposals, truth, labels = [], [], []
    with torch.inference_mode(), progress_bar(disable=not progress) as bar:
        task = bar.add_task("recall", total=len(images), unit="img", status="")
        for item in images:
            tensor, scale = held_out_input(item, min_size, max_size)
            proposals.append(network([tensor.to(device)])[0]["boxes"].cpu() / scale)
            truth.append(item.boxes)
            labels.append(item.labels)
            bar.advance(task)
    network.train(was_training)
    groups = {"all": None, **{name: set(ids) for name, ids in vocabulary.splits.items()}}
    recall = {}
    for name, ids in groups.items():
        keep = [torch.ones(len(l), dtype=torch.bool) if ids is None else
                torch.tensor([vocabulary.category_ids[i] in ids for i in l.tolist()], dtype=torch.bool)
                for l in labels]
        recall[name] = proposal_recall(proposals, [t[k] for t, k in zip(truth, keep)], limits)
    return recall


def run(recipe: RPNTrainingConfig, *, resume: bool | Path = False, overwrite: bool = False, progress: bool = True,
        log: Callable[[str], None] = print, origin: Origin = _recipe_key) -> RPNOutcome:
    from regionclip_cli.core.atomic import write_json
    from regionclip_cli.stages.finetune.data import read_annotated_set
    from regionclip_cli.stages.rpn.task import RPNTask

    checked = check(recipe, resume=resume, overwrite=overwrite, origin=origin)

    def recall_after(task, outcome):
        if recipe.data.test is None:
            return None
        vocabulary = checked.data.full_vocabulary
        held_out = read_annotated_set(recipe.data.test, vocabulary, where="data.test", drop_empty=False)
        recall = measure_recall(task.network, held_out.images, vocabulary, limits=recipe.recall_at,
                                min_size=recipe.data.test_min_size, max_size=recipe.data.test_max_size,
                                device=task.runtime.device, progress=progress)
        write_json(recipe.output / "recall.json", {split: {f"AR@{k}": None if v != v else round(v, 2)
                                                           for k, v in values.items()}
                                                    for split, values in recall.items()}, indent=2)
        return recall

    outcome, recall = fit_task(recipe, lambda runtime: RPNTask(recipe, runtime, checked.data.training), checked,
                               artefact=RPNTask.artefact, overwrite=overwrite, progress=progress,
                               log=log, origin=origin, after=recall_after)
    return RPNOutcome(outcome, recall)
