"""load_encoder on the three model families, checked against each library's own forward pass."""

import os
import shutil

import pytest
import torch

import clipmoe_encoder
from clipmoe_encoder import CLIPMoEError
from clipmoe_encoder.zeroshot import load_encoder
from clipmoe_encoder.zeroshot.encoders import (
    HFCLIPEncoder,
    OpenCLIPEncoder,
    parse_open_clip_spec,
)

from .conftest import random_image

# also run in the LLaVA-pinned environment (transformers 4.37.2): the transformers 4.x feature-output path
pytestmark = pytest.mark.legacy

TEXTS = ["a cat on a mat.", "two dogs", "a very long caption " * 10]


def test_hf_directory_matches_clipmodel_forward(hf_clip):
    directory, model, tokenizer, processor = hf_clip
    encoder = load_encoder(str(directory))
    assert isinstance(encoder, HFCLIPEncoder) and not encoder.model.training
    images = [random_image(i) for i in range(3)]
    # reference: CLIPModel.forward's own normalised embeddings (long caption cut to 24 positions by hand)
    tokens = tokenizer(TEXTS, padding=True, truncation=True, max_length=24, return_tensors="pt")
    with torch.no_grad():
        ref = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                    pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])
    image_emb = encoder.encode_images(images, batch_size=2)
    text_emb = encoder.encode_texts(TEXTS, batch_size=2)
    assert image_emb.shape == (3, 16) and text_emb.shape == (3, 16)
    assert torch.allclose(image_emb, ref.image_embeds, atol=1e-5)
    assert torch.allclose(text_emb, ref.text_embeds, atol=1e-5)
    assert torch.allclose(image_emb.norm(dim=-1), torch.ones(3), atol=1e-6)


def test_grayscale_rgba_and_paths(hf_clip, tmp_path):
    encoder = load_encoder(str(hf_clip[0]))
    rgb = random_image(5)
    gray, rgba = rgb.convert("L"), rgb.convert("RGBA")
    gray.save(tmp_path / "gray.png")
    out = encoder.encode_images([gray, rgba, str(tmp_path / "gray.png")])
    assert torch.allclose(out[0], encoder.encode_images([gray.convert("RGB")])[0], atol=1e-6)
    assert torch.allclose(out[1], encoder.encode_images([rgb])[0], atol=1e-6)
    assert torch.allclose(out[2], out[0], atol=1e-6)
    with pytest.raises(CLIPMoEError, match="nope.png: image file not found"):
        encoder.encode_images([str(tmp_path / "nope.png")])


def test_clipmoe_upcycled_matches_dense(hf_clip, tmp_path):
    directory, model, tokenizer, processor = hf_clip
    moe = clipmoe_encoder.upcycle(model, num_experts=2, top_k=1)
    moe.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    dense = load_encoder(str(directory))
    for encoder in (load_encoder(str(tmp_path)), load_encoder(moe, tokenizer=tokenizer, image_processor=processor)):
        assert type(encoder.model).__name__ == "CLIPMoEModel"
        images = [random_image(i) for i in range(3)]
        assert torch.allclose(encoder.encode_images(images), dense.encode_images(images), atol=1e-5)
        assert torch.allclose(encoder.encode_texts(TEXTS), dense.encode_texts(TEXTS), atol=1e-5)


def test_in_memory_model_needs_tokenizer_and_processor(hf_clip):
    _, model, tokenizer, processor = hf_clip
    with pytest.raises(CLIPMoEError, match="tokenizer and image_processor"):
        load_encoder(model)
    encoder = load_encoder(model, tokenizer=tokenizer, image_processor=processor)
    assert encoder.encode_texts(["x"]).shape == (1, 16)
    with pytest.raises(CLIPMoEError, match="cannot evaluate a object"):
        load_encoder(object())


def test_directory_errors(hf_clip, tmp_path):
    directory = hf_clip[0]
    broken = tmp_path / "no_processor"
    shutil.copytree(directory, broken)
    os.remove(broken / "preprocessor_config.json")
    with pytest.raises(CLIPMoEError, match="preprocessor_config.json: missing"):
        load_encoder(str(broken))
    no_tok = tmp_path / "no_tokenizer"
    shutil.copytree(directory, no_tok)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        if (no_tok / name).exists():
            os.remove(no_tok / name)
    with pytest.raises(CLIPMoEError, match="tokenizer.json: missing"):
        load_encoder(str(no_tok))
    with pytest.raises(CLIPMoEError, match="no such file or directory"):
        load_encoder(str(tmp_path / "absent"))
    vision_only = tmp_path / "vision"
    vision_only.mkdir()
    (vision_only / "config.json").write_text('{"model_type": "clip_vision_model"}')
    with pytest.raises(CLIPMoEError, match="'model_type' is 'clip_vision_model'"):
        load_encoder(str(vision_only))


def test_open_clip_checkpoint_matches_open_clip(tiny_open_clip):
    import open_clip

    name, checkpoint, reference = tiny_open_clip
    encoder = load_encoder(f"open_clip:{name}:{checkpoint}")
    assert isinstance(encoder, OpenCLIPEncoder)
    _, _, preprocess = open_clip.create_model_and_transforms(name)
    tokenizer = open_clip.get_tokenizer(name)
    images = [random_image(i, size=(48, 40)) for i in range(3)]
    with torch.no_grad():
        want_i = reference.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True)
        want_t = reference.encode_text(tokenizer(TEXTS), normalize=True)
    assert torch.allclose(encoder.encode_images(images, batch_size=2), want_i, atol=1e-5)
    assert torch.allclose(encoder.encode_texts(TEXTS, batch_size=2), want_t, atol=1e-5)
    # the model object with its transform and tokenizer
    direct = load_encoder(reference, tokenizer=tokenizer, image_processor=preprocess)
    assert torch.allclose(direct.encode_texts(TEXTS), want_t, atol=1e-5)


def test_open_clip_spec_errors(tiny_open_clip, tmp_path):
    name, checkpoint, _ = tiny_open_clip
    assert parse_open_clip_spec("ViT-B-32:C:/ckpt.pt") == ("ViT-B-32", "C:/ckpt.pt")
    assert parse_open_clip_spec("ViT-B-32") == ("ViT-B-32", None)
    assert parse_open_clip_spec("local-dir:/m") == ("local-dir:/m", None)
    with pytest.raises(CLIPMoEError, match="no such file"):
        load_encoder(f"open_clip:{name}:{tmp_path}/missing.pt")
    with pytest.raises(CLIPMoEError, match="no model config 'NoSuchNet'"):
        load_encoder(f"open_clip:NoSuchNet:{checkpoint}")
    with pytest.raises(CLIPMoEError, match="open_clip cannot load it"):
        load_encoder(f"open_clip:{name}:laion2b_not_a_tag")
    torch.save({"visual.conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(CLIPMoEError, match="open_clip cannot load it"):
        load_encoder(f"open_clip:{name}:{tmp_path}/wrong.pt")


def test_evaluate_accepts_a_model_spec(hf_clip, tmp_path):
    from clipmoe_encoder.zeroshot import evaluate_classification, evaluate_retrieval

    images = [random_image(i) for i in range(3)]
    by_spec = evaluate_retrieval(str(hf_clip[0]), images, [["a cat"], ["a dog", "dogs"], ["a tree"]])
    by_encoder = evaluate_retrieval(load_encoder(str(hf_clip[0])), images, [["a cat"], ["a dog", "dogs"], ["a tree"]])
    assert by_spec == by_encoder and by_spec["num_texts"] == 4
    out = evaluate_classification(str(hf_clip[0]), images, [0, 1, 1], ["cat", "dog"], templates=["a {}", "the {}"])
    assert out["num_classes"] == 2 and out["top5"] == 100.0
    # plain tensors (no_grad), usable next to autograd tensors, unlike inference-mode ones
    assert not load_encoder(str(hf_clip[0])).encode_texts(["x"]).is_inference()
