"""Errors of the generation/run side of eval_mllm."""

from __future__ import annotations


class EvalInputError(ValueError):
    """Bad input (missing file, malformed record, unreadable image), with the file and line in
    the message. The CLI prints it as one line and exits with status 2."""
