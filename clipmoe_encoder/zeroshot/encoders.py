"""One interface over the CLIP flavours we evaluate: transformers CLIPModel, CLIP-MoE and open_clip.

`ZeroShotEncoder` does the batching, image loading, progress bars and L2 normalisation; a
subclass only turns one batch of PIL images / strings into unnormalised embeddings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import CLIPMoEError
from .datasets import load_image

OPEN_CLIP_PREFIX = "open_clip:"


class ZeroShotEncoder:
    """Maps images and texts into the shared, L2-normalised embedding space (float32, on CPU)."""

    name: str = "encoder"

    def __init__(self, model: torch.nn.Module, device="cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.dtype = next(model.parameters()).dtype

    # -- what a subclass provides -------------------------------------------------------------
    def _image_features(self, images: list) -> torch.Tensor:
        raise NotImplementedError

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    # -- public --------------------------------------------------------------------------------
    def encode_images(self, images: Sequence, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """`images`: PIL images, image paths or HxWx3 uint8 arrays, in any (lazy) sequence; files
        are opened one batch at a time so a 31k-image set never sits in memory at once."""
        return self._batched(images, batch_size, progress, "images", lambda chunk: self._image_features([load_image(x) for x in chunk]))

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise CLIPMoEError(f"text {bad} is a {type(texts[bad]).__name__}, expected a string")
        return self._batched(texts, batch_size, progress, "texts", lambda chunk: self._text_features(list(chunk)))

    def _batched(self, items, batch_size, progress, what, step) -> torch.Tensor:
        if batch_size < 1:
            raise CLIPMoEError(f"batch size must be at least 1, got {batch_size}")
        n = len(items)
        if n == 0:
            raise CLIPMoEError(f"no {what} to encode")
        out = []
        bar = _progress(n, f"encoding {what}", progress)
        # no_grad rather than inference_mode: callers may use the embeddings next to autograd tensors
        try:
            with torch.no_grad():
                for start in range(0, n, batch_size):
                    chunk = [items[i] for i in range(start, min(start + batch_size, n))]
                    out.append(F.normalize(step(chunk).float(), dim=-1).cpu())
                    bar.update(len(chunk))
        finally:
            bar.close()
        return torch.cat(out)

    def __repr__(self):
        return f"{type(self).__name__}({self.name}, device={self.device})"


def _progress(total, desc, enabled):
    # tqdm writes to stderr, so --json output on stdout stays clean
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="it", disable=not enabled, leave=False)


class HFCLIPEncoder(ZeroShotEncoder):
    """transformers CLIPModel or CLIPMoEModel, with its tokenizer and CLIPImageProcessor."""

    def __init__(self, model, tokenizer, image_processor, device="cpu", name=None):
        if tokenizer is None or image_processor is None:
            raise CLIPMoEError(f"a {type(model).__name__} needs its tokenizer and image_processor passed to load_encoder")
        super().__init__(model, device)
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.name = name or type(model).__name__
        text_cfg = model.config.text_config
        # Longer captions are cut to the position table (COCO has a few over 77 tokens).
        self.max_length = int(text_cfg.max_position_embeddings)

    def _image_features(self, images):
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        out = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
        return _as_tensor(out)

    def _text_features(self, texts):
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        kwargs = {"input_ids": tokens["input_ids"].to(self.device)}
        if "attention_mask" in tokens:
            kwargs["attention_mask"] = tokens["attention_mask"].to(self.device)
        return _as_tensor(self.model.get_text_features(**kwargs))


def _as_tensor(out) -> torch.Tensor:
    # transformers >= 5 CLIPModel.get_*_features return an output whose pooler_output holds the
    # projected embedding; 4.x and CLIPMoEModel return the tensor itself.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class OpenCLIPEncoder(ZeroShotEncoder):
    """An open_clip CLIP with its eval transform (PIL -> tensor) and tokenizer (texts -> ids)."""

    def __init__(self, model, preprocess, tokenizer, device="cpu", name=None):
        if preprocess is None or tokenizer is None:
            raise CLIPMoEError("an open_clip model needs its preprocess transform (image_processor=) and tokenizer passed to load_encoder")
        super().__init__(model, device)
        self.preprocess, self.tokenizer = preprocess, tokenizer
        self.name = name or type(model).__name__

    def _image_features(self, images):
        pixels = torch.stack([self.preprocess(im) for im in images])
        return self.model.encode_image(pixels.to(self.device, self.dtype))

    def _text_features(self, texts):
        # open_clip's tokenizers pad and truncate to the model's context length themselves
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


def load_encoder(spec, device="cpu", tokenizer=None, image_processor=None) -> ZeroShotEncoder:
    """`spec`: a directory with a saved CLIPModel / CLIP-MoE (tokenizer and image processor beside
    it), "open_clip:<model name>[:<checkpoint file or pretrained tag>]", or a model object (a
    transformers / CLIP-MoE model with `tokenizer` and `image_processor`, or an open_clip model with
    its preprocess transform as `image_processor` and its tokenizer)."""
    if isinstance(spec, ZeroShotEncoder):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        spec = os.fspath(spec)
        if spec.startswith(OPEN_CLIP_PREFIX):
            return _load_open_clip(spec[len(OPEN_CLIP_PREFIX):], device)
        return _load_directory(spec, device, tokenizer, image_processor)
    if _is_open_clip(spec):
        return OpenCLIPEncoder(spec, image_processor, tokenizer, device)
    if hasattr(spec, "get_image_features") and hasattr(spec, "get_text_features"):
        return HFCLIPEncoder(spec, tokenizer, image_processor, device)
    raise CLIPMoEError(
        f"cannot evaluate a {type(spec).__name__}: expected a model directory, 'open_clip:<name>:<checkpoint>', "
        "a transformers CLIPModel / CLIPMoEModel or an open_clip model"
    )


def _is_open_clip(model) -> bool:
    return type(model).__module__.startswith("open_clip") or (hasattr(model, "encode_image") and hasattr(model, "encode_text"))


def _load_directory(path, device, tokenizer, image_processor) -> HFCLIPEncoder:
    from transformers import AutoModel, AutoTokenizer, CLIPImageProcessor

    from ..checkpoint_io import read_config_json, require_path

    if not os.path.isdir(require_path(path, "model directory")):
        raise CLIPMoEError(f"{path}: not a directory; --model takes a saved model directory or 'open_clip:<name>:<checkpoint>'")
    model_type = read_config_json(path).get("model_type")
    if model_type not in ("clip", "clipmoe"):
        raise CLIPMoEError(
            f"{os.path.join(path, 'config.json')}: field 'model_type' is {model_type!r}; zero-shot evaluation needs "
            "both towers ('clip' or 'clipmoe')"
        )
    # tokenizer and image processor first: a missing one is found before the weights are read
    if tokenizer is None:
        if not any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
            raise CLIPMoEError(
                f"{os.path.join(path, 'tokenizer.json')}: missing (nor vocab.json / tokenizer_config.json); save the "
                "model's tokenizer into the directory with tokenizer.save_pretrained"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as err:  # noqa: BLE001  transformers raises OSError / ValueError / its own types here
            raise CLIPMoEError(f"{path}: cannot load the tokenizer ({err})") from None
    if image_processor is None:
        config_file = os.path.join(path, "preprocessor_config.json")
        if not os.path.isfile(config_file):
            raise CLIPMoEError(f"{config_file}: missing; save the model's CLIPImageProcessor into the directory with save_pretrained")
        try:
            image_processor = CLIPImageProcessor.from_pretrained(path)
        except Exception as err:  # noqa: BLE001
            raise CLIPMoEError(f"{config_file}: cannot load the image processor ({err})") from None
    model = AutoModel.from_pretrained(path)  # CLIPModel or CLIPMoEModel (registered by clipmoe_encoder)
    return HFCLIPEncoder(model, tokenizer, image_processor, device, name=path)


def parse_open_clip_spec(rest: str) -> tuple[str, str | None]:
    """"ViT-B-32:/ckpt.pt" -> ("ViT-B-32", "/ckpt.pt"); "ViT-B-32" -> ("ViT-B-32", None).
    Model names never hold ':' except open_clip's own "local-dir:" / "hf-hub:" schemes, which
    carry their weights with them; the checkpoint part may (a Windows drive letter)."""
    if rest.startswith(("local-dir:", "hf-hub:")):
        return rest, None
    name, _, checkpoint = rest.partition(":")
    if not name:
        raise CLIPMoEError(f"{OPEN_CLIP_PREFIX}{rest}: expected 'open_clip:<model name>:<checkpoint path or pretrained tag>'")
    return name, checkpoint or None


def _load_open_clip(rest: str, device) -> OpenCLIPEncoder:
    try:
        import open_clip
    except ImportError:
        raise CLIPMoEError("open_clip is not installed (pip install 'clipmoe[openclip]')") from None
    name, checkpoint = parse_open_clip_spec(rest)
    if ":" not in name and name not in open_clip.list_models():
        raise CLIPMoEError(
            f"{OPEN_CLIP_PREFIX}{rest}: open_clip has no model config {name!r} (see open_clip.list_models(); a custom "
            "config is registered with open_clip.add_model_config)"
        )
    if checkpoint and (os.sep in checkpoint or "/" in checkpoint or checkpoint.endswith((".pt", ".pth", ".bin", ".safetensors"))):
        from ..checkpoint_io import require_path

        require_path(checkpoint, "open_clip checkpoint")
    from ..torchscript_weights import is_torchscript_archive, load_archive_into

    # openai/CLIP's .pt is TorchScript, which open_clip would only open by running it: read its weights here
    torchscript = bool(checkpoint) and os.path.isfile(checkpoint) and is_torchscript_archive(checkpoint)
    try:
        # weights_only=True (open_clip's default) keeps a pickle from running code on load
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None if torchscript else checkpoint, device="cpu")
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as err:  # noqa: BLE001  unknown name, unknown tag (no download here), mismatched weights
        raise CLIPMoEError(f"{OPEN_CLIP_PREFIX}{rest}: open_clip cannot load it ({type(err).__name__}: {err})") from None
    if torchscript:
        load_archive_into(model, checkpoint)
    return OpenCLIPEncoder(model, preprocess, tokenizer, device, name=f"{OPEN_CLIP_PREFIX}{rest}")
