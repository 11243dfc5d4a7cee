"""The `regionclip` command: one Typer app, one thin module per subcommand.

Only typer and the standard library are imported here; each command imports torch and the core
inside its body, so `regionclip --help` stays fast.
"""

from __future__ import annotations

import sys

import typer

from regionclip_cli import __version__
from regionclip_cli.cli import (ablate, concepts, demo, evaluate, finetune, pretrain, pseudolabel, rpn, world,
                               zeroshot)
from regionclip_cli.cli.help import RootGroup
from regionclip_cli.core.errors import RegionclipError

app = typer.Typer(
    name="regionclip",
    help=(
        "RegionCLIP: region-based language-image pretraining and open-vocabulary detection.\n\n"
        "Stages, in order: concepts → pseudolabel → pretrain → finetune; zeroshot recognises "
        "regions with any CLIP model and any vocabulary; evaluate scores detections against a "
        "ground truth; ablate compares recipes. "
        "Run `regionclip COMMAND --help` for each."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: see cli/help.py
    cls=RootGroup,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"regionclip {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    pass


app.command("concepts")(concepts.concepts)
app.command("pseudolabel")(pseudolabel.pseudolabel)
app.command("pretrain")(pretrain.pretrain)
app.command("rpn")(rpn.rpn)
app.command("finetune")(finetune.finetune)
app.command("ablate")(ablate.ablate)
app.command("zeroshot")(zeroshot.zeroshot)
app.command("evaluate")(evaluate.evaluate)
app.command("demo")(demo.demo)
app.add_typer(world.app, name="world", help="Generate the synthetic world and train its tiny CLIP teacher.")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except RegionclipError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
