"""Progress of a training run: a live bar on a terminal, plain lines elsewhere.

Piped to a file or a CI log, a live bar prints fragments (or nothing); there the run prints one
line every `every` iterations instead, each complete on its own:
`pretrain 40/1200 (3%) 1.62 it/s eta 0:11:56 loss 0.8123`.
"""

from __future__ import annotations

import time
from typing import Callable


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _Bar:
    def __init__(self, description: str, total: int, start: int):
        from regionclip_cli.core.progress import progress_bar

        self.progress = progress_bar()
        self.task = self.progress.add_task(description, total=total, completed=start, unit="it", status="")

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def update(self, iteration: int, stats: dict[str, float]) -> None:
        self.progress.update(self.task, completed=iteration, status=f"loss {stats.get('loss', 0.0):.4f}")


class _Lines:
    def __init__(self, description: str, total: int, start: int, every: int, log: Callable[[str], None]):
        self.description, self.total, self.start, self.every, self.log = description, total, start, every, log
        self.started = time.perf_counter()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def update(self, iteration: int, stats: dict[str, float]) -> None:
        if iteration % self.every and iteration != self.total:
            return
        rate = (iteration - self.start) / max(time.perf_counter() - self.started, 1e-9)
        eta = _clock((self.total - iteration) / rate) if rate > 0 else "--"
        self.log(f"{self.description} {iteration}/{self.total} ({100 * iteration // self.total}%) "
                 f"{rate:.2f} it/s eta {eta} loss {stats.get('loss', 0.0):.4f}")


class _Silent:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def update(self, iteration: int, stats: dict[str, float]) -> None:
        pass


def progress_reporter(description: str, *, total: int, start: int, every: int, enabled: bool,
                      log: Callable[[str], None]):
    """A context manager with `update(iteration, stats)`: bar, lines or nothing."""
    if not enabled:
        return _Silent()
    from regionclip_cli.core.progress import stderr_console

    if stderr_console.is_terminal:
        return _Bar(description, total, start)
    return _Lines(description, total, start, every, log)
