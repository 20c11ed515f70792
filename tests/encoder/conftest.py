import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=99,
            max_position_embeddings=16, bos_token_id=97, eos_token_id=98, pad_token_id=0)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=16, patch_size=4)


def tiny_clip(seed=0) -> CLIPModel:
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=24)).eval()
    with torch.no_grad():  # non-trivial biases and norms, so that a wrong mapping shows up
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name or "layrnorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def randomize_moe(model):
    """Routers and experts away from their (upcycled or default) init, so that experts differ."""
    from clipmoe_encoder.moe import expert_parameters, router_parameters

    with torch.no_grad():
        for p in router_parameters(model) + expert_parameters(model):
            p.normal_(0, 0.3)
    return model


def tiny_vision(seed=0) -> CLIPVisionModel:
    torch.manual_seed(seed)
    return CLIPVisionModel(CLIPVisionConfig(**VISION)).eval()


def batch(seed=1, pad=True):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(3, 3, 16, 16, generator=g)
    ids = torch.randint(1, 97, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    ids[:, 7] = 98  # EOS
    if pad:  # third caption is short: EOS at 4, padding after it
        ids[2, 4], ids[2, 5:] = 98, 0
        mask[2, 5:] = 0
    return pixels, ids, mask


@pytest.fixture
def dense():
    return tiny_clip()


@pytest.fixture
def inputs():
    return batch()
