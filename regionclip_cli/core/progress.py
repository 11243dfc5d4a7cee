"""Progress bars for long work: items done, rate (items/s), elapsed and remaining time.

Rich renders to stderr, so stdout stays clean for machine-readable output; on a non-terminal
(CI, a log file) rich prints nothing transient.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

stderr_console = Console(stderr=True, soft_wrap=True)  # one message, one line: never wrapped


class RateColumn(ProgressColumn):
    """Items per second, with the unit the task names (e.g. 'img/s')."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"-- {unit}/s", style="progress.data.speed")


def progress_bar(*, disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=stderr_console,
        disable=disable,
    )
