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
