"""Stages that are planned but not built yet: listed in --help, and say so plainly when run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import typer

from regionclip_cli.core.errors import NotBuiltYet


@dataclass(frozen=True)
class PlannedStage:
    name: str
    help: str


STAGES = (
    PlannedStage("ablate", "Run a grid of recipe overrides and compare them (not built yet)."),
)


def not_built(stage: PlannedStage) -> Callable[[typer.Context], None]:
    def command(ctx: typer.Context) -> None:
        raise NotBuiltYet(
            f"`regionclip {stage.name}` is not built yet in this version; "
            "see README.md for the stages that are available"
        )

    command.__doc__ = stage.help
    return command
