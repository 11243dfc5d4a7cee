"""The training loop: one `Trainer` drives any `Task` (engine.task).

Per iteration: the next batch is built in a background thread while this one trains; the task's
forward gives loss terms; the engine sets the lr, backpropagates sum(weight × term) (through a
loss scaler for fp16), clips the gradient norm, steps the optimiser and reads every figure back
once. Between iterations: metrics JSONL every `train.log_every`, an atomic checkpoint every
`train.checkpoint_every`, and a SIGINT/SIGTERM check (on any rank: all stop together, after a
checkpoint). A resumed run restores model, optimiser and iteration and continues exactly.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.engine.checkpoints import save_state
from regionclip_cli.engine.config import OptimizerConfig, TrainConfig
from regionclip_cli.engine.optim import build_optimizer, lr_at, set_lr
from regionclip_cli.engine.runs import MetricsLog, RunFolder
from regionclip_cli.engine.stop import StopRequest
from regionclip_cli.engine.task import Runtime, Task


class DivergedError(RegionclipError):
    """The loss became NaN or infinite: training stops rather than write a broken model."""

    def __init__(self, iteration: int, stats: dict[str, float], last_saved: tuple[Path, int] | None):
        terms = ", ".join(f"{k} {v:.4g}" for k, v in stats.items() if k not in ("loss", "lr"))
        kept = (f"{last_saved[0]} (iteration {last_saved[1]}) is the last good checkpoint"
                if last_saved else "no checkpoint was written in this run")
        super().__init__(f"the loss is {stats['loss']} at iteration {iteration} ({terms}); training stopped and "
                         f"{kept}; lower optimizer.lr (or optimizer.clip_grad_norm)")


@dataclass
class FitOutcome:
    start_iteration: int
    finished_iterations: int
    stopped_by: int | None  # the signal that stopped the run early, if any
    artefact: Path | None  # the task's export (None when stopped early)
    checkpoint: Path
    last_stats: dict[str, float]
    seconds: float
    images: int  # images trained on in this invocation

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


class Trainer:
    """Optimiser, lr schedule, precision and clipping around one task (from `optimizer` and `train`)."""

    def __init__(self, task: Task, runtime: Runtime, *, train: TrainConfig, optimizer: OptimizerConfig):
        self.task, self.runtime = task, runtime
        self.train, self.optimizer_config = train, optimizer
        self.parameters = list(task.parameters())
        self.optimizer = build_optimizer(self.parameters, optimizer)
        device_type = runtime.device.type
        self.scaler = torch.amp.GradScaler(device_type, enabled=runtime.autocast_dtype == torch.float16)
        self.iteration = 0
        self._last_saved: tuple[Path, int] | None = None  # the latest training-state checkpoint

    def step(self, iteration: int, batch: Any = None) -> dict[str, float]:
        """One optimisation step at `iteration`; returns its global figures (losses, lr, grad norm).

        `batch` is `task.batch(iteration)`, built ahead by `fit` to overlap data with compute;
        built here when not given.
        """
        batch = batch if batch is not None else self.task.batch(iteration)
        terms = self.task.step(batch)
        weights = self.task.loss_weights
        losses = [name for name in terms if name in weights]
        total = sum(weights[name] * terms[name] for name in losses)

        lr = lr_at(iteration, self.optimizer_config)
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = None
        if self.optimizer_config.clip_grad_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.optimizer_config.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()

        # Read back once, at the end: every earlier .item() would drain the device's queue mid-step.
        dist = self.runtime.dist
        device = self.runtime.device
        readings = [value.detach().float().to(device) for value in terms.values()]
        if grad_norm is not None:
            readings.append(grad_norm.detach().float())  # equal on every rank
        means = (dist.all_sum(torch.stack(readings)) / dist.world_size).tolist()
        stats = dict(zip(terms, means))
        stats = {"loss": sum(weights[name] * stats[name] for name in losses), **stats, "lr": lr}
        if grad_norm is not None:
            stats["grad_norm"] = means[-1]
        return stats

    def restore(self, payload: dict[str, Any]) -> None:
        """Continue from a training-state checkpoint (`engine.checkpoints.load_state`)."""
        self.task.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if "scaler" in payload and self.scaler.is_enabled():
            self.scaler.load_state_dict(payload["scaler"])
        self.iteration = int(payload["iteration"])

    def save(self, path: Path, finished_iterations: int) -> None:
        save_state(path, model_state=self.task.state_dict(), optimizer=self.optimizer,
                   iteration=finished_iterations, metadata=self.task.metadata(), scaler=self.scaler)
        self._last_saved = (path, finished_iterations)

    def fit(self, folder: RunFolder, *, recipe: dict[str, Any], resumed: bool, progress: bool,
            log: Callable[[str], None] = print) -> FitOutcome:
        """Train from `self.iteration` to `train.iterations`, writing the run folder as it goes.

        `recipe` (plain values) is written to the folder; `resumed` keeps the metrics already
        logged up to the restored iteration (call `restore` first).
        """
        from regionclip_cli.engine.progress import progress_reporter

        dist, train = self.runtime.dist, self.train
        start = iteration = self.iteration
        if dist.is_main:
            folder.root.mkdir(parents=True, exist_ok=True)
            folder.write_recipe(recipe)
        metrics = MetricsLog(folder.metrics, resume_from=start if resumed else None) if dist.is_main else None
        stats: dict[str, float] = {}
        stopped_by = None
        started = time.perf_counter()
        prefetch = ThreadPoolExecutor(1, thread_name_prefix="regionclip-prefetch")
        reporter = progress_reporter(self.task.description, total=train.iterations, start=start,
                                     every=train.log_every, enabled=progress and dist.is_main, log=log)
        with StopRequest() as stop, reporter, prefetch:
            upcoming = prefetch.submit(self.task.batch, iteration) if iteration < train.iterations else None
            while iteration < train.iterations:
                batch = upcoming.result()
                if iteration + 1 < train.iterations:
                    upcoming = prefetch.submit(self.task.batch, iteration + 1)
                stats = self.step(iteration, batch)
                if not math.isfinite(stats["loss"]):
                    if metrics is not None:
                        metrics.write({"iteration": iteration + 1, **stats})
                    raise DivergedError(iteration + 1, stats, self._last_saved)
                iteration += 1
                stats["images_per_second"] = (iteration - start) * train.batch_size / (time.perf_counter() - started)
                reporter.update(iteration, stats)
                if metrics is not None and (iteration % train.log_every == 0 or iteration == train.iterations):
                    metrics.write({"iteration": iteration, **stats})
                if dist.any(stop.requested):
                    stopped_by = stop.signal or -1
                    break
                if iteration % train.checkpoint_every == 0 and dist.is_main:
                    self.save(folder.checkpoint, iteration)
        self.iteration = iteration
        artefact = None
        if dist.is_main:
            self.save(folder.checkpoint, iteration)
            if stopped_by is None:
                artefact = folder.artefact
                self.task.export(artefact, iteration)
        dist.barrier()
        return FitOutcome(start, iteration, stopped_by, artefact, folder.checkpoint, stats,
                          time.perf_counter() - started, (iteration - start) * train.batch_size)
