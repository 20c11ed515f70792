"""TextVQA val, following LLaVA's ``llava/eval/eval_textvqa.py`` (m4c evaluator).

Inputs: ``--annotation-file`` (official ``TextVQA_0.5.1_val.json``:
``{"data": [{"question_id", "image_id", "question", "answers": [10 str]}]}``),
``--result-file`` (answers JSONL) and optionally ``--question-file``.

Matching an answer to an annotation:

1. by ``question_id`` when the answer's id is a TextVQA question id;
2. else as LLaVA does, by ``(image_id, question)``: the question is recovered
   from the answer's ``prompt`` (its first line, or the line after a leading
   "Reference OCR token:" line, lower-cased) and the image id is the image
   file stem of that question id in ``--question-file``, or the answer's
   ``question_id`` itself (LLaVA's TextVQA question file uses the image id as
   question id).

The question set is the question file's questions (resolved the same way)
when given, else the whole annotation file.  Accuracy: the VQA soft accuracy
(``vqav2.vqa_accuracy``: EvalAI normalisation, leave-one-out over the 10
answers, min(1, matches/3)), in percent, over the answered questions (as
LLaVA's eval_textvqa.py).  One difference only on malformed files: an id
answered twice keeps its last answer here, where LLaVA's script scores both.

The protocol is reported with the score: ``n_prompts_with_ocr_tokens`` of the
``n_prompts`` scored answers that record their prompt held the reference OCR
tokens (LLaVA-1.5's published 58.2 for 7B is with them; without them it is
about 12 points lower, as in the CLIP-MoE paper's table).
"""

from __future__ import annotations

import os
import re

from ..prompts import SHORT_ANSWER
from .common import (
    ScorerInputError,
    check_fields,
    load_answers,
    mean,
    qid_key,
    read_json,
    read_questions,
)
from .vqav2 import vqa_accuracy

BENCHMARK = "textvqa"
ANNOTATION_FIELDS = {"question_id": (int, str), "image_id": (int, str), "question": str,
                     "answers": list}
INSTRUCTION = SHORT_ANSWER


def build_textvqa_prompt(question: str, ocr_tokens) -> str:
    """The LLaVA-1.5 TextVQA prompt, with the reference OCR tokens if any."""
    if ocr_tokens:
        return f"{question}\nReference OCR token: {', '.join(ocr_tokens)}\n{INSTRUCTION}"
    return f"{question}\n{INSTRUCTION}"


def prompt_question(prompt: str) -> str:
    """The question inside a TextVQA prompt, lower-cased (LLaVA's prompt_processor)."""
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        if match:
            return match.group(1).lower().strip()
    lines = prompt.split("\n")
    if lines[0].startswith("Reference OCR token:") and len(lines) > 1:
        return lines[1].lower().strip()
    return lines[0].lower().strip()


def has_ocr_tokens(prompt: str) -> bool:
    """Whether a TextVQA prompt gives the model the reference OCR tokens (LLaVA-1.5's
    'Reference OCR token:' line, or the older 'OCR tokens: ...' prompt)."""
    return prompt.startswith("OCR tokens: ") or any(
        line.startswith("Reference OCR token:") for line in prompt.split("\n"))


def _load_annotations(path):
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ScorerInputError(f"{path}: missing field 'data'")
    by_qid, by_pair = {}, {}
    for i, ann in enumerate(data["data"]):
        check_fields(ann, ANNOTATION_FIELDS, path, f"data[{i}]")
        if not ann["answers"] or not all(isinstance(a, str) for a in ann["answers"]):
            raise ScorerInputError(f"{path}: data[{i}]: field 'answers' must be a non-empty "
                                   "list of strings")
        key = qid_key(ann["question_id"])
        by_qid[key] = ann
        by_pair.setdefault((str(ann["image_id"]), ann["question"].lower().strip()), key)
    return by_qid, by_pair


def score(annotation_file, result_file, question_file=None):
    by_qid, by_pair = _load_annotations(annotation_file)
    image_id_of, keys = {}, list(by_qid)
    if question_file:
        questions = read_questions(question_file, {"question_id": (int, str), "image": str,
                                                   "text": str})
        keys = []
        for i, q in enumerate(questions):
            qid = qid_key(q["question_id"])
            image_id_of[qid] = os.path.splitext(os.path.basename(q["image"]))[0]
            key = qid if qid in by_qid else by_pair.get((image_id_of[qid], prompt_question(q["text"])))
            if key is None:
                raise ScorerInputError(f"{question_file}: line {i + 1}: no annotation in "
                                       f"{annotation_file} for this question")
            keys.append(key)
        keys = list(dict.fromkeys(keys))

    def key_of(record):
        qid = qid_key(record["question_id"])
        if qid in by_qid:
            return qid
        prompt = record.get("prompt")
        if not isinstance(prompt, str):
            return None
        return by_pair.get((image_id_of.get(qid, qid), prompt_question(prompt)))

    answers = load_answers(result_file, keys, key_of)
    scores = [vqa_accuracy(rec["text"], by_qid[key]["answers"])
              for key, rec in answers.by_key.items()]
    accuracy = mean(scores)
    prompts = [rec["prompt"] for rec in answers.by_key.values() if isinstance(rec.get("prompt"), str)]
    return {"benchmark": BENCHMARK, "accuracy": None if accuracy is None else 100.0 * accuracy,
            "n_prompts": len(prompts),
            "n_prompts_with_ocr_tokens": sum(map(has_ocr_tokens, prompts)),
            **answers.coverage()}


def add_arguments(parser):
    parser.add_argument("--annotation-file", required=True, help="TextVQA_0.5.1_val.json")
    parser.add_argument("--result-file", required=True)
    parser.add_argument("--question-file", help="question JSONL (question set; image ids)")


def from_args(args):
    return score(args.annotation_file, args.result_file, args.question_file)
