"""`--help` that reads cleanly at any terminal width, for every command, set once here.

Typer's rich help treated brackets in help text as markup ("a {file: [[x1,y1,x2,y2], ...]} JSON"
lost its box), kept the docstrings' own line breaks and then wrapped them again (orphan words),
and named value types after Python annotations (`<list[Path]>`, `<str>`). The app therefore uses
click's plain formatter (`rich_markup_mode=None`: brackets are text, paragraphs are rewrapped to
the terminal), and `tidy_help` adjusts every command of the tree once it is built:

- values are named the way command-line tools name them: TEXT, PATH, INTEGER, NUMBER, [a|b];
- arguments show as IMAGES... in the usage line and the argument list;
- example paragraphs (indented lines in a docstring) are never rewrapped: a command that does not
  fit the width is continued on the next line with a shell continuation (`\\`), so it can still
  be copied and run;
- lines break at spaces, never inside a hyphenated name (coco-rn50x4, world-tiny).
"""

from __future__ import annotations

import inspect
import re
import textwrap

import click
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

_TYPE_WORDS = {"str": "TEXT", "path": "PATH", "int": "INTEGER", "int range": "INTEGER",
               "float": "NUMBER", "float range": "NUMBER", "bool": "BOOLEAN"}


def _value_word(typer_label: str | None) -> str | None:
    """'<list[Path]>' -> 'PATH', '<float range>' -> 'NUMBER', '<random|rpn>' -> '[random|rpn]'."""
    if not typer_label:
        return typer_label
    label = typer_label.strip("<>")
    if label.startswith("list[") and label.endswith("]"):
        label = label[len("list["):-1]
    if label.lower() in _TYPE_WORDS:
        return _TYPE_WORDS[label.lower()]
    if "|" in label:
        return f"[{label}]"
    return label.upper()


class _Option(TyperOption):
    def display_type_rich(self, ctx: click.Context) -> str | None:
        if self.metavar is not None:
            return self.metavar
        word = _value_word(self.display_type(ctx))
        return f"{word}..." if word and self.nargs != 1 else word


class _Argument(TyperArgument):
    def _name(self) -> str:
        return (self.metavar or self.name or "").upper() + ("..." if self.nargs != 1 else "")

    def _rich_display_name(self) -> str:
        return self._name()

    def _usage_display_name(self) -> str:
        return self._name() if self.required else f"[{self._name()}]"

    def display_type_rich(self, ctx: click.Context) -> str | None:
        return None  # the name says what it is; the help text says the rest


def _fit_command_line(line: str, width: int) -> list[str]:
    """An example command too long for `width`, split at spaces with shell continuations."""
    if len(line) <= width:
        return [line]
    indent = line[: len(line) - len(line.lstrip())]
    parts = textwrap.wrap(line.strip(), width=max(width - len(indent) - 6, 20), break_long_words=False,
                          break_on_hyphens=False)
    lines = [indent + parts[0]] + [indent + "    " + part for part in parts[1:]]
    return [text + " \\" for text in lines[:-1]] + lines[-1:]


def _keep_examples(text: str, width: int) -> str:
    """Mark indented paragraphs (examples) so click keeps their lines; fit long ones to `width`."""
    paragraphs = text.split("\n\n")
    kept = []
    for paragraph in paragraphs:
        lines = paragraph.split("\n")
        if lines and all(line.startswith((" ", "\t")) for line in lines if line.strip()):
            fitted = [part for line in lines for part in _fit_command_line(line, width)]
            kept.append("\b\n" + "\n".join(fitted))
        else:
            kept.append(paragraph)
    return "\n\n".join(kept)


def _format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
    """Commands' and groups' help text, with example paragraphs kept whole."""
    if self.help:
        text = inspect.cleandoc(self.help).partition("\f")[0]
        width = (formatter.width or 80) - formatter.current_indent - 2
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(_keep_examples(text, width))


_NON_BREAKING_HYPHEN = "\u2011"
_WORD_HYPHEN = re.compile(r"(?<=\w)-(?=\w)")


def _keep_hyphenated_words(formatter) -> None:
    """Wrap lines at spaces only: "coco-rn50x4" or "world-tiny" split at the hyphen reads as two words.

    The formatter's text and definition lists are wrapped with hyphens inside words swapped for
    non-breaking ones (same width), which are swapped back in what it wrote.
    """
    if getattr(formatter, "_keeps_hyphens", False):
        return
    write_text, write_dl = formatter.write_text, formatter.write_dl

    def restore(start: int) -> None:
        formatter.buffer[start:] = [part.replace(_NON_BREAKING_HYPHEN, "-") for part in formatter.buffer[start:]]

    def text(value: str) -> None:
        start = len(formatter.buffer)
        write_text(_WORD_HYPHEN.sub(_NON_BREAKING_HYPHEN, value))
        restore(start)

    def definitions(rows, *args, **kwargs) -> None:
        start = len(formatter.buffer)
        write_dl([(term, _WORD_HYPHEN.sub(_NON_BREAKING_HYPHEN, help)) for term, help in rows], *args, **kwargs)
        restore(start)

    formatter.write_text, formatter.write_dl = text, definitions
    formatter._keeps_hyphens = True


class _Command(TyperCommand):
    format_help_text = _format_help_text

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _keep_hyphenated_words(formatter)
        super().format_help(ctx, formatter)


class _Group(TyperGroup):
    format_help_text = _format_help_text

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _keep_hyphenated_words(formatter)
        super().format_help(ctx, formatter)


def tidy_help(command: click.Command) -> click.Command:
    """Give `command` and every command below it the help rendering described above."""
    if isinstance(command, TyperCommand) and not isinstance(command, _Command):
        command.__class__ = _Command
    elif isinstance(command, TyperGroup) and not isinstance(command, _Group):
        command.__class__ = _Group
    for param in command.params:
        if type(param) is TyperOption:
            param.__class__ = _Option
        elif type(param) is TyperArgument:
            param.__class__ = _Argument
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub)
    return command


class RootGroup(_Group):
    """The `regionclip` group: the whole command tree gets the help rendering above when built."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        tidy_help(self)
