"""Published reference rows for the results table, each with its source and protocol.

Keys are our benchmark names; each value is the benchmark's headline number as published
(POPE: F1 averaged over the three splits; MME: perception score; ScienceQA: IMG accuracy;
MMBench: dev accuracy; TextVQA: val accuracy).

A row's protocol is its toolkit plus, per benchmark, the choices that move a number by more
than the differences being compared (``PROTOCOL_CHOICES``): the report marks our number
wherever it was not measured the way a reference row's was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MMBENCH_CIRCULAR = "circular evaluation"   # correct only if every option rotation is right
MMBENCH_SINGLE = "single pass"             # one answer per question: higher than circular
TEXTVQA_OCR = "with OCR tokens"            # 'Reference OCR token: ...' in the prompt (LLaVA-1.5)
TEXTVQA_NO_OCR = "without OCR tokens"      # ~12 points lower for LLaVA-1.5-7B (46.1 vs 58.2)
NOT_STATED = "protocol not stated"

PROTOCOL_CHOICES = {"mmbench": "MMBench", "textvqa": "TextVQA"}


@dataclass(frozen=True)
class ReferenceRow:
    name: str
    source: str
    toolkit: str
    scores: dict
    protocols: dict = field(default_factory=dict)  # benchmark -> one of the constants above

    def protocol_of(self, benchmark):
        return self.protocols.get(benchmark, NOT_STATED)

    def protocol(self) -> str:
        """The row's protocol in words: toolkit, then every benchmark choice it reports."""
        return "; ".join([self.toolkit] + [
            f"{label} {self.protocol_of(bench)}" for bench, label in PROTOCOL_CHOICES.items()
            if bench in self.scores])


LLAVA_ZOO = ("haotian-liu/LLaVA docs/MODEL_ZOO.md (LLaVA-1.5, full fine-tune; MMBench dev scored "
             "by the OpenCompass server, VQAv2/VizWiz test-dev by the evaluation server)")
LLAVA_TOOLKIT = "LLaVA-1.5 eval scripts"
LLAVA_PROTOCOLS = {"mmbench": MMBENCH_CIRCULAR, "textvqa": TEXTVQA_OCR}
PAPER = ("CLIP-MoE paper (arXiv 2409.19291) Table 3, LLaVA-1.5 with encoders trained on ShareGPT4V; "
         "the authors' own runs: toolkit not stated (MMStar and OCRBench suggest VLMEvalKit or "
         "lmms-eval), TextVQA without OCR tokens (46.1 for the baseline LLaVA reports as 58.2 with "
         "them), MMBench protocol not stated (the baselines' 64.3 / 67.7 equal LLaVA's circular "
         "numbers)")
PAPER_TOOLKIT = "toolkit not stated"
PAPER_PROTOCOLS = {"textvqa": TEXTVQA_NO_OCR}

REFERENCES = [
    ReferenceRow("LLaVA-1.5-7B (CLIP-L/14-336)", LLAVA_ZOO, LLAVA_TOOLKIT, {
        "vqav2": 78.5, "gqa": 62.0, "vizwiz": 50.0, "scienceqa": 66.8, "textvqa": 58.2, "pope": 85.9,
        "mme": 1510.7, "mmbench": 64.3, "mmvet": 31.1}, LLAVA_PROTOCOLS),
    ReferenceRow("LLaVA-1.5-13B (CLIP-L/14-336)", LLAVA_ZOO, LLAVA_TOOLKIT, {
        "vqav2": 80.0, "gqa": 63.3, "vizwiz": 53.6, "scienceqa": 71.6, "textvqa": 61.3, "pope": 85.9,
        "mme": 1531.3, "mmbench": 67.7, "mmvet": 36.1}, LLAVA_PROTOCOLS),
    ReferenceRow("Paper: Vicuna-7B + OpenAI CLIP-L/14-336", PAPER, PAPER_TOOLKIT, {
        "mme": 1510.7, "pope": 85.9, "mmbench": 64.3, "mmvet": 30.6, "vizwiz": 54.4, "mmstar": 33.3,
        "ocrbench": 31.2, "vqav2": 78.5, "textvqa": 46.1, "gqa": 62.0}, PAPER_PROTOCOLS),
    ReferenceRow("Paper: Vicuna-7B + CLIP-MoE", PAPER, PAPER_TOOLKIT, {
        "mme": 1486.2, "pope": 86.4, "mmbench": 66.1, "mmvet": 31.5, "vizwiz": 56.5, "mmstar": 34.1,
        "ocrbench": 31.8, "vqav2": 79.2, "textvqa": 46.8, "gqa": 62.6}, PAPER_PROTOCOLS),
    ReferenceRow("Paper: Vicuna-13B + OpenAI CLIP-L/14-336", PAPER, PAPER_TOOLKIT, {
        "mme": 1522.6, "pope": 85.9, "mmbench": 67.7, "mmvet": 35.3, "vizwiz": 56.7, "mmstar": 36.1,
        "ocrbench": 33.6, "vqav2": 80.0, "textvqa": 48.7, "gqa": 63.2}, PAPER_PROTOCOLS),
    ReferenceRow("Paper: Vicuna-13B + CLIP-MoE", PAPER, PAPER_TOOLKIT, {
        "mme": 1560.1, "pope": 86.5, "mmbench": 69.3, "mmvet": 39.5, "vizwiz": 59.2, "mmstar": 36.7,
        "ocrbench": 34.4, "vqav2": 80.0, "textvqa": 48.3, "gqa": 63.8}, PAPER_PROTOCOLS),
]
