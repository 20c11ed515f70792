"""The tower in reduced precision on CPU against fp32, on both MoE paths (grouped matmul and loop).

The reduced-precision model and the fp32 reference hold the same (rounded) weights, so the
difference is the arithmetic alone. Tolerance: relative Frobenius error of the last hidden state
and of the pooled output <= 2e-2 for bf16 (8-bit mantissa, unit roundoff 2^-8 = 3.9e-3, a few
roundings per block over 3 blocks) and <= 5e-3 for fp16 (11-bit mantissa, 4.9e-4). Each
token's routing is checked to be the same as well, so a difference cannot hide in expert choices.
"""

import pytest
import torch

from clipmoe_encoder import CLIPMoEVisionConfig, CLIPMoEVisionModel
from clipmoe_encoder.grouped_mm import HAS_GROUPED_MM
from clipmoe_encoder.moe import StackedExperts

TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 5e-3}
PATHS = [False, True] if HAS_GROUPED_MM else [False]


def _model():
    torch.manual_seed(0)
    config = CLIPMoEVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                                 image_size=16, patch_size=4, num_experts=4, num_experts_per_tok=2)
    return CLIPMoEVisionModel(config).eval()


def _relative_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _compare(low, high, dtype):
    for a, b in ((low.last_hidden_state, high.last_hidden_state), (low.pooler_output, high.pooler_output)):
        assert _relative_error(a, b) <= TOLERANCE[dtype]
    for la, lb in zip(low.router_logits, high.router_logits):
        agree = (la.float().topk(2).indices.sort().values == lb.topk(2).indices.sort().values).all(-1)
        assert agree.float().mean().item() >= 0.97  # a near tie may flip; nothing systematic


@pytest.mark.parametrize("grouped", PATHS, ids=lambda g: "grouped" if g else "looped")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_reduced_precision_tower_matches_fp32(dtype, grouped, monkeypatch):
    monkeypatch.setattr(StackedExperts, "prefer_grouped_mm", grouped)
    low = _model().to(dtype)
    reference = _model().to(dtype).float()  # the same rounded weights, computed in fp32
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out_low = low(pixels.to(dtype), output_router_logits=True)
        out_ref = reference(pixels.to(dtype).float(), output_router_logits=True)
    assert out_low.last_hidden_state.dtype == dtype
    _compare(out_low, out_ref, dtype)


@pytest.mark.parametrize("grouped", PATHS, ids=lambda g: "grouped" if g else "looped")
def test_fp32_weights_under_bf16_autocast_match_fp32(grouped, monkeypatch):
    """Autocast casts F.linear's inputs but not grouped_mm's: both paths must run in bf16 alike."""
    monkeypatch.setattr(StackedExperts, "prefer_grouped_mm", grouped)
    model = _model()
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(pixels, output_router_logits=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(pixels, output_router_logits=True)
    _compare(low, reference, torch.bfloat16)
    assert 0 < _relative_error(low.last_hidden_state, reference.last_hidden_state)  # bf16 really ran
