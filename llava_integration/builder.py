"""Teach LLaVA-1.5's builder the CLIP-MoE tower names, and persist the tower in LLaVA's config.

LLaVA resolves `build_vision_tower` through the name imported into `llava.model.llava_arch`, so
that binding is the one that matters; the one in `llava.model.multimodal_encoder.builder` is
patched too for code that calls it directly. Every name that is not ours goes to LLaVA's builder.
"""

from __future__ import annotations

import functools
import os

import torch

from clipmoe_encoder.errors import CLIPMoEError
from clipmoe_encoder.tower import (
    DEFAULT_TOWER_ENV,
    CLIPMoEVisionTower,
    is_clipmoe_tower_name,
)

_ADAPTER_TOWER_KEY = "vision_tower.vision_tower."


def tower_name(cfg):
    return getattr(cfg, "mm_vision_tower", getattr(cfg, "vision_tower", None))


def is_llava_tower_name(name: str) -> bool:
    """The names LLaVA-1.5's own builder takes (llava/model/multimodal_encoder/builder.py)."""
    return os.path.exists(name) or name.startswith(("openai", "laion")) or "ShareGPT4V" in name


def unknown_tower_error(name) -> CLIPMoEError:
    return CLIPMoEError(
        f"unknown vision tower {name!r}: LLaVA takes openai/..., laion/..., *ShareGPT4V* or a local CLIP "
        f"directory; CLIP-MoE takes 'clipmoe' (checkpoint from ${DEFAULT_TOWER_ENV}), "
        "'clipmoe:<path or hub id>' or a CLIP-MoE checkpoint directory"
    )


def make_build_vision_tower(llava_build):
    @functools.wraps(llava_build)
    def build_vision_tower(vision_tower_cfg, **kwargs):
        name = tower_name(vision_tower_cfg)
        if is_clipmoe_tower_name(name):
            return CLIPMoEVisionTower(name, args=vision_tower_cfg, **kwargs)
        try:
            return llava_build(vision_tower_cfg, **kwargs)
        except ValueError as err:
            if "Unknown vision tower" not in str(err):
                raise
            raise unknown_tower_error(name) from None

    build_vision_tower._clipmoe = True
    return build_vision_tower


def _adapter_tower_tensors(path) -> dict:
    """Tower tensors (routers/experts trained in stage 1) saved next to the projector."""
    weights = torch.load(path, map_location="cpu", weights_only=True)
    return {k.split(_ADAPTER_TOWER_KEY, 1)[1]: v for k, v in weights.items() if _ADAPTER_TOWER_KEY in k}


def make_initialize_vision_modules(llava_init):
    @functools.wraps(llava_init)
    def initialize_vision_modules(self, model_args, fsdp=None):
        llava_init(self, model_args, fsdp=fsdp)
        tower = self.get_vision_tower()
        if not isinstance(tower, CLIPMoEVisionTower):
            return
        # The tower may predate these arguments (a LLaVA checkpoint being trained further).
        tune = getattr(model_args, "mm_vision_moe_tune", None)
        if tune:
            tower.set_trainable(tune)
        coef = getattr(model_args, "mm_vision_moe_aux_loss_coef", None)
        if coef is not None:
            tower.vision_tower.config.router_aux_loss_coef = float(coef)
        # Everything delay_load needs to rebuild this exact tower from the saved LLaVA config.
        for key, value in tower.llava_config_fields().items():
            setattr(self.config, key, value)
        self.config.mm_vision_moe_lr = getattr(model_args, "mm_vision_moe_lr", None)
        adapter = getattr(model_args, "pretrain_mm_mlp_adapter", None)
        if adapter:
            tensors = _adapter_tower_tensors(adapter)
            if tensors:
                tower.vision_tower.load_state_dict(tensors, strict=False)

    initialize_vision_modules._clipmoe = True
    return initialize_vision_modules


def make_load_pretrained_model(llava_load):
    """A LLaVA checkpoint made of a projector (stage 1) or LoRA weights holds no tower: re-read the
    tower from its own checkpoint, then apply the tower tensors the LLaVA checkpoint does hold."""

    @functools.wraps(llava_load)
    def load_pretrained_model(model_path, model_base, model_name, *args, **kwargs):
        tokenizer, model, image_processor, context_len = llava_load(model_path, model_base, model_name, *args, **kwargs)
        tower = model.get_vision_tower() if hasattr(model, "get_vision_tower") else None
        if model_base is not None and isinstance(tower, CLIPMoEVisionTower):
            # load_state_dict copies into the existing tensors: the tower keeps LLaVA's dtype and device
            tower.load_source_weights()
            for name in ("mm_projector.bin", "non_lora_trainables.bin"):
                path = os.path.join(model_path, name)
                if os.path.isfile(path):
                    tower.vision_tower.load_state_dict(_adapter_tower_tensors(path), strict=False)
        return tokenizer, model, image_processor, context_len

    load_pretrained_model._clipmoe = True
    return load_pretrained_model


def patch_builders() -> None:
    import llava.model.builder as model_builder
    import llava.model.llava_arch as arch
    import llava.model.multimodal_encoder.builder as encoder_builder

    if not getattr(arch.build_vision_tower, "_clipmoe", False):
        patched = make_build_vision_tower(encoder_builder.build_vision_tower)
        arch.build_vision_tower = encoder_builder.build_vision_tower = patched
    meta = arch.LlavaMetaModel
    if not getattr(meta.initialize_vision_modules, "_clipmoe", False):
        meta.initialize_vision_modules = make_initialize_vision_modules(meta.initialize_vision_modules)
    if not getattr(model_builder.load_pretrained_model, "_clipmoe", False):
        model_builder.load_pretrained_model = make_load_pretrained_model(model_builder.load_pretrained_model)
