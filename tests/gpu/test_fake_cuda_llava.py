"""The image path of both LLaVAs on fake CUDA: LLaVA-1.5's own `encode_images` with the tower built
through the plugin, and transformers' Llava `get_image_features` with a CLIP-MoE vision_config.
Their token splicing reads ids on the host by design and is not run here."""

from __future__ import annotations

import pytest
import torch

from tests.llava.conftest import world  # noqa: F401 - the tiny LLaVA world fixture, reused

from .conftest import PRECISIONS
from .test_fake_cuda import CASES, IDS, pixels, run_on_fake_cuda

pytest.importorskip("llava")


@pytest.mark.parametrize("name,mode", CASES, ids=IDS)
def test_llava15_encode_images(name, mode, world, path_spy):  # noqa: F811
    """LLaVA's load_pretrained_model leaves the tower in fp16; every precision must run."""
    import llava_integration
    from clipmoe_demo import tiny_llava

    llava_integration.register()
    model, _ = tiny_llava.build_llava(world, mm_vision_moe_tune="routers" if mode == "train" else "none")
    weights = PRECISIONS[name][0]
    features = run_on_fake_cuda(model, lambda m: m.encode_images(pixels(size=32, dtype=weights)), name, mode, path_spy)
    assert features.shape == (2, 16, model.config.hidden_size) and features.device.type == "cuda"
    assert features.requires_grad == (mode == "train")


@pytest.mark.parametrize("name,mode", CASES, ids=IDS)
def test_transformers_llava_get_image_features(name, mode, world, path_spy):  # noqa: F811
    from tests.llava.test_hf_llava import _hf_world

    model, _ = _hf_world(world)
    weights = PRECISIONS[name][0]
    out = run_on_fake_cuda(model, lambda m: m.get_image_features(pixel_values=pixels(size=32, dtype=weights)), name, mode, path_spy)
    features = out.pooler_output if hasattr(out, "pooler_output") else out
    features = torch.cat(list(features)) if isinstance(features, (list, tuple)) else features
    assert features.shape[-1] == model.config.text_config.hidden_size and features.device.type == "cuda"
