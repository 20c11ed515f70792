"""Conversion of the official CLIP-MoE release (`clip-moe-4-2-*.pt`) into our HF format.

The release is a pickled fp32 state dict in OpenAI key layout whose blocks hold
`experts.{j}.c_fc/c_proj` and `gate.weight`, with 248 text positions (Long-CLIP). It is read with
weights_only=True, so a file that would run code on unpickling is refused.
"""

from __future__ import annotations

import re

import torch

from .checkpoint_io import load_pickled_state_dict
from .configuration import CLIPMoEConfig, CLIPMoETextConfig, CLIPMoEVisionConfig
from .convert import infer_configs, openai_state_dict_to_hf
from .errors import CLIPMoEError
from .modeling import CLIPMoEModel

_EXPERT_KEY = re.compile(r"^(?P<tower>vision|text)_model\.encoder\.layers\.(?P<layer>\d+)\.mlp\.experts\.(?P<j>\d+)\.(?P<fc>fc1|fc2)\.(?P<kind>weight|bias)$")


def convert_official(source, top_k: int = 2, **moe_kwargs) -> CLIPMoEModel:
    """`source` is the path of a release .pt file or its state dict."""
    name = source if isinstance(source, str) else "state dict"
    sd = load_pickled_state_dict(source) if not isinstance(source, dict) else source
    vision, text = infer_configs(sd)
    if vision is None or text is None:
        raise CLIPMoEError(f"{name}: not a two-tower OpenAI-layout CLIP (no 'visual.conv1.weight' or 'token_embedding.weight')")
    converted = openai_state_dict_to_hf(sd)

    experts: dict[tuple[str, int], dict[int, dict[str, torch.Tensor]]] = {}
    for key in list(converted):
        if m := _EXPERT_KEY.match(key):
            slot = experts.setdefault((m["tower"], int(m["layer"])), {}).setdefault(int(m["j"]), {})
            slot[f"{m['fc']}_{m['kind']}"] = converted.pop(key)
    if not experts:
        raise CLIPMoEError(f"{name}: no '...resblocks.N.experts.J.c_fc' tensors: this is a dense CLIP, use `clipmoe upcycle`")
    counts = {len(v) for v in experts.values()}
    if len(counts) != 1:
        raise CLIPMoEError(f"{name}: MoE blocks hold different numbers of experts ({sorted(counts)})")
    num_experts = counts.pop()

    def layers(tower):
        return sorted(layer for t, layer in experts if t == tower)

    config = CLIPMoEConfig(
        vision_config=CLIPMoEVisionConfig(**vision, num_experts=num_experts, num_experts_per_tok=top_k, moe_layers=layers("vision"), **moe_kwargs),
        text_config=CLIPMoETextConfig(**text, num_experts=num_experts, num_experts_per_tok=top_k, moe_layers=layers("text"), **moe_kwargs),
        projection_dim=converted["visual_projection.weight"].shape[0],
        logit_scale_init_value=float(sd.get("logit_scale", torch.tensor(2.6592))),
    )
    for (tower, layer), by_expert in experts.items():
        prefix = f"{tower}_model.encoder.layers.{layer}.mlp."
        if f"{prefix}router.weight" not in converted:
            raise CLIPMoEError(f"{name}: MoE block {tower} {layer} has experts but no 'gate.weight'")
        if sorted(by_expert) != list(range(num_experts)):
            raise CLIPMoEError(f"{name}: MoE block {tower} {layer} has experts {sorted(by_expert)}, expected 0..{num_experts - 1}")
        for part in ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"):
            converted[f"{prefix}experts.{part}"] = torch.stack([by_expert[j][part] for j in range(num_experts)])

    model = CLIPMoEModel(config)
    expected = model.state_dict()
    for key, value in converted.items():
        if key not in expected or expected[key].shape != value.shape:
            raise CLIPMoEError(f"{name}: tensor {key!r} does not fit the inferred architecture")
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise CLIPMoEError(f"{name}: tensor {missing[0]!r} is missing from the release checkpoint")
    model.load_state_dict(converted)
    return model.eval()
