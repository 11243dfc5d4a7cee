"""`finetune` as one call: check the recipe, train on the engine, evaluate on held-out images.

`check` refuses everything that needs no model (files, vocabulary, annotations, batch size,
output folder, resume compatibility), so `regionclip finetune --check` and `run` refuse the
same things before any work starts. After training, the held-out set (`data.test`) is detected
with the *test* vocabulary (base + novel by default) and scored by the evaluation module:
AP50 on novel / base / all for split vocabularies, AP/APr/APc/APf for LVIS (box AP only: the
LVIS mask head is out of scope).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.data.vocab import Vocabulary
from regionclip_cli.engine.config import RESUMABLE_CHANGES, OptimizerConfig, TrainConfig, schedule_warnings
from regionclip_cli.engine.loop import FitOutcome
from regionclip_cli.engine.recipe import to_plain
from regionclip_cli.engine.runs import RunFolder, fit, prepare_run
from regionclip_cli.stages.finetune.data import (AnnotatedSet, DetectionDataConfig, dataset_vocabulary,
                                                 held_out_input, read_annotated_set)
from regionclip_cli.stages.finetune.recipe import FinetuneConfig, input_files

Origin = Callable[[str], str]


def _recipe_key(key: str) -> str:
    return f"recipe key {key}"


@dataclass
class PreparedData:
    """What `check` read: the training set (train split only), the vocabularies, notes."""

    training: AnnotatedSet
    full_vocabulary: Vocabulary
    notes: list[str] = field(default_factory=list)


def read_training_data(data: DetectionDataConfig, origin: Origin = _recipe_key) -> PreparedData:
    """The vocabulary (with its splits), and the training images with boxes of `train_splits` only."""
    vocabulary = dataset_vocabulary(data.vocabulary, data.train.annotations, origin("data.vocabulary"))
    unknown = [name for name in data.train_splits if name not in vocabulary.splits]
    if unknown:
        known = ", ".join(vocabulary.splits) or "none"
        raise RegionclipError(f"{origin('data.train_splits')}: the vocabulary '{vocabulary.name}' has no split "
                              f"'{unknown[0]}' (its splits: {known}); use [] to train on every class")
    training_vocabulary = vocabulary
    if data.train_splits:
        keep = {cid for name in data.train_splits for cid in vocabulary.splits[name]}
        rows = [i for i, cid in enumerate(vocabulary.category_ids) if cid in keep]
        training_vocabulary = Vocabulary(
            f"{vocabulary.name}:{'+'.join(data.train_splits)}", tuple(vocabulary.names[i] for i in rows),
            tuple(vocabulary.category_ids[i] for i in rows),
            tuple(vocabulary.synonyms[i] for i in rows) if vocabulary.synonyms else (),
            {name: tuple(c for c in ids if c in keep) for name, ids in vocabulary.splits.items()})
    training = read_annotated_set(data.train, training_vocabulary, where="data.train", drop_empty=True)
    return PreparedData(training, vocabulary, list(training.notes))


@dataclass
class CheckResult:
    data: PreparedData
    warnings: list[str] = field(default_factory=list)
    resume_changes: list[str] = field(default_factory=list)
    resume_state: dict[str, Any] | None = None


def check_training(recipe, artefact: str, *, data: PreparedData, resume: bool | Path, overwrite: bool,
                   resumable: tuple[str, ...], origin: Origin) -> CheckResult:
    """The engine-side checks every detection task shares: batch size, schedule, run folder, resume."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    train: TrainConfig = recipe.train
    optimizer: OptimizerConfig = recipe.optimizer
    if train.batch_size % world_size:
        raise RegionclipError(f"{origin('train.batch_size')}: {train.batch_size} is not divisible by the "
                              f"{world_size} processes; use a multiple of {world_size}")
    result = CheckResult(data, schedule_warnings(train, optimizer))
    point = prepare_run(RunFolder(recipe.output, artefact), to_plain(recipe), resume=resume, overwrite=overwrite,
                        resumable=RESUMABLE_CHANGES + resumable, origin=origin)
    if point is not None:
        result.resume_changes, result.resume_state = point.changes, point.state
    return result


def check(recipe: FinetuneConfig, *, resume: bool | Path = False, overwrite: bool = False,
          origin: Origin = _recipe_key) -> CheckResult:
    from regionclip_cli.core.devices import resolve_device

    for key, path in input_files(recipe):
        if not path.exists():
            raise RegionclipError(f"{origin(key)}: {path} does not exist")
    from regionclip_cli.modeling.rpn import read_rpn_checkpoint

    resolve_device(recipe.device, option=origin("device"))
    read_rpn_checkpoint(recipe.rpn, origin("rpn"))
    data = read_training_data(recipe.data, origin)
    if recipe.test_vocabulary is not None:
        from regionclip_cli.data.vocab import load_vocabulary

        load_vocabulary(recipe.test_vocabulary)
    return check_training(recipe, "detector.pt", data=data, resume=resume, overwrite=overwrite,
                          resumable=("data.test", "test", "test_vocabulary", "data.test_min_size",
                                     "data.test_max_size"), origin=origin)


def fit_task(recipe, make_task: Callable, checked: CheckResult, *, artefact: str, overwrite: bool, progress: bool,
             log: Callable[[str], None], origin: Origin, after: Callable | None = None) -> tuple[FitOutcome, Any]:
    """Run a detection task on the engine; `after(task, outcome)` (the held-out evaluation) runs
    only when the run finished, while the models are still loaded."""
    for line in checked.data.notes + [f"warning: {w}" for w in checked.warnings] + checked.resume_changes:
        log(line)
    state, checked.resume_state = checked.resume_state, None
    finished = None if after is None else (
        lambda task, outcome: after(task, outcome) if outcome.stopped_by is None else None)
    return fit(recipe, make_task, artefact=artefact, resume_state=state, overwrite=overwrite, progress=progress,
               log=log, origin=origin, after=finished)


@dataclass
class FinetuneOutcome:
    fit: FitOutcome
    evaluation: Any = None  # evaluation.EvalResult on data.test, when there is one
    detections: Path | None = None


def run(recipe: FinetuneConfig, *, resume: bool | Path = False, overwrite: bool = False, progress: bool = True,
        log: Callable[[str], None] = print, origin: Origin = _recipe_key) -> FinetuneOutcome:
    """Train `recipe` to `train.iterations` (as `regionclip finetune`), then evaluate on data.test."""
    from regionclip_cli.stages.finetune.task import FinetuneTask

    checked = check(recipe, resume=resume, overwrite=overwrite, origin=origin)

    def evaluate_after(task, outcome):
        if recipe.data.test is None:
            return None
        return evaluate_held_out(task, recipe, checked.data.full_vocabulary, progress=progress, log=log)

    outcome, evaluated = fit_task(recipe, lambda runtime: FinetuneTask(recipe, runtime, checked.data.training, log),
                                  checked, artefact=FinetuneTask.artefact, overwrite=overwrite,
                                  progress=progress, log=log, origin=origin, after=evaluate_after)
    if evaluated is None:
        return FinetuneOutcome(outcome)
    return FinetuneOutcome(outcome, *evaluated)


def detect_held_out(detector, images, *, min_size: int, max_size: int, device, vocabulary: Vocabulary,
                    progress: bool = False) -> list[dict]:
    """COCO results (original pixels, [x, y, w, h]) of `detector` on annotated images, one at a time
    (the original's test batch)."""
    import torch

    from regionclip_cli.core.progress import progress_bar

    results = []
    was_training = detector.training
    detector.eval()
    with torch.inference_mode(), progress_bar(disable=not progress) as bar:
        task = bar.add_task("detect held-out", total=len(images), unit="img", status="")
        for item in images:
            tensor, scale = held_out_input(item, min_size, max_size)
            found = detector([tensor.to(device)])[0]
            boxes = (found["boxes"] / scale).cpu()
            for box, label, score in zip(boxes.tolist(), found["labels"].tolist(), found["scores"].tolist()):
                x1, y1, x2, y2 = box
                results.append({"image_id": item.image_id, "category_id": vocabulary.category_ids[label],
                                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                "score": round(score, 5)})
            bar.advance(task)
    detector.train(was_training)
    return results


def evaluate_held_out(task, recipe: FinetuneConfig, full_vocabulary: Vocabulary, *, progress: bool,
                      log: Callable[[str], None]):
    """Swap the vocabulary for the test one, detect data.test, write and score the detections."""
    from regionclip_cli.core.atomic import write_json
    from regionclip_cli.data.vocab import load_vocabulary
    from regionclip_cli.evaluation import evaluate_detections
    from regionclip_cli.stages.finetune.task import vocabulary_embeddings

    vocabulary = load_vocabulary(recipe.test_vocabulary) if recipe.test_vocabulary else full_vocabulary
    held_out = read_annotated_set(recipe.data.test, vocabulary, where="data.test", drop_empty=False)
    for note in held_out.notes:
        log(note)
    detector = task.detector
    training_embeddings = detector.predictor.class_embeddings
    detector.set_vocabulary(vocabulary_embeddings(task.clip, vocabulary, recipe.templates))
    try:
        detections = detect_held_out(detector, held_out.images, min_size=recipe.data.test_min_size,
                                     max_size=recipe.data.test_max_size, device=task.runtime.device,
                                     vocabulary=vocabulary, progress=progress)
    finally:
        detector.predictor.class_embeddings = training_embeddings
    path = recipe.output / "detections_coco.json"
    write_json(path, detections)
    from regionclip_cli.stages.finetune.data import annotation_data

    ground_truth = annotation_data(recipe.data.test.annotations, "data.test")
    result = evaluate_detections(detections, ground_truth, vocabulary=vocabulary,
                                 image_ids=[item.image_id for item in held_out.images],
                                 where=f"data.test.annotations {recipe.data.test.annotations}")
    write_json(recipe.output / "evaluation.json", result.to_dict(), indent=2)
    return result, path
