"""CLIP-MoE as a LLaVA vision tower: the interface of LLaVA-1.5's `CLIPVisionTower`, no llava import.

Differences from the stock tower, each on purpose:
* `delay_load=True` (how LLaVA rebuilds a saved model) builds the whole architecture from the
  settings saved in the LLaVA config, so the tower's tensors are read back from the LLaVA
  checkpoint instead of being silently re-read from the original tower checkpoint.
* the forward keeps autograd on whenever routers or experts are trainable (the stock forward is
  wrapped in `no_grad`). The MoE auxiliary loss is not the tower's business: the LLaVA integration
  collects it from the CLIP-MoE model with forward hooks (`llava_integration.aux_loss`).
* `vision_tower` names: "clipmoe" (default checkpoint from $CLIPMOE_VISION_TOWER),
  "clipmoe:<path or hub id>", or a directory whose config.json is a CLIP-MoE.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import torch
from torch import nn
from transformers import CLIPImageProcessor
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .checkpoint_io import MOE_MODEL_TYPES, looks_local
from .configuration import CLIPMoEConfig, CLIPMoEVisionConfig
from .errors import CLIPMoEError
from .modeling import CLIPMoEVisionModel
from .moe import MoEFeedForward, named_expert_parameters, named_router_parameters

DEFAULT_TOWER_ENV = "CLIPMOE_VISION_TOWER"
PREFIX = "clipmoe:"
TUNE_MODES = ("none", "routers", "routers_experts")
SELECT_FEATURES = ("patch", "cls_patch")
# LLaVA config fields written by the integration so that a saved model rebuilds its tower exactly.
SAVED_CONFIG_FIELD = "clipmoe_vision_config"
SAVED_PROCESSOR_FIELD = "clipmoe_image_processor"


def is_clipmoe_directory(path) -> bool:
    """True for a local directory whose config.json declares a CLIP-MoE model type."""
    config = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(config):
        return False
    try:
        with open(config) as f:
            return json.load(f).get("model_type") in MOE_MODEL_TYPES
    except (OSError, ValueError):
        return False


def is_clipmoe_tower_name(name) -> bool:
    """Whether a `--vision_tower` value is ours (everything else belongs to LLaVA's builder)."""
    if not isinstance(name, str):
        return False
    return name == "clipmoe" or name.startswith(PREFIX) or (os.path.isdir(name) and is_clipmoe_directory(name))


def resolve_tower_source(name: str) -> str:
    """The checkpoint (local path or hub id) that a tower name stands for."""
    if name == "clipmoe":
        source = os.environ.get(DEFAULT_TOWER_ENV, "").strip()
        if not source:
            raise CLIPMoEError(
                f"--vision_tower clipmoe uses the default CLIP-MoE checkpoint, but ${DEFAULT_TOWER_ENV} is not set: "
                f"`export {DEFAULT_TOWER_ENV}=/path/to/clipmoe-checkpoint` (or pass --vision_tower clipmoe:/path/to/checkpoint)"
            )
        return source
    if name.startswith(PREFIX):
        source = name[len(PREFIX):].strip()
        if not source:
            raise CLIPMoEError(f"vision tower {name!r}: nothing after 'clipmoe:' (expected clipmoe:<path or hub id>)")
        return source
    if os.path.isdir(name) and is_clipmoe_directory(name):
        return name
    raise CLIPMoEError(
        f"unknown vision tower {name!r}: expected 'clipmoe', 'clipmoe:<path or hub id>' or a CLIP-MoE checkpoint directory"
    )


def _check_source(source: str) -> None:
    """One clear error for a local source that is missing or is not a CLIP-MoE checkpoint."""
    if looks_local(source):
        if not os.path.isdir(source):
            raise CLIPMoEError(f"{source}: no such CLIP-MoE checkpoint directory (vision tower)")
        if not is_clipmoe_directory(source):
            config = os.path.join(source, "config.json")
            found = "no config.json"
            if os.path.isfile(config):
                try:
                    with open(config) as f:
                        found = f"model_type {json.load(f).get('model_type')!r}"
                except (OSError, ValueError):
                    found = "an unreadable config.json"
            raise CLIPMoEError(
                f"{config}: field 'model_type' must be one of {', '.join(MOE_MODEL_TYPES)} for a CLIP-MoE vision tower, "
                f"found {found} (turn a dense CLIP into a CLIP-MoE with `clipmoe_encoder.upcycle`)"
            )


def load_vision_config(source: str) -> CLIPMoEVisionConfig:
    """The vision config of a vision-only or two-tower CLIP-MoE checkpoint."""
    _check_source(source)
    if looks_local(source):
        with open(os.path.join(source, "config.json")) as f:
            if json.load(f).get("model_type") == "clipmoe":
                return CLIPMoEConfig.from_pretrained(source).vision_config
    return CLIPMoEVisionConfig.from_pretrained(source)


def default_image_processor(config: CLIPMoEVisionConfig) -> CLIPImageProcessor:
    """CLIP preprocessing at the tower's resolution (resize shortest edge, centre crop, CLIP mean/std)."""
    size = config.image_size
    return CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD
    )


def load_image_processor(source: str, config: CLIPMoEVisionConfig) -> CLIPImageProcessor:
    if looks_local(source) and not os.path.isfile(os.path.join(source, "preprocessor_config.json")):
        return default_image_processor(config)
    processor = CLIPImageProcessor.from_pretrained(source)
    check_processor_fits(processor, config, where=source)
    return processor


def check_processor_fits(processor, config, where="image processor") -> None:
    """The processor must produce exactly the images the tower takes (else every forward fails later)."""
    crop = processor.crop_size  # a dict on transformers 4, a SizeDict on 5: both index by key
    h, w = (crop, crop) if isinstance(crop, int) else (crop["height"], crop["width"])
    if (h, w) != (config.image_size, config.image_size):
        raise CLIPMoEError(
            f"{where}: crop_size {h}x{w} does not fit the tower, whose image_size is {config.image_size} "
            "(fix preprocessor_config.json or the tower's config.json)"
        )


def _processor_from_dict(settings: dict) -> CLIPImageProcessor:
    settings = {k: v for k, v in settings.items() if k not in ("image_processor_type", "processor_class")}
    return CLIPImageProcessor(**settings)


@contextlib.contextmanager
def _outside_zero3_init():
    """Load the tower unpartitioned even when transformers would build it under ZeRO-3's
    zero.Init: the tower is read whole from its own checkpoint here, and DeepSpeed partitions it
    with the rest of the model when the engine starts."""
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:
        yield
        return
    ref = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    config = ref() if ref is not None else None
    if config is None:
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)


def declare_zero3_leaves(module: nn.Module) -> None:
    """Make ZeRO-3 gather each MoE FFN as one unit (all ranks fetch the same parameters in the
    same order, whatever the routing). Only when DeepSpeed is already in use: importing it
    otherwise would cost seconds for nothing."""
    if "deepspeed" not in sys.modules:
        return
    try:
        from deepspeed.utils import set_z3_leaf_modules
    except ImportError:  # DeepSpeed < 0.13 has no leaf modules; its experts still all run
        return
    if any(isinstance(m, MoEFeedForward) for m in module.modules()):
        set_z3_leaf_modules(module, [MoEFeedForward])


class CLIPMoEVisionTower(nn.Module):
    """Drop-in for LLaVA's CLIPVisionTower. `args` is LLaVA's ModelArguments (training) or the
    saved LlavaConfig (reload); the fields read from it are listed in `__init__`."""

    def __init__(self, vision_tower, args, delay_load=False):
        super().__init__()
        self.is_loaded = False
        self.vision_tower_name = vision_tower
        self.select_layer = getattr(args, "mm_vision_select_layer", -2)
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch") or "patch"
        if self.select_feature not in SELECT_FEATURES:
            raise CLIPMoEError(f"mm_vision_select_feature must be one of {SELECT_FEATURES}, got {self.select_feature!r}")
        self.tune = getattr(args, "mm_vision_moe_tune", None) or "none"
        if self.tune not in TUNE_MODES:
            raise CLIPMoEError(f"mm_vision_moe_tune must be one of {TUNE_MODES}, got {self.tune!r}")
        self.aux_loss_coef = getattr(args, "mm_vision_moe_aux_loss_coef", None)

        saved_config = getattr(args, SAVED_CONFIG_FIELD, None)
        if not delay_load:
            self.load_model()
        else:
            # Rebuild the full architecture; from_pretrained of the LLaVA model then fills in the
            # tower's tensors from the LLaVA checkpoint (fine-tuned routers included).
            config = CLIPMoEVisionConfig.from_dict(saved_config) if saved_config else load_vision_config(self.source)
            saved_processor = getattr(args, SAVED_PROCESSOR_FIELD, None)
            processor = _processor_from_dict(saved_processor) if saved_processor else None
            model = CLIPMoEVisionModel(config)
            self._install(model, processor)

    # ---- loading -------------------------------------------------------------------------
    @property
    def source(self) -> str:
        # Resolved when needed: a saved LLaVA model rebuilds its tower without the original
        # checkpoint (or $CLIPMOE_VISION_TOWER) being available.
        return resolve_tower_source(self.vision_tower_name)

    def load_model(self, device_map=None):
        if self.is_loaded:
            return
        source = self.source
        _check_source(source)
        # No config= here: from_pretrained then checks the weights against the config (one clear
        # error) and takes the vision half of a two-tower checkpoint itself.
        kwargs = {} if device_map is None else {"device_map": device_map}
        with _outside_zero3_init():
            model = CLIPMoEVisionModel.from_pretrained(source, **kwargs)
        self._install(model, load_image_processor(source, model.config))

    def load_source_weights(self):
        """Re-read the tower's tensors from its original checkpoint (for LLaVA checkpoints that hold
        only a projector or LoRA weights and therefore no tower)."""
        source = self.source
        _check_source(source)
        with _outside_zero3_init():
            original = CLIPMoEVisionModel.from_pretrained(source)
        self.vision_tower.load_state_dict(original.state_dict())

    def _install(self, model: CLIPMoEVisionModel, processor):
        if self.aux_loss_coef is not None:
            model.config.router_aux_loss_coef = float(self.aux_loss_coef)
        self.vision_tower = model
        self.image_processor = processor or default_image_processor(model.config)
        check_processor_fits(self.image_processor, model.config)
        self.set_trainable(self.tune)
        declare_zero3_leaves(model)
        self.is_loaded = True

    def set_trainable(self, mode: str):
        """'none' freezes the tower (LLaVA-1.5 and the paper); 'routers' or 'routers_experts' train those."""
        if mode not in TUNE_MODES:
            raise CLIPMoEError(f"mm_vision_moe_tune must be one of {TUNE_MODES}, got {mode!r}")
        self.tune = mode
        self.vision_tower.requires_grad_(False)
        if mode == "routers":
            trained = named_router_parameters(self.vision_tower)
        else:
            trained = self.moe_parameters() if mode == "routers_experts" else []
        for _, p in trained:
            p.requires_grad_(True)

    def moe_parameters(self):
        """(name, parameter) of the routers and experts, names relative to this tower."""
        return named_router_parameters(self.vision_tower) + named_expert_parameters(self.vision_tower)

    def llava_config_fields(self) -> dict:
        """What LLaVA's config must hold for `delay_load=True` to rebuild this tower exactly."""
        config = self.vision_tower.config.to_dict()
        config.pop("transformers_version", None)
        processor = self.image_processor.to_dict()
        processor.pop("processor_class", None)
        return {
            SAVED_CONFIG_FIELD: config,
            SAVED_PROCESSOR_FIELD: processor,
            "mm_vision_moe_tune": self.tune,
            "mm_vision_moe_aux_loss_coef": self.vision_tower.config.router_aux_loss_coef,
        }

    # ---- forward -------------------------------------------------------------------------
    def feature_select(self, image_forward_outs):
        features = image_forward_outs.hidden_states[self.select_layer]
        if self.select_feature == "patch":
            return features[:, 1:]
        return features

    def _trainable(self) -> bool:
        return any(p.requires_grad for p in self.vision_tower.parameters())

    def _run(self, pixels: torch.Tensor):
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        if self.training and torch.is_grad_enabled() and self._trainable():
            # With only routers trainable, no module input inside the tower requires grad; ZeRO-3's
            # backward hooks on leaf modules then fire too late to re-gather their parameters
            # ("size of tensor a (0) must match..."). A grad-requiring input keeps them in order.
            pixels = pixels.detach().requires_grad_(True)
        return self.feature_select(self.vision_tower(pixels, output_hidden_states=True))

    def forward(self, images):
        # A frozen tower needs no graph (as LLaVA's no_grad); a trainable one must keep it.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._trainable()):
            if isinstance(images, list):
                return [self._run(image.unsqueeze(0)).to(image.dtype) for image in images]
            return self._run(images).to(images.dtype)

    # ---- properties LLaVA reads ----------------------------------------------------------
    @property
    def dummy_feature(self):
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def dtype(self):
        return self.vision_tower.dtype

    @property
    def device(self):
        return self.vision_tower.device

    @property
    def config(self):
        return self.vision_tower.config

    @property
    def hidden_size(self):
        return self.config.hidden_size

    @property
    def num_patches_per_side(self):
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self):
        return self.num_patches_per_side ** 2
