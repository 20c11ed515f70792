"""Published reference rows for the results table, each with its source and protocol.

Keys are our benchmark names; each value is the benchmark's headline number as published
(POPE: F1 averaged over the three splits; MME: perception score; ScienceQA: IMG accuracy;
MMBench: dev accuracy (OpenCompass circular evaluation); TextVQA: val accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReferenceRow:
    name: str
    source: str
    protocol: str
    scores: dict


LLAVA_ZOO = "haotian-liu/LLaVA docs/MODEL_ZOO.md (LLaVA-1.5, full fine-tune)"
LLAVA_PROTOCOL = ("LLaVA-1.5 eval scripts (TextVQA with OCR tokens; MMBench via OpenCompass "
                  "circular eval; VQAv2/VizWiz test-dev via server)")
PAPER = "CLIP-MoE paper (arXiv 2409.19291) Table 3, LLaVA-1.5 with encoders trained on ShareGPT4V"
PAPER_PROTOCOL = ("paper's own runs; TextVQA evidently without OCR tokens (46.1 vs 58.2 for the same "
                  "7B baseline) - not directly comparable to the model-zoo rows")

REFERENCES = [
    ReferenceRow("LLaVA-1.5-7B (CLIP-L/14-336)", LLAVA_ZOO, LLAVA_PROTOCOL, {
        "vqav2": 78.5, "gqa": 62.0, "vizwiz": 50.0, "scienceqa": 66.8, "textvqa": 58.2, "pope": 85.9,
        "mme": 1510.7, "mmbench": 64.3, "mmvet": 31.1}),
    ReferenceRow("LLaVA-1.5-13B (CLIP-L/14-336)", LLAVA_ZOO, LLAVA_PROTOCOL, {
        "vqav2": 80.0, "gqa": 63.3, "vizwiz": 53.6, "scienceqa": 71.6, "textvqa": 61.3, "pope": 85.9,
        "mme": 1531.3, "mmbench": 67.7, "mmvet": 36.1}),
    ReferenceRow("Paper: Vicuna-7B + OpenAI CLIP-L/14-336", PAPER, PAPER_PROTOCOL, {
        "mme": 1510.7, "pope": 85.9, "mmbench": 64.3, "mmvet": 30.6, "vizwiz": 54.4, "mmstar": 33.3,
        "ocrbench": 31.2, "vqav2": 78.5, "textvqa": 46.1, "gqa": 62.0}),
    ReferenceRow("Paper: Vicuna-7B + CLIP-MoE", PAPER, PAPER_PROTOCOL, {
        "mme": 1486.2, "pope": 86.4, "mmbench": 66.1, "mmvet": 31.5, "vizwiz": 56.5, "mmstar": 34.1,
        "ocrbench": 31.8, "vqav2": 79.2, "textvqa": 46.8, "gqa": 62.6}),
    ReferenceRow("Paper: Vicuna-13B + OpenAI CLIP-L/14-336", PAPER, PAPER_PROTOCOL, {
        "mme": 1522.6, "pope": 85.9, "mmbench": 67.7, "mmvet": 35.3, "vizwiz": 56.7, "mmstar": 36.1,
        "ocrbench": 33.6, "vqav2": 80.0, "textvqa": 48.7, "gqa": 63.2}),
    ReferenceRow("Paper: Vicuna-13B + CLIP-MoE", PAPER, PAPER_PROTOCOL, {
        "mme": 1560.1, "pope": 86.5, "mmbench": 69.3, "mmvet": 39.5, "vizwiz": 59.2, "mmstar": 36.7,
        "ocrbench": 34.4, "vqav2": 80.0, "textvqa": 48.3, "gqa": 63.8}),
]
