"""Checks of the training entry point's user input, run before any model is loaded.

`check_arguments(argv)` reads the few LLaVA arguments that name files or CLIP-MoE settings and
raises one `CLIPMoEError` naming the flag, variable or file and what to do. It is run by every
DeepSpeed worker (`python -m llava_integration.train`) and, before the launcher starts, by the
shell scripts (`python -m llava_integration.checks ARGS...`), so that a typo costs one line and
exit code 2, not a traceback after minutes of model loading. LLaVA's own parser still validates
every argument later; this is a fast first pass over what it would only discover late.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys

from clipmoe_encoder.errors import CLIPMoEError

DEBUG_ENV = "CLIPMOE_DEBUG"
# LLaVA's arguments that name files (flag -> what LLaVA reads there).
_FILE_FLAGS = ("--data_path", "--pretrain_mm_mlp_adapter", "--deepspeed")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("--vision_tower", "--model_name_or_path", "--image_folder", "--output_dir", "--attn_implementation",
                 "--mm_vision_moe_tune", "--mm_vision_moe_lr", "--mm_vision_moe_aux_loss_coef", *_FILE_FLAGS):
        parser.add_argument(flag)
    return parser


def _looks_local(name: str) -> bool:
    from clipmoe_encoder.checkpoint_io import looks_local

    return looks_local(name)


def check_vision_tower(name: str) -> None:
    """A CLIP-MoE tower name must resolve to a checkpoint whose config and weights agree (a hub id
    is checked when it is downloaded); any other name must be one LLaVA's builder takes. The error
    says where the checkpoint came from ($CLIPMOE_VISION_TOWER or --vision_tower)."""
    from clipmoe_encoder.tower import (
        DEFAULT_TOWER_ENV,
        is_clipmoe_tower_name,
        resolve_tower_source,
    )

    from .builder import is_llava_tower_name, unknown_tower_error

    if not is_clipmoe_tower_name(name):
        if not is_llava_tower_name(name):
            raise unknown_tower_error(name)
        return
    source = resolve_tower_source(name)
    if not _looks_local(source):
        return
    origin = f"${DEFAULT_TOWER_ENV}={source}" if name == "clipmoe" else f"--vision_tower {name}"
    try:
        check_tower_directory(source)
    except CLIPMoEError as err:
        raise CLIPMoEError(f"{origin}: {err}") from None


def check_tower_directory(path: str) -> None:
    """A local CLIP-MoE checkpoint: config.json readable and of a CLIP-MoE type, its fields valid,
    its weights' shapes those of the config (read from the safetensors headers only)."""
    import torch

    from clipmoe_encoder.checkpoint_io import check_moe_directory, check_weight_shapes
    from clipmoe_encoder.modeling import CLIPMoEVisionModel
    from clipmoe_encoder.tower import load_vision_config

    check_moe_directory(path)  # a missing directory or config.json, a config that is not JSON, another model type
    config_path = os.path.join(path, "config.json")
    try:
        config = load_vision_config(path)
    except (ValueError, TypeError) as err:  # CLIPMoEError is a ValueError; transformers raises these for bad fields
        message = str(err)
        raise CLIPMoEError(message if config_path in message else f"{config_path}: {message}") from None
    with torch.device("meta"):
        check_weight_shapes(path, CLIPMoEVisionModel(config))


def _check_file(flag: str, path: str) -> None:
    if not os.path.exists(path):
        raise CLIPMoEError(f"{flag} {path}: no such file")
    if not os.path.isfile(path):
        raise CLIPMoEError(f"{flag} {path}: not a file")
    if not os.access(path, os.R_OK):
        raise CLIPMoEError(f"{flag} {path}: not readable")


def check_data_file(path: str) -> None:
    """LLaVA's --data_path is one JSON list of conversations. Only its first character is read
    here: the file can be gigabytes, and LLaVA parses it anyway."""
    _check_file("--data_path", path)
    with open(path, "rb") as f:
        start = f.read(4096).lstrip()
    if not start.startswith(b"["):
        raise CLIPMoEError(f"--data_path {path}: expected a JSON list of conversations ([{{\"id\": ..., "
                           "\"image\": ..., \"conversations\": [...]}}, ...])")


def check_deepspeed_config(path: str) -> None:
    _check_file("--deepspeed", path)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CLIPMoEError(f"--deepspeed {path}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise CLIPMoEError(f"--deepspeed {path}: expected a JSON object (a DeepSpeed config), found {type(config).__name__}")


def check_model(path: str) -> None:
    """A local --model_name_or_path must be a model directory (a hub id is left to transformers)."""
    if not _looks_local(path):
        return
    if not os.path.isdir(path):
        raise CLIPMoEError(f"--model_name_or_path {path}: no such model directory")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CLIPMoEError(f"--model_name_or_path {path}: no config.json (not a transformers model directory)")


def check_output_dir(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise CLIPMoEError(f"--output_dir {path}: exists and is not a directory")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise CLIPMoEError(f"--output_dir {path}: {parent} is not a writable directory")


def _number(flag: str, value: str, minimum: float, strict: bool) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not (number > minimum if strict else number >= minimum):
        raise CLIPMoEError(f"{flag} {value}: expected a number {'>' if strict else '>='} {minimum:g}")
    return number


def check_moe_options(args) -> None:
    from clipmoe_encoder.tower import TUNE_MODES

    if args.mm_vision_moe_tune is not None and args.mm_vision_moe_tune not in TUNE_MODES:
        raise CLIPMoEError(f"--mm_vision_moe_tune {args.mm_vision_moe_tune}: expected one of {', '.join(TUNE_MODES)}")
    if args.mm_vision_moe_lr is not None:
        _number("--mm_vision_moe_lr", args.mm_vision_moe_lr, 0, strict=True)
    if args.mm_vision_moe_aux_loss_coef is not None:
        _number("--mm_vision_moe_aux_loss_coef", args.mm_vision_moe_aux_loss_coef, 0, strict=False)


def check_attn_implementation(name: str) -> None:
    if name not in ATTN_IMPLEMENTATIONS:
        raise CLIPMoEError(f"--attn_implementation {name}: expected one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise CLIPMoEError("--attn_implementation flash_attention_2: the flash-attn package is not installed "
                           "(pip install flash-attn, or use sdpa)")


def check_arguments(argv: list[str]) -> None:
    """Raise one CLIPMoEError for the first bad input among LLaVA's training arguments `argv`."""
    args, _ = _parser().parse_known_args(argv)
    check_moe_options(args)
    if args.attn_implementation is not None:
        check_attn_implementation(args.attn_implementation)
    if args.data_path is None:
        raise CLIPMoEError("--data_path is required (LLaVA's JSON list of conversations)")
    check_data_file(args.data_path)
    if args.image_folder is not None and not os.path.isdir(args.image_folder):
        raise CLIPMoEError(f"--image_folder {args.image_folder}: no such directory")
    if args.pretrain_mm_mlp_adapter is not None:
        _check_file("--pretrain_mm_mlp_adapter", args.pretrain_mm_mlp_adapter)
    if args.deepspeed is not None:
        check_deepspeed_config(args.deepspeed)
    if args.output_dir is not None:
        check_output_dir(args.output_dir)
    if args.model_name_or_path is not None:
        check_model(args.model_name_or_path)
    if args.vision_tower is not None:
        check_vision_tower(args.vision_tower)


def pop_debug(argv: list) -> bool:
    """Remove `--debug` from argv (LLaVA's parser does not know it); True if it was there or
    $CLIPMOE_DEBUG is set to a non-empty value other than 0."""
    debug = "--debug" in argv
    argv[:] = [a for a in argv if a != "--debug"]
    return debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")


@contextlib.contextmanager
def exit_on_user_error(debug: bool):
    """A CLIPMoEError (bad user input) becomes one `error:` line on stderr and exit code 2; with
    `debug` the traceback is shown instead."""
    try:
        yield
    except CLIPMoEError as err:
        if debug:
            raise
        print("error: " + " ".join(str(err).split("\n")), file=sys.stderr)
        sys.exit(2)


def main(argv=None) -> int:
    """`python -m llava_integration.checks ARGS...`: exit 0 when the arguments pass, else one
    `error:` line and exit 2 (what the shell scripts run before starting the launcher)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    with exit_on_user_error(pop_debug(argv)):
        check_arguments(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
