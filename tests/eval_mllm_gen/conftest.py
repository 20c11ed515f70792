"""Tiny LLaVA checkpoints built by code (no download), shared by the generation tests.

* `tiny_llava`: a llava-torch checkpoint with the tiny CLIP-MoE tower of clipmoe_demo.tiny_llava,
  saved in a directory whose name contains "llava" (LLaVA's builder needs that);
* `tiny_hf_llava`: the same kind of model as a transformers LlavaForConditionalGeneration with
  a CLIP-MoE vision_config and a LlavaProcessor.
"""

from __future__ import annotations

import base64
import io
import json
import os

import pytest
import torch


def make_image(path=None, colour=(200, 30, 30), size=(40, 32)):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, (128, 128, 128))
    ImageDraw.Draw(image).rectangle((size[0] // 5, size[1] // 5, size[0] * 4 // 5, size[1] * 4 // 5), fill=colour)
    if path:
        image.save(path)
    return image


def image_b64(colour=(200, 30, 30)):
    buf = io.BytesIO()
    make_image(None, colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


COLOURS = [(220, 30, 30), (30, 180, 60), (40, 60, 220), (230, 210, 40), (15, 15, 15), (245, 245, 245)]


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    import llava_integration
    from clipmoe_demo.tiny_llava import build_world

    llava_integration.register()
    return build_world(str(tmp_path_factory.mktemp("world")))


@pytest.fixture(scope="session")
def tiny_llava(tiny_world, tmp_path_factory):
    """Path of a saved tiny llava-torch checkpoint (CLIP-MoE tower)."""
    from clipmoe_demo.tiny_llava import build_llava

    model, tokenizer = build_llava(tiny_world)
    path = str(tmp_path_factory.mktemp("ckpt") / "llava-tiny-clipmoe")
    model.config.tokenizer_padding_side = "right"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_hf_llava(world, path, vision="clipmoe", num_additional_image_tokens=1):
    """A tiny transformers LlavaForConditionalGeneration + LlavaProcessor saved at `path`;
    vision tower: the tiny CLIP-MoE of `world` or a dense CLIP of the same size."""
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from clipmoe_encoder import CLIPMoEVisionConfig

    tokenizer = AutoTokenizer.from_pretrained(world.llm)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    if vision == "clipmoe":
        vision_config = CLIPMoEVisionConfig.from_pretrained(world.tower)
    else:
        vision_config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=32, patch_size=8)
    text = LlamaConfig.from_pretrained(world.llm)
    text.vocab_size = len(tokenizer)
    config = LlavaConfig(vision_config=vision_config.to_dict(), text_config=text.to_dict(),
                         image_token_index=image_token, vision_feature_layer=-2,
                         vision_feature_select_strategy="default",
                         image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor = LlavaProcessor(image_processor=CLIPImageProcessor.from_pretrained(world.tower),
                               tokenizer=tokenizer, patch_size=vision_config.patch_size,
                               vision_feature_select_strategy="default",
                               num_additional_image_tokens=num_additional_image_tokens,
                               image_token="<image>")
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_hf_llava(tiny_world, tmp_path_factory):
    """Path of a saved tiny transformers Llava checkpoint whose vision_config is CLIP-MoE."""
    return build_hf_llava(tiny_world, str(tmp_path_factory.mktemp("ckpt") / "hf-llava-tiny-clipmoe"))


@pytest.fixture(scope="session")
def tiny_hf_llava_clip(tiny_world, tmp_path_factory):
    """The same with a dense CLIP vision tower (transformers' own CLIPVisionModel)."""
    return build_hf_llava(tiny_world, str(tmp_path_factory.mktemp("ckpt") / "hf-llava-tiny-clip"), "clip")


def write_jsonl(path, records):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)


@pytest.fixture
def vqa_set(tmp_path):
    """A LLaVA question JSONL with 6 questions on 3 images, and its image folder."""
    folder = tmp_path / "images"
    os.makedirs(folder)
    for i, colour in enumerate(COLOURS[:3]):
        make_image(folder / f"img{i}.png", colour, size=(40 + 8 * i, 32))
    questions = [{"question_id": 100 + k, "image": f"img{k % 3}.png",
                  "text": ["What colour is the square?", "Is there a square in the image?"][k % 2]
                  + "\nAnswer the question using a single word or phrase."} for k in range(6)]
    return write_jsonl(tmp_path / "questions.jsonl", questions), str(folder)
