"""results.json + results.md: our scores with their chance levels, then the published rows."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

from .benchmarks import REGISTRY
from .references import (
    MMBENCH_CIRCULAR,
    MMBENCH_SINGLE,
    PROTOCOL_CHOICES,
    REFERENCES,
    TEXTVQA_NO_OCR,
    TEXTVQA_OCR,
)
from .scorers.common import write_atomic

RUN_TOOLKIT = "this command (LLaVA-1.5 eval scripts' prompts and scoring)"


def _fmt(value, digits=1):
    return "—" if value is None else f"{value:.{digits}f}"


def _coverage(metrics, generation):
    n_q = metrics.get("n_questions")
    n_s = metrics.get("n_scored")
    text = f"{n_s}/{n_q}" if n_q is not None else ""
    if generation.get("n_skipped_bad_image"):
        text += f" ({generation['n_skipped_bad_image']} skipped: bad image)"
    return text


def run_protocols(summary) -> dict:
    """How this run measured each benchmark whose protocol choice changes its number
    (``references.PROTOCOL_CHOICES``), read from the scores themselves."""
    benchmarks, protocols = summary["benchmarks"], {}
    if "mmbench" in benchmarks:
        circular = benchmarks["mmbench"]["metrics"].get("circular")
        protocols["mmbench"] = MMBENCH_CIRCULAR if circular else MMBENCH_SINGLE
    if "textvqa" in benchmarks:
        metrics = benchmarks["textvqa"]["metrics"]
        n, k = metrics.get("n_prompts", 0), metrics.get("n_prompts_with_ocr_tokens", 0)
        protocols["textvqa"] = ("unknown (no answer records its prompt)" if not n else
                                TEXTVQA_OCR if k == n else
                                TEXTVQA_NO_OCR if k == 0 else f"mixed ({k} of {n} prompts with OCR tokens)")
    return protocols


def _unlike_notes(names, protocols, sources):
    """``{benchmark: (mark, note)}`` for each of our numbers measured unlike some reference row's:
    the mark goes beside our number, the note under the table names those rows (by their
    source's footnote) and how they measured it."""
    notes = {}
    for name in names:
        if name not in protocols:
            continue
        unlike = {}
        for ref in REFERENCES:
            if name in ref.scores and ref.protocol_of(name) != protocols[name]:
                refs = unlike.setdefault(ref.protocol_of(name), [])
                refs += [] if ref.source in refs else [ref.source]
        if unlike:
            mark = f"({chr(ord('a') + len(notes))})"
            others = "; ".join(
                ", ".join(f"[{sources.index(source) + 1}]" for source in refs) + f": {protocol}"
                for protocol, refs in unlike.items())
            note = (f"{mark} {PROTOCOL_CHOICES[name]} of this run: {protocols[name]}; "
                    f"reference rows measured otherwise (not like with like): {others}.")
            notes[name] = (mark, note)
    return notes


def _reference_table(summary, names):
    protocols = run_protocols(summary)
    sources = list(dict.fromkeys(r.source for r in REFERENCES))
    unlike = _unlike_notes(names, protocols, sources)
    run_protocol = "; ".join([RUN_TOOLKIT] + [f"{PROTOCOL_CHOICES[n]} {protocols[n]}"
                                              for n in names if n in protocols])
    cells = [_fmt(summary["benchmarks"][n]["headline"]) + (f" {unlike[n][0]}" if n in unlike else "")
             for n in names]
    lines = ["", "## Published reference rows", "",
             ("Headline numbers only (— = not published). Every row names its protocol; a lettered "
              "mark beside our number means some rows measured that benchmark otherwise (see below)."),
             "", "| model | " + " | ".join(REGISTRY[n].headline for n in names) + " | protocol |",
             "|---|" + "---:|" * len(names) + "---|",
             f"| **this run: {summary['model']}** | " + " | ".join(cells) + f" | {run_protocol} |"]
    for ref in REFERENCES:
        lines.append(f"| {ref.name} | " + " | ".join(_fmt(ref.scores.get(n)) for n in names)
                     + f" | {ref.protocol()} [{sources.index(ref.source) + 1}] |")
    lines.append("")
    lines += [note + "  " for _, note in unlike.values()]
    lines += [f"[{i}] {source}.  " for i, source in enumerate(sources, 1)]
    return lines


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
    lines += _reference_table(summary, names)
    return "\n".join(lines) + "\n"


def write_reports(summary, out_dir):
    summary = dict(summary, protocols=run_protocols(summary),
                   references=[dict(asdict(r), protocol=r.protocol()) for r in REFERENCES])
    # temp + rename: a crash never leaves a half-written report
    write_atomic(os.path.join(out_dir, "results.json"),
                 lambda f: json.dump(summary, f, indent=1, ensure_ascii=False))
    write_atomic(os.path.join(out_dir, "results.md"), lambda f: f.write(markdown(summary)))
