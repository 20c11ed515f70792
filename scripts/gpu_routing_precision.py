#!/usr/bin/env python
"""Where a routed tower in fp16/bf16 on a CUDA GPU departs from its fp32 CPU reference: the
relative error of every layer's hidden states and the share of tokens whose top-2 experts differ,
for each expert path (auto, looped, grouped forced on) and with math attention. A diagnostic
(docs/benchmarks.md, GPU), run from the repository root; without CUDA it prints one skip line.

    python scripts/gpu_routing_precision.py
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clipmoe_encoder import grouped_mm  # noqa: E402
from clipmoe_encoder.moe import StackedExperts  # noqa: E402
from tests.gpu.test_real_gpu import _relative_error, _top_k_agreement, _tower  # noqa: E402

VARIANTS = (("auto", None, False), ("looped", False, False), ("grouped", True, False), ("auto, math attention", None, True))


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_routing_precision: skipped, no CUDA device visible to torch")
        return 0
    print(f"torch {torch.__version__}; fp16 grouped-matmul rule in this torch: {grouped_mm._grouped_mm_fp16_cublaslt_supported is not None}")
    pixels32 = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for dtype in (torch.float16, torch.bfloat16):
        pixels = pixels32.to(dtype)
        with torch.no_grad():
            ref = _tower().to(dtype).float()(pixels.float(), output_hidden_states=True, output_router_logits=True)
        for label, grouped, math_attention in VARIANTS:
            StackedExperts.prefer_grouped_mm = grouped
            torch.backends.cuda.enable_flash_sdp(not math_attention)
            torch.backends.cuda.enable_mem_efficient_sdp(not math_attention)
            try:
                with torch.no_grad():
                    out = _tower().to("cuda", dtype)(pixels.cuda(), output_hidden_states=True, output_router_logits=True)
            except RuntimeError as e:  # e.g. a grouped matmul this torch does not run in this dtype
                print(f"{dtype} {label}: raised {str(e).splitlines()[0][:200]}")
                continue
            errors = [round(_relative_error(a, b), 5) for a, b in zip(out.hidden_states, ref.hidden_states)]
            other_experts = [round(1 - _top_k_agreement(a, b), 4) for a, b in zip(out.router_logits, ref.router_logits)]
            print(f"{dtype} {label}: relative error per layer {errors}; share of tokens with other experts per MoE layer {other_experts}")
    StackedExperts.prefer_grouped_mm = None
    return 0


if __name__ == "__main__":
    sys.exit(main())
