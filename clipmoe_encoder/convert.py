"""Key-layout conversion: OpenAI / open_clip / official CLIP-MoE state dicts -> our HF layout.

The result of `openai_state_dict_to_hf` is a state dict in CLIPMoEModel's names in which each
block's FFN is either dense (`mlp.fc1/fc2`) or a list of experts (`mlp.experts.{j}.fc1/fc2`, the
official release) plus `mlp.router.weight`; `upcycle.py` stacks them into the model.
"""

from __future__ import annotations

import re

import torch

from .errors import CLIPMoEError

_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_PARTS = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
    "gate.weight": "mlp.router.weight",
}
_EXPERT = re.compile(r"^experts\.(\d+)\.(c_fc|c_proj)\.(weight|bias)$")
_TOP_LEVEL = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
# Buffers and training leftovers that carry no weights of the model.
_IGNORED = {"attn_mask", "input_resolution", "context_length", "vocab_size"}


def openai_state_dict_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI CLIP / open_clip / official CLIP-MoE keys -> CLIPMoEModel keys (vision-only dicts too)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in _TOP_LEVEL:
            out[_TOP_LEVEL[key]] = value
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif key == "text_projection":  # OpenAI: a (width, embed) matrix used as x @ P
            out["text_projection.weight"] = value.t().contiguous()
        elif key == "text_projection.weight":  # open_clip configs with a Linear projection
            out["text_projection.weight"] = value
        elif key in ("positional_embedding", "positional_embedding_res"):
            continue  # handled below
        elif (m := _BLOCK.match(key)) is not None:
            tower = "vision_model" if m.group(1) else "text_model"
            prefix = f"{tower}.encoder.layers.{m.group(2)}."
            part = m.group(3)
            if part == "attn.in_proj_weight" or part == "attn.in_proj_bias":
                kind = part.rsplit("_", 1)[1]
                for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{name}.{kind}"] = chunk.contiguous()
            elif part in _BLOCK_PARTS:
                out[prefix + _BLOCK_PARTS[part]] = value
            elif (e := _EXPERT.match(part)) is not None:
                fc = "fc1" if e.group(2) == "c_fc" else "fc2"
                out[f"{prefix}mlp.experts.{e.group(1)}.{fc}.{e.group(3)}"] = value
            else:
                raise CLIPMoEError(f"state dict key {key!r} is not part of a CLIP ViT block this converter knows")
        elif key.split(".")[-1] in _IGNORED:
            continue
        else:
            raise CLIPMoEError(f"state dict key {key!r} is not part of a standard CLIP (OpenAI / open_clip) model")
    if "positional_embedding" in sd:
        pe = sd["positional_embedding"]
        if "positional_embedding_res" in sd:
            # Long-CLIP / official CLIP-MoE: rows 0-19 come from the frozen table, the rest from the
            # stretched copy (both are equal in the release; this is exact either way).
            pe = torch.cat([pe[:20], sd["positional_embedding_res"][20:]])
        out["text_model.embeddings.position_embedding.weight"] = pe
    return out


def infer_configs(sd: dict[str, torch.Tensor], vision_heads=None, text_heads=None, hidden_act: str = "quick_gelu"):
    """Dense tower configs (dicts) from the shapes of an OpenAI-layout state dict. Head counts are not
    stored in the weights: OpenAI's convention (width / 64) unless given."""
    def layers(prefix):
        ids = {int(m.group(2)) for k in sd if (m := _BLOCK.match(k)) and bool(m.group(1)) == (prefix == "visual.")}
        return max(ids) + 1 if ids else 0

    def intermediate(prefix):
        for name in (f"{prefix}transformer.resblocks.0.mlp.c_fc.weight", f"{prefix}transformer.resblocks.0.experts.0.c_fc.weight"):
            if name in sd:
                return sd[name].shape[0]
        raise CLIPMoEError(f"state dict has no FFN weights under '{prefix}transformer.resblocks.0'")

    vision = None
    if "visual.conv1.weight" in sd:
        width, _, patch, _ = sd["visual.conv1.weight"].shape
        grid = int(round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5))
        vision = dict(
            hidden_size=width, intermediate_size=intermediate("visual."), num_hidden_layers=layers("visual."),
            num_attention_heads=vision_heads or max(1, width // 64), patch_size=patch, image_size=grid * patch,
            projection_dim=sd["visual.proj"].shape[1] if "visual.proj" in sd else width, hidden_act=hidden_act,
        )
    text = None
    if "token_embedding.weight" in sd:
        vocab, width = sd["token_embedding.weight"].shape
        proj = sd.get("text_projection", sd.get("text_projection.weight"))
        text = dict(
            vocab_size=vocab, hidden_size=width, intermediate_size=intermediate(""), num_hidden_layers=layers(""),
            num_attention_heads=text_heads or max(1, width // 64), max_position_embeddings=sd["positional_embedding"].shape[0],
            projection_dim=(proj.shape[1] if "text_projection" in sd else proj.shape[0]) if proj is not None else width,
            hidden_act=hidden_act,
            # the OpenAI tokenizer's end-of-text is its last id; pooling takes its first occurrence
            eos_token_id=vocab - 1, bos_token_id=vocab - 2, pad_token_id=0,
        )
    return vision, text


def open_clip_state_dict(model) -> tuple[dict[str, torch.Tensor], str, int, int]:
    """State dict, activation and head counts (vision, text) of an open_clip CLIP (standard ViT towers only)."""
    visual = getattr(model, "visual", None)
    if visual is None or not hasattr(visual, "transformer") or getattr(visual, "attn_pool", None) is not None:
        raise CLIPMoEError(f"{type(model).__name__}: only open_clip CLIP models with a standard ViT image tower can be upcycled")
    if getattr(visual, "pool_type", "tok") != "tok" or getattr(model, "text_pool_type", "argmax") != "argmax":
        raise CLIPMoEError("open_clip model pools features in a non-CLIP way (pool_type / text_pool_type), which this converter does not map")
    block = visual.transformer.resblocks[0]
    act_name = type(block.mlp.gelu).__name__
    hidden_act = "quick_gelu" if act_name == "QuickGELU" else "gelu"
    text_heads = model.transformer.resblocks[0].attn.num_heads if hasattr(model, "transformer") else None
    return model.state_dict(), hidden_act, block.attn.num_heads, text_heads


def stretched_positions(n: int, keep: int = 20, ratio: int = 4) -> int:
    """How many rows stretch_text_positions makes of an n-row table (77 -> 248)."""
    return min(n, keep) + max(0, n - keep) * ratio


def stretch_text_positions(table: torch.Tensor, keep: int = 20, ratio: int = 4) -> torch.Tensor:
    """Long-CLIP's position stretch (77 -> 248): keep the first `keep` rows, insert ratio-1 linearly
    interpolated rows after each later row, and extrapolate ratio-1 rows past the last one."""
    n = table.shape[0]
    rows = [table[i] for i in range(keep)]
    for i in range(keep, n):
        nxt = table[i + 1] if i + 1 < n else 2 * table[i] - table[i - 1]  # linear extrapolation at the end
        for j in range(ratio):
            t = j / ratio
            rows.append((1 - t) * table[i] + t * nxt)
    return torch.stack(rows)
