"""Shared check of the bad-input tables: a refused command prints one error line naming what is
wrong, exits 2, shows no traceback and leaves the user's files byte for byte as they were."""

import hashlib
import os


def hash_tree(path) -> str:
    """Names and bytes of every file under path (or of the file itself)."""
    digest = hashlib.sha256()
    paths = [path] if os.path.isfile(path) else [os.path.join(folder, name) for folder, _, names in sorted(os.walk(path)) for name in sorted(names)]
    for full in paths:
        with open(full, "rb") as f:
            digest.update(os.path.relpath(full, path).encode() + b"\0" + f.read())
    return digest.hexdigest()


def assert_refused_in_one_line(main, argv, needles, keep, root, capsys, prefix="clipmoe") -> str:
    """Run `main(argv)` with `{root}` filled in; `keep` (a path or None) must be unchanged."""
    argv = [a.format(root=root) for a in argv]
    keep = keep.format(root=root) if keep else None
    before = hash_tree(keep) if keep else None
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err and lines[0].startswith(prefix)
    for needle in needles:
        assert needle.format(root=root) in lines[0], (needle, lines[0])
    if keep:
        assert hash_tree(keep) == before
    return lines[0]
