import pytest

import clipmoe_encoder as cm
from tests.encoder.conftest import batch, tiny_clip


def _grads(checkpointing: bool):
    moe = cm.upcycle(tiny_clip(), num_experts=2, top_k=1)
    moe.train()
    for name, p in moe.named_parameters():  # as in an MCL stage: only the FFNs train
        p.requires_grad_(".mlp." in name)
    if checkpointing:
        moe.gradient_checkpointing_enable()
    pixels, ids, mask = batch()
    out = moe(input_ids=ids, pixel_values=pixels, attention_mask=mask, return_loss=True, output_router_logits=True)
    (out.loss + out.aux_loss).backward()
    assert moe.is_gradient_checkpointing == checkpointing
    return {n: None if p.grad is None else p.grad.clone() for n, p in moe.named_parameters() if p.requires_grad}


@pytest.mark.legacy
def test_gradient_checkpointing_gives_the_same_gradients_with_frozen_inputs():
    plain, checkpointed = _grads(False), _grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name in plain:
        assert checkpointed[name] is not None, f"{name}: no gradient with checkpointing"
        assert (plain[name] - checkpointed[name]).abs().max().item() <= 1e-6, name
    assert any(".router." in n and g.abs().sum() > 0 for n, g in plain.items()), "routers get gradients"


def _with_shared_experts(model):
    """Every MoE block gets a shared-expert-like Linear next to its router and experts."""
    import torch

    for tower in (model.vision_model, model.text_model):
        for layer in tower.encoder.layers:
            if layer.is_moe:
                layer.mlp.shared_expert = torch.nn.Linear(4, 4)
                layer.mlp.router_noise = torch.nn.Linear(4, 4)  # a name that starts like the router's
    return model


@pytest.mark.parametrize("what", ["router", "router+experts", "ffn"])
def test_an_added_submodule_does_not_change_what_trains(what):
    from clipmoe_encoder.dmu.models import select_trainable
    from clipmoe_encoder.moe import expert_parameters, named_expert_parameters, named_router_parameters, router_parameters

    plain = cm.upcycle(tiny_clip(), num_experts=2, top_k=1, moe_layers=[0, 2], text_moe_layers=[1])
    extended = _with_shared_experts(cm.upcycle(tiny_clip(), num_experts=2, top_k=1, moe_layers=[0, 2], text_moe_layers=[1]))
    assert [n for n, _ in select_trainable(extended, what)] == [n for n, _ in select_trainable(plain, what)]
    routers = [n for n, _ in named_router_parameters(extended)]
    assert routers == ["text_model.encoder.layers.1.mlp.router.weight", "vision_model.encoder.layers.0.mlp.router.weight",
                       "vision_model.encoder.layers.2.mlp.router.weight"]
    assert [n for n, _ in named_expert_parameters(extended)] == [n for n, _ in named_expert_parameters(plain)]
    assert len(expert_parameters(extended)) == 4 * 3 and len(router_parameters(extended)) == 3
    if what == "ffn":  # the dense FFNs of the non-MoE blocks train with the experts
        names = [n for n, _ in select_trainable(extended, what)]
        assert "vision_model.encoder.layers.1.mlp.fc1.weight" in names and len(names) == 4 * 3 + 4 * 2


def test_the_llava_tower_trains_routers_and_experts_by_type(tmp_path):
    from types import SimpleNamespace

    vision = cm.upcycle(tiny_clip(), num_experts=2, top_k=1, vision_only=True, moe_layers=[1])
    vision.save_pretrained(tmp_path)
    tower = cm.CLIPMoEVisionTower(str(tmp_path), SimpleNamespace(mm_vision_moe_tune="routers"))
    layer = tower.vision_tower.vision_model.encoder.layers[1]
    layer.mlp.shared_expert = __import__("torch").nn.Linear(4, 4)
    for mode, expected in (("routers", {"router.weight"}),
                           ("routers_experts", {"router.weight", "experts.fc1_weight", "experts.fc1_bias", "experts.fc2_weight",
                                                "experts.fc2_bias"}),
                           ("none", set())):
        tower.set_trainable(mode)
        trained = {n.split(".mlp.")[1] for n, p in tower.vision_tower.named_parameters() if p.requires_grad}
        assert trained == expected, mode
    assert {n.split(".mlp.")[1] for n, _ in tower.moe_parameters()} == expected | {
        "router.weight", "experts.fc1_weight", "experts.fc1_bias", "experts.fc2_weight", "experts.fc2_bias"}
