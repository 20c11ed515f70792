"""argparse types shared by the `clipmoe` sub-commands: a value out of range is a one-line usage error
before anything is loaded, never a traceback later."""

from __future__ import annotations

import argparse


def at_least(least, kind=int):
    """A `kind` number >= least (`at_least(1)`: a positive integer)."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__} >= {least}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__} >= {least}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse
