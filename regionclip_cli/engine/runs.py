"""A run folder: what a training run writes, and the rules that keep two runs from mixing.

    OUTPUT/checkpoints/last.pt   training state for exact resume (atomic)
    OUTPUT/metrics.jsonl         one JSON line per logged iteration
    OUTPUT/recipe.json           the recipe the run uses (after --set), as plain values
    OUTPUT/<artefact>            the task's export when the run finishes (e.g. student.pt)

A fresh run refuses a folder that holds another run's files unless told to overwrite (then it
removes exactly those files, nothing else the folder holds). A resumed run keeps the recipe it was
started with: a new recipe may change only settings that leave every step's result unchanged
(`RESUMABLE_CHANGES`); each change it applies is reported.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from regionclip_cli.core.atomic import atomic_path, write_json
from regionclip_cli.core.errors import RegionclipError


class RunFolder:
    def __init__(self, root: Path, artefact: str):
        self.root = Path(root)
        self.checkpoint = self.root / "checkpoints" / "last.pt"
        self.metrics = self.root / "metrics.jsonl"
        self.recipe = self.root / "recipe.json"
        self.artefact = self.root / artefact

    def run_files(self) -> list[Path]:
        """This folder's files written by a training run (checkpoint temp files included)."""
        found = [p for p in (self.checkpoint, self.metrics, self.recipe, self.artefact) if p.exists()]
        found += sorted(self.checkpoint.parent.glob(f".{self.checkpoint.name}.*.tmp"))
        found += sorted(self.root.glob(f".{self.artefact.name}.*.tmp"))
        return found

    def refuse_if_used(self) -> None:
        existing = self.run_files()
        if existing:
            names = ", ".join(str(p.relative_to(self.root)) for p in existing[:3])
            raise RegionclipError(f"{self.root}: holds a previous run ({names}); continue it with --resume, "
                                  "or replace it with --overwrite")

    def prepare_fresh(self, *, overwrite: bool) -> None:
        """Refuse a folder holding another run, or (overwrite) remove that run's files."""
        if not overwrite:
            self.refuse_if_used()
        for path in self.run_files():
            path.unlink()
        if self.checkpoint.parent.is_dir() and not any(self.checkpoint.parent.iterdir()):
            shutil.rmtree(self.checkpoint.parent)

    def write_recipe(self, plain: dict[str, Any]) -> None:
        write_json(self.recipe, plain, indent=2)


def flatten(plain: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"iterations": 4}} -> {"train.iterations": 4}."""
    flat = {}
    for key, value in plain.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def recipe_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value the run was started with, value now) for every key that differs."""
    old, new = flatten(saved), flatten(current)
    return [(key, old.get(key), new.get(key)) for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def check_resume(saved: dict[str, Any], current: dict[str, Any], *, checkpoint: Path,
                 resumable: Iterable[str], origin=lambda key: "the recipe") -> list[str]:
    """Lines saying which allowed changes a resumed run applies; refuses any other change.

    Refusing (rather than silently applying or ignoring) keeps the promise of exact resume: a
    changed lr or batch would make the rest of the run differ from the run that was started,
    and dropping a `--set` the user typed would do something else than asked.
    """
    changes = recipe_changes(saved, current)
    allowed = tuple(resumable)  # a key, or a section: "test" allows every "test.*" key
    refused = [c for c in changes if not any(c[0] == a or c[0].startswith(f"{a}.") for a in allowed)]
    if refused:
        listed = "; ".join(f"{key} {old!r} -> {new!r} ({origin(key)})" for key, old, new in refused[:4])
        raise RegionclipError(f"--resume {checkpoint}: the recipe differs from the one the run was started "
                              f"with: {listed}; an exact resume needs that recipe (drop the change, or "
                              "start a new run with another output or --overwrite)")
    return [f"resume: {key} {old!r} -> {new!r} ({origin(key)})" for key, old, new in changes]


@dataclass
class ResumePoint:
    """Where a resumed run starts: its checkpoint, the saved training state, the applied changes."""

    checkpoint: Path
    state: dict[str, Any]
    changes: list[str]


def prepare_run(folder: RunFolder, current: dict[str, Any], *, resume: bool | Path, overwrite: bool,
                resumable: Iterable[str], origin=lambda key: "the recipe") -> ResumePoint | None:
    """The run-folder rules every training stage checks before any work: a fresh run refuses a used
    folder unless `overwrite`; a resumed one (`resume` True for the folder's last checkpoint, or a
    path) needs its checkpoint and the recipe it was started with (see `check_resume`)."""
    if resume is False:
        if not overwrite:
            folder.refuse_if_used()
        return None
    from regionclip_cli.engine.checkpoints import load_state

    checkpoint = folder.checkpoint if resume is True else Path(resume)
    if not checkpoint.is_file():
        instead = "start over with --overwrite" if folder.run_files() else "start without --resume"
        raise RegionclipError(f"--resume: {checkpoint} does not exist (no checkpoint to continue from); {instead}")
    state = load_state(checkpoint)
    changes = check_resume(state["metadata"].get("recipe", {}), current, checkpoint=checkpoint,
                           resumable=resumable, origin=origin)
    return ResumePoint(checkpoint, state, changes)


def fit(recipe, make_task: Callable, *, artefact: str, resume_state: dict[str, Any] | None, overwrite: bool,
        progress: bool, log: Callable[[str], None], origin=lambda key: "the recipe",
        after: Callable | None = None) -> tuple[Any, Any]:
    """Train a task to `recipe.train.iterations` in OUTPUT: the start-up and tear-down every
    training stage shares (device, process group, fresh or resumed folder, trainer).

    `make_task(runtime)` builds the task once the device and processes exist; `resume_state` is
    `prepare_run`'s saved state (None for a fresh run); `after(task, outcome)` runs on the main
    process while the models are still loaded (e.g. a held-out evaluation) and its result is
    returned with the engine's `FitOutcome`.
    """
    from regionclip_cli.core.devices import resolve_device
    from regionclip_cli.engine.loop import Trainer
    from regionclip_cli.engine.task import start_runtime
    from regionclip_cli.engine.recipe import to_plain

    runtime = start_runtime(resolve_device(recipe.device, option=origin("device")), recipe.train.amp)
    try:
        folder = RunFolder(recipe.output, artefact)
        if resume_state is None and runtime.dist.is_main:
            folder.prepare_fresh(overwrite=overwrite)
        runtime.dist.barrier()
        task = make_task(runtime)
        trainer = Trainer(task, runtime, train=recipe.train, optimizer=recipe.optimizer)
        if resume_state is not None:
            trainer.restore(resume_state)
        outcome = trainer.fit(folder, recipe=to_plain(recipe), resumed=resume_state is not None,
                              progress=progress, log=log)
        extra = None
        if after is not None and runtime.dist.is_main:
            extra = after(task, outcome)
        runtime.dist.barrier()
        return outcome, extra
    finally:
        runtime.close()


class MetricsLog:
    """Append-only JSON Lines; on resume, lines past the resumed iteration are dropped first.

    A line cut short by a killed process (no newline, not JSON) is dropped too.
    """

    def __init__(self, path: Path, resume_from: int | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_from is None:
            path.write_text("")
        elif path.exists():
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if row.get("iteration", 0) <= resume_from:
                    kept.append(line)
            with atomic_path(path) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
