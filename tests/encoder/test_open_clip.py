"""Parity against open_clip's own model, through an open_clip model object and an OpenAI-layout state dict."""

import json

import pytest
import torch

import clipmoe_encoder as cm

open_clip = pytest.importorskip("open_clip")


def _open_clip_model(tmp_path, name, head_width, text_heads, quick_gelu=True):
    cfg = {
        "embed_dim": 24,
        "quick_gelu": quick_gelu,
        "vision_cfg": {"image_size": 16, "layers": 2, "width": 64, "patch_size": 4, "head_width": head_width},
        "text_cfg": {"context_length": 12, "vocab_size": 99, "width": 64, "heads": text_heads, "layers": 2},
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(str(path))
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or ".ln_" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _inputs():
    g = torch.Generator().manual_seed(2)
    pixels = torch.randn(2, 3, 16, 16, generator=g)
    ids = torch.randint(1, 90, (2, 12), generator=g)
    ids[0, 9], ids[0, 10:] = 98, 0  # open_clip pads with 0; EOT (the largest id) marks the pooled token
    ids[1, 5], ids[1, 6:] = 98, 0
    return pixels, ids


def _check(reference, moe):
    pixels, ids = _inputs()
    with torch.no_grad():
        assert (reference.encode_image(pixels) - moe.get_image_features(pixels)).abs().max().item() <= 1e-5
        assert (reference.encode_text(ids) - moe.get_text_features(ids)).abs().max().item() <= 1e-5
        assert (reference.logit_scale - moe.logit_scale).abs().item() == 0


@pytest.mark.parametrize("num_experts,top_k", [(2, 1), (4, 2)])
def test_open_clip_model_object(tmp_path, num_experts, top_k):
    reference = _open_clip_model(tmp_path, "tiny-oc-2heads", head_width=32, text_heads=2)
    _check(reference, cm.upcycle(reference, num_experts=num_experts, top_k=top_k))


def test_openai_layout_state_dict(tmp_path):
    # OpenAI checkpoints have 64-wide heads, the convention a bare state dict is read with
    reference = _open_clip_model(tmp_path, "tiny-oc-openai", head_width=64, text_heads=1)
    path = tmp_path / "openai.pt"
    torch.save(reference.state_dict(), path)
    _check(reference, cm.upcycle(str(path), num_experts=4, top_k=2, moe_layers=[1]))
    _check(reference, cm.upcycle(reference.state_dict(), num_experts=2, top_k=2))


def test_open_clip_gelu_models_keep_their_activation(tmp_path):
    reference = _open_clip_model(tmp_path, "tiny-oc-gelu", head_width=32, text_heads=2, quick_gelu=False)
    moe = cm.upcycle(reference, num_experts=2, top_k=1)
    assert moe.config.vision_config.hidden_act == "gelu"
    _check(reference, moe)
