"""results.md compares like with like: every reference row names its protocol, and our number
carries a mark wherever some reference row measured that benchmark another way."""

import json
import re

import pytest

from eval_mllm.references import REFERENCES
from eval_mllm.report import markdown, run_protocols, write_reports


def _bench(headline, metrics):
    return {"headline": headline, "rows": [], "metrics": metrics, "generation": {}}


def _summary(mmbench_circular, textvqa_ocr_prompts, n_prompts=4):
    return {"model": "ours", "model_path": "/models/ours", "conv_mode": "vicuna_v1", "limit": None,
            "benchmarks": {
                "pope": _bench(80.0, {}),
                "mmbench": _bench(40.0, {"circular": mmbench_circular}),
                "textvqa": _bench(50.0, {"n_prompts": n_prompts,
                                         "n_prompts_with_ocr_tokens": textvqa_ocr_prompts})}}


def _table(md):
    """{model: (cells, protocol)} of the reference table, and the lines under it."""
    rows, notes = {}, []
    for line in md.split("## Published reference rows")[1].splitlines():
        if line.startswith("| ") and not line.startswith("| model"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = (cells[1:-1], cells[-1])
        elif re.match(r"^\((a|b|c)\) ", line):
            notes.append(line.rstrip())
    return rows, notes


def test_single_pass_mmbench_is_marked_against_circular_rows():
    rows, notes = _table(markdown(_summary(mmbench_circular=False, textvqa_ocr_prompts=4)))
    ours, protocol = rows["**this run: ours**"]
    assert ours == ["80.0", "40.0 (a)", "50.0 (b)"]  # POPE F1, MMBench, TextVQA
    assert "MMBench single pass" in protocol and "TextVQA with OCR tokens" in protocol
    mmbench_note = next(n for n in notes if n.startswith("(a)"))
    assert "single pass" in mmbench_note and "[1]: circular evaluation" in mmbench_note
    assert "[2]: protocol not stated" in mmbench_note
    textvqa_note = next(n for n in notes if n.startswith("(b)"))
    assert "[2]: without OCR tokens" in textvqa_note and "[1]" not in textvqa_note


def test_same_protocol_is_not_marked():
    rows, notes = _table(markdown(_summary(mmbench_circular=True, textvqa_ocr_prompts=0)))
    ours = rows["**this run: ours**"][0]
    # circular MMBench: unlike only the paper rows, whose protocol is not stated
    assert ours[0] == "80.0"
    assert next(n for n in notes if n.startswith("(a)")).endswith("[2]: protocol not stated.")
    # no OCR tokens: like the paper rows, unlike LLaVA's
    assert next(n for n in notes if n.startswith("(b)")).endswith("[1]: with OCR tokens.")


def test_every_reference_row_names_its_protocol():
    rows, _ = _table(markdown(_summary(mmbench_circular=True, textvqa_ocr_prompts=4)))
    for ref in REFERENCES:
        protocol = rows[ref.name][1]
        assert protocol.startswith(ref.toolkit) and re.search(r"\[\d\]$", protocol)
        assert f"TextVQA {ref.protocol_of('textvqa')}" in protocol
        assert f"MMBench {ref.protocol_of('mmbench')}" in protocol
    assert "TextVQA with OCR tokens" in rows["LLaVA-1.5-7B (CLIP-L/14-336)"][1]
    assert "TextVQA without OCR tokens" in rows["Paper: Vicuna-7B + CLIP-MoE"][1]
    assert "LLaVA-1.5 eval scripts" in rows["LLaVA-1.5-13B (CLIP-L/14-336)"][1]


@pytest.mark.parametrize("with_ocr, expected", [(4, "with OCR tokens"), (0, "without OCR tokens"),
                                                (1, "mixed (1 of 4 prompts with OCR tokens)")])
def test_textvqa_protocol_read_from_the_prompts(with_ocr, expected):
    assert run_protocols(_summary(True, with_ocr))["textvqa"] == expected


def test_results_json_records_the_protocols(tmp_path):
    write_reports(_summary(mmbench_circular=False, textvqa_ocr_prompts=4), str(tmp_path))
    with open(tmp_path / "results.json", encoding="utf-8") as f:
        results = json.load(f)
    assert results["protocols"] == {"mmbench": "single pass", "textvqa": "with OCR tokens"}
    assert [r["protocol"] for r in results["references"]] == [r.protocol() for r in REFERENCES]
    assert results["references"][0]["protocols"]["mmbench"] == "circular evaluation"
