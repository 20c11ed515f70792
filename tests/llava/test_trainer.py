"""The training entry point's trainer: routers re-enabled after LLaVA's stage-1 freeze, their own
learning rate, kept in the stage-1 projector save."""

import pytest
import torch

pytestmark = pytest.mark.legacy


def test_routers_get_their_own_learning_rate(world, tmp_path):
    from clipmoe_demo import tiny_llava as tiny
    from llava_integration.train import prepare

    llava_train = prepare()
    model, tokenizer = tiny.build_llava(world, mm_vision_moe_tune="routers", mm_vision_moe_lr=5e-3)
    model.requires_grad_(False)  # what llava/train/train.py does in stage 1 (tune_mm_mlp_adapter) ...
    for p in model.get_model().mm_projector.parameters():
        p.requires_grad_(True)  # ... before it builds the trainer
    args = llava_train.TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, report_to="none")
    trainer = llava_train.LLaVATrainer(model=model, tokenizer=tokenizer, args=args)
    routers = {id(p) for n, p in model.named_parameters() if ".mlp.router." in n}
    projector = {id(p) for p in model.get_model().mm_projector.parameters()}
    assert routers and all(p.requires_grad for n, p in model.named_parameters() if ".mlp.router." in n)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".mlp.experts." in n)

    optimizer = trainer.create_optimizer()
    seen = set()
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        if ids & routers:
            assert ids <= routers and group["lr"] == 5e-3
        if ids & projector:
            assert group["lr"] == 1e-3
        seen |= ids
    assert routers <= seen and projector <= seen

    # the stage-1 save (projector only in LLaVA) keeps the trained routers
    state = llava_train.get_mm_adapter_state_maybe_zero_3(model.named_parameters(), ["mm_projector"])
    assert sum(".mlp.router." in k for k in state) == 2 and any("mm_projector" in k for k in state)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_views_of_one_buffer_are_saved_apart():
    from llava_integration.trainer import unshare_views

    flat = torch.arange(10.0)
    tied = torch.ones(3)
    out = unshare_views({"a": flat[:4], "b": flat[4:], "tie1": tied, "tie2": tied})
    assert out["a"].untyped_storage().data_ptr() != out["b"].untyped_storage().data_ptr()
    assert torch.equal(out["b"], torch.arange(4.0, 10.0))
    assert out["tie1"] is out["tie2"]  # a real tie stays one tensor
