#!/usr/bin/env python
"""Forward-pass benchmark of the CLIP-MoE vision tower against the dense tower and a naive MoE loop.

Builds randomly initialised towers -- transformers' dense CLIPVisionModel, our CLIPMoEVisionModel
(4 experts, top-2, MoE in every block) and the same MoE model run with the official code's dispatch
(a Python loop over experts that masks tokens per expert, gathers them and index_add_s the results)
-- and times their forwards interleaved in one process. Prints median times, peak memory (each model in a fresh process on CPU), and the
ratios MoE/dense and naive/ours beside the FLOP floor. With --json the last line is a JSON object.

    python scripts/bench_moe.py --model l14-336 --batch 4                  # CPU, fp32
    python scripts/bench_moe.py --model l14-336 --batch 32 --dtype bf16 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from unittest import mock

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from clipmoe_encoder import CLIPMoEVisionConfig, CLIPMoEVisionModel
from clipmoe_encoder.moe import MoEFeedForward

SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
    "b16-224": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=16),
    "l14-336": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14),
}


def flop_floor(size: dict, num_experts: int, top_k: int) -> float:
    """MoE/dense forward FLOPs (matmuls only) for MoE in every block: the compute-bound floor."""
    d, inner, layers = size["hidden_size"], size["intermediate_size"], size["num_hidden_layers"]
    n = (size["image_size"] // size["patch_size"]) ** 2 + 1
    patch = (n - 1) * 3 * size["patch_size"] ** 2 * d
    attention = n * (4 * d * d) + 2 * n * n * d
    ffn = n * 2 * d * inner
    dense = patch + layers * (attention + ffn)
    moe = patch + layers * (attention + top_k * ffn + n * d * num_experts)
    return moe / dense


def naive_forward(self: MoEFeedForward, hidden_states):
    """The official CLIP-MoE dispatch (reference/paper-and-official-code.md §2.4), on our weights."""
    shape = hidden_states.shape
    x = hidden_states.reshape(-1, shape[-1])
    logits, weights, selected = self.router(x)
    out = torch.zeros_like(x)
    mask = F.one_hot(selected, num_classes=self.router.num_experts).permute(2, 1, 0)
    ex = self.experts
    for e in range(self.router.num_experts):
        slot, token = torch.where(mask[e])
        if token.numel() == 0:
            continue
        h = ex.act(F.linear(x[token], ex.fc1_weight[e], ex.fc1_bias[e]))
        y = F.linear(h, ex.fc2_weight[e], ex.fc2_bias[e]) * weights[token, slot, None]
        out.index_add_(0, token, y.to(x.dtype))
    return out.view(shape), logits


def peak_memory_mb(model_name: str, args) -> float:
    """Peak memory of one forward of one model. CUDA: the allocator's statistics. CPU: a fresh
    process, so that memory freed by another model (and kept by the C allocator) cannot hide it;
    the figure is the growth of the peak resident set during the forward."""
    import subprocess
    import sys

    cmd = [sys.executable, __file__, "--memory-of", model_name, "--model", args.model, "--batch", str(args.batch),
           "--dtype", args.dtype, "--device", args.device, "--num-experts", str(args.num_experts), "--top-k", str(args.top_k)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def _measure_one(model, pixels, device):
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            model(pixel_values=pixels)
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - base) / 2**20
        import threading

        import psutil

        process, done = psutil.Process(), threading.Event()
        base = peak = process.memory_info().rss

        def sample():  # this process holds one model, so RSS growth is the forward's working set
            nonlocal peak
            while not done.is_set():
                peak = max(peak, process.memory_info().rss)
                done.wait(0.001)

        sampler = threading.Thread(target=sample)
        sampler.start()
        model(pixel_values=pixels)
        done.set()
        sampler.join()
        return (max(peak, process.memory_info().rss) - base) / 2**20


def time_forward(model, pixels, device):
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(pixel_values=pixels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SIZES), default="l14-336")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num-experts", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (one forward of each model per round)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--memory-of", choices=["dense", "ours", "naive"], help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    size = SIZES[args.model]
    torch.manual_seed(0)
    pixels = torch.randn(args.batch, 3, size["image_size"], size["image_size"], device=device, dtype=dtype)
    if args.memory_of:  # child process: build the one model measured, nothing else
        if args.memory_of == "dense":
            model = CLIPVisionModel(CLIPVisionConfig(**size))
        else:
            model = CLIPMoEVisionModel(CLIPMoEVisionConfig(**size, num_experts=args.num_experts, num_experts_per_tok=args.top_k))
            if args.memory_of == "naive":
                MoEFeedForward.forward = naive_forward
        print(_measure_one(model.to(device, dtype).eval(), pixels, device))
        return None
    dense = CLIPVisionModel(CLIPVisionConfig(**size)).to(device, dtype).eval()
    moe = CLIPMoEVisionModel(CLIPMoEVisionConfig(**size, num_experts=args.num_experts, num_experts_per_tok=args.top_k)).to(device, dtype).eval()

    runs = {
        "dense": lambda: time_forward(dense, pixels, device),
        "ours": lambda: time_forward(moe, pixels, device),
        "naive": lambda: _naive(lambda: time_forward(moe, pixels, device)),
    }
    with torch.inference_mode():  # the naive loop must compute what ours computes
        ref = moe(pixel_values=pixels[:1]).last_hidden_state
        naive = _naive(lambda: moe(pixel_values=pixels[:1]).last_hidden_state)
        max_diff = (ref.float() - naive.float()).abs().max().item()

    times = {name: [] for name in runs}
    for i in range(args.warmup + args.repeats):
        for name, run in runs.items():  # interleaved, so that machine noise hits all three alike
            elapsed = run()
            if i >= args.warmup:
                times[name].append(elapsed)
    memory = {name: peak_memory_mb(name, args) for name in runs}

    median = {k: statistics.median(v) for k, v in times.items()}
    floor = flop_floor(size, args.num_experts, args.top_k)
    result = {
        "model": args.model, "batch": args.batch, "dtype": args.dtype, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "num_experts": args.num_experts, "top_k": args.top_k, "repeats": args.repeats,
        "median_s": median, "peak_memory_mb": {k: round(v, 1) for k, v in memory.items()},
        "moe_over_dense": median["ours"] / median["dense"],
        "naive_over_ours": median["naive"] / median["ours"],
        "flop_floor": floor,
        # The naive loop's time over a MoE running exactly at the FLOP floor (dense time x floor):
        # where the forward is compute-bound, the largest naive/ours any dispatch could reach.
        "naive_over_floor": median["naive"] / (median["dense"] * floor),
        "naive_max_abs_diff": max_diff,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    print(f"{args.model}, batch {args.batch}, {args.dtype} on {result['device_name']} ({args.repeats} rounds, median):")
    for name in runs:
        print(f"  {name:6s} {median[name] * 1e3:10.1f} ms   peak {result['peak_memory_mb'][name]:9.1f} MB")
    print(f"  MoE/dense {result['moe_over_dense']:.3f} (FLOP floor {result['flop_floor']:.3f}),  naive/ours {result['naive_over_ours']:.3f}"
          f",  naive/(dense x floor) {result['naive_over_floor']:.3f}")
    if args.json:
        print(json.dumps(result))
    return result


def _naive(fn):
    """fn() with every MoE layer running the official dispatch."""
    with mock.patch.object(MoEFeedForward, "forward", naive_forward):
        return fn()


if __name__ == "__main__":
    main()
