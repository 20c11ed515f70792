"""One expert of a CLIP-MoE as a plain dense CLIP (the paper's per-expert rows of Table 1).

Every MoE block's FFN becomes expert j's fc1/fc2 (the router is dropped); every other tensor is
copied. The result is a transformers CLIPModel (two towers) or CLIPVisionModel (a vision-only
CLIP-MoE), so it loads with transformers alone and evaluates like any dense CLIP. It computes
what the CLIP-MoE computes when every token is routed to expert j with weight 1.
"""

from __future__ import annotations

import os

import torch

from .errors import CLIPMoEError


def num_experts_of(config: dict, path: str) -> int:
    """The expert count of a CLIP-MoE config.json (dict), both towers agreeing."""
    towers = [config[k] for k in ("vision_config", "text_config") if isinstance(config.get(k), dict)] or [config]
    counts = {t.get("num_experts", 4) for t in towers}
    if len(counts) != 1 or not all(isinstance(c, int) and c >= 1 for c in counts):
        raise CLIPMoEError(f"{path}: field 'num_experts' is {sorted(counts, key=str)} across the towers, expected one positive int")
    return counts.pop()


def check_expert_index(expert: int, num_experts: int, source: str) -> None:
    if not 0 <= expert < num_experts:
        raise CLIPMoEError(f"expert {expert} is out of range: {source} has {num_experts} experts (0..{num_experts - 1})")


def extract_expert(model, expert: int):
    """A transformers CLIPModel / CLIPVisionModel whose MoE FFNs are expert `expert` of `model`
    (a CLIPMoEModel / CLIPMoEVisionModel)."""
    from .modeling import CLIPMoEModel, CLIPMoEVisionModel
    from .moe import named_router_parameters
    from .upcycle import stacked_expert_keys

    if isinstance(model, CLIPMoEModel):
        dense = _dense_clip(model)
        towers = [model.config.vision_config, model.config.text_config]
    elif isinstance(model, CLIPMoEVisionModel):
        dense = _dense_vision(model.config)
        towers = [model.config]
    else:
        raise CLIPMoEError(f"cannot extract an expert from a {type(model).__name__}: expected a CLIP-MoE model")
    check_expert_index(expert, towers[0].num_experts, type(model).__name__)
    target = dense.state_dict()
    experts = stacked_expert_keys(model)
    routers = {name for name, _ in named_router_parameters(model)}  # one expert needs no routing
    weights = {}
    for key, value in model.state_dict().items():
        if key in experts:
            key, value = experts[key], value[expert]
        elif key in routers:
            continue
        if key not in target and key.startswith("vision_model."):
            key = key[len("vision_model."):]  # transformers >= 5.6 flattens CLIPVisionModel
        if key in target:
            weights[key] = value.detach().clone()
    missing = [k for k in target if k not in weights and not k.endswith("position_ids")]
    if missing:
        raise CLIPMoEError(f"{type(model).__name__}: no tensor for the dense model's {missing[0]!r} (and {len(missing) - 1} more)")
    dense.load_state_dict(weights, strict=False)
    return dense.to(next(model.parameters()).dtype).eval()


def _dense_config_fields(cfg) -> dict:
    from .upcycle import _DENSE_FIELDS

    tower = "text" if hasattr(cfg, "vocab_size") else "vision"
    return {f: getattr(cfg, f) for f in _DENSE_FIELDS[tower] if hasattr(cfg, f)}


def _dense_vision(config):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    return CLIPVisionModel(CLIPVisionConfig(**_dense_config_fields(config)))


def _dense_clip(model):
    from transformers import CLIPConfig, CLIPModel

    cfg = model.config
    config = CLIPConfig(text_config=_dense_config_fields(cfg.text_config), vision_config=_dense_config_fields(cfg.vision_config),
                        projection_dim=cfg.projection_dim, logit_scale_init_value=float(model.logit_scale.detach()))
    return CLIPModel(config)


def extract_expert_directory(src, expert: int, dst, overwrite: bool = False):
    """`clipmoe extract-expert`: the checks on SRC, J and DST come before any weight is read; DST is
    written whole (staged, then moved in place) with SRC's tokenizer and image processor files."""
    from transformers import AutoModel

    from .checkpoint_io import check_moe_directory, require_path
    from .commands import _copy_processor_files
    from .outputs import check_output_dir, staged_directory

    if os.path.abspath(src) == os.path.abspath(dst):
        raise CLIPMoEError(f"OUT {dst}: is the source directory; choose another path")
    check_output_dir(dst, "OUT", overwrite)
    if not os.path.isdir(require_path(src, "CLIP-MoE directory")):
        raise CLIPMoEError(f"{src}: not a directory; extract-expert takes a saved CLIP-MoE directory")
    config = check_moe_directory(src)
    check_expert_index(expert, num_experts_of(config, os.path.join(src, "config.json")), src)
    model = AutoModel.from_pretrained(src)
    dense = extract_expert(model, expert)
    with staged_directory(dst) as tmp, torch.no_grad():
        dense.save_pretrained(tmp)
        _copy_processor_files(src, tmp)
    return dense
