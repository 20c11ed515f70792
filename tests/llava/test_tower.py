"""CLIPMoEVisionTower: LLaVA's CLIPVisionTower interface, trainability, and the errors users see."""

import json
import os
from types import SimpleNamespace

import pytest
import torch

from clipmoe_encoder import CLIPMoEError, CLIPMoEVisionModel, CLIPMoEVisionTower
from llava_integration.aux_loss import collect_aux_losses

from .conftest import image_batch

pytestmark = pytest.mark.legacy


def args(**kw):
    base = {"mm_vision_select_layer": -2, "mm_vision_select_feature": "patch"}
    base.update(kw)
    return SimpleNamespace(**base)


def test_interface_matches_llava_clip_tower(world):
    tower = CLIPMoEVisionTower("clipmoe:" + world.tower, args())
    assert tower.is_loaded and tower.vision_tower_name == "clipmoe:" + world.tower
    assert (tower.hidden_size, tower.num_patches, tower.num_patches_per_side) == (32, 16, 4)
    assert tower.config.num_experts == 4 and tower.config.image_size == 32
    assert tower.dtype == torch.float32 and tower.device.type == "cpu"
    assert tower.dummy_feature.shape == (1, 32)
    proc = tower.image_processor  # what LLaVA's pad / anyres code reads
    assert proc.crop_size["height"] == proc.crop_size["width"] == 32 and proc.size["shortest_edge"] == 32
    assert len(proc.image_mean) == 3

    pixels = image_batch(world, proc)
    features = tower(pixels)
    assert features.shape == (2, 16, 32)
    direct = CLIPMoEVisionModel.from_pretrained(world.tower)(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    torch.testing.assert_close(features, direct)
    as_list = tower([pixels[0], pixels[1]])
    assert isinstance(as_list, list) and as_list[1].shape == (1, 16, 32)
    torch.testing.assert_close(torch.cat(as_list), features)

    cls_patch = CLIPMoEVisionTower("clipmoe:" + world.tower, args(mm_vision_select_feature="cls_patch", mm_vision_select_layer=-1))
    assert cls_patch(pixels).shape == (2, 17, 32)


def test_frozen_by_default_and_trainable_routers(world):
    pixels = image_batch(world, CLIPMoEVisionTower("clipmoe:" + world.tower, args()).image_processor)
    frozen = CLIPMoEVisionTower("clipmoe:" + world.tower, args()).train()
    assert not any(p.requires_grad for p in frozen.parameters())
    with collect_aux_losses(frozen) as collector:
        assert frozen(pixels).grad_fn is None
    assert collector.mean() is not None  # the hooks see the model; the LLaVA wrapper skips a frozen tower

    routers = CLIPMoEVisionTower("clipmoe:" + world.tower, args(mm_vision_moe_tune="routers")).train()
    trainable = {n for n, p in routers.named_parameters() if p.requires_grad}
    assert trainable and all(".mlp.router." in n for n in trainable)
    with collect_aux_losses(routers) as collector:
        out = routers(pixels)
    aux = collector.mean()
    assert aux is not None and aux.item() > 0 and aux.requires_grad
    (out.sum() + aux).backward()
    grads = {n: p.grad for n, p in routers.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())

    both = CLIPMoEVisionTower("clipmoe:" + world.tower, args(mm_vision_moe_tune="routers_experts"))
    names = {n for n, p in both.named_parameters() if p.requires_grad}
    assert any(".mlp.experts." in n for n in names) and not any("self_attn" in n for n in names)


def test_delay_load_builds_architecture_from_saved_config(world):
    tower = CLIPMoEVisionTower("clipmoe:" + world.tower, args())
    fields = tower.llava_config_fields()
    # no checkpoint needed: the saved LLaVA config alone rebuilds the tower ("clipmoe" is not even resolvable here)
    rebuilt = CLIPMoEVisionTower("clipmoe", args(**fields), delay_load=True)
    assert rebuilt.is_loaded
    assert rebuilt.config.to_dict()["num_experts_per_tok"] == tower.config.num_experts_per_tok
    assert {n: p.shape for n, p in rebuilt.named_parameters()} == {n: p.shape for n, p in tower.named_parameters()}


def test_default_checkpoint_env(world, monkeypatch):
    with pytest.raises(CLIPMoEError, match="CLIPMOE_VISION_TOWER"):
        CLIPMoEVisionTower("clipmoe", args())
    monkeypatch.setenv("CLIPMOE_VISION_TOWER", world.tower)
    assert CLIPMoEVisionTower("clipmoe", args()).num_patches == 16
    assert CLIPMoEVisionTower(world.tower, args()).num_patches == 16  # a plain CLIP-MoE directory


def test_not_a_clipmoe_checkpoint(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     image_size=32, patch_size=8)).save_pretrained(tmp_path / "dense")
    with pytest.raises(CLIPMoEError, match="model_type"):
        CLIPMoEVisionTower(f"clipmoe:{tmp_path / 'dense'}", args())
    with pytest.raises(CLIPMoEError, match="no such"):
        CLIPMoEVisionTower(f"clipmoe:{tmp_path / 'missing'}", args())


def test_weights_that_do_not_fit_the_config(world, tmp_path):
    """The tower gets the same one-line error as CLIPMoEVisionModel.from_pretrained, not
    transformers' load report."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(world.tower, broken)
    with open(broken / "config.json") as f:
        config = json.load(f)
    config["num_experts"] += 1
    with open(broken / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(CLIPMoEError, match="num_experts"):
        CLIPMoEVisionTower(f"clipmoe:{broken}", args())


def test_image_size_that_does_not_fit(world, tmp_path):
    tower = CLIPMoEVisionTower("clipmoe:" + world.tower, args())
    with pytest.raises(CLIPMoEError, match="32x32"):
        tower(torch.zeros(1, 3, 48, 48))
    # a processor that would produce other sizes is refused when the tower is loaded
    bad = tmp_path / "bad-tower"
    bad.mkdir()
    for name in os.listdir(world.tower):
        os.symlink(os.path.join(world.tower, name), bad / name)
    (bad / "preprocessor_config.json").unlink()
    with open(os.path.join(world.tower, "preprocessor_config.json")) as f:
        settings = json.load(f)
    settings["crop_size"] = {"height": 48, "width": 48}
    (bad / "preprocessor_config.json").write_text(json.dumps(settings))
    with pytest.raises(CLIPMoEError, match="crop_size 48x48"):
        CLIPMoEVisionTower(f"clipmoe:{bad}", args())


def test_moe_blocks_are_zero3_leaf_modules(world):
    deepspeed = pytest.importorskip("deepspeed")
    from deepspeed.utils import z3_leaf_module

    from clipmoe_encoder.moe import MoEFeedForward

    assert deepspeed  # imported: the tower declares leaves only when DeepSpeed is in use
    tower = CLIPMoEVisionTower("clipmoe:" + world.tower, args())
    moe = [m for m in tower.modules() if isinstance(m, MoEFeedForward)]
    assert len(moe) == 2 and all(z3_leaf_module(m) for m in moe)


def test_two_tower_clipmoe_checkpoint(tmp_path):
    from clipmoe_encoder import CLIPMoEConfig, CLIPMoEModel

    torch.manual_seed(0)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8, "num_experts": 2, "num_experts_per_tok": 1}
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 50, "max_position_embeddings": 8, "num_experts": 2, "num_experts_per_tok": 1}
    full = CLIPMoEModel(CLIPMoEConfig(text_config=text, vision_config=vision, projection_dim=16))
    full.save_pretrained(tmp_path / "two-tower")
    tower = CLIPMoEVisionTower(f"clipmoe:{tmp_path / 'two-tower'}", args())
    assert tower.config.num_experts == 2 and tower.num_patches == 16
    expected = full.vision_model.state_dict()
    for key, value in tower.vision_tower.vision_model.state_dict().items():
        assert torch.equal(value, expected[key]), key
