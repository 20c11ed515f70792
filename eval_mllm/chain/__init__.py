"""The end-to-end chain on the embedded default: DMU demo -> LLaVA (dense vs CLIP-MoE tower,
DeepSpeed scripts) -> procedural POPE/GQA/MMBench-style benchmarks -> one report.

    python -m eval_mllm.chain --out DIR [--quick]
"""
