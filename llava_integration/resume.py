"""Resuming a killed LLaVA stage: from which checkpoint, and only with the inputs the run started with.

transformers' Trainer saves checkpoint-N in the output directory (DeepSpeed module and ZeRO optimizer
states, LR scheduler, RNG states, and trainer_state.json last), and LLaVA's train() resumes when the
output directory holds any checkpoint-*. Two gaps are closed here:

* transformers picks the highest-numbered checkpoint, complete or not, and transformers 5 writes it
  in place: a kill while saving leaves a checkpoint that the resume then fails on.
  `newest_complete_checkpoint` takes the newest one whose trainer_state.json is readable and names
  its step (written last, so everything before it is there).
* transformers checks nothing about the inputs. `claim_output_dir` records in the output directory
  (RUN_FILE) the content of the data, model, tower, projector and DeepSpeed config files and the
  training arguments when a run starts; `check_resume` refuses to resume a run whose inputs differ
  (one error naming what changed), before anything is loaded. A non-empty output directory that is
  not a training run's own (no RUN_FILE, no checkpoint) is refused unless --overwrite_output_dir True,
  so a mistyped --output_dir never writes over a user's files. Image files are not fingerprinted
  (hundreds of thousands of files; the data file names them); a hub id is compared by name.
"""

from __future__ import annotations

import json
import os
import re

from clipmoe_encoder.errors import CLIPMoEError

RUN_FILE = "clipmoe_run.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Arguments whose content is compared (files and model directories), not their names.
_CONTENT_FLAGS = ("--data_path", "--model_name_or_path", "--vision_tower", "--pretrain_mm_mlp_adapter", "--deepspeed")
# Arguments that do not change what is trained: where things are written and how progress is shown.
# --image_folder: the images are named by the data file, which is compared.
_NEUTRAL_FLAGS = {"--output_dir", "--image_folder", "--local_rank", "--logging_steps", "--logging_dir", "--report_to",
                  "--run_name", "--dataloader_num_workers", "--save_strategy", "--save_steps", "--save_total_limit",
                  "--per_device_eval_batch_size", "--debug", "--overwrite_output_dir"}


def complete_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the output directory's checkpoints whose trainer_state.json is readable and
    names their step, oldest first."""
    found = []
    if not os.path.isdir(output_dir):
        return found
    for name in os.listdir(output_dir):
        match = _CHECKPOINT.match(name)
        path = os.path.join(output_dir, name)
        if match is None or not os.path.isdir(path):
            continue
        try:
            with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
                step = json.load(f).get("global_step")
        except (OSError, ValueError, AttributeError):
            continue
        if step == int(match.group(1)):
            found.append((step, path))
    return sorted(found)


def newest_complete_checkpoint(output_dir: str) -> str | None:
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def incomplete_checkpoints(output_dir: str) -> list[str]:
    """checkpoint-* folders that a resume skips (a kill while saving, or a rotation cut short)."""
    complete = {path for _, path in complete_checkpoints(output_dir)}
    if not os.path.isdir(output_dir):
        return []
    return sorted(os.path.join(output_dir, n) for n in os.listdir(output_dir)
                  if _CHECKPOINT.match(n) and os.path.join(output_dir, n) not in complete)


def _input_fingerprint(flag: str, value: str, previous: dict | None) -> dict:
    from clipmoe_encoder.checkpoint_io import looks_local
    from clipmoe_encoder.dmu.runfolder import base_fingerprint, file_fingerprint
    from clipmoe_encoder.tower import is_clipmoe_tower_name, resolve_tower_source

    source = resolve_tower_source(value) if flag == "--vision_tower" and is_clipmoe_tower_name(value) else value
    previous = previous or {}
    if os.path.isdir(source):
        return {"source": source, "files": base_fingerprint(source, previous.get("files"))}
    if os.path.isfile(source):
        return {"source": source, "file": file_fingerprint(source, previous.get("file"))}
    if looks_local(source):  # the earlier checks name a missing local path
        return {"source": source, "missing": True}
    return {"source": source, "hub_id": source}


def parse_arguments(argv: list[str]) -> dict[str, str]:
    """{--flag: value} of a training command line (`--flag value`, `--flag=value`, a bare `--flag`
    is "True"); a repeated flag keeps its last value, as argparse does."""
    out, i = {}, 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--"):
            continue
        if "=" in token:
            flag, value = token.split("=", 1)
        elif i < len(argv) and not argv[i].startswith("--"):
            flag, value = token, argv[i]
            i += 1
        else:
            flag, value = token, "True"
        out[flag] = value
    return out


def run_fingerprint(argv: list[str], previous: dict | None = None) -> dict:
    """What decides a run's result: the content of its input files and its training arguments
    (and the number of ranks, which a ZeRO checkpoint is partitioned for, when known)."""
    args = parse_arguments(argv)
    previous = previous or {}
    inputs = {flag: _input_fingerprint(flag, args[flag], (previous.get("inputs") or {}).get(flag))
              for flag in _CONTENT_FLAGS if flag in args}
    arguments = {k: v for k, v in args.items() if k not in _NEUTRAL_FLAGS and k not in _CONTENT_FLAGS}
    fingerprint = {"inputs": inputs, "arguments": arguments}
    if os.environ.get("WORLD_SIZE"):
        fingerprint["world_size"] = int(os.environ["WORLD_SIZE"])
    return fingerprint


def _content(entry: dict) -> object:
    if "files" in entry:
        return {name: f.get("sha256") for name, f in entry["files"].items()}
    return (entry.get("file") or {}).get("sha256") or entry.get("hub_id") or entry.get("missing")


def describe_change(saved: dict, now: dict) -> str | None:
    """The first difference between a recorded and a current fingerprint (None: the same run)."""
    for flag, entry in now["inputs"].items():
        old = (saved.get("inputs") or {}).get(flag)
        if old is None:
            return f"{flag} was not given then"
        if _content(old) != _content(entry):
            if "files" in entry and "files" in old:
                changed = sorted(n for n in set(old["files"]) | set(entry["files"])
                                 if (old["files"].get(n) or {}).get("sha256") != (entry["files"].get(n) or {}).get("sha256"))
                return f"{flag} {entry['source']}: file {changed[0]!r} differs from the one the run started with"
            if old["source"] == entry["source"]:
                return f"{flag} {entry['source']}: content changed since the run started"
            return f"{flag} {entry['source']}: content differs from the run's {old['source']}"
    for flag in sorted(set(saved.get("inputs") or {}) - set(now["inputs"])):
        return f"{flag} was {saved['inputs'][flag]['source']!r}, now not given"
    old_args, new_args = saved.get("arguments") or {}, now["arguments"]
    for flag in sorted(set(old_args) | set(new_args)):
        if old_args.get(flag) != new_args.get(flag):
            return f"{flag} was {old_args.get(flag, 'not given')}, now {new_args.get(flag, 'not given')}"
    if "world_size" in saved and "world_size" in now and saved["world_size"] != now["world_size"]:
        return f"the run had {saved['world_size']} ranks, now {now['world_size']} (a ZeRO checkpoint is split per rank)"
    return None


def read_run_file(output_dir: str) -> dict | None:
    from clipmoe_encoder.dmu.runfolder import read_record

    return read_record(os.path.join(output_dir, RUN_FILE), "arguments", "a run record of llava_integration.train",
                       "remove it and the checkpoint-* folders to start afresh")


def _overwrite_asked(args: dict[str, str]) -> bool:
    """--overwrite_output_dir read as transformers' argument parser reads a bool."""
    value = args.get("--overwrite_output_dir")
    if value is None:
        return False
    from argparse import ArgumentTypeError

    from transformers.hf_argparser import string_to_bool

    try:
        return string_to_bool(value)
    except ArgumentTypeError:
        raise CLIPMoEError(f"--overwrite_output_dir {value}: expected True or False") from None


def check_output_dir_is_ours(args: dict[str, str]) -> None:
    """Never write a run into a user's folder: a non-empty --output_dir must be this project's own
    training output (its RUN_FILE, or checkpoints to resume), unless --overwrite_output_dir True (the
    TrainingArguments flag transformers' example scripts use for the same decision)."""
    output_dir = args.get("--output_dir")
    if output_dir is None or not os.path.isdir(output_dir) or _overwrite_asked(args):
        return
    names = sorted(os.listdir(output_dir))
    if not names or RUN_FILE in names or any(_CHECKPOINT.match(n) for n in names):
        return
    raise CLIPMoEError(f"--output_dir {output_dir}: not empty and not a training run's output (holds {names[0]!r}); "
                       "choose an empty or new folder, or add --overwrite_output_dir True to write into it")


def check_resume(argv: list[str]) -> dict | None:
    """Refuse a foreign non-empty --output_dir; when it holds a complete checkpoint (the run will
    resume), refuse inputs that differ from the recorded ones. Returns the current fingerprint when
    it was computed."""
    args = parse_arguments(argv)
    check_output_dir_is_ours(args)
    output_dir = args.get("--output_dir")
    if output_dir is None or newest_complete_checkpoint(output_dir) is None:
        return None
    saved = read_run_file(output_dir)
    if saved is None:  # a run started by LLaVA itself or an older version: nothing to compare
        return None
    now = run_fingerprint(argv, previous=saved)
    why = describe_change(saved, now)
    if why:
        raise CLIPMoEError(f"--output_dir {output_dir}: holds checkpoints of a run started with other inputs ({why}); "
                           "rerun with the same inputs to resume it, or choose another --output_dir")
    return now


def claim_output_dir(argv: list[str]) -> None:
    """Run by one process (global rank 0) before training: refuse a changed resume, else record this
    run's fingerprint when it starts afresh (a resume keeps the record it started with)."""
    from clipmoe_encoder.outputs import write_text_atomic

    check_resume(argv)
    output_dir = parse_arguments(argv).get("--output_dir")
    if output_dir is None or newest_complete_checkpoint(output_dir) is not None:
        return
    try:  # an earlier run's record: its hashes are reused for files whose size and mtime are unchanged
        previous = read_run_file(output_dir)
    except CLIPMoEError:  # damaged: replaced by this run's
        previous = None
    os.makedirs(output_dir, exist_ok=True)
    write_text_atomic(os.path.join(output_dir, RUN_FILE), json.dumps(run_fingerprint(argv, previous), indent=1))


def main(argv=None) -> int:
    """`python -m llava_integration.resume ARGS...` (the training command's arguments): exit 0 when
    the run may start or resume in --output_dir (a new or empty folder, this project's own run, or
    --overwrite_output_dir True), else one `error:` line and exit 2 (run by the shell
    scripts before the launcher)."""
    import sys

    from .checks import exit_on_user_error, pop_debug

    argv = sys.argv[1:] if argv is None else list(argv)
    with exit_on_user_error(pop_debug(argv)):
        check_resume(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
