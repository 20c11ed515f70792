"""MLLM benchmark evaluation for CLIP-MoE."""
