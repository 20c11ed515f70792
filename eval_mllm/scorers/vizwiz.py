"""VizWiz-VQA: local soft accuracy on val and the test-server submission file.

Same VQA soft accuracy and EvalAI normalisation as VQAv2 (``vqav2.py``: the official VQA
evaluation, which the VizWiz evaluation reuses, of the answer LLaVA submits).

VizWiz has no numeric question ids: an image has one question, and LLaVA's
question file uses the image file name as ``question_id``.  Inputs:
``--result-file`` (answers JSONL), ``--annotation-file`` (official
``val.json``: a list of ``{"image", "question", "answers": [{"answer",
"answer_confidence"}], "answerable", "answer_type"}``) for accuracy, and/or
``--question-file`` (LLaVA question JSONL with ``question_id`` and ``image``).
Without a question file, answers are matched to annotations by image name.

``--submission-out`` writes ``[{"image": "VizWiz_test_00000000.jpg",
"answer": str}]`` for every question of the question file (as LLaVA's
``convert_vizwiz_for_submission.py``), answers in the EvalAI normal form;
unanswered questions get "" and are counted (LLaVA asserts instead).
"""

from __future__ import annotations

import os

from .common import (
    ScorerInputError,
    load_answers,
    qid_key,
    read_json,
    read_questions,
    write_json,
)
from .vqav2 import score_questions, submission

BENCHMARK = "vizwiz"


def _load_annotations(path):
    data = read_json(path)
    if not isinstance(data, list):
        raise ScorerInputError(f"{path}: expected a JSON list of annotations")
    gt_of, type_of = {}, {}
    for i, ann in enumerate(data):
        for field in ("image", "answers"):
            if not isinstance(ann, dict) or field not in ann:
                raise ScorerInputError(f"{path}: entry {i}: missing field '{field}'")
        answers = ann["answers"]
        if not isinstance(answers, list) or not answers or not all(
                isinstance(a, dict) and isinstance(a.get("answer"), str)
                for a in answers):
            raise ScorerInputError(f"{path}: entry {i}: field 'answers' must be a non-empty "
                                   "list of {'answer': str}")
        gt_of[ann["image"]] = [a["answer"] for a in answers]
        type_of[ann["image"]] = ann.get("answer_type")
    return gt_of, type_of


def score(result_file, annotation_file=None, question_file=None, submission_out=None):
    if not annotation_file and not question_file:
        raise ScorerInputError("vizwiz: give --annotation-file and/or --question-file")
    if submission_out and not question_file:
        raise ScorerInputError("vizwiz: --submission-out needs --question-file (all test images)")
    gt_by_image, type_by_image = _load_annotations(annotation_file) if annotation_file else ({}, {})
    if question_file:
        questions = read_questions(question_file, {"question_id": (int, str), "image": str})
        image_of = {qid_key(q["question_id"]): os.path.basename(q["image"]) for q in questions}
    else:
        image_of = {image: image for image in gt_by_image}
    keys = list(image_of)
    answers = load_answers(result_file, keys)
    result = {"benchmark": BENCHMARK, "accuracy": None}
    if annotation_file:
        lacking = [k for k in keys if image_of[k] not in gt_by_image]
        if lacking:
            raise ScorerInputError(f"{annotation_file}: no annotation for image "
                                   f"{image_of[lacking[0]]!r} of {question_file}")
        gt_of = {k: gt_by_image[image_of[k]] for k in keys}
        type_of = {k: type_by_image[image_of[k]] for k in keys}
        result.update(score_questions(answers, gt_of, type_of))
    coverage = answers.coverage()
    if submission_out:
        entries = submission(keys, answers, lambda key, ans: {"image": image_of[key], "answer": ans})
        write_json(submission_out, entries)
        result["submission"] = submission_out
        result["n_submission_filled_empty"] = len(answers.missing)
    return {**result, **coverage}


def add_arguments(parser):
    parser.add_argument("--result-file", required=True)
    parser.add_argument("--annotation-file", help="official VizWiz val.json")
    parser.add_argument("--question-file", help="question JSONL (the question set)")
    parser.add_argument("--submission-out", help="write the test-server JSON here")


def from_args(args):
    return score(args.result_file, args.annotation_file, args.question_file, args.submission_out)
