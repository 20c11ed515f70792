"""Where commands write: a user's files are never replaced unasked, and an output appears whole or not
at all (written under a temporary sibling name, then moved in place).

The checks here run before anything slow, so a bad destination costs no model loading."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from .errors import CLIPMoEError


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_writable_place(path, flag: str) -> str:
    """`path` (file or directory, existing or not) can be created or replaced: the nearest existing
    ancestor is a directory we can create files in (probed for real: as root os.access says yes)."""
    path = os.path.abspath(os.fspath(path))
    ancestor = _nearest_existing(os.path.dirname(path))
    if not os.path.isdir(ancestor):
        raise CLIPMoEError(f"{flag} {path}: {ancestor} is a file, so nothing can be created under it; choose another path")
    try:
        tempfile.TemporaryFile(dir=ancestor).close()
    except OSError as err:
        raise CLIPMoEError(f"{flag} {path}: cannot write in {ancestor} ({err.strerror}); choose a writable path") from None
    return path


def check_output_dir(path, flag: str, overwrite: bool = False, resumable=None) -> str:
    """A directory the command will fill. Refused: an existing file; a place that cannot be written; a
    non-empty directory that is not this command's own resumable output (`resumable(path)` says
    whether it is) unless `overwrite`."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise CLIPMoEError(f"{flag} {path}: is a file, expected a directory; choose another path")
    check_writable_place(path, flag)
    if os.path.isdir(path) and os.listdir(path) and not overwrite and not (resumable and resumable(path)):
        raise CLIPMoEError(f"{flag} {path}: directory is not empty and holds no output of this command; "
                           "pass --overwrite to replace it, or choose another path")
    return path


def check_output_file(path, flag: str, overwrite: bool = False) -> str:
    """A file the command will write: not a directory, writable, and not an existing file unless `overwrite`."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CLIPMoEError(f"{flag} {path}: is a directory, expected a file path")
    check_writable_place(path, flag)
    if os.path.exists(path) and not overwrite:
        raise CLIPMoEError(f"{flag} {path}: file exists; pass --overwrite to replace it, or choose another path")
    return path


def _staging_name(path: str, what: str) -> str:
    # hidden, fixed and ours: a killed run's leftover is recognised and removed by the next one
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.clipmoe-{what}")


@contextlib.contextmanager
def staged_directory(path):
    """Yield an empty temporary directory beside `path`; when the block succeeds it replaces `path`
    (an old directory there is removed only after the new one is complete), when it fails it is
    removed and `path` is left as it was."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp, old = _staging_name(path, "tmp"), _staging_name(path, "old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.isdir(path):
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path, text: str) -> None:
    """Write a text file under a temporary name in the same folder and rename it in place."""
    path = os.fspath(path)
    tmp = _staging_name(os.path.abspath(path), "tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
