import subprocess
import sys

from typer.testing import CliRunner

from regionclip_cli.cli.app import app

runner = CliRunner()


def test_help_lists_every_stage():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("concepts", "pseudolabel", "pretrain", "finetune", "zeroshot", "evaluate", "ablate", "world"):
        assert command in result.output


def test_help_does_not_import_torch():
    code = "import sys; from regionclip_cli.cli import app; sys.exit(int('torch' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("regionclip ")


# --- help at 80 and 100 columns, every command (issue 12.15) ----------------------------------

import re  # noqa: E402

import pytest  # noqa: E402
import typer  # noqa: E402


def _all_commands():
    root = typer.main.get_command(app)
    found = []

    def walk(command, path):
        found.append((path, command))
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, [*path, name])

    walk(root, [])
    return found


COMMANDS = [path for path, _ in _all_commands()]


def _greedy_wrap_broken(lines: list[str], width: int) -> list[str]:
    """Pairs of lines where the next line's first word would have fitted on the line before.

    That is what a paragraph wrapped twice (its own line breaks, then the terminal's) looks like.
    Example commands continued with a shell `\\` are exempt.
    """
    bad = []
    for before, after in zip(lines, lines[1:]):
        if not before.strip() or not after.strip() or before.rstrip().endswith("\\"):
            continue
        indent_before = len(before) - len(before.lstrip())
        indent_after = len(after) - len(after.lstrip())
        new_row = after.lstrip().startswith("-") or "  " in after.strip()  # a term and its help
        continuation = indent_after == indent_before and not new_row
        has_help = "  " in before.strip()  # an option line whose help starts on it
        hanging = indent_after > indent_before and before.lstrip().startswith("-") and has_help
        if not (continuation or hanging):
            continue
        first = after.split()[0]
        if len(before.rstrip()) + 1 + len(first) <= width:
            bad.append(f"{before!r} / {after!r}")
    return bad


@pytest.mark.parametrize("columns", [80, 100])
@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "regionclip")
def test_help_reads_cleanly(path, columns):
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": str(columns)}, terminal_width=columns)
    assert result.exit_code == 0, result.output
    text = result.output
    lines = text.splitlines()
    assert all(len(line) <= columns for line in lines), max(lines, key=len)
    for bad in ("<list[", "<bool>", "<str>", "<path>", "<int", "<float", "{images}", "[OPTIONS] {"):
        assert bad not in text, bad
    assert not re.search(r"\s[.,;:](\s|$)", text), re.search(r".{0,30}\s[.,;:](\s|$)", text).group(0)
    assert _greedy_wrap_broken(lines, columns - 2) == []
    assert not [line for line in lines if re.search(r"\w-$", line)]  # "coco-" / "rn50x4" split at a hyphen
    # Nothing of any help text is lost (rich markup used to eat "[[x1,y1,x2,y2], ...]").
    command = next(c for p, c in _all_commands() if p == path)
    squeezed = re.sub(r"\s+", "", text)
    for param in command.params:
        if getattr(param, "help", None) and not getattr(param, "hidden", False):
            assert re.sub(r"\s+", "", param.help) in squeezed, param.help
