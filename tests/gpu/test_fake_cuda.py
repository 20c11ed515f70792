"""Every model of the project runs on (fake) CUDA in every precision, in eval and in a training
forward, and the MoE layer picks the path torch's kernels accept; bf16 makes no host sync.

Runs without a GPU (see conftest.py). Each case builds the model on CPU, moves it to fake CUDA in
the precision's weight dtype and runs one forward. Paths that read the group sizes on the host
(by design) run with symbolic sizes; the grouped path runs without, which proves it never waits
for the host.
"""

from __future__ import annotations

import pytest
import torch

from clipmoe_encoder import (
    CLIPMoEConfig,
    CLIPMoEModel,
    CLIPMoEVisionConfig,
    CLIPMoEVisionModel,
)
from clipmoe_encoder.grouped_mm import grouped_mm_runs_on_device
from clipmoe_encoder.moe import MoEFeedForward

from .conftest import PRECISIONS, fake_cuda, precision, to_fake_cuda

VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 16,
          "patch_size": 4, "num_experts": 4, "num_experts_per_tok": 2}
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 99,
        "max_position_embeddings": 16, "bos_token_id": 97, "eos_token_id": 98, "pad_token_id": 0, "num_experts": 4,
        "num_experts_per_tok": 2}
CASES = [(p, m) for p in PRECISIONS for m in ("eval", "train")]
IDS = [f"{p}-{m}" for p, m in CASES]


def run_on_fake_cuda(model, forward, name, mode, path_spy, **fake):
    """model (built on CPU) -> fake CUDA in the precision's weight dtype -> forward(model);
    checks the MoE path that ran and returns forward's result."""
    weights, _, expected = PRECISIONS[name]
    model.train(mode == "train")
    with fake_cuda(symbolic=expected == "looped", **fake) as fm:
        to_fake_cuda(model, fm, weights)
        with torch.set_grad_enabled(mode == "train"), precision(name):
            out = forward(model)
    assert path_spy.only() == expected
    return out


def pixels(batch=2, size=16, dtype=torch.float32):
    return torch.randn(batch, 3, size, size, device="cuda", dtype=dtype)


@pytest.mark.parametrize("name,mode", CASES, ids=IDS)
def test_moe_layer(name, mode, path_spy):
    torch.manual_seed(0)
    layer = MoEFeedForward(CLIPMoEVisionConfig(**VISION))
    weights, autocast, _ = PRECISIONS[name]
    out, logits = run_on_fake_cuda(layer, lambda m: m(torch.randn(2, 9, 32, device="cuda", dtype=weights)), name, mode, path_spy)
    assert out.shape == (2, 9, 32) and out.device.type == "cuda" and logits.shape == (18, 4)
    assert out.requires_grad == (mode == "train")
    if autocast is None:
        assert out.dtype == weights


@pytest.mark.parametrize("name,mode", CASES, ids=IDS)
def test_vision_model(name, mode, path_spy):
    torch.manual_seed(0)
    model = CLIPMoEVisionModel(CLIPMoEVisionConfig(**VISION))
    weights = PRECISIONS[name][0]
    out = run_on_fake_cuda(model, lambda m: m(pixels(dtype=weights), output_router_logits=True, output_hidden_states=True),
                           name, mode, path_spy)
    assert out.last_hidden_state.shape == (2, 17, 32) and out.pooler_output.device.type == "cuda"
    assert len(out.router_logits) == 1 and out.aux_loss.shape == ()
    assert out.aux_loss.requires_grad == (mode == "train")


@pytest.mark.parametrize("name,mode", CASES, ids=IDS)
def test_two_tower_model(name, mode, path_spy):
    torch.manual_seed(0)
    model = CLIPMoEModel(CLIPMoEConfig(text_config=TEXT, vision_config=VISION, projection_dim=24))
    weights = PRECISIONS[name][0]

    def forward(m):
        ids = torch.randint(1, 97, (2, 10), device="cuda")
        mask = torch.ones_like(ids)
        return m(input_ids=ids, attention_mask=mask, pixel_values=pixels(dtype=weights), return_loss=True,
                 output_router_logits=True)

    out = run_on_fake_cuda(model, forward, name, mode, path_spy)
    assert out.logits_per_image.shape == (2, 2) and out.loss.shape == ()
    assert out.loss.requires_grad == (mode == "train")


@pytest.mark.parametrize("name,mode", CASES, ids=IDS)
def test_llava_tower(name, mode, path_spy, tmp_path):
    from types import SimpleNamespace

    from clipmoe_demo.tiny_llava import build_tower
    from clipmoe_encoder import CLIPMoEVisionTower

    source = build_tower(str(tmp_path / "tower"))
    tune = "routers" if mode == "train" else "none"
    tower = CLIPMoEVisionTower("clipmoe:" + source, SimpleNamespace(mm_vision_select_layer=-2, mm_vision_moe_tune=tune))
    weights = PRECISIONS[name][0]
    features = run_on_fake_cuda(tower, lambda t: t(pixels(size=32, dtype=weights)), name, mode, path_spy)
    assert features.shape == (2, 16, 32) and features.dtype == weights
    assert features.requires_grad == (mode == "train")  # routers train: the graph is kept


@pytest.mark.parametrize("dtype,capability,cuda_version,expected", [
    (torch.bfloat16, (9, 0), None, "grouped"),
    (torch.bfloat16, (8, 0), None, "grouped"),
    (torch.bfloat16, (7, 0), None, "looped"),  # V100: no grouped kernel before SM 80
    (torch.float16, (9, 0), "13.3", "grouped"),  # torch's cuBLASLt grouped GEMM rule holds
    (torch.float16, (8, 0), "13.3", "looped"),
    (torch.float16, (9, 0), "13.0", "looped"),  # the pinned build
], ids=["bf16-sm90", "bf16-sm80", "bf16-sm70", "fp16-sm90-cuda13.3", "fp16-sm80-cuda13.3", "fp16-sm90-cuda13.0"])
def test_path_follows_torch_rule(dtype, capability, cuda_version, expected, path_spy):
    """The grouped path runs without symbolic sizes, so torch's own checks accept it there."""
    torch.manual_seed(0)
    layer = MoEFeedForward(CLIPMoEVisionConfig(**VISION)).eval()
    with fake_cuda(capability, cuda_version, symbolic=expected == "looped") as fm:
        to_fake_cuda(layer, fm, dtype)
        out, _ = layer(torch.randn(12, 32, device="cuda", dtype=dtype))
    assert out.shape == (12, 32) and path_spy.only() == expected


def test_rows_not_16_byte_aligned_take_the_loop(path_spy):
    torch.manual_seed(0)
    layer = MoEFeedForward(CLIPMoEVisionConfig(**{**VISION, "hidden_size": 36, "num_attention_heads": 2})).eval()
    with fake_cuda(symbolic=True) as fm:
        to_fake_cuda(layer, fm, torch.bfloat16)
        assert not grouped_mm_runs_on_device(torch.empty(5, 36, device="cuda", dtype=torch.bfloat16),
                                             layer.experts.fc1_weight, offs=torch.zeros(4, dtype=torch.int32, device="cuda"))
        out, _ = layer(torch.randn(12, 36, device="cuda", dtype=torch.bfloat16))
    assert out.shape == (12, 36) and path_spy.only() == "looped"


def test_cpu_tensors_never_take_the_grouped_kernel():
    x, w = torch.randn(4, 32, dtype=torch.bfloat16), torch.randn(4, 64, 32, dtype=torch.bfloat16)
    assert not grouped_mm_runs_on_device(x, w, offs=torch.tensor([1, 2, 3, 4], dtype=torch.int32))


def test_grouped_path_makes_no_host_sync_in_a_training_step_forward(path_spy):
    """bf16 tower forward with the router loss, no ShapeEnv: any host read would raise here."""
    from torch._subclasses.fake_tensor import DataDependentOutputException

    torch.manual_seed(0)
    model = CLIPMoEVisionModel(CLIPMoEVisionConfig(**VISION)).train()
    with fake_cuda() as fm:
        to_fake_cuda(model, fm, torch.bfloat16)
        out = model(pixels(dtype=torch.bfloat16), output_router_logits=True)
        loss = out.pooler_output.float().mean() + out.aux_loss
        with pytest.raises(DataDependentOutputException):  # the check is live: a host read raises
            loss.item()
    assert path_spy.only() == "grouped"
