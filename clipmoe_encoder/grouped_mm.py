"""Whether torch's grouped matmul kernel takes given inputs on their device, by torch's own rule.

`F.grouped_mm` on CUDA accepts bf16 (SM >= 80, per its docstring) and fp16 only where cuBLASLt
grouped GEMM exists (torch decides that in `torch._meta_registrations.
_grouped_mm_fp16_cublaslt_supported`: CUDA >= 13.3 on SM 9-11); fp32 and anything else raise.
Every operand's leading stride must be a multiple of 16 bytes (`_meta_grouped_mm_common`'s
`check_valid_strides`). The checks here read shapes, strides, dtypes and device properties only,
never tensor data, so asking costs no host-device synchronisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HAS_GROUPED_MM = hasattr(F, "grouped_mm")  # torch >= 2.10

try:  # torch's own fp16 rule; private, so a torch without it gets no fp16 grouped matmul
    from torch._meta_registrations import _grouped_mm_fp16_cublaslt_supported
except ImportError:  # pragma: no cover - depends on the torch release
    _grouped_mm_fp16_cublaslt_supported = None

_ALIGNMENT_BYTES = 16


def matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul of x runs in: autocast's when autocast is on for x's device, else x's.

    Autocast casts F.linear's inputs but not grouped_mm's, so callers cast to this explicitly.
    """
    device = x.device.type
    if x.is_floating_point() and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _operand_aligned(t: torch.Tensor, dtype: torch.dtype) -> bool:
    """Leading stride and start of one operand are multiples of 16 bytes. An operand cast to
    another dtype is a fresh contiguous copy, so only its row length matters then."""
    size = dtype.itemsize
    if t.dtype != dtype:
        return t.shape[-1] * size % _ALIGNMENT_BYTES == 0
    leading = t.stride(-2) if t.stride(-1) == 1 else t.stride(-1)
    return leading * size % _ALIGNMENT_BYTES == 0 and t.storage_offset() * size % _ALIGNMENT_BYTES == 0


def grouped_mm_runs_on_device(
    x: torch.Tensor, *weights: torch.Tensor, offs: torch.Tensor, dtype: torch.dtype | None = None
) -> bool:
    """Whether `F.grouped_mm(x, weight.transpose(1, 2), offs=offs)` runs on x's CUDA device for
    each weight in turn (the output of one is the input of the next, as in an FFN), with every
    operand cast to `dtype` (default x.dtype). x: (tokens, in) row-major; weights: (groups, out,
    in) as nn.Linear stores them; offs: the int32 group ends. False on any other device, where
    the caller's own loop runs."""
    dtype = dtype or x.dtype
    if not HAS_GROUPED_MM or x.device.type != "cuda" or torch.version.hip or x.dim() != 2 or x.stride(-1) != 1:
        return False
    if not _operand_aligned(x, dtype):
        return False
    for w in weights:
        # Each output (tokens, out) is a fresh contiguous tensor: its rows must be aligned too.
        if w.device != x.device or w.dim() != 3 or w.stride(-1) != 1 or not _operand_aligned(w, dtype):
            return False
        if w.shape[1] * dtype.itemsize % _ALIGNMENT_BYTES:
            return False
    if dtype == torch.bfloat16:
        return torch.cuda.get_device_capability(x.device) >= (8, 0)
    if dtype == torch.float16 and _grouped_mm_fp16_cublaslt_supported is not None:
        return bool(_grouped_mm_fp16_cublaslt_supported(x, weights[0].transpose(1, 2), offs))
    return False
