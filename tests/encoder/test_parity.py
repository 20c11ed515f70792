"""A CLIP-MoE upcycled from a dense CLIP (all experts equal) computes the dense function."""

import pytest
import torch

import clipmoe_encoder as cm
from tests.encoder.conftest import batch, tiny_clip, tiny_vision

TOL = 1e-5


def _max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.legacy
@pytest.mark.parametrize("num_experts,top_k", [(2, 1), (2, 2), (4, 1), (4, 2)])
@pytest.mark.parametrize("moe_layers", [None, [0, 2]])
def test_two_tower_parity_with_transformers(num_experts, top_k, moe_layers):
    dense = tiny_clip()
    moe = cm.upcycle(dense, num_experts=num_experts, top_k=top_k, moe_layers=moe_layers, text_moe_layers=[1])
    pixels, ids, mask = batch()
    with torch.no_grad():
        ref = dense(input_ids=ids, pixel_values=pixels, attention_mask=mask, output_hidden_states=True)
        out = moe(input_ids=ids, pixel_values=pixels, attention_mask=mask, output_hidden_states=True)
    for tower in ("vision_model_output", "text_model_output"):
        r, o = getattr(ref, tower), getattr(out, tower)
        assert len(r.hidden_states) == len(o.hidden_states)
        for a, b in zip(r.hidden_states, o.hidden_states):
            assert _max_diff(a, b) <= TOL
        assert _max_diff(r.last_hidden_state, o.last_hidden_state) <= TOL
    with torch.no_grad():  # transformers 5 overwrites the tower outputs' pooler_output with the projection
        assert _max_diff(dense.vision_model(pixel_values=pixels).pooler_output, out.vision_model_output.pooler_output) <= TOL
        text_pooled = dense.text_model(input_ids=ids, attention_mask=mask).pooler_output
        assert _max_diff(text_pooled, out.text_model_output.pooler_output) <= TOL
    assert _max_diff(ref.image_embeds, out.image_embeds) <= TOL
    assert _max_diff(ref.text_embeds, out.text_embeds) <= TOL
    assert _max_diff(ref.logits_per_image, out.logits_per_image) <= 1e-4  # logits are scaled by exp(2.66)
    with torch.no_grad():
        image_features = dense.get_image_features(pixel_values=pixels)
    image_features = getattr(image_features, "pooler_output", image_features)  # transformers 5 returns an object
    assert _max_diff(image_features, moe.get_image_features(pixels)) <= TOL


@pytest.mark.legacy
def test_vision_tower_parity_and_layer_index_hidden_states():
    dense = tiny_vision()
    moe = cm.upcycle(dense, num_experts=4, top_k=2)
    assert isinstance(moe, cm.CLIPMoEVisionModel)
    pixels = batch()[0]
    with torch.no_grad():
        ref = dense(pixel_values=pixels, output_hidden_states=True)
        for flag in (True, -2, 0):  # transformers >= 5.23 passes the selected layer index
            out = moe(pixel_values=pixels, output_hidden_states=flag, image_sizes=None)
            assert len(out.hidden_states) == 4
            assert max(_max_diff(a, b) for a, b in zip(ref.hidden_states, out.hidden_states)) <= TOL
        assert _max_diff(ref.pooler_output, out.pooler_output) <= TOL
        assert moe(pixel_values=pixels).hidden_states is None
        last, pooled = moe(pixel_values=pixels, return_dict=False)[:2]
        assert _max_diff(last, ref.last_hidden_state) <= TOL


@pytest.mark.legacy
def test_upcycle_from_a_saved_directory(tmp_path):
    dense = tiny_clip()
    dense.save_pretrained(tmp_path / "dense")
    moe = cm.upcycle(str(tmp_path / "dense"), num_experts=2, top_k=1, vision_only=True)
    pixels = batch()[0]
    with torch.no_grad():
        ref = dense.vision_model(pixel_values=pixels).pooler_output
        assert _max_diff(ref, moe(pixel_values=pixels).pooler_output) <= TOL


def test_without_renormalisation_the_output_is_scaled_by_the_kept_probability():
    dense = tiny_vision()
    moe = cm.upcycle(dense, num_experts=4, top_k=2, normalize_top_k=False)
    pixels = batch()[0]
    with torch.no_grad():
        out = moe(pixel_values=pixels)
        ref = dense(pixel_values=pixels)
    assert _max_diff(out.pooler_output, ref.pooler_output) > 1e-3


def test_long_clip_position_stretch():
    table = torch.randn(77, 8)
    from clipmoe_encoder.convert import stretch_text_positions

    stretched = stretch_text_positions(table)
    assert stretched.shape == (248, 8)
    assert torch.equal(stretched[:20], table[:20])
    for i in range(20, 77):  # every original row from 20 on lands at 20 + 4 (i - 20)
        assert torch.allclose(stretched[20 + 4 * (i - 20)], table[i])
    assert torch.allclose(stretched[22], (table[20] + table[21]) / 2)  # half-way between rows 20 and 21
    assert torch.allclose(stretched[247], table[76] + 0.75 * (table[76] - table[75]))  # extrapolated


def test_upcycle_with_248_text_positions_runs_long_text(dense):
    moe = cm.upcycle(dense, num_experts=2, top_k=1, text_positions=None)
    assert moe.config.text_config.max_position_embeddings == 16
    long = cm.upcycle(_with_77_positions(), num_experts=2, top_k=1, text_positions=248)
    assert long.text_model.embeddings.position_embedding.weight.shape[0] == 248
    ids = torch.full((1, 200), 5)
    ids[0, 150] = 98
    with torch.no_grad():
        assert long.get_text_features(ids).shape == (1, 24)


def _with_77_positions():
    from transformers import CLIPConfig, CLIPModel

    from tests.encoder.conftest import TEXT, VISION

    torch.manual_seed(0)
    return CLIPModel(CLIPConfig(text_config=dict(TEXT, max_position_embeddings=77), vision_config=VISION, projection_dim=24))
