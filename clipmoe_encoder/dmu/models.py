"""Loading and saving the models the pipeline trains: dense transformers CLIPModel or CLIPMoEModel,
always together with the tokenizer and image processor that live in the same directory."""

from __future__ import annotations

import os
import shutil

import torch

from ..checkpoint_io import read_config_json, require_path
from ..errors import CLIPMoEError
from ..modeling import CLIPMoEModel
from ..moe import named_expert_parameters, named_router_parameters
from .settings import TRAINABLE_CHOICES



def load_model(path):
    """A dense CLIP (model_type 'clip') or a two-tower CLIP-MoE ('clipmoe') from a directory."""
    from transformers import AutoModel

    path = require_path(os.fspath(path), "model directory")
    model_type = read_config_json(path).get("model_type")
    if model_type not in ("clip", "clipmoe"):
        raise CLIPMoEError(f"{os.path.join(path, 'config.json')}: field 'model_type' is {model_type!r}; expected 'clip' or 'clipmoe' (a two-tower CLIP)")
    return AutoModel.from_pretrained(path)  # CLIPModel or CLIPMoEModel (registered by clipmoe_encoder)


def load_preprocessors(path):
    """(tokenizer, image processor) saved next to a model with save_pretrained."""
    from transformers import AutoTokenizer, CLIPImageProcessor

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CLIPMoEError(f"{path}: no such model directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as err:  # noqa: BLE001  transformers raises OSError/ValueError/... for a missing tokenizer
        raise CLIPMoEError(f"{path}: no tokenizer saved with the model ({type(err).__name__}: {err})") from None
    if not os.path.isfile(os.path.join(path, "preprocessor_config.json")):
        raise CLIPMoEError(f"{path}: no preprocessor_config.json (save the CLIPImageProcessor next to the model)")
    return tokenizer, CLIPImageProcessor.from_pretrained(path)


def is_moe(model) -> bool:
    return isinstance(model, CLIPMoEModel)


def text_length(model) -> int:
    """Captions are padded/truncated to the text tower's position table."""
    return int(model.config.text_config.max_position_embeddings)


def tower_depth(model, tower: str) -> int:
    cfg = model.config.vision_config if tower == "vision" else model.config.text_config
    return int(cfg.num_hidden_layers)


def named_dense_ffn_parameters(model):
    """(name, parameter) of the dense FFNs (transformers' CLIPMLP, or a CLIP-MoE's non-MoE blocks)."""
    from transformers.models.clip.modeling_clip import CLIPMLP

    from ..modeling import CLIPMoEMLP

    return [(f"{name}.{p_name}", p) for name, sub in model.named_modules() if isinstance(sub, (CLIPMLP, CLIPMoEMLP))
            for p_name, p in sub.named_parameters()]


def selected_blocks(model, towers: str, last_k_blocks: int | None):
    """The encoder blocks whose FFN parts may train: of both towers or the vision one, the last K or all."""
    blocks = []
    for tower in ("vision", "text") if towers == "both" else ("vision",):
        layers = getattr(model, f"{tower}_model").encoder.layers
        first = 0 if last_k_blocks is None else max(len(layers) - last_k_blocks, 0)
        blocks.extend(layers[first:])
    return blocks


def select_trainable(model, what: str, towers: str = "both", last_k_blocks: int | None = None, train_logit_scale: bool = False):
    """Set requires_grad and return [(name, parameter)] of what trains, in named_parameters order.

    what: "all" | "ffn" (dense FFNs / experts, not routers) | "router" | "router+experts"; the parts
    are found by module type, so another submodule inside a block's FFN (a shared expert) is never
    taken for one of them.
    towers: "both" | "vision" (restricts FFN/router selection to the vision tower).
    last_k_blocks: only the last K blocks of each tower (None = all blocks).
    """
    if what not in TRAINABLE_CHOICES:
        raise CLIPMoEError(f"trainable must be one of {', '.join(TRAINABLE_CHOICES)}, got {what!r}")
    if towers not in ("both", "vision"):
        raise CLIPMoEError(f"towers must be 'both' or 'vision', got {towers!r}")
    wanted = set()
    if what != "all":
        for block in selected_blocks(model, towers, last_k_blocks):
            parts = []
            if what in ("ffn", "router+experts"):
                parts += named_dense_ffn_parameters(block) + named_expert_parameters(block)
            if what in ("router", "router+experts"):
                parts += named_router_parameters(block)
            wanted.update(id(p) for _, p in parts)
    chosen = []
    for name, param in model.named_parameters():
        train = train_logit_scale if name == "logit_scale" else what == "all" or id(param) in wanted
        param.requires_grad_(train)
        if train:
            chosen.append((name, param))
    if not chosen:
        raise CLIPMoEError(f"nothing to train: trainable={what!r} towers={towers!r} last_k_blocks={last_k_blocks} selects no parameter of this model")
    return chosen


def save_model_dir(model, tokenizer, image_processor, path: str) -> str:
    """save_pretrained of model + tokenizer + processor into `path`, atomically (temp dir + rename)."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    image_processor.save_pretrained(tmp)
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def set_frozen_logit_scale(model, scale: float | None):
    """The paper fixes the temperature at 100: store ln(scale) so the saved model says so too."""
    if scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(float(torch.log(torch.tensor(float(scale)))))
