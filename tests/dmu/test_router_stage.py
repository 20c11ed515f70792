"""The router stage with the default router lr moves the routers and balances the load; the
official lr (1e-6) leaves them where they started."""

import json
import math
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
from clipmoe_encoder.dmu.settings import StageSpec
from clipmoe_encoder.dmu.trainer import global_batch_aux_loss, train_stage

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
    aux, lb, _, _ = global_batch_aux_loss(out, model.config)
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
    spec = StageSpec(stage_name=name, trainable="router", epochs=4, batch_size=4, lr=1e-5, lr_router=lr_router, warmup_steps=2,
                     aux_loss=True, save_every=1000, log_every=5, seed=0)
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
    _, _, root = setup
    with open(root / "router_default" / "log.jsonl") as f:
        rows = [json.loads(line) for line in f]
    # 12 steps; routing at step 1, every 5 steps after it, and the last; the balance loss every step
    assert [r["step"] for r in rows if "per_layer" in r] == [1, 6, 11, 12]
    assert all("load_balancing_loss" in r and "aux_loss" in r for r in rows) and len(rows) == 12
    for row in (r for r in rows if "per_layer" in r):
        for tower in ("vision", "text"):
            layers = row["per_layer"][tower]
            assert len(layers["load"]) == 2 and all(sum(load) == pytest.approx(1.0, abs=1e-4) for load in layers["load"])
            assert all(0 < h <= math.log(4) + 1e-6 for h in layers["entropy"])
            assert row[f"routing_entropy_{tower}"] == pytest.approx(sum(layers["entropy"]) / 2, abs=1e-5)
    print(f"router relative change {change:.1%}; balance loss {before:.4f} -> {after:.4f}")


def test_official_router_lr_leaves_routers_near_init(setup):
    change, _, _, _ = _train(setup, 1e-6, "router_official")
    assert change < 0.01


def test_routing_statistics_count_choices_as_a_per_token_loop(setup):
    from clipmoe_encoder.dmu.routing import collect_routing

    base_dir, dataset, _ = setup
    model, _ = _moe(base_dir)
    got = collect_routing(model, dataset, max_samples=12, batch_size=5)
    batch = {k: torch.stack([dataset[i][k] for i in range(12)]) for k in ("pixel_values", "input_ids", "attention_mask")}
    with torch.no_grad():
        out = model(**batch, output_router_logits=True)
    real = batch["attention_mask"].reshape(-1).bool()
    for tower, logits_per_layer, keep in (("vision", out.vision_model_output.router_logits, None),
                                          ("text", out.text_model_output.router_logits, real)):
        for layer, logits in enumerate(logits_per_layer):
            rows = logits if keep is None else logits[keep]
            first, second, entropy = [0] * 4, [0] * 4, 0.0
            for token in rows:
                p = torch.softmax(token, -1).tolist()
                order = sorted(range(4), key=lambda e: -p[e])
                first[order[0]] += 1
                second[order[1]] += 1
                entropy -= sum(v * math.log(v) for v in p)
            n = rows.shape[0]
            assert got[tower]["tokens_per_layer"][layer] == n
            assert got[tower]["first_choice"][layer] == pytest.approx([c / n for c in first])
            assert got[tower]["second_choice"][layer] == pytest.approx([c / n for c in second])
            assert got[tower]["load"][layer] == pytest.approx([(a + b) / (2 * n) for a, b in zip(first, second)])
            assert got[tower]["entropy"][layer] == pytest.approx(entropy / n, rel=1e-5)
