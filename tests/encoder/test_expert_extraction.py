"""`clipmoe extract-expert`: expert J of a CLIP-MoE as a dense transformers CLIP."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel, CLIPModel, CLIPVisionModel

import clipmoe_encoder as cm
from clipmoe_encoder import CLIPMoEError
from clipmoe_encoder.cli import main
from clipmoe_encoder.expert_extraction import extract_expert
from clipmoe_encoder.moe import StackedExperts

from .conftest import batch, tiny_clip, tiny_vision


def _distinct_experts(model, seed=3):
    """Make every expert of every MoE block different (upcycling starts them as copies)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, StackedExperts):
                for p in module.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _forced_to(model, expert):
    """The same CLIP-MoE with every expert slot holding expert `expert`: whatever the router picks,
    each token runs that expert with weights summing to one (top-k renormalised)."""
    import copy

    forced = copy.deepcopy(model)
    with torch.no_grad():
        for module in forced.modules():
            if isinstance(module, StackedExperts):
                for p in module.parameters():
                    p.copy_(p[expert].expand_as(p))
    return forced


@pytest.fixture
def moe_dir(tmp_path):
    # MoE in the last two blocks of each tower: vision block 0 stays dense
    moe = _distinct_experts(cm.upcycle(tiny_clip(), num_experts=3, top_k=2, moe_layers=2))
    moe.save_pretrained(tmp_path / "moe")
    return tmp_path / "moe", moe


def test_extracted_expert_equals_routing_forced_to_it(moe_dir, tmp_path, capsys):
    src, moe = moe_dir
    assert moe.config.vision_config.moe_layer_indices == [1, 2]
    pixels, ids, mask = batch()
    features = {}
    for j in (1, 2):
        out = tmp_path / f"expert{j}"
        assert main(["extract-expert", str(src), str(j), str(out)]) == 0
        assert f"expert {j} of {src} as a dense CLIPModel" in capsys.readouterr().out
        assert json.loads((out / "config.json").read_text())["model_type"] == "clip"
        dense = AutoModel.from_pretrained(out)
        assert type(dense) is CLIPModel
        forced = _forced_to(moe, j)
        with torch.no_grad():
            got = dense(input_ids=ids, attention_mask=mask, pixel_values=pixels)
            want = forced(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        torch.testing.assert_close(got.image_embeds, want.image_embeds, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.text_embeds, want.text_embeds, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.logits_per_image, want.logits_per_image, atol=1e-4, rtol=1e-5)
        features[j] = got.image_embeds
    # the experts differ, so extracting the wrong one would show
    assert not torch.allclose(features[1], features[2], atol=1e-3)


def test_extracted_expert_loads_with_transformers_alone(moe_dir, tmp_path):
    src, _ = moe_dir
    out = tmp_path / "expert0"
    assert main(["extract-expert", str(src), "0", str(out)]) == 0
    code = ("import sys, transformers; m = transformers.CLIPModel.from_pretrained(sys.argv[1]); "
            "assert not any(n.startswith('clipmoe') for n in sys.modules), 'our package was imported'; "
            "print(type(m).__module__)")
    result = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, cwd=tmp_path, check=False,
                            env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("transformers.models.clip.modeling_clip")


def test_vision_only_expert_is_a_clip_vision_model(tmp_path):
    moe = _distinct_experts(cm.upcycle(tiny_vision(), num_experts=4, top_k=1, moe_layers=[0, 2]))
    dense = extract_expert(moe, 3)
    assert type(dense) is CLIPVisionModel
    pixels = batch()[0]
    with torch.no_grad():
        got, want = dense(pixel_values=pixels), _forced_to(moe, 3)(pixel_values=pixels)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=1e-5, rtol=1e-5)
    with pytest.raises(CLIPMoEError, match=r"expert 4 is out of range: CLIPMoEVisionModel has 4 experts \(0..3\)"):
        extract_expert(moe, 4)


def test_extract_expert_bad_input(moe_dir, tmp_path, capsys):
    src, _ = moe_dir
    out = tmp_path / "out"

    def error(*argv):
        assert main(["extract-expert", *map(str, argv)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("clipmoe extract-expert: error: ") and "Traceback" not in err
        return err

    assert f"expert 3 is out of range: {src} has 3 experts (0..2)" in error(src, 3, out)
    assert "expert -1 is out of range" in error(src, -1, out)
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert "directory is not empty" in error(src, 0, out)
    assert (out / "notes.txt").read_text() == "mine"
    assert "is the source directory" in error(src, 0, src)
    assert "no such file or directory" in error(tmp_path / "nope", 0, tmp_path / "o2")
    dense_dir = tmp_path / "dense"
    tiny_clip().save_pretrained(dense_dir)
    capsys.readouterr()  # its progress bar
    assert "field 'model_type' is 'clip'" in error(dense_dir, 0, tmp_path / "o3")
    # --overwrite replaces the directory whole
    assert main(["extract-expert", str(src), "0", str(out), "--overwrite"]) == 0
    assert not (out / "notes.txt").exists() and (out / "config.json").is_file()
