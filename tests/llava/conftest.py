import os

import pytest
import torch


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The tiny LLaVA world (tokenizer, Llama, CLIP-MoE tower, images, data), built once."""
    import llava_integration
    from clipmoe_demo import tiny_llava as tiny

    llava_integration.register()
    return tiny.build_world(str(tmp_path_factory.mktemp("tiny-llava")))


@pytest.fixture
def llava(world):
    from clipmoe_demo import tiny_llava as tiny

    return tiny.build_llava(world)


@pytest.fixture(autouse=True)
def _no_default_tower(monkeypatch):
    monkeypatch.delenv("CLIPMOE_VISION_TOWER", raising=False)


def image_batch(world, processor, names=("red_square.png", "blue_circle.png")):
    from PIL import Image

    images = [Image.open(os.path.join(world.images, n)).convert("RGB") for n in names]
    return processor(images, return_tensors="pt")["pixel_values"]


def prompt_ids(tokenizer, question="What colour is the square?"):
    from llava.conversation import conv_templates
    from llava.mm_utils import tokenizer_image_token

    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\n" + question)
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt").unsqueeze(0)


def seeded_routers(model, seed=1):
    """Simulate fine-tuned routers: change them in place and return a copy."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".mlp.router." in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
                out[name] = p.detach().clone()
    return out
