"""Tiny real artefacts for the DMU tests: a dense CLIP directory (model + tokenizer + image
processor) and small image-caption sets in each supported layout."""

from __future__ import annotations

import json
import os
import string

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
SHAPES = ("square", "stripe", "dot")


def make_tokenizer(directory):
    """A character-level CLIP BPE tokenizer (no merges): enough to tell captions apart."""
    vocab = {}
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
    for c in string.ascii_lowercase:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    tok = CLIPTokenizer(os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt"), model_max_length=16)
    os.remove(os.path.join(directory, "vocab.json"))
    os.remove(os.path.join(directory, "merges.txt"))
    return tok


def make_base(directory, seed=0, layers=2):
    """Save a tiny dense transformers CLIPModel with its tokenizer and image processor."""
    tok = make_tokenizer(directory)
    torch.manual_seed(seed)
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": layers, "num_attention_heads": 2, "vocab_size": len(tok),
                "max_position_embeddings": 16, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": layers, "num_attention_heads": 2, "image_size": 16, "patch_size": 8}
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(directory)
    return directory


def make_image(path, color, shape, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    a = np.full((20, 20, 3), 245, dtype=np.uint8)
    c = np.array(COLORS[color], dtype=np.uint8)
    if shape == "square":
        a[4:16, 4:16] = c
    elif shape == "stripe":
        a[:, 8:12] = c
    else:
        a[8:12, 8:12] = c
    a = np.clip(a.astype(int) + rng.integers(-10, 10, a.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(a)
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path)
    return path


def make_pairs(directory, n=12, seed=0):
    """n (relative image path, caption) pairs written into directory/images."""
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    pairs = []
    colors = list(COLORS)
    for i in range(n):
        color, shape = colors[i % len(colors)], SHAPES[(i // len(colors)) % len(SHAPES)]
        rel = f"images/{i:03d}.png"
        make_image(os.path.join(directory, rel), color, shape, seed=seed + i)
        pairs.append((rel, f"a {color} {shape}\non white"))
    return pairs


def write_sharegpt(directory, pairs, name="data.json"):
    data = [{"id": str(i), "image": img, "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                           {"from": "gpt", "value": cap}]} for i, (img, cap) in enumerate(pairs)]
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def make_dataset(directory, n=12, seed=0):
    return write_sharegpt(directory, make_pairs(directory, n, seed))
