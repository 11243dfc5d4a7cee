"""`pretrain` as one call: check the recipe and its run folder, then train (engine + PretrainTask).

`check` does every test that needs no model (files, device, data size, memory bound, schedule,
output folder, resume compatibility), so `regionclip pretrain --check` and `run` refuse the same
things, before any work starts.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.engine.config import RESUMABLE_CHANGES, schedule_warnings
from regionclip_cli.engine.loop import FitOutcome
from regionclip_cli.engine.recipe import to_plain
from regionclip_cli.engine.runs import RunFolder, fit, prepare_run
from regionclip_cli.stages.pretrain.recipe import RESUMABLE_CHANGES as PRETRAIN_RESUMABLE
from regionclip_cli.stages.pretrain.recipe import PretrainConfig, input_files
from regionclip_cli.stages.pretrain.task import PretrainTask

Origin = Callable[[str], str]


def _recipe_key(key: str) -> str:
    return f"recipe key {key}"


@dataclass
class CheckResult:
    images: int  # captioned images the run trains on
    warnings: list[str] = field(default_factory=list)
    resume_changes: list[str] = field(default_factory=list)  # what a resumed run takes from the new recipe
    checkpoint: Path | None = None  # the checkpoint a resumed run starts from
    resume_state: dict[str, Any] | None = None


def _available_bytes(device) -> int | None:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def step_bytes_lower_bound(recipe: PretrainConfig, world_size: int) -> int:
    """Bytes one process's step needs at the least: its padded input batch (fp32) and the
    region-concept matrices (its regions x the global batch's candidate slots: fp32 logits, two
    masked copies, three masks). Activations come on top; this bound only catches the hopeless."""
    per_rank = math.ceil(recipe.train.batch_size / world_size)
    side = math.ceil(recipe.train.max_size / 32) * 32
    images = per_rank * 3 * side * side * 4
    regions = per_rank * recipe.proposals.regions_per_image
    candidates = recipe.train.batch_size * recipe.proposals.regions_per_image
    matrix = regions * candidates * (3 * 4 + 3) if recipe.losses.region_concept > 0 else 0
    return images + matrix


def check(recipe: PretrainConfig, *, resume: bool | Path = False, overwrite: bool = False,
          origin: Origin = _recipe_key) -> CheckResult:
    """Everything about `recipe` that can be refused before any model loads (one line each)."""
    from regionclip_cli.core.devices import resolve_device
    from regionclip_cli.data.captions import read_captioned_images

    for key, path in input_files(recipe):
        if not path.exists():
            raise RegionclipError(f"{origin(key)}: {path} does not exist")
    device = resolve_device(recipe.device, option=origin("device"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    train = recipe.train
    if train.batch_size % world_size:
        raise RegionclipError(f"{origin('train.batch_size')}: {train.batch_size} is not divisible by the "
                              f"{world_size} processes; use a multiple of {world_size}")
    images = len(read_captioned_images(recipe.data.images, recipe.data.captions).items)
    if train.batch_size > images:
        raise RegionclipError(f"{origin('train.batch_size')}: {train.batch_size} is larger than the {images} "
                              f"captioned images of data.images (every image would repeat in one batch); "
                              f"use at most {images}")
    needed, available = step_bytes_lower_bound(recipe, world_size), _available_bytes(device)
    if available is not None and needed > available:
        raise RegionclipError(f"{origin('train.batch_size')}: {train.batch_size} images per step need at least "
                              f"{needed / 2**30:.1f} GiB per process ({device.type} has {available / 2**30:.1f} "
                              "GiB); lower train.batch_size or proposals.regions_per_image")
    warnings = schedule_warnings(train, recipe.optimizer)
    group = recipe.losses.group_images
    if group is not None and train.batch_size % group:
        warnings.append(f"train.batch_size {train.batch_size} is not a multiple of losses.group_images {group}: "
                        f"the last loss group has {train.batch_size % group} image(s)")
    result = CheckResult(images, warnings)
    point = prepare_run(RunFolder(recipe.output, PretrainTask.artefact), to_plain(recipe), resume=resume,
                        overwrite=overwrite, resumable=RESUMABLE_CHANGES + PRETRAIN_RESUMABLE, origin=origin)
    if point is not None:
        result.resume_changes, result.checkpoint, result.resume_state = point.changes, point.checkpoint, point.state
    return result


def run(recipe: PretrainConfig, *, resume: bool | Path = False, overwrite: bool = False, progress: bool = True,
        log: Callable[[str], None] = print, origin: Origin = _recipe_key) -> FitOutcome:
    """Train `recipe` to `train.iterations`, as `regionclip pretrain` does.

    `resume`: True continues OUTPUT/checkpoints/last.pt, a path continues that checkpoint;
    `overwrite` replaces a previous run's files in OUTPUT (without it such a folder is refused).
    Returns the outcome; `outcome.stopped_by` is set when SIGINT/SIGTERM ended the run early.
    """
    checked = check(recipe, resume=resume, overwrite=overwrite, origin=origin)
    for line in checked.warnings + checked.resume_changes:
        log(f"warning: {line}" if line in checked.warnings else line)

    def report_problems(task, outcome) -> None:
        for problem in task.problems:
            log(problem)

    outcome, _ = fit(recipe, lambda runtime: PretrainTask.from_recipe(recipe, runtime, log),
                     artefact=PretrainTask.artefact, resume_state=checked.resume_state, overwrite=overwrite,
                     progress=progress, log=log, origin=origin, after=report_problems)
    return outcome
