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
    directory = os.fspath(directory)
    if os.path.isfile(directory):
        raise CLIPMoEError(f"{directory}: is a file, expected a model directory (config.json + weights)")
    path = os.path.join(directory, "config.json")
    require_path(path, "the model's config.json")
    if not os.path.isfile(path):
        raise CLIPMoEError(f"{path}: is not a file")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CLIPMoEError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise CLIPMoEError(f"{path}: expected a JSON object of config fields, found a {type(config).__name__}")
    return config


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


def _check_tower_objects(config: dict, path: str) -> None:
    """A missing field takes the config class's default, as transformers reads it (transformers 4.x
    writes only the fields that differ from the defaults), so only the shape of the file is checked
    here; what the fields imply is checked against the weights."""
    if config.get("model_type") == "clipmoe_vision_model":
        return
    for field in ("vision_config", "text_config"):
        if not isinstance(config.get(field, {}), dict):
            raise CLIPMoEError(f"{path}: field {field!r} is not an object")


def check_weights_match_config(directory: str, config: dict) -> None:
    """Every tensor the config implies is stored, with its shape, and no other (say 8 experts in the
    config but 4 in the weights): from_pretrained would only warn, and counts read from the config
    would be silently wrong. Names the first disagreement."""
    from .configuration import CLIPMoEConfig, CLIPMoEVisionConfig
    from .modeling import CLIPMoEModel, CLIPMoEVisionModel

    path = os.path.join(directory, "config.json")
    _check_tower_objects(config, path)
    vision_only = config["model_type"] == "clipmoe_vision_model"
    config_cls, model_cls = (CLIPMoEVisionConfig, CLIPMoEVisionModel) if vision_only else (CLIPMoEConfig, CLIPMoEModel)
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in model_cls(config_cls.from_dict(config)).state_dict().items()}
    except CLIPMoEError as err:
        raise CLIPMoEError(f"{path}: {err}") from None
    except (TypeError, ValueError, KeyError) as err:
        raise CLIPMoEError(f"{path}: not a valid CLIP-MoE config ({type(err).__name__}: {err})") from None
    files = [f for f in sorted(os.listdir(directory)) if f.endswith(".safetensors")]
    if not files:
        raise CLIPMoEError(f"{directory}: no .safetensors weights next to config.json")
    stored = {}
    for name in files:
        stored.update({key: (shape, name) for key, shape in safetensors_shapes(os.path.join(directory, name)).items()})
    for key, (shape, name) in stored.items():
        if key not in expected:
            raise CLIPMoEError(f"{os.path.join(directory, name)}: tensor '{key}' has no place in the model {path} describes "
                               "(moe_layers or the layer count disagree with the weights)")
        if expected[key] != shape:
            raise CLIPMoEError(f"{os.path.join(directory, name)}: tensor '{key}' has shape {list(shape)} but {path} gives "
                               f"{list(expected[key])} (num_experts, hidden sizes or layer count disagree with the weights)")
    missing = sorted(set(expected) - set(stored))
    if missing:
        raise CLIPMoEError(f"{directory}: tensor '{missing[0]}' that {path} implies is not in the weights "
                           f"({len(missing)} missing; moe_layers or the layer count disagree with the weights)")


def load_pickled_state_dict(path) -> dict:
    """torch.load with weights_only=True: a pickle that would run code is refused, never executed.
    A TorchScript archive (openai/CLIP's .pt) is read by torchscript_weights without running its code."""
    from .torchscript_weights import is_torchscript_archive, read_torchscript_state_dict

    path = require_path(path)
    if is_torchscript_archive(path):  # openai/CLIP's .pt files: weights read, TorchScript code never run
        return read_torchscript_state_dict(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is a page long; its one informative line names the blocked global or opcode
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0] if lines else "")
        raise CLIPMoEError(f"{path}: refused to unpickle: not a checkpoint of plain tensors, and loading it could run "
                           f"code (torch: {detail})") from None
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
