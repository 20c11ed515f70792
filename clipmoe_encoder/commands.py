"""The encoder's own sub-commands: upcycle, convert-official, info, extract-expert."""

from __future__ import annotations

import argparse
import json
import os

from .argtypes import at_least
from .errors import CLIPMoEError
from .outputs import check_output_dir, staged_directory


def parse_moe_layers(text: str | None):
    """'all' | 'last:N' | '0,3,5' (block indices) -> the config's moe_layers value."""
    if text is None or text == "all":
        return None
    try:
        if text.startswith("last:"):
            n = int(text.split(":", 1)[1])
            if n < 0:
                raise ValueError
            return n
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CLIPMoEError(f"--moe-layers {text!r}: expected 'all', 'last:N' (N >= 0) or a comma-separated list of block indices") from None


def _layers_flag(text):
    """argparse type: a bad --moe-layers is a usage error, found before anything is loaded."""
    try:
        return parse_moe_layers(text)
    except CLIPMoEError as err:
        raise argparse.ArgumentTypeError(str(err).split(": ", 1)[1]) from None


def _text_layers_flag(text):
    return "same" if text == "same" else _layers_flag(text)


_TOKENIZER_HELP = ("a saved CLIP tokenizer to write into DST (model_max_length set to the text positions); default: "
                   "SRC's own, else OpenAI CLIP's, built offline from the BPE file open_clip ships")


def register(sub) -> None:
    p = sub.add_parser("upcycle", help="dense CLIP (transformers dir, OpenAI/open_clip .pt) -> CLIP-MoE (every expert a copy of the FFN)")
    p.add_argument("src", help="transformers CLIP(Vision)Model directory, or an OpenAI-layout state dict (.pt)")
    p.add_argument("dst", help="output directory (config.json + model.safetensors + processor files)")
    p.add_argument("--num-experts", type=at_least(1), default=4)
    p.add_argument("--top-k", type=at_least(1), default=2)
    p.add_argument("--moe-layers", type=_layers_flag, default=None, help="'all' (default), 'last:N' or '0,5,11' (vision blocks)")
    p.add_argument("--text-moe-layers", type=_text_layers_flag, default="same", help="as --moe-layers for the text tower; 'same' (default) follows --moe-layers")
    p.add_argument("--vision-only", action="store_true", help="write the vision tower alone (what LLaVA uses)")
    p.add_argument("--text-positions", type=at_least(1), default=None, help="stretch the text positions Long-CLIP style (e.g. 248)")
    p.add_argument("--seed", type=int, default=0, help="seed of the router initialisation")
    p.add_argument("--tokenizer", default=None, metavar="DIR", help=_TOKENIZER_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DST (default: refuse)")
    p.set_defaults(func=_upcycle)

    p = sub.add_parser("convert-official", help="official CLIP-MoE release (clip-moe-4-2-*.pt) -> our HF format")
    p.add_argument("src", help="the release .pt file (read with weights_only=True)")
    p.add_argument("dst", help="output directory (config.json + model.safetensors + tokenizer with 248 positions + image processor)")
    p.add_argument("--top-k", type=at_least(1), default=2)
    p.add_argument("--tokenizer", default=None, metavar="DIR", help=_TOKENIZER_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DST (default: refuse)")
    p.set_defaults(func=_convert_official)

    p = sub.add_parser("info", help="parameters, MoE layers, experts and top-k of a CLIP-MoE checkpoint")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_info)

    p = sub.add_parser("extract-expert", help="expert J of a CLIP-MoE as a dense transformers CLIP (evaluate it alone)",
                       description="Write a dense CLIPModel (or CLIPVisionModel for a vision-only CLIP-MoE) whose FFN in "
                                   "every MoE block is expert J; dense blocks, attention and projections are copied. It "
                                   "loads with transformers alone: `clipmoe eval ... --model OUT` scores expert J.")
    p.add_argument("dir", help="a saved CLIP-MoE directory")
    p.add_argument("expert", type=int, metavar="J", help="expert index, 0 .. num_experts-1")
    p.add_argument("out", help="output directory (config.json + model.safetensors + DIR's tokenizer / processor files)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT (default: refuse)")
    p.set_defaults(func=_extract_expert)


def _tower_sizes(dense) -> dict:
    """Depth of each tower and the text position count, for the checks made before building."""
    text = dense.text or {}
    return {"vision": dense.vision["num_hidden_layers"], "text": text.get("num_hidden_layers"),
            "positions": text.get("max_position_embeddings")}


def _config_sizes(src) -> dict | None:
    """_tower_sizes from a transformers directory's config.json alone (no weights read), or None for a .pt file."""
    if not os.path.isdir(src):
        return None
    from .checkpoint_io import read_config_json

    config = read_config_json(src)
    path = os.path.join(src, "config.json")
    if config.get("model_type") not in ("clip", "clip_vision_model"):
        raise CLIPMoEError(f"{path}: field 'model_type' is {config.get('model_type')!r}; upcycling takes a dense CLIP "
                           "('clip' or 'clip_vision_model')")
    from transformers import CLIPConfig, CLIPVisionConfig

    try:
        if config["model_type"] == "clip_vision_model":
            return {"vision": CLIPVisionConfig.from_dict(config).num_hidden_layers, "text": None, "positions": None}
        cfg = CLIPConfig.from_dict(config)
    except (TypeError, ValueError, KeyError) as err:
        raise CLIPMoEError(f"{path}: not a valid CLIP config ({type(err).__name__}: {err})") from None
    return {"vision": cfg.vision_config.num_hidden_layers, "text": cfg.text_config.num_hidden_layers,
            "positions": cfg.text_config.max_position_embeddings}


def _check_upcycle_plan(args, sizes: dict, src: str) -> None:
    """The flags fit the dense model: layer indices exist, top-k <= experts, the text stretch is possible."""
    from .configuration import resolve_moe_layers
    from .convert import stretched_positions

    if args.top_k > args.num_experts:
        raise CLIPMoEError(f"--top-k {args.top_k}: must not exceed --num-experts {args.num_experts}")
    has_text = sizes["text"] is not None and not args.vision_only
    flags = [("--moe-layers", args.moe_layers, sizes["vision"])]
    if has_text and args.text_moe_layers != "same":
        flags.append(("--text-moe-layers", args.text_moe_layers, sizes["text"]))
    elif has_text:
        flags.append(("--moe-layers (for the text tower)", args.moe_layers, sizes["text"]))
    for flag, value, depth in flags:
        try:
            resolve_moe_layers(value, depth)
        except CLIPMoEError as err:
            raise CLIPMoEError(f"{flag}: {err} ({src})") from None
    if args.text_positions is not None:
        if not has_text:
            raise CLIPMoEError(f"--text-positions: the output has no text tower ({'--vision-only' if args.vision_only else src})")
        n, stretched = sizes["positions"], stretched_positions(sizes["positions"])
        if args.text_positions not in (n, stretched):
            raise CLIPMoEError(f"--text-positions {args.text_positions}: {src} has {n} text positions, which Long-CLIP's "
                               f"stretch turns into {stretched}; pass {stretched}, or leave the flag out")


def _upcycle(args) -> int:
    from .checkpoint_io import require_path
    from .upcycle import load_dense, upcycle

    from .preprocessor_files import check_tokenizer_dir, has_tokenizer

    check_output_dir(args.dst, "DST", args.overwrite)
    src = require_path(args.src, "dense CLIP to upcycle")
    tokenizer_from = check_tokenizer_dir(args.tokenizer) if args.tokenizer else (src if has_tokenizer(src) else None)
    sizes = _config_sizes(src)
    if sizes is not None:  # a directory: everything is checked before the weights are read
        _check_upcycle_plan(args, sizes, src)
    dense = load_dense(src)
    _check_upcycle_plan(args, _tower_sizes(dense), src)
    model = upcycle(dense, num_experts=args.num_experts, top_k=args.top_k, moe_layers=args.moe_layers,
                    text_moe_layers=args.text_moe_layers, vision_only=True if args.vision_only else None,
                    text_positions=args.text_positions, seed=args.seed)
    with staged_directory(args.dst) as tmp:
        model.save_pretrained(tmp)
        _copy_processor_files(src, tmp)
        _complete(tmp, model.config, tokenizer_from)
    print(f"wrote {args.dst}")
    return _info_of(args.dst)


def _convert_official(args) -> int:
    from .checkpoint_io import require_path
    from .official import convert_official

    from .preprocessor_files import check_tokenizer_dir, openai_bpe_path

    check_output_dir(args.dst, "DST", args.overwrite)
    if os.path.isdir(require_path(args.src, "official release .pt")):
        raise CLIPMoEError(f"{args.src}: is a directory, expected the release .pt file")
    tokenizer_from = check_tokenizer_dir(args.tokenizer) if args.tokenizer else None
    bpe_path = None if tokenizer_from else openai_bpe_path()  # checked before the release is read
    model = convert_official(args.src, top_k=args.top_k)
    with staged_directory(args.dst) as tmp:
        model.save_pretrained(tmp)
        _complete(tmp, model.config, tokenizer_from, bpe_path)
    print(f"wrote {args.dst} with OpenAI CLIP preprocessing and a tokenizer of "
          f"{model.config.text_config.max_position_embeddings} positions")
    return _info_of(args.dst)


def _extract_expert(args) -> int:
    from .expert_extraction import extract_expert_directory

    dense = extract_expert_directory(args.dir, args.expert, args.out, args.overwrite)
    print(f"wrote {args.out}: expert {args.expert} of {args.dir} as a dense {type(dense).__name__}")
    return 0


def _complete(directory, config, tokenizer_from=None, bpe_path=None) -> None:
    """Tokenizer and image processor, so that the written directory is usable on its own."""
    import sys

    from .preprocessor_files import complete_directory

    for note in complete_directory(directory, config, tokenizer_from, bpe_path):
        print(f"note: {note}", file=sys.stderr)


def _copy_processor_files(src, dst) -> None:
    """Keep the tokenizer and image processor next to the weights, as transformers checkpoints do."""
    if not os.path.isdir(src):
        return
    import shutil

    for name in os.listdir(src):
        if name in ("config.json", "generation_config.json") or name.endswith((".safetensors", ".bin", ".pt", ".index.json")):
            continue
        path = os.path.join(src, name)
        if os.path.isfile(path):
            shutil.copy2(path, os.path.join(dst, name))


def checkpoint_summary(directory: str) -> dict:
    """Total and active (per-token) parameters of a CLIP-MoE checkpoint, from its config and weights' shapes."""
    from .checkpoint_io import (
        check_moe_directory,
        check_weights_match_config,
        safetensors_shapes,
    )
    from .moe import named_expert_parameters

    config = check_moe_directory(directory)
    check_weights_match_config(directory, config)  # the counts below are only true if the two agree
    files = [f for f in sorted(os.listdir(directory)) if f.endswith(".safetensors")]
    if not files:
        raise CLIPMoEError(f"{directory}: no .safetensors weights next to config.json")
    shapes = {}
    for f in files:
        shapes.update(safetensors_shapes(os.path.join(directory, f)))
    summary = {"model_type": config["model_type"], "towers": {}}
    total = sum(_numel(s) for s in shapes.values())
    active = total
    model = _meta_model(directory)
    for name in ("vision", "text"):
        tower = getattr(model, f"{name}_model", None)
        if tower is None:
            continue
        cfg = tower.config
        e, k = cfg.num_experts, cfg.num_experts_per_tok
        experts = {n for n, _ in named_expert_parameters(tower, prefix=f"{name}_model")}
        expert_params = sum(_numel(s) for key, s in shapes.items() if key in experts)
        active -= expert_params * (e - k) // e  # a token runs k of the e experts
        summary["towers"][name] = {"num_experts": e, "top_k": k, "moe_layers": cfg.moe_layer_indices,
                                   "num_layers": cfg.num_hidden_layers, "expert_parameters": expert_params}
    summary["total_parameters"] = total
    summary["active_parameters"] = active
    return summary


def _meta_model(directory):
    """The checkpoint's model class (through AutoModel) built without memory, to find its parts by type."""
    import torch
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(directory)
    with torch.device("meta"):
        return AutoModel.from_config(config)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _info(args) -> int:
    summary = checkpoint_summary(args.dir)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(_format_summary(args.dir, summary))
    return 0


def _info_of(directory) -> int:
    print(_format_summary(directory, checkpoint_summary(directory)))
    return 0


def _format_summary(directory, s) -> str:
    lines = [f"{directory}: {s['model_type']}",
             f"  parameters: {s['total_parameters'] / 1e6:.2f}M total, {s['active_parameters'] / 1e6:.2f}M active per token"]
    for name, t in s["towers"].items():
        layers = t["moe_layers"]
        where = "all" if len(layers) == t["num_layers"] else ",".join(map(str, layers)) or "none"
        lines.append(f"  {name}: {t['num_experts']} experts, top-{t['top_k']}, MoE blocks {where} of {t['num_layers']}")
    return "\n".join(lines)
