"""results.json + results.md: our scores with their chance levels, then the published rows."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

from .references import REFERENCES
from .scorers.common import write_atomic

HEADLINE = {  # what each benchmark's headline number is, as the published tables report it
    "pope": "POPE F1", "mme": "MME-P", "textvqa": "TextVQA", "gqa": "GQA", "scienceqa": "SQA-IMG",
    "mmbench": "MMBench", "vqav2": "VQAv2", "vizwiz": "VizWiz", "mmvet": "MM-Vet",
}


def _fmt(value, digits=1):
    return "—" if value is None else f"{value:.{digits}f}"


def _coverage(metrics, generation):
    n_q = metrics.get("n_questions")
    n_s = metrics.get("n_scored")
    text = f"{n_s}/{n_q}" if n_q is not None else ""
    if generation.get("n_skipped_bad_image"):
        text += f" ({generation['n_skipped_bad_image']} skipped: bad image)"
    return text


def markdown(summary) -> str:
    names = list(summary["benchmarks"])
    lines = [f"# MLLM benchmark results: {summary['model']}", "",
             (f"Checkpoint `{summary['model_path']}`, conversation template `{summary['conv_mode']}`, "
              "greedy decoding, prompts and scoring as LLaVA-1.5's evaluation scripts.")]
    if summary.get("limit"):
        lines.append(f"**Smoke run: only the first {summary['limit']} questions of each benchmark "
                     "(not comparable with published numbers).**")
    lines += ["", "## Scores", "",
              ("Chance = the expected score of random guessing, where defined "
               "(POPE/MME: random yes/no; multiple choice: 1/#options per question, averaged)."), "",
              "| benchmark | metric | score | chance | scored/questions | note |",
              "|---|---|---:|---:|---|---|"]
    for name, b in summary["benchmarks"].items():
        for row in b["rows"]:
            lines.append(f"| {name} | {row['metric']} | {_fmt(row['value'], 2)} | {_fmt(row['chance'], 2)} "
                         f"| {_coverage(b['metrics'], b['generation'])} | {row['note']} |")
    for name, b in summary["benchmarks"].items():
        for warning in b["metrics"].get("warnings", []):
            lines.append(f"\nwarning ({name}): {warning}")
    protocols = list(dict.fromkeys((r.source, r.protocol) for r in REFERENCES))
    lines += ["", "## Published reference rows", "",
              "Headline numbers only (— = not published); the protocol column refers to the notes below.", "",
              "| model | " + " | ".join(HEADLINE.get(n, n) for n in names) + " | protocol |",
              "|---|" + "---:|" * len(names) + "---|"]
    lines.append(f"| **this run: {summary['model']}** | "
                 + " | ".join(_fmt(summary["benchmarks"][n]["headline"]) for n in names)
                 + " | this command (LLaVA-1.5 protocol) |")
    for ref in REFERENCES:
        note = protocols.index((ref.source, ref.protocol)) + 1
        lines.append(f"| {ref.name} | " + " | ".join(_fmt(ref.scores.get(n)) for n in names) + f" | [{note}] |")
    lines.append("")
    for i, (source, protocol) in enumerate(protocols, 1):
        lines.append(f"[{i}] {source}. Protocol: {protocol}.  ")
    return "\n".join(lines) + "\n"


def write_reports(summary, out_dir):
    summary = dict(summary, references=[asdict(r) for r in REFERENCES])
    # temp + rename: a crash never leaves a half-written report
    write_atomic(os.path.join(out_dir, "results.json"),
                 lambda f: json.dump(summary, f, indent=1, ensure_ascii=False))
    write_atomic(os.path.join(out_dir, "results.md"), lambda f: f.write(markdown(summary)))
