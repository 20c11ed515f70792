"""`clipmoe` command line: upcycle, convert-official, info; dmu and eval register themselves."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import CLIPMoEError

# Sub-command modules that add their own parsers: each has register(subparsers).
_PLUGINS = ("clipmoe_encoder.commands", "clipmoe_encoder.dmu.cli", "clipmoe_encoder.zeroshot.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipmoe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _PLUGINS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if not (err.name and name.startswith(err.name)):  # a missing dependency inside it: say so
                raise
            continue
        module.register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIPMoEError as err:
        print(f"clipmoe {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
