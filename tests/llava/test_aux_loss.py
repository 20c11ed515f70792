"""The one aux-loss collector of both LLaVAs (LLaVA-1.5's LlavaLlamaForCausalLM, transformers'
LlavaForConditionalGeneration): in training, loss == LM loss + coef * (mean over the tower's MoE
layers of the balance loss, computed here per token from the router logits) + z-loss term; in
evaluation and with a frozen tower, the plain LM loss; no hook left behind."""

import inspect
import math

import pytest
import torch

from clipmoe_encoder.moe import TopKRouter
from llava_integration.aux_loss import collect_aux_losses, moe_vision_models

from .conftest import image_batch, prompt_ids

pytestmark = pytest.mark.legacy

COEF = 0.37  # not the default (0.01): shows that the tower's coefficient is the one applied


def balance_loss_per_token(logits: torch.Tensor, top_k: int, count: str) -> float:
    """E * sum_j f_j * P_j by a plain loop over tokens. f_j: the share of tokens whose top-1 expert
    is j (Switch, "top1"), or the number of top-k choices of j per token (official CLIP-MoE,
    "top_k": k at perfect balance); P_j: the mean router probability of j."""
    tokens, experts = logits.reshape(-1, logits.shape[-1]).double().tolist(), logits.shape[-1]
    f, p = [0.0] * experts, [0.0] * experts
    for row in tokens:
        m = max(row)
        exps = [math.exp(v - m) for v in row]
        probs = [e / sum(exps) for e in exps]
        ranked = sorted(range(experts), key=lambda j: -probs[j])
        for j in ranked[: top_k if count == "top_k" else 1]:
            f[j] += 1 / len(tokens)
        for j in range(experts):
            p[j] += probs[j] / len(tokens)
    return experts * sum(fj * pj for fj, pj in zip(f, p))


def z_loss_per_token(logits: torch.Tensor) -> float:
    rows = logits.reshape(-1, logits.shape[-1]).double().tolist()
    return sum((max(r) + math.log(sum(math.exp(v - max(r)) for v in r))) ** 2 for r in rows) / len(rows)


class RouterLogits:
    """The router logits of every MoE layer of one forward, read by this test's own hooks."""

    def __init__(self, model):
        self.logits, self.handles = [], []
        for module in model.modules():
            if isinstance(module, TopKRouter):
                self.handles.append(module.register_forward_hook(lambda m, a, out: self.logits.append(out[0].detach())))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def expected_aux(config, logits) -> float:
    count = getattr(config, "router_aux_loss_count", "top1")
    lb = sum(balance_loss_per_token(x, config.num_experts_per_tok, count) for x in logits) / len(logits)
    z = sum(z_loss_per_token(x) for x in logits) / len(logits)
    return config.router_aux_loss_coef * lb + config.router_z_loss_coef * z


def no_hooks_left(model):
    return all(not v._forward_hooks and not v._forward_pre_hooks for v in moe_vision_models(model))


def check_collected_loss(model, vision_config, run):
    """run(model) -> loss; train mode gives LM loss + the independently computed aux loss."""
    assert moe_vision_models(model) and no_hooks_left(model)
    model.eval()
    with torch.no_grad():
        lm_loss = run(model).item()
    model.train()  # no dropout in the tiny models: train and eval LM losses are equal
    with RouterLogits(model) as seen:
        loss = run(model)
    aux = expected_aux(vision_config, seen.logits)
    assert len(seen.logits) == vision_config.num_hidden_layers and aux > 0.01
    assert loss.item() == pytest.approx(lm_loss + aux, rel=1e-5)
    assert no_hooks_left(model)
    loss.backward()
    routers = [p for m in moe_vision_models(model) for n, p in m.named_parameters() if p.requires_grad]
    assert routers and all(p.grad is not None and p.grad.abs().sum() > 0 for p in routers)
    return lm_loss


def test_llava15_loss_is_lm_loss_plus_coef_times_layer_losses(world):
    from clipmoe_demo import tiny_llava as tiny

    model, tokenizer = tiny.build_llava(world, mm_vision_moe_tune="routers", mm_vision_moe_aux_loss_coef=COEF)
    tower = model.get_vision_tower()
    assert tower.config.router_aux_loss_coef == COEF and tower.config.router_aux_loss_count == "top1"
    ids = prompt_ids(tokenizer)
    labels = ids.clone()
    labels[labels < 0] = -100
    images = image_batch(world, tower.image_processor, ["red_square.png"])
    lm_loss = check_collected_loss(model, tower.config, lambda m: m(input_ids=ids, labels=labels, images=images).loss)

    # a frozen tower (the paper's setting) adds nothing, in training too
    frozen, _ = tiny.build_llava(world)
    frozen.train()
    with torch.no_grad():
        assert frozen(input_ids=ids, labels=labels, images=images).loss.item() == pytest.approx(lm_loss, rel=1e-6)


def test_hf_llava_loss_is_lm_loss_plus_coef_times_layer_losses(world):
    from .test_hf_llava import _hf_world, _inputs

    model, processor = _hf_world(world)
    vision = moe_vision_models(model)[0]
    vision.config.router_aux_loss_coef = COEF
    vision.config.router_aux_loss_count = "top_k"  # the official count (LLaVA-1.5's test above: the default, top1)
    vision.requires_grad_(False)
    for name, p in vision.named_parameters():
        p.requires_grad_(".router." in name)
    inputs = _inputs(world, processor)
    labels = inputs["input_ids"].clone()
    labels[labels == model.config.image_token_index] = -100
    check_collected_loss(model, vision.config, lambda m: m(**inputs, labels=labels).loss)

    vision.requires_grad_(False)  # frozen tower: plain LM loss in training as well
    model.train()
    with torch.no_grad():
        frozen = model(**inputs, labels=labels).loss.item()
    model.eval()
    with torch.no_grad():
        assert model(**inputs, labels=labels).loss.item() == pytest.approx(frozen, rel=1e-6)


def test_hf_llava_keeps_llavas_forward_signature():
    from transformers import LlavaForConditionalGeneration

    from llava_integration.hf_llava import CLIPMoELlavaForConditionalGeneration

    forward = CLIPMoELlavaForConditionalGeneration.forward
    assert "__signature__" not in vars(forward)  # no override: the wrapper shows Llava's own signature
    assert inspect.signature(forward) == inspect.signature(LlavaForConditionalGeneration.forward)


def test_collector_removes_its_hooks_after_an_error(world):
    from clipmoe_demo.tiny_llava import llava_model_args
    from clipmoe_encoder import CLIPMoEError
    from clipmoe_encoder.tower import CLIPMoEVisionTower

    tower = CLIPMoEVisionTower("clipmoe:" + world.tower, llava_model_args("clipmoe:" + world.tower, mm_vision_moe_tune="routers"))
    tower.train()
    pixels = image_batch(world, tower.image_processor)
    with collect_aux_losses(tower) as collector:
        tower(pixels)
        tower(pixels[:1])
    assert len(collector.losses) == 2  # one per tower call; the LLaVA wrapper takes their mean
    with pytest.raises(CLIPMoEError, match="64x64"), collect_aux_losses(tower):
        tower(torch.zeros(1, 3, 64, 64))
    assert no_hooks_left(tower)
    tower(pixels)  # outside the collector: no router logits asked for, nothing kept
    assert len(collector.losses) == 2
