"""GQA test-dev (balanced), following LLaVA's ``scripts/convert_gqa_for_eval.py``
and the official GQA ``eval.py`` accuracy.

Inputs: ``--question-file`` (LLaVA question JSONL; its ids are the question
set), ``--result-file`` (answers JSONL) and ``--annotation-file`` (official
``testdev_balanced_questions.json``: ``{question_id: {"answer": ..., ...}}``).

A prediction is ``text.rstrip('.').lower()`` (LLaVA's conversion); it is
correct when it equals the ground-truth answer exactly.  Accuracy in percent,
over the answered questions (the official eval.py stops at an unanswered one;
``n_missing`` counts them).  An id answered twice keeps its last answer, as
eval.py's predictions dict does.
"""

from __future__ import annotations

from .common import (
    ScorerInputError,
    index_unique,
    load_answers,
    pct,
    read_json,
    read_questions,
)

BENCHMARK = "gqa"


def normalize_prediction(text: str) -> str:
    return text.rstrip(".").lower()


def score(question_file, result_file, annotation_file):
    annotations = read_json(annotation_file)
    if not isinstance(annotations, dict):
        raise ScorerInputError(f"{annotation_file}: expected an object {{question_id: {{...}}}}")
    questions = index_unique(read_questions(question_file, {"question_id": (int, str)}),
                             "question_id", question_file)
    gt_of = {}
    for key in questions:
        ann = annotations.get(key)
        if not isinstance(ann, dict) or not isinstance(ann.get("answer"), str):
            what = ("no entry" if ann is None else "missing field 'answer'"
                    if not isinstance(ann, dict) or "answer" not in ann else "field 'answer' must be str")
            raise ScorerInputError(f"{annotation_file}: question {key!r}: {what}")
        gt_of[key] = ann["answer"]
    answers = load_answers(result_file, list(questions))
    correct = sum(normalize_prediction(rec["text"]) == gt_of[key]
                  for key, rec in answers.by_key.items())
    return {"benchmark": BENCHMARK, "accuracy": pct(correct, len(answers.by_key)),
            "n_correct": correct, **answers.coverage()}


def add_arguments(parser):
    parser.add_argument("--question-file", required=True)
    parser.add_argument("--result-file", required=True)
    parser.add_argument("--annotation-file", required=True,
                        help="testdev_balanced_questions.json")


def from_args(args):
    return score(args.question_file, args.result_file, args.annotation_file)
