"""transformers' LlavaForConditionalGeneration with a CLIP-MoE vision tower.

`import clipmoe_encoder` registers the CLIP-MoE config/model with AutoConfig/AutoModel, which is
all Llava needs to build the tower from `vision_config` (it must happen in the process before a
Llava config is read: a nested `auto_map` is not followed by transformers). This module adds:
* `llava_config(...)`: a LlavaConfig whose feature layer, select strategy and image_seq_length
  agree with the tower;
* `make_processor(...)`: a LlavaProcessor that expands `<image>` to exactly the tower's number of
  feature tokens (patches, plus the CLS token for the "full" strategy);
* `CLIPMoELlavaForConditionalGeneration`: adds the tower's MoE load-balancing loss to the LM loss
  in training mode only (an evaluation loss stays the plain LM loss), through the same collector
  as LLaVA-1.5 (`aux_loss.with_moe_aux_loss`).
"""

from __future__ import annotations

import inspect

from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

import clipmoe_encoder  # noqa: F401  (registers the CLIP-MoE classes with the Auto* factories)
from clipmoe_encoder.configuration import CLIPMoEVisionConfig
from clipmoe_encoder.errors import CLIPMoEError
from clipmoe_encoder.tower import check_processor_fits

from .aux_loss import with_moe_aux_loss

IMAGE_TOKEN = "<image>"
STRATEGY = {"patch": "default", "cls_patch": "full"}  # LLaVA's select_feature -> transformers' strategy


def num_image_tokens(vision_config: CLIPMoEVisionConfig, strategy: str = "default") -> int:
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    return patches + (1 if strategy == "full" else 0)


def llava_config(vision_config, text_config, image_token_index, vision_feature_layer=-2, select_feature="patch", **kwargs):
    """A LlavaConfig for a CLIP-MoE tower and a causal LM (configs or dicts)."""
    if select_feature not in STRATEGY:
        raise CLIPMoEError(f"select_feature must be one of {sorted(STRATEGY)}, got {select_feature!r}")
    if isinstance(vision_config, dict):
        vision_config = CLIPMoEVisionConfig.from_dict(vision_config)
    strategy = STRATEGY[select_feature]
    text = text_config.to_dict() if hasattr(text_config, "to_dict") else dict(text_config)
    config = LlavaConfig(
        vision_config=vision_config.to_dict(), text_config=text, image_token_index=image_token_index,
        vision_feature_layer=vision_feature_layer, vision_feature_select_strategy=strategy,
        projector_hidden_act="gelu", image_seq_length=num_image_tokens(vision_config, strategy), **kwargs,
    )
    return config


def make_processor(tokenizer, image_processor, config: LlavaConfig) -> LlavaProcessor:
    """LlavaProcessor whose `<image>` expansion matches the tower's output length."""
    vision = config.vision_config
    check_processor_fits(image_processor, vision, where="image processor")
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != config.image_token_index:
        raise CLIPMoEError(
            f"tokenizer: token {IMAGE_TOKEN!r} has id {tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)}, but the config's "
            f"image_token_index is {config.image_token_index} (add it with tokenizer.add_tokens(['{IMAGE_TOKEN}']))"
        )
    params = inspect.signature(LlavaProcessor.__init__).parameters
    if "patch_size" not in params:  # transformers < 4.47: the model expands one <image> token itself
        return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=vision.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # the CLS token ('default' drops it again)
    )


def vision_tower_of(model):
    """The vision tower, wherever this transformers version keeps it."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "vision_tower"):
        return inner.vision_tower
    return model.vision_tower


def projector_of(model):
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "multi_modal_projector"):
        return inner.multi_modal_projector
    return model.multi_modal_projector


def text_model_of(model):
    """(decoder without head, lm_head) for transformers 4.37 (language_model = *ForCausalLM) and 4.52+."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "language_model"):
        return inner.language_model, model.lm_head
    return model.language_model.model, model.language_model.lm_head


class CLIPMoELlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """LlavaForConditionalGeneration + the CLIP-MoE auxiliary loss in training (`aux_loss`). Saves
    as a plain "llava" model (the extra loss needs no weights)."""

    forward = with_moe_aux_loss(LlavaForConditionalGeneration.forward)
