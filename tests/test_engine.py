"""The training engine on a toy task: any Task trains, checkpoints, resumes exactly and stops."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.engine.checkpoints import load_state
from regionclip_cli.engine.config import OptimizerConfig, TrainConfig, schedule_warnings
from regionclip_cli.engine.distributed import DistributedContext
from regionclip_cli.engine.loop import Trainer
from regionclip_cli.engine.optim import lr_at
from regionclip_cli.engine.progress import _Lines
from regionclip_cli.engine.runs import MetricsLog, RunFolder, check_resume
from regionclip_cli.engine.task import Runtime, Task


class LinearTask:
    """Least squares on fixed random data: a batch is a pure function of the iteration."""

    description = "toy"
    artefact = "model.pt"
    loss_weights = {"mse": 1.0, "l1": 0.5}

    def __init__(self, runtime: Runtime, stop_at: int | None = None):
        torch.manual_seed(0)
        self.runtime = runtime
        self.model = torch.nn.Linear(4, 1)
        self.stop_at = stop_at
        self.exported = None

    def parameters(self):
        return list(self.model.parameters())

    def batch(self, iteration):
        generator = torch.Generator().manual_seed(iteration)
        x = torch.randn(8, 4, generator=generator)
        return x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])

    def step(self, batch):
        x, y = batch
        error = self.model(x) - y
        return {"mse": error.pow(2).mean(), "l1": error.abs().mean(), "bias": self.model.bias.detach()[0]}

    def state_dict(self):
        return self.model.state_dict()

    def load_state_dict(self, state):
        self.model.load_state_dict(state)

    def metadata(self):
        return {"model": "linear"}

    def export(self, path: Path, iterations: int):
        torch.save({"iterations": iterations, **self.model.state_dict()}, path)
        self.exported = path


def trainer(iterations=6, **optimizer):
    runtime = Runtime(DistributedContext(0, 1, torch.device("cpu")))
    train = TrainConfig(iterations=iterations, batch_size=8, checkpoint_every=2, log_every=1)
    config = OptimizerConfig(**{"lr": 0.05, "warmup_iterations": 2, "steps": [4], "clip_grad_norm": 1.0, **optimizer})
    return Trainer(LinearTask(runtime), runtime, train=train, optimizer=config)


def rows(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_toy_task_is_a_task_and_trains():
    run = trainer()
    assert isinstance(run.task, Task)
    first = run.step(0)
    assert first["loss"] == pytest.approx(first["mse"] + 0.5 * first["l1"])
    assert first["lr"] == pytest.approx(0.05 * 0.001) and first["grad_norm"] > 0
    for iteration in range(1, 40):
        last = run.step(iteration)
    assert last["mse"] < first["mse"] and "bias" in last and "bias" not in run.task.loss_weights


def test_fit_writes_the_run_folder_and_resumes_exactly(tmp_path):
    straight = trainer()
    outcome = straight.fit(RunFolder(tmp_path / "a", "model.pt"), recipe={"k": 1}, resumed=False, progress=False)
    assert outcome.finished_iterations == 6 and outcome.artefact == tmp_path / "a" / "model.pt"
    assert [r["iteration"] for r in rows(tmp_path / "a" / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert json.loads((tmp_path / "a" / "recipe.json").read_text()) == {"k": 1}

    folder = RunFolder(tmp_path / "b", "model.pt")
    first = trainer(iterations=3)
    first.fit(folder, recipe={"k": 1}, resumed=False, progress=False)
    with folder.metrics.open("a") as handle:  # a line cut short by a killed process
        handle.write('{"iteration": 4, "lo')
    second = trainer()
    second.restore(load_state(folder.checkpoint))
    assert second.iteration == 3
    second.fit(folder, recipe={"k": 1}, resumed=True, progress=False)
    assert [r["iteration"] for r in rows(folder.metrics)] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(rows(tmp_path / "a" / "metrics.jsonl"), rows(folder.metrics)):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["lr"] == b["lr"]
    for key, value in straight.task.model.state_dict().items():
        assert torch.equal(value, second.task.model.state_dict()[key])


def test_a_stop_signal_checkpoints_and_stops(tmp_path):
    run = trainer(iterations=50)
    original = run.task.step

    def step_then_signal(batch):
        if run.task.model.weight.grad is not None:  # after the first step
            os.kill(os.getpid(), signal.SIGTERM)
        return original(batch)

    run.task.step = step_then_signal
    outcome = run.fit(RunFolder(tmp_path, "model.pt"), recipe={}, resumed=False, progress=False)
    assert outcome.stopped_by == signal.SIGTERM and outcome.artefact is None
    assert load_state(outcome.checkpoint)["iteration"] == outcome.finished_iterations == 2


def test_lr_schedule_warmup_and_steps():
    config = OptimizerConfig(lr=1.0, warmup_iterations=10, warmup_factor=0.1, steps=[20, 30], gamma=0.5)
    assert lr_at(0, config) == pytest.approx(0.1)
    assert lr_at(5, config) == pytest.approx(0.55)
    assert [lr_at(i, config) for i in (10, 20, 30)] == [1.0, 0.5, 0.25]


def test_schedules_longer_than_the_run_are_warned_about():
    """Issue 12.11: --set train.iterations=20 on a recipe with warmup 50 and steps 800, 1100."""
    warnings = schedule_warnings(TrainConfig(iterations=20), OptimizerConfig(warmup_iterations=50, steps=[800, 1100]))
    assert len(warnings) == 2
    assert "warmup_iterations 50 >= train.iterations 20" in warnings[0]
    assert "optimizer.steps 800, 1100" in warnings[1]
    assert schedule_warnings(TrainConfig(iterations=2000), OptimizerConfig(warmup_iterations=50, steps=[800])) == []


def test_a_used_run_folder_is_refused_or_replaced_but_nothing_else_removed(tmp_path):
    """Issue 12.1: a fresh run into a finished run's folder names --resume / --overwrite."""
    folder = RunFolder(tmp_path, "student.pt")
    folder.prepare_fresh(overwrite=False)  # empty: fine
    for path in (folder.checkpoint, folder.metrics, folder.artefact):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (folder.checkpoint.parent / ".last.pt.abc.tmp").write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RegionclipError, match="holds a previous run .*--resume.*--overwrite"):
        folder.prepare_fresh(overwrite=False)
    folder.prepare_fresh(overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_resume_applies_only_changes_that_keep_steps_exact():
    """Issue 12.11: a resumed run says what it takes from a changed recipe, and refuses the rest."""
    saved = {"train": {"iterations": 20, "batch_size": 4}, "optimizer": {"lr": 0.002}}
    longer = {"train": {"iterations": 1200, "batch_size": 4}, "optimizer": {"lr": 0.002}}
    lines = check_resume(saved, longer, checkpoint=Path("last.pt"), resumable=["train.iterations"])
    assert lines == ["resume: train.iterations 20 -> 1200 (the recipe)"]
    faster = {"train": {"iterations": 20, "batch_size": 4}, "optimizer": {"lr": 0.01}}
    with pytest.raises(RegionclipError, match=r"optimizer.lr 0.002 -> 0.01 \(--set optimizer.lr\)"):
        check_resume(saved, faster, checkpoint=Path("last.pt"), resumable=["train.iterations"],
                     origin=lambda key: f"--set {key}")


def test_a_resumable_section_allows_every_key_inside_it_and_no_look_alike():
    """finetune lets `test` (post-processing) change on resume: `test.*` keys, not `test_vocabulary`."""
    saved = {"test": {"score_threshold": 0.001}, "tests": 1}
    changed = {"test": {"score_threshold": 0.05}, "tests": 1}
    lines = check_resume(saved, changed, checkpoint=Path("last.pt"), resumable=["test"])
    assert lines == ["resume: test.score_threshold 0.001 -> 0.05 (the recipe)"]
    with pytest.raises(RegionclipError, match="tests 1 -> 2"):
        check_resume(saved, {**changed, "tests": 2}, checkpoint=Path("last.pt"), resumable=["test"])


def test_metrics_log_keeps_rows_up_to_the_resumed_iteration(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"iteration": 1}\n{"iteration": 2}\n{"iteration": 3}\n{"iter')
    log = MetricsLog(path, resume_from=2)
    log.write({"iteration": 3, "loss": 1.0})
    assert [r["iteration"] for r in rows(path)] == [1, 2, 3]


def test_progress_lines_when_not_a_terminal():
    """Issue 12.16: piped output gets whole lines every N iterations with count, rate and ETA."""
    lines = []
    with _Lines("pretrain", total=10, start=0, every=5, log=lines.append) as progress:
        for iteration in range(1, 11):
            progress.update(iteration, {"loss": 0.5})
    assert len(lines) == 2
    assert lines[0].startswith("pretrain 5/10 (50%) ") and " it/s eta " in lines[0] and lines[0].endswith("loss 0.5000")


@pytest.mark.parametrize("width", [80, 100])
def test_progress_bar_keeps_count_rate_and_eta_at_narrow_widths(width):
    """Issue 12.16: at 80/100 columns the bar showed `pretrain ━ … 0… … 0… loss=…`."""
    import io

    from rich.console import Console

    from regionclip_cli.core.progress import progress_bar

    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)
    bar = progress_bar()
    bar.live.console = console
    task = bar.add_task("pretrain", total=1200, completed=0, unit="it", status="")
    bar.update(task, completed=3, status="loss 1.2345 " + "region_concept=0.456 distillation=0.789 " * 3)
    console.print(bar.get_renderable())
    line = console.file.getvalue().splitlines()[0]
    assert "3/1200" in line and " it/s" in line and "0:00:00" in line
    assert len(line) <= width


def test_a_diverged_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    """lr 1e6 without clipping: the toy regression overflows to inf/nan within a few steps; the
    run stops with one line naming the iteration, logs the bad row, and exports nothing."""
    run = trainer(iterations=40, lr=1e6, clip_grad_norm=None)
    with pytest.raises(RegionclipError) as caught:
        run.fit(RunFolder(tmp_path, "model.pt"), recipe={}, resumed=False, progress=False)
    message = str(caught.value)
    logged = rows(tmp_path / "metrics.jsonl")
    bad = logged[-1]["iteration"]
    assert f"at iteration {bad} " in message and "lower optimizer.lr" in message and "\n" not in message
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in logged[:-1])
    assert not (tmp_path / "model.pt").exists()
    if bad > 2:
        assert load_state(tmp_path / "checkpoints" / "last.pt")["iteration"] == (bad - 1) // 2 * 2
        assert "is the last good checkpoint" in message
