"""The fake-CUDA layer: models run on CUDA tensors that have no data, on a machine without a GPU.

`FakeTensorMode` runs every op's meta kernel with the CUDA kernels' own dtype, shape and stride
checks, and raises `DataDependentOutputException` on any op that needs a tensor's values on the
host (.item(), .tolist(), nonzero...), i.e. on any host-device synchronisation. With a ShapeEnv
such reads become symbolic sizes instead, which is how the looped path (one host read of the
group sizes per MoE layer, by design) is exercised. What it cannot show -- kernel numerics,
backward, speed, memory -- is left to `pytest -m gpu` on a real GPU (tests/gpu/test_real_gpu.py).
"""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from clipmoe_encoder.moe import StackedExperts

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@contextlib.contextmanager
def fake_cuda(capability=(9, 0), cuda_version: str | None = None, symbolic: bool = False):
    """A FakeTensorMode posing as one CUDA GPU of this capability (H100/H200 by default).

    cuda_version: what torch.version.cuda reports (None: the installed build's); torch's fp16
    grouped-matmul rule reads it. symbolic: give the mode a ShapeEnv, so that host reads of
    tensor values become symbolic sizes (without one they raise: the proof of no host sync)."""
    mode = FakeTensorMode(shape_env=ShapeEnv() if symbolic else None)
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch("torch.cuda.get_device_capability", lambda device=None: capability))
        # torch.autocast("cuda") switches itself off where no CUDA driver is found.
        stack.enter_context(mock.patch("torch.cuda.amp.common.amp_definitely_not_available", lambda: False))
        stack.enter_context(mock.patch("torch.cuda.is_bf16_supported", lambda *a, **k: capability >= (8, 0)))
        if cuda_version is not None:
            stack.enter_context(mock.patch.object(torch.version, "cuda", cuda_version))
            stack.enter_context(mock.patch("torch.cuda.is_available", lambda: True))
        stack.enter_context(mode)
        yield mode


def to_fake_cuda(module: nn.Module, mode: FakeTensorMode, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every parameter and buffer of `module` (in place) by a fake CUDA tensor, floating
    ones cast to `dtype`. Module.to() cannot do it: it swaps tensors, which fake ones refuse."""
    memo: dict[int, torch.Tensor] = {}

    def convert(t: torch.Tensor, is_param: bool) -> torch.Tensor:
        if id(t) not in memo:  # tied weights stay tied
            with unset_fake_temporarily():  # the real tensor is read outside the mode
                fake = mode.from_tensor(t.detach())
            with mode:
                fake = fake.to("cuda", dtype if dtype is not None and t.is_floating_point() else t.dtype)
            memo[id(t)] = nn.Parameter(fake, requires_grad=t.requires_grad) if is_param else fake
        return memo[id(t)]

    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[name] = convert(p, True)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = convert(b, False)
    return module


class PathSpy:
    """Counts which StackedExperts path ran (the real methods run; this only records calls)."""

    def __init__(self, monkeypatch):
        self.calls = {"grouped": 0, "looped": 0}
        for path in self.calls:
            real = getattr(StackedExperts, "_" + path)

            def spied(experts, *args, _real=real, _path=path, **kwargs):
                self.calls[_path] += 1
                return _real(experts, *args, **kwargs)

            monkeypatch.setattr(StackedExperts, "_" + path, spied)

    def only(self) -> str:
        used = [p for p, n in self.calls.items() if n]
        assert len(used) == 1, f"expected one path, got {self.calls}"
        return used[0]


@pytest.fixture
def path_spy(monkeypatch):
    return PathSpy(monkeypatch)


# What each precision setting runs on an H100-class GPU with the pinned torch (CUDA 13.0): bf16
# (also as autocast's dtype) takes the grouped kernel; fp16 (no cuBLASLt grouped GEMM before
# CUDA 13.3) and fp32 take the loop. (weights dtype, autocast dtype or None, expected path)
PRECISIONS = {
    "bf16": (torch.bfloat16, None, "grouped"),
    "fp16": (torch.float16, None, "looped"),
    "fp32": (torch.float32, None, "looped"),
    "fp32-autocast-bf16": (torch.float32, torch.bfloat16, "grouped"),
    "fp32-autocast-fp16": (torch.float32, torch.float16, "looped"),
}


@contextlib.contextmanager
def precision(name: str):
    """Autocast as the named setting asks (nothing for plain dtypes)."""
    _, autocast, _ = PRECISIONS[name]
    if autocast is None:
        yield
    else:
        with torch.autocast("cuda", dtype=autocast):
            yield
