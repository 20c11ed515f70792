"""FLOPs per image from the config against torch's FlopCounterMode, and the forward-time ratios."""

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from clipmoe_demo.encoder.cost import counted_image_flops, image_flops, relative_forward_times


def tiny_clip(**vision):
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=16, patch_size=4,
                  projection_dim=24, **vision)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=50,
                max_position_embeddings=16, projection_dim=24)
    torch.manual_seed(0)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))


def test_dense_flops_match_the_counter():
    model = tiny_clip()
    model.set_attn_implementation("eager")  # attention as matmuls, which the counter sees (the CPU SDPA kernel it does not)
    x = torch.randn(2, 3, 16, 16)
    assert image_flops(model.config.vision_config, model.config.projection_dim)["total"] == counted_image_flops(model, x)


@pytest.mark.parametrize("moe_layers", [None, 1])
def test_moe_ffn_flops_match_the_counter(moe_layers):
    """What an MoE adds over its dense source (top_k expert FFNs + router per token in each MoE block)
    counted from the config equals what the counter sees; attention is the same in both and cancels."""
    from clipmoe_encoder.upcycle import upcycle

    dense = tiny_clip()
    moe = upcycle(dense, num_experts=4, top_k=2, moe_layers=moe_layers, seed=0).eval()
    x = torch.randn(2, 3, 16, 16)
    predicted = image_flops(moe.config.vision_config, moe.config.projection_dim)["total"] - \
        image_flops(dense.config.vision_config, dense.config.projection_dim)["total"]
    assert predicted > 0
    assert counted_image_flops(moe, x) - counted_image_flops(dense.eval(), x) == predicted
    d, inter, seq = 32, 64, 17
    blocks = 3 if moe_layers is None else 1
    assert predicted == blocks * (2 * seq * 2 * d * inter + 2 * seq * d * 4)  # one more FFN (top 2) + a 4-way router per block


def test_relative_forward_times(tmp_path):
    model = tiny_clip()
    for name in ("a", "b"):
        model.save_pretrained(tmp_path / name)
    times = relative_forward_times({"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}, torch.randn(4, 3, 16, 16), repeats=3, reference="a")
    assert times["a"]["relative"] == 1.0  # the reference against itself
    assert times["b"]["relative"] == pytest.approx(times["b"]["median_s"] / times["a"]["median_s"])
    assert times["a"]["repeats"] == 3 and times["a"]["batch"] == 4
