"""Dense CLIP -> CLIP-MoE: sparse upcycling (one FFN copied into every expert) and DMU assembly
(expert j's FFN from dense checkpoint j)."""

from __future__ import annotations

import os

import torch

from .checkpoint_io import load_pickled_state_dict, require_path
from .configuration import MOE_FIELDS, CLIPMoEConfig, CLIPMoETextConfig, CLIPMoEVisionConfig
from .convert import infer_configs, open_clip_state_dict, openai_state_dict_to_hf, stretch_text_positions
from .errors import CLIPMoEError
from .modeling import CLIPMoEModel, CLIPMoEVisionModel
from .moe import StackedExperts, named_router_parameters

_DENSE_FIELDS = {
    "vision": ("hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers", "num_attention_heads",
               "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout",
               "initializer_range", "initializer_factor"),
    "text": ("vocab_size", "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
             "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps", "attention_dropout",
             "initializer_range", "initializer_factor", "pad_token_id", "bos_token_id", "eos_token_id"),
}


class DenseCLIP:
    """A dense CLIP in our key layout: `state_dict` plus dense tower configs (dicts, text may be None)."""

    def __init__(self, state_dict, vision: dict | None, text: dict | None, projection_dim=None, logit_scale=2.6592, source=""):
        self.state_dict, self.vision, self.text = state_dict, vision, text
        self.projection_dim = projection_dim or (vision or text or {}).get("projection_dim", 512)
        self.logit_scale, self.source = logit_scale, source


def load_dense(source) -> DenseCLIP:
    """Accepts a transformers CLIPModel / CLIPVisionModel (object or directory), an OpenAI-layout
    state dict (dict or .pt file) or an open_clip model."""
    if isinstance(source, DenseCLIP):
        return source
    if isinstance(source, dict):
        return _from_openai(source)
    if isinstance(source, (str, os.PathLike)):
        path = require_path(source)
        if os.path.isdir(path):
            return _from_transformers(_load_transformers(path), source=path)
        return _from_openai(load_pickled_state_dict(path), source=path)
    if type(source).__module__.startswith("open_clip"):
        sd, act, vision_heads, text_heads = open_clip_state_dict(source)
        return _from_openai(sd, vision_heads, text_heads, hidden_act=act, source=type(source).__name__)
    if hasattr(source, "config") and hasattr(source, "state_dict"):
        return _from_transformers(source, source=type(source).__name__)
    raise CLIPMoEError(f"cannot upcycle a {type(source).__name__}: expected a transformers CLIP, an open_clip model or a state dict")


def _load_transformers(path):
    from transformers import AutoModel

    from .checkpoint_io import read_config_json

    model_type = read_config_json(path).get("model_type")
    if model_type not in ("clip", "clip_vision_model"):
        raise CLIPMoEError(
            f"{os.path.join(path, 'config.json')}: field 'model_type' is {model_type!r}; "
            "upcycling takes a dense CLIP ('clip' or 'clip_vision_model')"
        )
    return AutoModel.from_pretrained(path)  # CLIPModel or CLIPVisionModel


def _from_transformers(model, source="") -> DenseCLIP:
    cfg = model.config
    sd = {}
    for key, value in model.state_dict().items():
        if cfg.model_type == "clip_vision_model" and not key.startswith("vision_model."):
            key = "vision_model." + key  # transformers >= 5.6 flattens CLIPVisionModel
        if key.startswith("vision_model.") or key.startswith("text_model.") or cfg.model_type == "clip":
            sd[key] = value.detach()
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    if cfg.model_type == "clip":
        vision, text = _dense_fields(cfg.vision_config, "vision"), _dense_fields(cfg.text_config, "text")
        return DenseCLIP(sd, vision, text, cfg.projection_dim, float(sd["logit_scale"]), source)
    if cfg.model_type == "clip_vision_model":
        return DenseCLIP(sd, _dense_fields(cfg, "vision"), None, source=source)
    raise CLIPMoEError(f"{source}: model_type {cfg.model_type!r} is not a dense transformers CLIP")


def _dense_fields(cfg, tower):
    return {f: getattr(cfg, f) for f in _DENSE_FIELDS[tower] if hasattr(cfg, f)}


def _from_openai(sd, vision_heads=None, text_heads=None, hidden_act="quick_gelu", source="state dict") -> DenseCLIP:
    try:
        converted = openai_state_dict_to_hf(sd)
    except CLIPMoEError as err:
        raise CLIPMoEError(f"{source}: {err}") from None
    vision, text = infer_configs(sd, vision_heads, text_heads, hidden_act)
    if vision is None:
        raise CLIPMoEError(f"{source}: no 'visual.conv1.weight': not an OpenAI-layout CLIP state dict")
    logit_scale = float(sd["logit_scale"]) if "logit_scale" in sd else 2.6592
    projection = converted["visual_projection.weight"].shape[0] if "visual_projection.weight" in converted else None
    return DenseCLIP(converted, vision, text, projection, logit_scale, source)


def _moe_settings(num_experts, top_k, moe_layers, extra):
    unknown = set(extra) - set(MOE_FIELDS)
    if unknown:
        raise CLIPMoEError(f"unknown MoE setting(s): {', '.join(sorted(unknown))}")
    return dict(extra, num_experts=num_experts, num_experts_per_tok=top_k, moe_layers=moe_layers)


def build_model(dense: DenseCLIP, experts_from: list[DenseCLIP], top_k=2, moe_layers=None, text_moe_layers="same",
                vision_only=None, text_positions=None, seed: int | None = 0, **moe_kwargs):
    """Build the CLIP-MoE whose expert j in every MoE block is the FFN of `experts_from[j]`;
    every other tensor comes from `dense` (routers keep their fresh initialisation, drawn from
    `seed` without disturbing the caller's RNG; None = from the caller's RNG)."""
    num_experts = len(experts_from)
    vision_cfg = CLIPMoEVisionConfig(**dense.vision, **_moe_settings(num_experts, top_k, moe_layers, moe_kwargs))
    if dense.text is None if vision_only is None else vision_only:
        model_class, config = CLIPMoEVisionModel, vision_cfg
    else:
        text_layers = moe_layers if text_moe_layers == "same" else text_moe_layers
        model_class, config = CLIPMoEModel, _two_tower_config(dense, vision_cfg, text_positions, _moe_settings(num_experts, top_k, text_layers, moe_kwargs))
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = model_class(config)
    model.load_state_dict(_moe_state_dict(model, dense, experts_from, text_positions), strict=False)
    return model.eval()


def _two_tower_config(dense, vision_cfg, text_positions, text_moe_settings):
    if dense.text is None:
        raise CLIPMoEError(f"{dense.source}: has no text tower, so a two-tower CLIP-MoE cannot be built")
    text = dict(dense.text)
    if text_positions:
        text["max_position_embeddings"] = text_positions
    text_cfg = CLIPMoETextConfig(**text, **text_moe_settings)
    return CLIPMoEConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=dense.projection_dim,
                         logit_scale_init_value=dense.logit_scale)


def _moe_state_dict(model, dense, experts_from, text_positions):
    target = model.state_dict()
    stacked_from = {ffn: stacked for stacked, ffn in stacked_expert_keys(model).items()}
    out = {}
    for key, value in dense.state_dict.items():
        if key in stacked_from:
            out[stacked_from[key]] = torch.stack([_tensor(d, key) for d in experts_from])
            continue
        if isinstance(model, CLIPMoEVisionModel) and not key.startswith("vision_model."):
            continue  # the vision tower alone, out of a two-tower CLIP
        if key.endswith("embeddings.position_embedding.weight") and key.startswith("text_model.") and text_positions:
            if value.shape[0] != text_positions:
                value = stretch_text_positions(value)
        out[key] = value
    for key, value in out.items():
        if key not in target:
            raise CLIPMoEError(f"{dense.source}: tensor {key!r} has no place in the CLIP-MoE model")
        if tuple(target[key].shape) != tuple(value.shape):
            raise CLIPMoEError(f"{dense.source}: tensor {key!r} has shape {list(value.shape)}, the model expects {list(target[key].shape)}")
    routers = {name for name, _ in named_router_parameters(model)}  # freshly initialised, not from the dense CLIP
    missing = [k for k in target if k not in out and k not in routers]
    if missing:
        raise CLIPMoEError(f"{dense.source}: tensor {missing[0]!r} is missing (and {len(missing) - 1} more)")
    return out


def _tensor(dense: DenseCLIP, key: str) -> torch.Tensor:
    if key not in dense.state_dict:
        raise CLIPMoEError(f"{dense.source}: tensor {key!r} is missing")
    return dense.state_dict[key]


def upcycle(dense, num_experts: int = 4, top_k: int = 2, moe_layers=None, text_moe_layers="same",
            vision_only=None, text_positions=None, seed: int | None = 0, **moe_kwargs):
    """Sparse upcycling: every expert starts as a copy of the dense FFN; routers are random
    (seeded). With all experts equal the MoE computes exactly the dense function."""
    d = load_dense(dense)
    return build_model(d, [d] * num_experts, top_k, moe_layers, text_moe_layers, vision_only, text_positions, seed, **moe_kwargs)


def assemble_experts(checkpoints, top_k: int = 2, moe_layers=None, text_moe_layers="same", vision_only=None,
                     text_positions=None, seed: int | None = 0, **moe_kwargs):
    """DMU assembly: expert j of every MoE block is the FFN of dense checkpoint j. Every other tensor
    must agree across the checkpoints (they were frozen in MCL); the first one that differs is named."""
    dense = [load_dense(c) for c in checkpoints]
    if len(dense) < 2:
        raise CLIPMoEError("assemble_experts needs at least two dense checkpoints (one per expert)")
    probe = build_model(dense[0], dense, top_k, moe_layers, text_moe_layers, vision_only, text_positions, seed, **moe_kwargs)
    expert_keys = set(stacked_expert_keys(probe).values())
    base = dense[0]
    for j, other in enumerate(dense[1:], start=1):
        for key, value in base.state_dict.items():
            if key in expert_keys:
                continue
            theirs = other.state_dict.get(key)
            if theirs is None or theirs.shape != value.shape or not torch.equal(theirs, value):
                raise CLIPMoEError(
                    f"checkpoint {j} ({other.source}) differs from checkpoint 0 ({base.source}) in tensor {key!r}, "
                    "which is not an expert FFN: the checkpoints must share every other weight"
                )
    return probe


def stacked_expert_keys(model) -> dict[str, str]:
    """State-dict key of every stacked expert tensor -> the dense FFN key whose tensors it stacks
    (...mlp.experts.fc1_weight -> ...mlp.fc1.weight), found by module type (StackedExperts)."""
    keys = {}
    for name, module in model.named_modules():
        if isinstance(module, StackedExperts):
            ffn = name.rsplit(".", 1)[0]  # the MoE FFN holding the experts: where the dense fc1/fc2 were
            for tensor, _ in module.named_parameters(recurse=False):
                fc, kind = tensor.split("_")
                keys[f"{name}.{tensor}"] = f"{ffn}.{fc}.{kind}"
    return keys

