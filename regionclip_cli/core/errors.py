"""User-facing errors.

Core code raises these for anything a user can fix (a bad file, key, name or option); the CLI turns
them into one line on stderr and the exit code of DESIGN.md, never a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_INPUTS_FAILED = 1
EXIT_USAGE = 2


class RegionclipError(Exception):
    """A problem with the user's input or options: shown as one line, exit code 2."""

    exit_code = EXIT_USAGE


class InputError(RegionclipError):
    """A single input item (image, caption line, box) that cannot be used.

    Batch commands catch it per item, report it and go on; raised outside a batch it ends the run.
    """
