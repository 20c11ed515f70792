"""`clipmoe dmu ...`: run (the DMU pipeline), baseline (direct-ft / upcycling), train (one
contrastive run), routing (statistics of a CLIP-MoE), table (DMU + both baselines + held-out
retrieval in one comparison table). Every DMUSettings field is a flag of run / baseline / table
(--lr-router, --no-restart-from-base, ...), every StageSpec field one of train (--trainable, --batch-size, ...)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing

from ..argtypes import at_least

# what clipmoe_encoder.dmu.data.image_root_candidates tries (kept here: the parser imports no torch)
IMAGE_ROOT_HELP = ("folder that relative image paths in the data start from (default: the data file's folder if "
                   "the first record's image is there, else its parent: ShareGPT4V's and LLaVA's layout, "
                   "data/sharegpt4v/x.json with images like coco/train2017/y.jpg under data/)")


def _optional(kind):
    def parse(text):
        return None if text.lower() in ("none", "null", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _add_settings_flags(parser, cls, title):
    """One flag per field of a settings dataclass (DMUSettings, StageSpec), with its help and choices."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title)
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        hint, default = hints[field.name], field.default
        help = f"{field.metadata['help']} (default: %(default)s)"
        if hint is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=field.metadata["help"])
            continue
        base = next((t for t in (int, float, str) if t is hint or t in typing.get_args(hint)), str)
        parse = _optional(base) if type(None) in typing.get_args(hint) else base
        group.add_argument(flag, type=parse, default=default, choices=field.metadata["choices"], help=help)


def _from_flags(cls, args):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _settings(args):
    from .settings import DMUSettings

    return _from_flags(DMUSettings, args)


def _add_folder_flags(parser, run_in: str, inputs: str, folder: str, foreign: str) -> None:
    """--restart and --overwrite: what a rerun may do with the folder it finds."""
    parser.add_argument("--restart", action="store_true",
                        help=f"discard the run already in {run_in} and start afresh; without it a rerun resumes, "
                             f"and one whose {inputs} changed is refused")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"use a non-empty {folder} that holds {foreign} (default: refuse)")


def _common(parser, out_help="run folder (rerun the same command to resume)"):
    parser.add_argument("--base", required=True, help="dense CLIP directory (save_pretrained + tokenizer + image processor)")
    parser.add_argument("--data", required=True, help="ShareGPT4V/LLaVA JSON, JSONL {image, caption} or img2dataset folder")
    parser.add_argument("--image-root", default=None, help=IMAGE_ROOT_HELP)
    parser.add_argument("--out", required=True, help=out_help)
    _add_folder_flags(parser, "--out (its features, stages and model)", "settings, base or data", "--out",
                      "no run of this command")
    from .settings import DMUSettings

    _add_settings_flags(parser, DMUSettings, "DMU settings (defaults = the paper's)")


def register(subparsers) -> None:
    """Add `clipmoe dmu {run,baseline,table,train,prepare-base,routing}`."""
    dmu = subparsers.add_parser("dmu", help="Diversified Multiplet Upcycling: build a CLIP-MoE from a dense CLIP, and baselines")
    sub = dmu.add_subparsers(dest="dmu_command", required=True)

    p = sub.add_parser("run", help="the whole DMU pipeline (features, k-means, MCL stages, assembly, routers)")
    _common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("baseline", help="direct fine-tune or sparse upcycling on the same data and budget")
    p.add_argument("--kind", required=True, choices=("direct-ft", "upcycling"))
    _common(p, "folder; the baseline goes to <out>/<kind>")
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("table", help="DMU + both baselines + held-out retrieval: the paper's comparison in one table")
    _common(p, "folder: <out>/dmu, <out>/baselines, <out>/table.{json,md}")
    p.add_argument("--eval-data", required=True, help="held-out image-caption pairs (any supported format)")
    p.add_argument("--eval-image-root", default=None, help="--image-root of --eval-data (same default)")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("train", help="one contrastive training run of a dense CLIP or CLIP-MoE directory")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--image-root", default=None, help=IMAGE_ROOT_HELP)
    p.add_argument("--out", required=True)
    p.add_argument("--mixed-precision", default="auto")
    _add_folder_flags(p, "<out>/<stage-name>", "settings, model or data", "<out>/<stage-name>", "no training run")
    from .settings import StageSpec

    _add_settings_flags(p, StageSpec, "stage settings (the model lands in <out>/<stage-name>/model)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("prepare-base", help="save a dense CLIP (hub id or dir) with tokenizer + processor, optionally 248 text positions")
    p.add_argument("--model", required=True, help="e.g. openai/clip-vit-large-patch14-336")
    p.add_argument("--out", required=True)
    p.add_argument("--text-positions", type=int, default=None, help="248 = Long-CLIP's stretch of 77 (the paper's setting)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out (default: refuse)")
    p.set_defaults(func=cmd_prepare_base)

    p = sub.add_parser("routing", help="per-layer routing statistics (1st/2nd choice, load, entropy) of a CLIP-MoE")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--image-root", default=None, help=IMAGE_ROOT_HELP)
    p.add_argument("--max-samples", type=at_least(1), default=256)
    p.add_argument("--json", default=None, help="write the statistics here (default: print)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file (default: refuse)")
    p.set_defaults(func=cmd_routing)

    from .split import register as register_split  # torch-free, like the rest of the parser

    register_split(sub)


def cmd_run(args) -> int:
    from .pipeline import run_dmu

    print(run_dmu(args.base, args.data, args.out, _settings(args), args.image_root, args.restart, args.overwrite))
    return 0


def cmd_baseline(args) -> int:
    from .pipeline import run_baseline

    print(run_baseline(args.kind, args.base, args.data, args.out, _settings(args), args.image_root, args.restart, args.overwrite))
    return 0


def cmd_train(args) -> int:
    from ..checkpoint_io import read_config_json
    from ..outputs import check_output_dir
    from . import runfolder
    from .data import load_records
    from .settings import StageSpec
    from .trainer import train_contrastive

    # before the model is loaded: the settings, where it writes, the model's config and the data (read again by the trainer)
    spec = _from_flags(StageSpec, args).validate()
    stage_dir = os.path.join(args.out, spec.stage_name)
    check_output_dir(stage_dir, "--out", args.overwrite, resumable=_is_training_run)
    read_config_json(args.model)
    records, _ = load_records(args.data, args.image_root, skip_bad=spec.skip_bad)
    saved = runfolder.read_saved(stage_dir) or {}
    current = dict(dataclasses.asdict(spec), pipeline="train", mixed_precision=args.mixed_precision,
                   base_fingerprint=runfolder.base_fingerprint(args.model, saved.get("base_fingerprint")),
                   data_fingerprint=runfolder.data_fingerprint(args.data, records, args.image_root))
    runfolder.claim(stage_dir, current, args.restart, args.overwrite)
    print(train_contrastive(args.model, args.data, args.out, spec, image_root=args.image_root, mixed_precision=args.mixed_precision))
    return 0


def _is_training_run(stage_dir) -> bool:
    return any(os.path.exists(os.path.join(stage_dir, name)) for name in ("log.jsonl", "checkpoints", "done.json"))


def cmd_prepare_base(args) -> int:
    from ..outputs import check_output_dir
    from .base import prepare_base

    check_output_dir(args.out, "--out", args.overwrite)

    print(prepare_base(args.model, args.out, args.text_positions))
    return 0


def cmd_routing(args) -> int:
    from ..outputs import check_output_file, write_text_atomic
    from .pipeline import routing_statistics

    if args.json:
        check_output_file(args.json, "--json", args.overwrite)
    stats = routing_statistics(args.model, args.data, args.image_root, args.max_samples)
    text = json.dumps(stats, indent=1)
    if args.json:
        write_text_atomic(args.json, text)
    else:
        print(text)
    return 0


def cmd_table(args) -> int:
    from .table import comparison_table

    table = comparison_table(args.base, args.data, args.out, _settings(args), args.eval_data, args.image_root, args.eval_image_root,
                             args.restart, args.overwrite)
    print(table["markdown"])
    return 0
