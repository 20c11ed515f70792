"""Routing against a per-token reference loop, and the auxiliary losses against hand-computed values."""

import math

import pytest
import torch

from clipmoe_encoder.configuration import CLIPMoEVisionConfig
from clipmoe_encoder.moe import MoEFeedForward, StackedExperts, load_balancing_loss, quick_gelu, router_z_loss


def _moe(num_experts=4, top_k=2, normalize=True, seed=0):
    torch.manual_seed(seed)
    cfg = CLIPMoEVisionConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_experts=num_experts,
                              num_experts_per_tok=top_k, normalize_top_k=normalize)
    layer = MoEFeedForward(cfg)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)  # distinct experts and a router that prefers different experts per token
    return layer


def reference(layer, x):
    """One token at a time: softmax over experts, top-k, (renormalise), weighted sum of expert FFNs."""
    ex = layer.experts
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        probs = torch.softmax(layer.router.weight @ x[t], dim=-1)
        w, idx = probs.topk(layer.top_k)
        if layer.router.renormalize:
            w = w / w.sum()
        for weight, e in zip(w, idx.tolist()):
            h = quick_gelu(ex.fc1_weight[e] @ x[t] + ex.fc1_bias[e])
            out[t] += weight * (ex.fc2_weight[e] @ h + ex.fc2_bias[e])
    return out


@pytest.mark.legacy
@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "inference"])
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("num_experts,top_k,normalize", [(4, 2, True), (4, 1, True), (3, 2, False), (8, 3, True)])
def test_dispatch_equals_per_token_loop(grouped, grad, num_experts, top_k, normalize, monkeypatch):
    if grouped and not hasattr(torch.nn.functional, "grouped_mm"):
        pytest.skip("this torch has no grouped_mm")
    monkeypatch.setattr(StackedExperts, "prefer_grouped_mm", grouped)
    layer = _moe(num_experts, top_k, normalize)
    x = torch.randn(2, 9, 16)
    with torch.set_grad_enabled(grad):
        out, logits = layer(x)
    ref = reference(layer, x.reshape(-1, 16)).view_as(x)
    assert (out - ref).abs().max().item() <= 1e-5
    assert logits.shape == (18, num_experts)
    used = set(logits.topk(top_k).indices.flatten().tolist())
    assert len(used) > 1, "the case must route tokens to several experts"


def test_grouped_and_looped_paths_have_the_same_gradients(monkeypatch):
    if not hasattr(torch.nn.functional, "grouped_mm"):
        pytest.skip("this torch has no grouped_mm")
    grads = []
    for grouped in (False, True):
        monkeypatch.setattr(StackedExperts, "prefer_grouped_mm", grouped)
        layer = _moe()
        x = torch.randn(12, 16, generator=torch.Generator().manual_seed(3), requires_grad=True)
        out, _ = layer(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append([x.grad] + [p.grad for p in layer.parameters()])
    for a, b in zip(*grads):
        assert (a - b).abs().max().item() <= 1e-5


def test_an_expert_that_receives_no_token_is_fine():
    layer = _moe(num_experts=4, top_k=1)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[2] = 10.0  # every token with positive inputs picks expert 2
    x = torch.rand(5, 16)
    out, _ = layer(x)
    assert (out - reference(layer, x)).abs().max().item() <= 1e-5


def _logits(probs, offsets):
    # log-probabilities plus a per-token constant: softmax unchanged, logsumexp = the constant
    return torch.log(torch.tensor(probs)) + torch.tensor(offsets)[:, None]


def test_load_balancing_loss_by_hand():
    logits = _logits([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.9, 0.1]], [1.0, 2.0, 0.0, 5.0])
    mask = torch.tensor([1, 1, 1, 0])  # the last token is padding
    # real tokens: top-1 = e0, e0, e1 -> f = (2/3, 1/3); P = ((0.8+0.6+0.3)/3, (0.2+0.4+0.7)/3)
    # loss = 2 * (2/3 * 1.7/3 + 1/3 * 1.3/3) = 9.4 / 9
    assert load_balancing_loss(logits, mask).item() == pytest.approx(9.4 / 9, abs=1e-6)
    # all four: f = (3/4, 1/4), P = (2.6/4, 1.4/4) -> 2 * (7.8 + 1.4) / 16 = 18.4 / 16
    assert load_balancing_loss(logits).item() == pytest.approx(18.4 / 16, abs=1e-6)
    # uniform routing gives the minimum, 1
    assert load_balancing_loss(torch.zeros(6, 4)).item() == pytest.approx(1.0)


def test_router_z_loss_by_hand():
    logits = _logits([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.9, 0.1]], [1.0, 2.0, 0.0, 5.0])
    # logsumexp = the offsets; real tokens: (1 + 4 + 0) / 3
    assert router_z_loss(logits, torch.tensor([1, 1, 1, 0])).item() == pytest.approx(5 / 3, abs=1e-5)
    assert router_z_loss(logits).item() == pytest.approx(30 / 4, abs=1e-5)


def test_model_losses_average_layers_and_ignore_text_padding():
    import clipmoe_encoder as cm
    from tests.encoder.conftest import batch, tiny_clip

    moe = cm.upcycle(tiny_clip(), num_experts=4, top_k=2, router_z_loss_coef=1e-3)
    pixels, ids, mask = batch()
    with torch.no_grad():
        out = moe(input_ids=ids, pixel_values=pixels, attention_mask=mask, output_router_logits=True)
    text = out.text_model_output
    real = mask.reshape(-1).bool()
    lb_text = sum(load_balancing_loss(r[real]) for r in text.router_logits) / len(text.router_logits)
    assert text.load_balancing_loss.item() == pytest.approx(lb_text.item(), abs=1e-6)
    with_padding = sum(load_balancing_loss(r) for r in text.router_logits) / len(text.router_logits)
    assert abs(with_padding.item() - lb_text.item()) > 1e-4, "the fixture's padding must change the loss"
    vision = out.vision_model_output
    n_v, n_t = len(vision.router_logits), len(text.router_logits)
    # every layer of both towers counts once (text padding masked), from the raw router logits
    combined = (sum(load_balancing_loss(r) for r in vision.router_logits)
                + sum(load_balancing_loss(r[real]) for r in text.router_logits)) / (n_v + n_t)
    assert out.load_balancing_loss.item() == pytest.approx(combined.item(), abs=1e-6)
    expected = 0.01 * out.load_balancing_loss + 1e-3 * out.router_z_loss
    assert out.aux_loss.item() == pytest.approx(expected.item(), abs=1e-7)
    assert math.isfinite(out.router_z_loss.item()) and out.router_z_loss.item() > 0


def test_router_jitter_and_expert_dropout_only_act_in_training():
    cfg = CLIPMoEVisionConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, router_jitter=0.5, expert_dropout=0.5)
    torch.manual_seed(0)
    layer = MoEFeedForward(cfg)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(8, 16)
    layer.eval()
    assert torch.equal(layer(x)[0], layer(x)[0])
    layer.train()
    assert not torch.equal(layer(x)[0], layer(x)[0])
