"""The end-to-end chain on the embedded default: encoder demo (DMU) -> LLaVA (dense vs CLIP-MoE
tower, DeepSpeed scripts) -> procedural POPE/GQA/MMBench-style benchmarks -> one report.

    clipmoe-demo chain --out DIR [--quick]
"""
