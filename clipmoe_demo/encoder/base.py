"""The small dense CLIP the demo trains from scratch as its "pretrained" base: config, random
initialisation and the files (tokenizer, image processor) a checkpoint directory needs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from ..tokenizer import build_tokenizer, special_ids


@dataclass
class BaseSize:
    image_size: int
    patch_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    projection_dim: int
    max_positions: int


# Quick: with 8-px patches on 32-px images (16 patches) the tiny model stayed on the contrastive
# loss plateau (ln batch) for all of its 128 steps; 4-px patches left it within ~90 (measured).
QUICK = BaseSize(image_size=32, patch_size=4, hidden_size=64, num_layers=2, num_heads=4, projection_dim=64, max_positions=32)
# Full: with 4 blocks and 4000 scenes the whole demo took 21 min on 2 cores shared with other jobs
# (load ~5); 3 blocks and 3500 scenes took 7.6 min (load 1.7-4), leaving room under 15 min.
FULL = BaseSize(image_size=48, patch_size=8, hidden_size=128, num_layers=3, num_heads=4, projection_dim=128, max_positions=32)


def clip_config(size: BaseSize, tokenizer) -> CLIPConfig:
    tower = {"hidden_size": size.hidden_size, "intermediate_size": 4 * size.hidden_size, "num_hidden_layers": size.num_layers,
             "num_attention_heads": size.num_heads, "hidden_act": "quick_gelu", "projection_dim": size.projection_dim}
    text = dict(tower, vocab_size=len(tokenizer), max_position_embeddings=size.max_positions, **special_ids(tokenizer))
    vision = dict(tower, image_size=size.image_size, patch_size=size.patch_size)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=size.projection_dim)


def image_processor(image_size: int) -> CLIPImageProcessor:
    # World images are already image_size square: resize and crop are identities; the CLIP
    # normalisation constants are kept so the pipeline is that of any CLIP checkpoint.
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def write_base_init(out_dir: str, size: BaseSize, words: list[str], seed: int = 0) -> str:
    """A randomly initialised dense CLIPModel with its tokenizer and image processor, saved so the
    trainer (and every later stage) can load it like a downloaded checkpoint."""
    tokenizer = build_tokenizer(words, model_max_length=size.max_positions)
    torch.manual_seed(seed)
    model = CLIPModel(clip_config(size, tokenizer))
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor(size.image_size).save_pretrained(out_dir)
    return out_dir
