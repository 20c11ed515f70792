"""Tiny models and image files for the zero-shot tests, built once per session."""

import json
import string

import numpy as np
import pytest
import torch
from PIL import Image

TINY_OPEN_CLIP = "zeroshot-test-tiny-quickgelu"


def write_image(path, color=(255, 0, 0), size=(20, 16), mode="RGB", fmt=None):
    """A small solid-colour image in a real file format (PNG / JPEG from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    image = image.convert(mode) if mode != "RGB" else image
    image.save(path, format=fmt)
    return path


def random_image(seed, size=(40, 30), mode="RGB"):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def tiny_tokenizer(directory):
    """A real CLIPTokenizer over a hand-written character vocabulary (no merges): every lower-case
    letter, digit and punctuation mark alone and word-final ("a</w>"), then the two specials."""
    from transformers import CLIPTokenizer

    chars = string.ascii_lowercase + string.digits + ".,'-!?"
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt")), len(vocab)


def tiny_clip(vocab_size, seed=0):
    from transformers import CLIPConfig, CLIPModel

    text = {"vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "max_position_embeddings": 24, "bos_token_id": vocab_size - 2, "eos_token_id": vocab_size - 1, "pad_token_id": vocab_size - 1}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    with torch.no_grad():  # non-trivial biases and norms so that a wrong code path shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name or "layrnorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="session")
def hf_clip(tmp_path_factory):
    """(directory, model, tokenizer, image_processor) of a tiny transformers CLIPModel saved the way
    a released checkpoint is: weights, config, tokenizer and preprocessor_config.json together."""
    from transformers import CLIPImageProcessor

    directory = tmp_path_factory.mktemp("hf_clip")
    vocab_dir = tmp_path_factory.mktemp("vocab")
    tokenizer, vocab_size = tiny_tokenizer(vocab_dir)
    model = tiny_clip(vocab_size)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory, model, tokenizer, processor


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory):
    """(model name, checkpoint path, model) of a tiny open_clip CLIP from a registered custom config."""
    open_clip = pytest.importorskip("open_clip")
    directory = tmp_path_factory.mktemp("open_clip")
    config = {
        "embed_dim": 16,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    (directory / f"{TINY_OPEN_CLIP}.json").write_text(json.dumps(config))
    open_clip.add_model_config(directory / f"{TINY_OPEN_CLIP}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_OPEN_CLIP).eval()
    checkpoint = directory / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    return TINY_OPEN_CLIP, checkpoint, model
