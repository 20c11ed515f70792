"""`clipmoe` command line: upcycle, convert-official, info; dmu and eval register themselves.

A user error (bad file, flag or field) prints one line naming it and exits with status 2; pass
--debug or set CLIPMOE_DEBUG=1 to see the traceback instead."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from .errors import CLIPMoEError

# Sub-command modules that add their own parsers: each has register(subparsers).
_PLUGINS = ("clipmoe_encoder.commands", "clipmoe_encoder.dmu.cli", "clipmoe_encoder.zeroshot.cli")
# OS errors that are about the user's files or machine, not a bug: reported as one line too.
_USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOSPC,
                errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG}


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too (argparse prints the whole usage block first), and
    which takes no abbreviated flags (`--restart` must not quietly mean `--restart-from-base`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="clipmoe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also CLIPMOE_DEBUG=1)")
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


def user_error_message(err: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug (shown as a traceback)."""
    if isinstance(err, CLIPMoEError):
        text = str(err)
    elif isinstance(err, OSError) and err.errno in _USER_ERRNOS:
        text = f"{err.filename}: {err.strerror}" if err.filename else err.strerror or str(err)
    else:
        return None
    return " ".join(text.split())  # one line, whatever the message embeds


def _command_name(args) -> str:
    parts = ["clipmoe", args.command]
    parts += [getattr(args, key) for key in ("dmu_command", "eval_task") if getattr(args, key, None)]
    return " ".join(parts)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug anywhere on the line (users append it), not only before the sub-command
    debug = "--debug" in argv or os.environ.get("CLIPMOE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed as one line
        return done.code if isinstance(done.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except Exception as err:
        message = user_error_message(err)
        if debug or message is None:
            raise
        print(f"{_command_name(args)}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
