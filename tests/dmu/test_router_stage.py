"""The router stage with the default router lr moves the routers and balances the load; the
official lr (1e-6) leaves them where they started."""

import os

import pytest
import torch

from clipmoe_encoder import assemble_experts
from clipmoe_encoder.dmu.checkpointing import latest_checkpoint
from clipmoe_encoder.dmu.data import ImageTextDataset, load_records
from clipmoe_encoder.dmu.distributed import make_accelerator
from clipmoe_encoder.dmu.models import (
    load_model,
    load_preprocessors,
    set_frozen_logit_scale,
)
from clipmoe_encoder.dmu.trainer import StageSpec, global_batch_aux_loss, train_stage

from .helpers import make_base, make_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("router")
    base_dir = make_base(str(root / "base"))
    data = make_dataset(str(root / "data"), n=12)
    tok, proc = load_preprocessors(base_dir)
    records, _ = load_records(data)
    return base_dir, ImageTextDataset(records, proc, tok, 16), root


def _moe(base_dir):
    """Expert 0 = base FFN, experts 1-3 = FFNs perturbed differently (stand-ins for MCL stages)."""
    models = []
    for j in range(4):
        m = load_model(base_dir)
        set_frozen_logit_scale(m, 100.0)
        if j:
            g = torch.Generator().manual_seed(j)
            with torch.no_grad():
                for name, p in m.named_parameters():
                    if ".mlp." in name:
                        p.add_(torch.randn(p.shape, generator=g) * 0.3 * p.std())
        models.append(m)
    return assemble_experts(models, top_k=2, seed=0, expert_dropout=0.0), models


def _balance(model, dataset):
    model.eval()
    batch = {k: torch.stack([dataset[i][k] for i in range(len(dataset))]) for k in ("pixel_values", "input_ids", "attention_mask")}
    with torch.no_grad():
        out = model(**batch, output_router_logits=True)
    # in one process DMU's global-batch loss is the model's own aux loss
    aux, lb, _ = global_batch_aux_loss(out, model.config)
    assert torch.equal(aux, out.aux_loss) and torch.equal(lb, out.load_balancing_loss)
    return out.load_balancing_loss.item()


def _routers(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".mlp.router." in n}


def test_assembly_keeps_the_base_ffn_as_expert_zero(setup):
    base_dir, _, _ = setup
    moe, dense = _moe(base_dir)
    sd = moe.state_dict()
    for tower in ("vision", "text"):
        for layer in range(2):
            prefix = f"{tower}_model.encoder.layers.{layer}.mlp."
            for j in range(4):
                ref = dense[j].state_dict()
                assert torch.equal(sd[prefix + "experts.fc1_weight"][j], ref[prefix + "fc1.weight"])
                assert torch.equal(sd[prefix + "experts.fc2_bias"][j], ref[prefix + "fc2.bias"])
            assert not torch.equal(sd[prefix + "experts.fc1_weight"][0], sd[prefix + "experts.fc1_weight"][1])


def _train(setup, lr_router, name):
    base_dir, dataset, root = setup
    model, _ = _moe(base_dir)
    before_routers, before_balance = _routers(model), _balance(model, dataset)
    spec = StageSpec(name=name, trainable="router", epochs=4, global_batch=4, lr=1e-5, lr_router=lr_router, warmup_steps=2,
                     aux_loss=True, save_every=1000, seed=0)
    torch.manual_seed(0)
    summary = train_stage(make_accelerator("no"), model, dataset, spec, str(root / name))
    # the routers trained at lr_router, not at the main lr (initial_lr: before warmup/cosine scaling)
    optimizer = torch.load(os.path.join(latest_checkpoint(str(root / name / "checkpoints")), "optimizer.pt"), weights_only=True)
    assert [(g["name"], g["initial_lr"]) for g in optimizer["param_groups"]] == [("router", lr_router)]
    model = summary["model"]
    after = _routers(model)
    change = max((after[n] - before_routers[n]).norm().item() / before_routers[n].norm().item() for n in after)
    return change, before_balance, _balance(model, dataset), summary


def test_default_router_lr_moves_routers_and_balances_load(setup):
    change, before, after, summary = _train(setup, 1e-3, "router_default")
    assert summary["trainable_parameters"] == 4 * 32 * 4  # 4 routers (2 per tower) of 4 x 32
    assert change > 0.01, f"routers moved only {change:.2%}"
    assert after < before, f"balance loss {before:.4f} -> {after:.4f}"
    print(f"router relative change {change:.1%}; balance loss {before:.4f} -> {after:.4f}")


def test_official_router_lr_leaves_routers_near_init(setup):
    change, _, _, _ = _train(setup, 1e-6, "router_official")
    assert change < 0.01
