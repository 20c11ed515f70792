"""Convert a LLaVA-1.5 (llava-torch) checkpoint with a CLIP-MoE tower to transformers' Llava format.

    python -m llava_integration.convert LLAVA_CHECKPOINT_DIR OUTPUT_DIR

Weights are copied module by module into a freshly built LlavaForConditionalGeneration, so the
same code works whatever prefixes this transformers version uses. llava-torch marks the image
position with the id -200; transformers needs a real `<image>` token, which is added to the
tokenizer (its embedding row is never used: image features replace it). The processor saved
next to the model expands `<image>` to the tower's number of tokens.
"""

from __future__ import annotations

import argparse
import os

import torch

from clipmoe_encoder.errors import CLIPMoEError
from clipmoe_encoder.tower import CLIPMoEVisionTower

from .hf_llava import (
    IMAGE_TOKEN,
    CLIPMoELlavaForConditionalGeneration,
    llava_config,
    make_processor,
    projector_of,
    text_model_of,
    vision_tower_of,
)

# Fields LLaVA adds to the Llama config; they do not belong in the text config.
_LLAVA_FIELDS = ("mm_", "clipmoe_", "image_aspect_ratio", "tokenizer_model_max_length", "tokenizer_padding_side",
                 "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "use_mm_proj", "image_grid_pinpoints")


def load_llava_checkpoint(path):
    """(model, tokenizer) of a llava-torch checkpoint, with one clear error if it is not one with CLIP-MoE."""
    import json

    from transformers import AutoTokenizer

    import llava_integration

    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise CLIPMoEError(f"{path}: no config.json (expected a LLaVA-1.5 checkpoint directory)")
    with open(config_path) as f:
        raw = json.load(f)
    if "mm_vision_tower" not in raw:
        raise CLIPMoEError(f"{config_path}: no field 'mm_vision_tower' (not a LLaVA-1.5 multimodal checkpoint)")
    if raw.get("mm_projector_type") != "mlp2x_gelu":
        raise CLIPMoEError(f"{config_path}: field 'mm_projector_type' is {raw.get('mm_projector_type')!r}; transformers' "
                           "Llava has the two-layer 'mlp2x_gelu' projector only")
    if raw.get("mm_use_im_start_end") or raw.get("mm_patch_merge_type", "flat") != "flat":
        raise CLIPMoEError(f"{config_path}: image start/end tokens and non-flat patch merging have no Llava equivalent")

    llava_integration.register()
    from llava.model import LlavaLlamaForCausalLM

    model = LlavaLlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    if not isinstance(model.get_vision_tower(), CLIPMoEVisionTower):
        raise CLIPMoEError(f"{config_path}: field 'mm_vision_tower' is {raw['mm_vision_tower']!r}, not a CLIP-MoE tower")
    tokenizer = AutoTokenizer.from_pretrained(path, use_fast=False)
    return model.eval(), tokenizer


def _grow(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """Append rows (new tokens) set to the mean row, the usual choice for added tokens."""
    extra = rows - weight.shape[0]
    if extra <= 0:
        return weight
    return torch.cat([weight, weight.mean(0, keepdim=True).expand(extra, -1)])


def convert(llava_model, tokenizer):
    """(CLIPMoELlavaForConditionalGeneration, LlavaProcessor) with the llava-torch model's weights."""
    from transformers import LlamaConfig

    tower = llava_model.get_vision_tower()
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) in (None, tokenizer.unk_token_id):
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # as LLaVA trains
    vocab = len(tokenizer)
    old = llava_model.config
    text = {k: v for k, v in old.to_dict().items() if not k.startswith(_LLAVA_FIELDS)}
    text.update(model_type="llama", vocab_size=vocab, architectures=["LlamaForCausalLM"])
    text.pop("_name_or_path", None)
    config = llava_config(tower.config, LlamaConfig(**{k: v for k, v in text.items() if k != "model_type"}),
                          image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                          vision_feature_layer=old.mm_vision_select_layer,
                          select_feature=getattr(old, "mm_vision_select_feature", "patch"))
    hf = CLIPMoELlavaForConditionalGeneration(config).eval()

    source = llava_model.get_model()
    vision_tower_of(hf).load_state_dict(tower.vision_tower.state_dict())
    projector = projector_of(hf)
    projector.linear_1.load_state_dict(source.mm_projector[0].state_dict())
    projector.linear_2.load_state_dict(source.mm_projector[2].state_dict())
    decoder, lm_head = text_model_of(hf)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith(("vision_tower.", "mm_projector."))}
    state["embed_tokens.weight"] = _grow(state["embed_tokens.weight"], vocab)
    missing, unexpected = decoder.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("inv_freq") for k in missing):
        raise CLIPMoEError(f"language model weights do not map: missing {missing[:3]}, unexpected {unexpected[:3]}")
    lm_head.weight.data.copy_(_grow(llava_model.lm_head.weight.detach(), vocab))
    processor = make_processor(tokenizer, tower.image_processor, config)
    return hf, processor


def convert_checkpoint(src: str, out: str) -> str:
    model, tokenizer = load_llava_checkpoint(src)
    hf, processor = convert(model, tokenizer)
    hf.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description="llava-torch checkpoint with a CLIP-MoE tower -> transformers Llava")
    parser.add_argument("src", help="LLaVA-1.5 checkpoint directory (llava-torch format)")
    parser.add_argument("out", help="output directory (transformers LlavaForConditionalGeneration + processor)")
    args = parser.parse_args(argv)
    try:
        print(convert_checkpoint(args.src, args.out))
    except CLIPMoEError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
