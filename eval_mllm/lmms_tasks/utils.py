"""Offline lmms-eval tasks for our local data, scored with LLaVA-1.5's answer parsing.

The document fields are those of the lmms-lab datasets on the HF hub, so a dataset saved with
`load_dataset(...).save_to_disk(DIR)` on a connected machine loads here with
`dataset_kwargs: {load_from_disk: True}`. Answers are read with eval_mllm.scorers (the LLaVA
protocol: first-sentence yes/no for POPE, MME's first-4-characters rule, ScienceQA/MMBench letter
parsing, VQA soft accuracy), not lmms-eval's exact match, and nothing calls an API.
"""

from __future__ import annotations

from collections import defaultdict

from eval_mllm.prompts import MULTIPLE_CHOICE, SHORT_ANSWER
from eval_mllm.scorers import mme as _mme
from eval_mllm.scorers import pope as _pope
from eval_mllm.scorers import scienceqa as _sqa
from eval_mllm.scorers.gqa import normalize_prediction
from eval_mllm.scorers.mmbench import absent, is_round_correct, options_of
from eval_mllm.scorers.textvqa import build_textvqa_prompt
from eval_mllm.scorers.vqav2 import vqa_accuracy

# The YAMLs' post_prompt defaults (tests/eval_mllm/test_benchmarks.py checks the YAMLs against them).
SHORT_ANSWER_POST = "\n" + SHORT_ANSWER
LETTER_ANSWER = "\n" + MULTIPLE_CHOICE
LETTERS = "ABCDE"


def _kw(kwargs, name, default):
    return (kwargs or {}).get(name, default)


def doc_to_visual(doc):
    """The doc's image (every task but ScienceQA, whose docs may have none)."""
    return [doc["image"].convert("RGB")]


def question_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    """pre_prompt + question + post_prompt, the prompts from the YAML (POPE, MME)."""
    kw = lmms_eval_specific_kwargs
    return f"{_kw(kw, 'pre_prompt', '')}{doc['question'].strip()}{_kw(kw, 'post_prompt', '')}"


# ----------------------------------------------------------------------------------------- POPE


def pope_process_results(doc, results):
    record = {"split": doc.get("category", "all"), "pred": _pope.parse_yes_no(results[0]),
              "label": str(doc["answer"]).strip().lower()}
    return {name: record for name in ("pope_accuracy", "pope_f1", "pope_yes_ratio")}


def _pope_splits(results):
    by_split = defaultdict(list)
    for r in results:
        by_split[r["split"]].append((r["pred"], r["label"]))
    # LLaVA reports per split; the POPE number is their mean (as eval_mllm.scorers.pope).
    return [_pope.split_metrics(pairs) for pairs in by_split.values()]


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def pope_aggregate_accuracy(results):
    return _mean([m["accuracy"] for m in _pope_splits(results)])


def pope_aggregate_f1(results):
    return _mean([m["f1"] for m in _pope_splits(results)])


def pope_aggregate_yes_ratio(results):
    return _mean([m["yes_ratio"] for m in _pope_splits(results)])


# ------------------------------------------------------------------------------------------ MME


def mme_process_results(doc, results):
    image = doc.get("question_id") or doc.get("image_path") or str(doc.get("image_id", ""))
    image = str(image).split("#")[0]
    record = {"category": doc["category"], "image": image,
              "gt": str(doc["answer"]).strip().lower(), "pred": results[0]}
    return {"mme_perception_score": record, "mme_cognition_score": record}


def _mme_total(results, subtasks):
    rows = defaultdict(list)
    for r in results:
        if r["category"] in subtasks:
            rows[r["category"]].append((r["image"], r["gt"], r["pred"]))
    return sum(_mme.subtask_metrics(v)["score"] or 0.0 for v in rows.values())


def mme_aggregate_perception(results):
    return _mme_total(results, _mme.PERCEPTION)


def mme_aggregate_cognition(results):
    return _mme_total(results, _mme.COGNITION)


# -------------------------------------------------------------------------------------- TextVQA


def textvqa_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    # LLaVA-1.5's TextVQA protocol gives the reference OCR tokens (58.2 for 1.5-7B; ~46 without).
    ocr = doc.get("ocr_tokens") if _kw(lmms_eval_specific_kwargs, "ocr", True) else None
    return build_textvqa_prompt(doc["question"].capitalize(), ocr)


def textvqa_process_results(doc, results):
    return {"textvqa_accuracy": 100.0 * vqa_accuracy(results[0], list(doc["answers"]))}


# ------------------------------------------------------------------------------------------ GQA


def gqa_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kw = lmms_eval_specific_kwargs
    return f"{_kw(kw, 'pre_prompt', '')}{doc['question']}{_kw(kw, 'post_prompt', SHORT_ANSWER_POST)}"


def gqa_process_results(doc, results):
    return {"gqa_accuracy": 100.0 * (normalize_prediction(results[0].strip()) == str(doc["answer"]))}


# ------------------------------------------------------------------------------------ ScienceQA


def sqa_doc_to_visual(doc):
    return doc_to_visual(doc) if doc.get("image") is not None else []


def sqa_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    # LLaVA's convert_sqa_to_llava layout: Context, Question, Options (A) ..., then the instruction.
    context = doc.get("hint") or "N/A"
    options = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(doc["choices"]))
    post = _kw(lmms_eval_specific_kwargs, "post_prompt", LETTER_ANSWER)
    return f"Context: {context}\nQuestion: {doc['question']}\nOptions: {options}{post}"


def sqa_process_results(doc, results):
    # Stripped as LLaVA's model_vqa_science writes its outputs.
    ok = _sqa.is_correct(results[0].strip(), {"choices": doc["choices"], "answer": int(doc["answer"])})
    return {"sqa_img_accuracy": 100.0 * ok}


# -------------------------------------------------------------------------------------- MMBench


def _mmbench_options(doc):
    return options_of(doc, "ABCD")  # LLaVA's model_vqa_mmbench asks A-D only


def mmbench_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    text = doc["question"] if absent(doc.get("hint")) else f"{doc['hint']}\n{doc['question']}"
    for letter, option in zip(LETTERS, _mmbench_options(doc)):
        text += f"\n{letter}. {option}"
    return text + _kw(lmms_eval_specific_kwargs, "post_prompt", LETTER_ANSWER)


def mmbench_process_results(doc, results):
    gt = LETTERS.index(str(doc["answer"]).strip()) if not absent(doc.get("answer")) else None
    # Single pass: round 0, the options as the TSV lists them.
    ok = is_round_correct(results[0], _mmbench_options(doc), 0, gt)
    return {"mmbench_accuracy": 100.0 * ok}
