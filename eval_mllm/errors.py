"""Errors of eval_mllm, and the one way every command reports them."""

from __future__ import annotations

import os
import sys

from .scorers.common import ScorerInputError

# Show the traceback of a user error instead of its one line (as --debug does).
DEBUG_ENV = "EVAL_MLLM_DEBUG"


class EvalInputError(ValueError):
    """Bad input (missing file, malformed record, unreadable image), with the file and line in
    the message. The CLI prints it as one line and exits with status 2."""


# OSError: a file the system refuses (permission, full disk, read-only folder) is the user's
# to fix, not a bug of ours; its message names the file.
USER_ERRORS = (EvalInputError, ScorerInputError, OSError)


def run_command(command, debug=False) -> int:
    """``command()``'s exit code; a user error prints one ``error: ...`` line on stderr and
    gives 2. With ``debug`` (``--debug``) or ``$EVAL_MLLM_DEBUG`` set it is raised instead,
    traceback and all. Every ``eval-mllm`` / ``python -m eval_mllm`` command runs through here."""
    try:
        return int(command() or 0)
    except USER_ERRORS as exc:
        if debug or os.environ.get(DEBUG_ENV):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2


def pop_debug_flag(argv) -> tuple[list, bool]:
    """``argv`` without ``--debug``, and whether it was there (it may stand anywhere)."""
    argv = list(argv)
    return [a for a in argv if a != "--debug"], "--debug" in argv
