"""The encoder's own sub-commands: upcycle, convert-official, info."""

from __future__ import annotations

import json
import os

from .errors import CLIPMoEError


def parse_moe_layers(text: str | None):
    """'all' | 'last:N' | '0,3,5' (block indices) -> the config's moe_layers value."""
    if text is None or text == "all":
        return None
    if text.startswith("last:"):
        return int(text.split(":", 1)[1])
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CLIPMoEError(f"--moe-layers {text!r}: expected 'all', 'last:N' or a comma-separated list of block indices") from None


def register(sub) -> None:
    p = sub.add_parser("upcycle", help="dense CLIP (transformers dir, OpenAI/open_clip .pt) -> CLIP-MoE (every expert a copy of the FFN)")
    p.add_argument("src", help="transformers CLIP(Vision)Model directory, or an OpenAI-layout state dict (.pt)")
    p.add_argument("dst", help="output directory (config.json + model.safetensors + processor files)")
    p.add_argument("--num-experts", type=int, default=4)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--moe-layers", default=None, help="'all' (default), 'last:N' or '0,5,11' (vision blocks)")
    p.add_argument("--text-moe-layers", default="same", help="as --moe-layers for the text tower; 'same' (default) follows --moe-layers")
    p.add_argument("--vision-only", action="store_true", help="write the vision tower alone (what LLaVA uses)")
    p.add_argument("--text-positions", type=int, default=None, help="stretch the text positions Long-CLIP style (e.g. 248)")
    p.add_argument("--seed", type=int, default=0, help="seed of the router initialisation")
    p.set_defaults(func=_upcycle)

    p = sub.add_parser("convert-official", help="official CLIP-MoE release (clip-moe-4-2-*.pt) -> our HF format")
    p.add_argument("src", help="the release .pt file (read with weights_only=True)")
    p.add_argument("dst")
    p.add_argument("--top-k", type=int, default=2)
    p.set_defaults(func=_convert_official)

    p = sub.add_parser("info", help="parameters, MoE layers, experts and top-k of a CLIP-MoE checkpoint")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_info)


def _upcycle(args) -> int:
    from .upcycle import upcycle

    text_layers = "same" if args.text_moe_layers == "same" else parse_moe_layers(args.text_moe_layers)
    model = upcycle(args.src, num_experts=args.num_experts, top_k=args.top_k, moe_layers=parse_moe_layers(args.moe_layers),
                    text_moe_layers=text_layers, vision_only=True if args.vision_only else None,
                    text_positions=args.text_positions, seed=args.seed)
    model.save_pretrained(args.dst)
    _copy_processor_files(args.src, args.dst)
    print(f"wrote {args.dst}")
    return _info_of(args.dst)


def _convert_official(args) -> int:
    from .official import convert_official

    model = convert_official(args.src, top_k=args.top_k)
    model.save_pretrained(args.dst)
    print(f"wrote {args.dst} (the release uses OpenAI's tokenizer with 248 positions and OpenAI CLIP preprocessing)")
    return _info_of(args.dst)


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
    from .checkpoint_io import check_moe_directory, safetensors_shapes
    from .moe import named_expert_parameters

    config = check_moe_directory(directory)
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
