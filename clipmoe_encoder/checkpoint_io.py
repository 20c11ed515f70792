"""Reading checkpoints safely: local paths checked first, pickles only with weights_only=True,
safetensors headers checked against the model before any tensor is loaded."""

from __future__ import annotations

import json
import os
import pickle

import torch

from .errors import CLIPMoEError

MOE_MODEL_TYPES = ("clipmoe", "clipmoe_vision_model")


def looks_local(name) -> bool:
    """A string that names a filesystem path rather than a hub id."""
    name = os.fspath(name)
    return os.path.isabs(name) or name.startswith(".") or os.path.exists(name) or name.count("/") > 1 or os.sep == "\\" and "\\" in name


def require_path(path, what: str = "checkpoint") -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CLIPMoEError(f"{path}: no such file or directory ({what})")
    return path


def read_config_json(directory: str) -> dict:
    path = os.path.join(directory, "config.json")
    require_path(path, "the model's config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CLIPMoEError(f"{path}: not valid JSON ({err})") from None


def check_moe_directory(directory: str, expected_types=MOE_MODEL_TYPES) -> dict:
    """One clear error if `directory` is not a CLIP-MoE checkpoint; returns its config dict."""
    config = read_config_json(require_path(directory))
    model_type = config.get("model_type")
    if model_type not in expected_types:
        raise CLIPMoEError(
            f"{os.path.join(directory, 'config.json')}: field 'model_type' is {model_type!r}, expected "
            f"{' or '.join(map(repr, expected_types))} (a dense CLIP is converted with `clipmoe upcycle`)"
        )
    return config


def safetensors_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header, with a clear error for a corrupt file."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError / OSError types
        raise CLIPMoEError(f"{path}: not a readable safetensors file ({err})") from None


def check_weight_shapes(directory: str, model: torch.nn.Module) -> None:
    """Compare every stored tensor's shape with the model's before loading (names the first mismatch)."""
    files = [f for f in sorted(os.listdir(directory)) if f.endswith(".safetensors")]
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name in files:
        path = os.path.join(directory, name)
        for key, shape in safetensors_shapes(path).items():
            want = expected.get(key)
            if want is not None and want != shape:
                raise CLIPMoEError(
                    f"{path}: tensor '{key}' has shape {list(shape)} but the config.json gives {list(want)} "
                    "(num_experts, hidden sizes or layer count disagree with the weights)"
                )


def load_pickled_state_dict(path) -> dict:
    """torch.load with weights_only=True: a pickle that would run code is refused, never executed."""
    path = require_path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CLIPMoEError(
            f"{path}: refused to unpickle: the file holds more than plain tensors, and loading it would run code "
            f"({str(err).splitlines()[0]})"
        ) from None
    except Exception as err:
        raise CLIPMoEError(f"{path}: not a readable PyTorch checkpoint ({err})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CLIPMoEError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    # DDP checkpoints prefix every key with "module."
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj
