"""transformers' LlavaForConditionalGeneration with a CLIP-MoE vision_config, and the converter
from a llava-torch checkpoint (same logits on the same inputs)."""

import os

import pytest
import torch

from clipmoe_encoder import CLIPMoEError, CLIPMoEVisionConfig
from llava_integration.hf_llava import (
    IMAGE_TOKEN,
    CLIPMoELlavaForConditionalGeneration,
    llava_config,
    make_processor,
    vision_tower_of,
)

from .conftest import image_batch, prompt_ids, seeded_routers

pytestmark = pytest.mark.legacy

PROMPT = "USER: " + IMAGE_TOKEN + "\nWhat colour is the square? ASSISTANT:"


def _hf_world(world):
    from transformers import AutoTokenizer, LlamaConfig

    from clipmoe_encoder.tower import load_image_processor

    tokenizer = AutoTokenizer.from_pretrained(world.llm, use_fast=False)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    tokenizer.pad_token = tokenizer.unk_token
    text = LlamaConfig.from_pretrained(world.llm)
    text.vocab_size = len(tokenizer)
    vision = CLIPMoEVisionConfig.from_pretrained(world.tower)
    config = llava_config(vision, text, image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    processor = make_processor(tokenizer, load_image_processor(world.tower, vision), config)
    torch.manual_seed(0)
    return CLIPMoELlavaForConditionalGeneration(config), processor


def _inputs(world, processor):
    from PIL import Image

    image = Image.open(os.path.join(world.images, "red_square.png")).convert("RGB")
    return processor(text=PROMPT, images=image, return_tensors="pt")


def test_forward_backward_generate_save_load(world, tmp_path):
    model, processor = _hf_world(world)
    inputs = _inputs(world, processor)
    assert model.config.image_seq_length == 16 and inputs["pixel_values"].shape == (1, 3, 32, 32)
    n_image = int((inputs["input_ids"] == model.config.image_token_index).sum())
    assert n_image in (16, 1)  # expanded by the processor (transformers >= 4.47) or by the model (4.37)

    model.eval()
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[1] == inputs["input_ids"].shape[1] + (15 if n_image == 1 else 0)

    # training: LM loss + MoE aux loss, gradients reach the routers; evaluation: LM loss only
    labels = inputs["input_ids"].clone()
    labels[labels == model.config.image_token_index] = -100
    with torch.no_grad():
        eval_loss = model(**inputs, labels=labels).loss
    model.train()
    train_loss = model(**inputs, labels=labels).loss
    assert train_loss.item() > eval_loss.item()
    train_loss.backward()
    routers = [p for n, p in vision_tower_of(model).named_parameters() if ".mlp.router." in n]
    assert routers and all(p.grad is not None and p.grad.abs().sum() > 0 for p in routers)

    model.eval()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4

    seeded_routers(model)
    with torch.no_grad():
        logits = model(**inputs).logits
    model.save_pretrained(tmp_path / "hf-llava")
    processor.save_pretrained(tmp_path / "hf-llava")
    loaded = CLIPMoELlavaForConditionalGeneration.from_pretrained(tmp_path / "hf-llava").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, logits)


def test_processor_must_fit_the_tower(world):
    from transformers import CLIPImageProcessor

    model, processor = _hf_world(world)
    wrong = CLIPImageProcessor(crop_size={"height": 48, "width": 48}, size={"shortest_edge": 48})
    with pytest.raises(CLIPMoEError, match="crop_size 48x48"):
        make_processor(processor.tokenizer, wrong, model.config)


def test_converted_llava_checkpoint_gives_the_same_logits(world, tmp_path):
    from clipmoe_demo import tiny_llava as tiny
    from llava_integration.convert import convert_checkpoint, load_llava_checkpoint

    model, tokenizer = tiny.build_llava(world, mm_vision_moe_tune="routers")
    seeded_routers(model)
    src = tmp_path / "llava-tiny-src"
    model.save_pretrained(src)
    tokenizer.save_pretrained(src)
    out = convert_checkpoint(str(src), str(tmp_path / "llava-tiny-hf"))

    source, source_tokenizer = load_llava_checkpoint(str(src))
    hf = CLIPMoELlavaForConditionalGeneration.from_pretrained(out).eval()
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(out)
    pixels = image_batch(world, source.get_vision_tower().image_processor, ["red_square.png"])
    ids = prompt_ids(source_tokenizer)  # llava-torch: one -200 where the image goes
    with torch.no_grad():
        reference = source(input_ids=ids, images=pixels).logits
    pos = int((ids[0] == -200).nonzero())
    image_id = hf.config.image_token_index
    n = 16 if "patch_size" in processor.__dict__ and processor.patch_size else 1
    hf_ids = torch.cat([ids[:, :pos], torch.full((1, n), image_id), ids[:, pos + 1:]], dim=1)
    with torch.no_grad():
        logits = hf(input_ids=hf_ids, pixel_values=pixels, attention_mask=torch.ones_like(hf_ids)).logits
    assert logits.shape[1] == reference.shape[1]
    torch.testing.assert_close(logits[..., : reference.shape[-1]], reference, rtol=1e-4, atol=1e-4)


def test_converter_refuses_a_non_clipmoe_checkpoint(tmp_path, world):
    from llava_integration.convert import load_llava_checkpoint

    with pytest.raises(CLIPMoEError, match="mm_vision_tower"):
        load_llava_checkpoint(world.llm)  # a plain Llama: no vision tower at all
    with pytest.raises(CLIPMoEError, match="no config.json"):
        load_llava_checkpoint(str(tmp_path))
