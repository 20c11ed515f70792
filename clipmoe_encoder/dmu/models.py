"""Loading and saving the models the pipeline trains: dense transformers CLIPModel or CLIPMoEModel,
always together with the tokenizer and image processor that live in the same directory."""

from __future__ import annotations

import os
import re
import shutil

import torch

from ..checkpoint_io import read_config_json, require_path
from ..errors import CLIPMoEError
from ..modeling import CLIPMoEModel

_FFN_PARAM = re.compile(r"^(?P<tower>vision|text)_model\.encoder\.layers\.(?P<layer>\d+)\.mlp\.(?P<part>.+)$")
TRAINABLE_CHOICES = ("all", "ffn", "router", "router+experts")


def load_model(path):
    """A dense CLIP (model_type 'clip') or a two-tower CLIP-MoE ('clipmoe') from a directory."""
    from transformers import CLIPModel

    path = require_path(os.fspath(path), "model directory")
    model_type = read_config_json(path).get("model_type")
    if model_type == "clip":
        return CLIPModel.from_pretrained(path)
    if model_type == "clipmoe":
        return CLIPMoEModel.from_pretrained(path)
    raise CLIPMoEError(f"{os.path.join(path, 'config.json')}: field 'model_type' is {model_type!r}; expected 'clip' or 'clipmoe' (a two-tower CLIP)")


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


def select_trainable(model, what: str, towers: str = "both", last_k_blocks: int | None = None, train_logit_scale: bool = False):
    """Set requires_grad and return [(name, parameter)] of what trains.

    what: "all" | "ffn" (FFN / experts, not routers) | "router" | "router+experts".
    towers: "both" | "vision" (restricts FFN/router selection to the vision tower).
    last_k_blocks: only the last K blocks of each tower (None = all blocks).
    """
    if what not in TRAINABLE_CHOICES:
        raise CLIPMoEError(f"trainable must be one of {', '.join(TRAINABLE_CHOICES)}, got {what!r}")
    if towers not in ("both", "vision"):
        raise CLIPMoEError(f"towers must be 'both' or 'vision', got {towers!r}")
    chosen = []
    for name, param in model.named_parameters():
        train = False
        if name == "logit_scale":
            train = train_logit_scale
        elif what == "all":
            train = True
        else:
            m = _FFN_PARAM.match(name)
            if m and (towers == "both" or m["tower"] == "vision"):
                depth = tower_depth(model, m["tower"])
                in_blocks = last_k_blocks is None or int(m["layer"]) >= depth - last_k_blocks
                part = m["part"]
                is_router = part.startswith("router.")
                is_ffn = part.startswith(("fc1.", "fc2.", "experts."))
                train = in_blocks and {
                    "ffn": is_ffn,
                    "router": is_router,
                    "router+experts": is_router or is_ffn,
                }[what]
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
