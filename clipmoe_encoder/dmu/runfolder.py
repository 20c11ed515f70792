"""A DMU run folder: is it this pipeline's, and are its inputs still the ones it was started with?

settings.json records the settings, the pipeline and fingerprints of the base model (size, mtime and
sha256 of each of its files) and of the training data (size and mtime of the data file, count and
sha256 of the record list). Resume compares content, not names: an in-place edit of the data that
keeps its path and sample count cannot silently reuse stale features and cluster labels, while the
same data moved elsewhere, or a `touch`ed base, still resumes. Image files are identified by their
path relative to the image root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

from ..errors import CLIPMoEError
from .settings import RESULT_NEUTRAL_SETTINGS

SETTINGS = "settings.json"
# What a run writes into its folder (DMU or baseline); anything else there belongs to someone else.
_ENTRIES = {SETTINGS, "features", "clusters", "router", "final", "report.json", "report.md", "timings.json",
            "log.jsonl", "checkpoints", "model", "done.json"}
_STAGE = re.compile(r"^mcl\d+$")
# Settings that do not change the result, and where the inputs were (their content is what is
# compared): a rerun may change these freely.
FREE_SETTINGS = RESULT_NEUTRAL_SETTINGS | {"base", "data", "image_root"}
_RESTART = "start a new --out folder, or pass --restart to discard this folder's run and start afresh"


def _is_run_entry(name: str) -> bool:
    return name in _ENTRIES or bool(_STAGE.match(name)) or name.endswith(".tmp")


def read_saved(out_dir: str) -> dict | None:
    """settings.json of a run folder, or None when there is none; a damaged one is an error."""
    return read_record(os.path.join(out_dir, SETTINGS), "pipeline", "the settings of a clipmoe dmu run", _RESTART)


def read_record(path: str, field: str, what: str, remedy: str) -> dict | None:
    """A JSON object a run wrote about itself, or None when the file is absent; one that is not JSON,
    or lacks `field`, is an error naming the file, what it should be and `remedy`."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CLIPMoEError(f"{path}: not valid JSON ({err}); {remedy}") from None
    if not isinstance(saved, dict) or field not in saved:
        raise CLIPMoEError(f"{path}: not {what} (no field {field!r}); {remedy}")
    return saved


def check_folder(out_dir: str, overwrite: bool) -> None:
    """Before reading anything: `out_dir` is a directory we may write, and either empty, a run folder,
    or taken with `overwrite` (then only the entries a run writes are replaced)."""
    from ..outputs import check_output_dir

    check_output_dir(out_dir, "--out", overwrite, resumable=lambda p: read_saved(p) is not None)


def sha256_file(path: str, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def base_fingerprint(base_dir: str, previous: dict | None = None) -> dict:
    """{file name: {size, mtime_ns, sha256}} of the base directory's files. A file whose size and
    mtime match `previous` keeps its recorded hash (a resume does not re-read gigabytes of weights)."""
    previous = previous or {}
    return {name: file_fingerprint(os.path.join(base_dir, name), previous.get(name))
            for name in sorted(os.listdir(base_dir)) if os.path.isfile(os.path.join(base_dir, name))}


def file_fingerprint(path: str, known: dict | None = None) -> dict:
    """{size, mtime_ns, sha256} of a file; the hash in `known` is kept when size and mtime match it."""
    st = os.stat(path)
    known = known or {}
    same = known.get("size") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns and "sha256" in known
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": known["sha256"] if same else sha256_file(path)}


def data_fingerprint(data_path: str, records, image_root=None) -> dict:
    """Size and mtime of the data file (for the message) and the count and sha256 of the record list
    (what decides): each record's image path relative to the image root, and its caption."""
    data_path = os.fspath(data_path)
    root = os.fspath(image_root) if image_root is not None else (
        data_path if os.path.isdir(data_path) else os.path.dirname(os.path.abspath(data_path)))
    digest = hashlib.sha256()
    for record in records:
        digest.update(f"{os.path.relpath(record.image, root)}\t{record.caption}\n".encode())
    st = os.stat(data_path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "records": len(records), "sha256": digest.hexdigest()}


def _differs(field: str, saved, now) -> str | None:
    """Why a recorded input no longer matches, or None."""
    if field == "data_fingerprint":
        if saved.get("sha256") != now["sha256"]:
            return (f"the training data changed since this run started (then {saved.get('records')} records, "
                    f"{saved.get('size')} bytes; now {now['records']} records, {now['size']} bytes, other content)")
        return None
    if field == "base_fingerprint":
        changed = sorted(n for n in set(saved) | set(now) if (saved.get(n) or {}).get("sha256") != (now.get(n) or {}).get("sha256"))
        return f"the base model's file {changed[0]!r} changed since this run started" if changed else None
    if field not in FREE_SETTINGS and saved != now:
        return f"field {field!r} was {saved!r} for this run folder, now {now!r}"
    return None


def has_results(out_dir: str) -> bool:
    """Anything besides settings.json: features, labels, stage checkpoints, a model."""
    return os.path.isdir(out_dir) and any(_is_run_entry(n) and n != SETTINGS for n in os.listdir(out_dir))


def check_resume(out_dir: str, current: dict, restart: bool) -> None:
    """Refuse to resume a run whose settings or inputs changed (unless `restart`, or unless the folder
    holds nothing yet but its settings, as after a run that failed at its first step)."""
    saved = read_saved(out_dir)
    if saved is None or restart or not has_results(out_dir):
        return
    for field, value in current.items():
        if field in saved:
            why = _differs(field, saved[field], value)
            if why:
                raise CLIPMoEError(f"{os.path.join(out_dir, SETTINGS)}: {why}; {_RESTART}")


def clear_run(out_dir: str) -> None:
    """--restart / --overwrite: remove what a run writes (and only that) from the folder."""
    if not os.path.isdir(out_dir):
        return
    for name in os.listdir(out_dir):
        if _is_run_entry(name):
            path = os.path.join(out_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


def claim(out_dir: str, current: dict, restart: bool = False, overwrite: bool = False) -> None:
    """Every rank calls this once the inputs are read: refuse a changed resume (check_resume), clear the
    folder's previous run on `restart` (or, on `overwrite`, entries a run would write into a folder
    that held none), and record `current` as the folder's settings."""
    from accelerate import PartialState

    state = PartialState()
    had_run = read_saved(out_dir) is not None
    check_resume(out_dir, current, restart)
    if state.is_main_process:
        if restart or (overwrite and not had_run):
            clear_run(out_dir)
        write_settings(out_dir, current)
    state.wait_for_everyone()


def write_settings(out_dir: str, current: dict) -> None:
    from ..outputs import write_text_atomic

    os.makedirs(out_dir, exist_ok=True)
    write_text_atomic(os.path.join(out_dir, SETTINGS), json.dumps(current, indent=1))
