"""Save/load round trips, the official-release conversion, assembly, and one clear error per bad input."""

import json
import os
import pickle

import pytest
import torch

import clipmoe_encoder as cm
from clipmoe_encoder.official import convert_official
from tests.encoder.conftest import TEXT, VISION, batch, randomize_moe, tiny_clip


def _distinct_moe(seed=0, text_positions=16, vision_layers=None, text_layers=(1,)):
    torch.manual_seed(seed)
    config = cm.CLIPMoEConfig(
        vision_config=dict(VISION, hidden_size=64, num_attention_heads=1, num_experts=3, num_experts_per_tok=2,
                           moe_layers=vision_layers),
        text_config=dict(TEXT, hidden_size=64, num_attention_heads=1, num_experts=3, num_experts_per_tok=2,
                         moe_layers=list(text_layers), max_position_embeddings=text_positions),
        projection_dim=24,
    )
    return randomize_moe(cm.CLIPMoEModel(config).eval())


@pytest.mark.legacy
def test_save_pretrained_round_trip_is_bitwise(tmp_path):
    model = _distinct_moe()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = cm.CLIPMoEModel.from_pretrained(tmp_path)
    ref, got = model.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    for a, b in zip(model.buffers(), loaded.buffers()):  # non-persistent buffers are rebuilt, not loaded
        assert torch.equal(a, b)
    pixels, ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits_per_image,
                           loaded(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits_per_image)
    from transformers import AutoModel

    assert type(AutoModel.from_pretrained(tmp_path)) is cm.CLIPMoEModel
    vision = cm.CLIPMoEVisionModel.from_pretrained(tmp_path)  # the tower alone, out of the two-tower checkpoint
    assert torch.equal(vision.vision_model.encoder.layers[0].mlp.router.weight, model.vision_model.encoder.layers[0].mlp.router.weight)
    with torch.no_grad():
        assert torch.equal(vision(pixel_values=pixels).pooler_output, model.vision_model(pixels).pooler_output)


def official_layout(model: cm.CLIPMoEModel) -> dict:
    """Write a CLIP-MoE in the official release's OpenAI key layout (built here independently of convert.py)."""
    sd = model.state_dict()
    out = {}
    for tower, prefix in (("vision_model", "visual.transformer"), ("text_model", "transformer")):
        cfg = getattr(model.config, tower.split("_")[0] + "_config")
        for i in range(cfg.num_hidden_layers):
            src, dst = f"{tower}.encoder.layers.{i}.", f"{prefix}.resblocks.{i}."
            out[dst + "attn.in_proj_weight"] = torch.cat([sd[src + f"self_attn.{p}_proj.weight"] for p in "qkv"])
            out[dst + "attn.in_proj_bias"] = torch.cat([sd[src + f"self_attn.{p}_proj.bias"] for p in "qkv"])
            for kind in ("weight", "bias"):
                out[dst + f"attn.out_proj.{kind}"] = sd[src + f"self_attn.out_proj.{kind}"]
                out[dst + f"ln_1.{kind}"] = sd[src + f"layer_norm1.{kind}"]
                out[dst + f"ln_2.{kind}"] = sd[src + f"layer_norm2.{kind}"]
            if i in cfg.moe_layer_indices:
                out[dst + "gate.weight"] = sd[src + "mlp.router.weight"]
                for j in range(cfg.num_experts):
                    for fc, name in (("fc1", "c_fc"), ("fc2", "c_proj")):
                        for kind in ("weight", "bias"):
                            out[dst + f"experts.{j}.{name}.{kind}"] = sd[src + f"mlp.experts.{fc}_{kind}"][j]
            else:
                for fc, name in (("fc1", "c_fc"), ("fc2", "c_proj")):
                    for kind in ("weight", "bias"):
                        out[dst + f"mlp.{name}.{kind}"] = sd[src + f"mlp.{fc}.{kind}"]
    v = "vision_model."
    out["visual.conv1.weight"] = sd[v + "embeddings.patch_embedding.weight"]
    out["visual.class_embedding"] = sd[v + "embeddings.class_embedding"]
    out["visual.positional_embedding"] = sd[v + "embeddings.position_embedding.weight"]
    for kind in ("weight", "bias"):
        out[f"visual.ln_pre.{kind}"] = sd[v + f"pre_layrnorm.{kind}"]
        out[f"visual.ln_post.{kind}"] = sd[v + f"post_layernorm.{kind}"]
        out[f"ln_final.{kind}"] = sd[f"text_model.final_layer_norm.{kind}"]
    out["visual.proj"] = sd["visual_projection.weight"].t()
    out["token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    out["positional_embedding_res"] = sd["text_model.embeddings.position_embedding.weight"].clone()
    out["text_projection"] = sd["text_projection.weight"].t()
    out["logit_scale"] = sd["logit_scale"]
    return {k: v.clone() for k, v in out.items()}


@pytest.mark.legacy
def test_official_release_conversion_matches_the_model_built_directly(tmp_path):
    model = _distinct_moe()
    model.config.text_config.eos_token_id = TEXT["vocab_size"] - 1  # the OpenAI tokenizer's EOT is its last id
    path = tmp_path / "clip-moe-4-2-tiny.pt"
    torch.save(official_layout(model), path)
    converted = convert_official(str(path), top_k=2)
    assert converted.config.vision_config.moe_layer_indices == [0, 1, 2]
    assert converted.config.text_config.moe_layer_indices == [1]
    assert converted.config.vision_config.num_experts == 3
    pixels, ids, mask = batch()
    ids[ids == 98] = TEXT["vocab_size"] - 1
    with torch.no_grad():
        a = model(input_ids=ids, pixel_values=pixels, attention_mask=mask)
        b = converted(input_ids=ids, pixel_values=pixels, attention_mask=mask)
    assert (a.image_embeds - b.image_embeds).abs().max().item() <= 1e-5
    assert (a.text_embeds - b.text_embeds).abs().max().item() <= 1e-5
    converted.save_pretrained(tmp_path / "hf")
    assert cm.CLIPMoEModel.from_pretrained(tmp_path / "hf").config.text_config.moe_layer_indices == [1]


def test_assemble_experts_takes_expert_j_from_checkpoint_j():
    dense = [tiny_clip(seed=0) for _ in range(3)]
    with torch.no_grad():  # different FFNs, everything else shared (as after MCL)
        for j, d in enumerate(dense[1:], start=1):
            for name, p in d.named_parameters():
                if ".mlp." in name:
                    p.add_(0.01 * j)
    moe = cm.assemble_experts(dense, top_k=2)
    layer = moe.vision_model.encoder.layers[1].mlp.experts
    for j, d in enumerate(dense):
        assert torch.equal(layer.fc1_weight[j], d.vision_model.encoder.layers[1].mlp.fc1.weight)
        assert torch.equal(layer.fc2_bias[j], d.vision_model.encoder.layers[1].mlp.fc2.bias)


def test_assemble_experts_names_the_first_shared_tensor_that_differs():
    a, b = tiny_clip(seed=0), tiny_clip(seed=0)
    with torch.no_grad():
        b.vision_model.encoder.layers[2].self_attn.k_proj.weight.add_(1e-3)
    with pytest.raises(cm.CLIPMoEError, match=r"vision_model\.encoder\.layers\.2\.self_attn\.k_proj\.weight"):
        cm.assemble_experts([a, b], top_k=1)


# ---- bad input: one clear error each -------------------------------------------------------------

def test_missing_path():
    with pytest.raises(cm.CLIPMoEError, match="no such file"):
        cm.CLIPMoEVisionModel.from_pretrained("/nonexistent/clipmoe")
    with pytest.raises(cm.CLIPMoEError, match="no such file"):
        cm.upcycle("/nonexistent/clip")


def test_config_of_another_model_type(tmp_path):
    tiny_clip().save_pretrained(tmp_path)
    with pytest.raises(cm.CLIPMoEError, match="model_type.*'clip'"):
        cm.CLIPMoEModel.from_pretrained(tmp_path)


def test_expert_count_mismatch(tmp_path):
    _distinct_moe().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["vision_config"]["num_experts"] = 4
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(cm.CLIPMoEError, match=r"model\.safetensors: tensor '.*(router|experts).*' has shape"):
        cm.CLIPMoEModel.from_pretrained(tmp_path)


def test_corrupt_safetensors(tmp_path):
    _distinct_moe().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(cm.CLIPMoEError, match="model.safetensors: not a readable safetensors file"):
        cm.CLIPMoEModel.from_pretrained(tmp_path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {_RunsCode.marker}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    _RunsCode.marker = tmp_path / "pwned"
    path = tmp_path / "clip-moe-4-2-evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"visual.conv1.weight": _RunsCode()}, f)
    with pytest.raises(cm.CLIPMoEError, match="refused to unpickle"):
        convert_official(str(path))
    with pytest.raises(cm.CLIPMoEError, match="refused to unpickle"):
        cm.upcycle(str(path))
    assert not _RunsCode.marker.exists()


def test_a_dense_checkpoint_given_to_the_official_converter(tmp_path):
    sd = official_layout(_distinct_moe(vision_layers=[], text_layers=[]))
    with pytest.raises(cm.CLIPMoEError, match="dense CLIP"):
        convert_official(sd)


def test_bad_moe_settings():
    with pytest.raises(cm.CLIPMoEError, match="num_experts_per_tok"):
        cm.CLIPMoEVisionConfig(num_experts=2, num_experts_per_tok=3)
    with pytest.raises(cm.CLIPMoEError, match="moe_layers entry 12"):
        cm.CLIPMoEVisionConfig(num_hidden_layers=12, moe_layers=[3, 12])
    with pytest.raises(cm.CLIPMoEError, match="unknown MoE setting"):
        cm.upcycle(tiny_clip(), num_experts=2, top_k=1, expert_count=3)


def test_wrong_image_size_is_one_clear_error():
    moe = cm.upcycle(tiny_clip(), num_experts=2, top_k=1)
    with pytest.raises(cm.CLIPMoEError, match="32x32 but this tower takes 16x16"):
        moe.get_image_features(torch.randn(1, 3, 32, 32))


@pytest.mark.legacy
def test_info_reads_a_config_that_leaves_defaults_out(tmp_path):
    """transformers 4.x writes only the fields that differ from the class defaults (the two-tower
    sub-configs of a default model shrink to their model_type): `clipmoe info` reads them as
    transformers does."""
    from clipmoe_encoder.commands import checkpoint_summary

    model = _distinct_moe()
    model.save_pretrained(tmp_path)
    with open(tmp_path / "config.json") as f:
        config = json.load(f)
    for tower in ("vision_config", "text_config"):  # as 4.37 writes a config whose MoE fields are the defaults
        for field in ("num_experts_per_tok", "normalize_top_k", "router_aux_loss_coef"):
            config[tower].pop(field, None)
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    summary = checkpoint_summary(str(tmp_path))
    assert summary["towers"]["vision"]["num_experts"] == 3
    assert summary["towers"]["vision"]["top_k"] == 2
