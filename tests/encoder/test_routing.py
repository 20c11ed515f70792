"""Routing against a per-token reference loop, and the auxiliary losses against hand-computed values."""

import math

import pytest
import torch

from clipmoe_encoder.configuration import CLIPMoEVisionConfig
from transformers.activations import ACT2FN

from clipmoe_encoder.moe import MoEFeedForward, StackedExperts, load_balancing_loss, router_z_loss, routing_stats


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
            h = ACT2FN["quick_gelu"](ex.fc1_weight[e] @ x[t] + ex.fc1_bias[e])
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


def test_load_balancing_loss_by_hand_for_both_counts():
    # three experts, top-2; first choices e0, e1, e2, e0; top-2 sets {0,1}, {1,2}, {2,0}, {0,1}
    logits = _logits([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.25, 0.15, 0.6], [0.7, 0.2, 0.1]], [1.0, 2.0, 0.0, 5.0])
    every = routing_stats(logits, top_k=2)
    # P = (1.55, 1.25, 1.2) / 4. top1: f = (2, 1, 1) / 4 -> 3 * (3.1 + 1.25 + 1.2) / 16
    assert load_balancing_loss(every, "top1").item() == pytest.approx(3 * 5.55 / 16, abs=1e-6)
    # top_k: every choice counts, f = (3, 3, 2) / 4 -> 3 * (4.65 + 3.75 + 2.4) / 16
    assert load_balancing_loss(every, "top_k").item() == pytest.approx(3 * 10.8 / 16, abs=1e-6)
    # the last token is padding: f is balanced in both counts, so the loss is the value at balance
    real = routing_stats(logits, top_k=2, token_mask=torch.tensor([1, 1, 1, 0]))
    assert load_balancing_loss(real, "top1").item() == pytest.approx(1.0, abs=1e-6)
    assert load_balancing_loss(real, "top_k").item() == pytest.approx(2.0, abs=1e-6)
    # uniform routing: 1 (Switch) and k (the official count)
    uniform = routing_stats(torch.zeros(6, 4), top_k=3)
    assert load_balancing_loss(uniform, "top1").item() == pytest.approx(1.0)
    assert load_balancing_loss(uniform, "top_k").item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="router_aux_loss_count"):
        load_balancing_loss(uniform, "top2")


def test_routing_stats_equal_a_per_token_loop():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(13, 5, generator=g) * 2
    mask = (torch.rand(13, generator=g) > 0.3).long()
    k = 3
    stats = routing_stats(logits, k, mask)
    choices, probs_sum, z_sum, entropy_sum, tokens = torch.zeros(k, 5), torch.zeros(5), 0.0, 0.0, 0
    for t in range(13):
        if not mask[t]:
            continue
        p = [math.exp(v) for v in logits[t].tolist()]
        total = sum(p)
        p = [v / total for v in p]
        for rank, e in enumerate(sorted(range(5), key=lambda e: -p[e])[:k]):
            choices[rank, e] += 1
        probs_sum += torch.tensor(p)
        z_sum += math.log(total) ** 2
        entropy_sum += -sum(v * math.log(v) for v in p)
        tokens += 1
    assert stats.tokens.item() == tokens and torch.equal(stats.choices, choices)
    assert torch.allclose(stats.prob_sums, probs_sum, atol=1e-5)
    assert stats.z_sums.item() == pytest.approx(z_sum, rel=1e-5)
    assert stats.entropy_sums.item() == pytest.approx(entropy_sum, rel=1e-5)
    for count, counted in (("top1", choices[0]), ("top_k", choices.sum(0))):
        expected = 5 * sum(counted[e] / tokens * probs_sum[e] / tokens for e in range(5))
        assert load_balancing_loss(stats, count).item() == pytest.approx(float(expected), rel=1e-5)


def test_router_z_loss_by_hand():
    logits = _logits([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.9, 0.1]], [1.0, 2.0, 0.0, 5.0])
    # logsumexp = the offsets; real tokens: (1 + 4 + 0) / 3
    assert router_z_loss(routing_stats(logits, 1, torch.tensor([1, 1, 1, 0]))).item() == pytest.approx(5 / 3, abs=1e-5)
    assert router_z_loss(routing_stats(logits, 1)).item() == pytest.approx(30 / 4, abs=1e-5)


@pytest.mark.parametrize("count", ["top1", "top_k"])
def test_model_losses_average_layers_and_ignore_text_padding(count):
    import clipmoe_encoder as cm
    from tests.encoder.conftest import batch, tiny_clip

    moe = cm.upcycle(tiny_clip(), num_experts=4, top_k=2, router_z_loss_coef=1e-3, router_aux_loss_count=count)
    pixels, ids, mask = batch()
    with torch.no_grad():
        out = moe(input_ids=ids, pixel_values=pixels, attention_mask=mask, output_router_logits=True)

    def lb(logits):
        return load_balancing_loss(routing_stats(logits, 2), count)

    text = out.text_model_output
    real = mask.reshape(-1).bool()
    lb_text = sum(lb(r[real]) for r in text.router_logits) / len(text.router_logits)
    assert text.load_balancing_loss.item() == pytest.approx(lb_text.item(), abs=1e-6)
    with_padding = sum(lb(r) for r in text.router_logits) / len(text.router_logits)
    assert abs(with_padding.item() - lb_text.item()) > 1e-4, "the fixture's padding must change the loss"
    vision = out.vision_model_output
    n_v, n_t = len(vision.router_logits), len(text.router_logits)
    # every layer of both towers counts once (text padding masked), from the raw router logits
    combined = (sum(lb(r) for r in vision.router_logits) + sum(lb(r[real]) for r in text.router_logits)) / (n_v + n_t)
    assert out.load_balancing_loss.item() == pytest.approx(combined.item(), abs=1e-6)
    expected = 0.01 * out.load_balancing_loss + 1e-3 * out.router_z_loss
    assert out.aux_loss.item() == pytest.approx(expected.item(), abs=1e-7)
    assert math.isfinite(out.router_z_loss.item()) and out.router_z_loss.item() > 0
    # the official count is about k times Switch's
    assert (1.5 if count == "top_k" else 0.9) < out.load_balancing_loss.item() < (2.5 if count == "top_k" else 1.5)


def test_a_config_saved_without_the_count_keeps_switchs_loss(tmp_path):
    import json

    import clipmoe_encoder as cm
    from tests.encoder.conftest import tiny_clip

    moe = cm.upcycle(tiny_clip(), num_experts=4, top_k=2, router_aux_loss_count="top_k")
    moe.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vision_config"]["router_aux_loss_count"] == "top_k"
    for tower in ("vision_config", "text_config"):
        del config[tower]["router_aux_loss_count"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    old = cm.CLIPMoEModel.from_pretrained(tmp_path)
    assert old.config.vision_config.router_aux_loss_count == "top1" == old.config.text_config.router_aux_loss_count
    with pytest.raises(cm.CLIPMoEError, match="router_aux_loss_count"):
        cm.CLIPMoEVisionConfig(router_aux_loss_count="top2")


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
