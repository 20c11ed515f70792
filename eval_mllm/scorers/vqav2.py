"""VQAv2: local soft accuracy on val and the test-server submission file.

Accuracy: what the official VQA evaluation (``vqaEval.py``, run by the
EvalAI server) gives for the answer LLaVA submits.  LLaVA's submission holds
the prediction in the EvalAI normal form (``vqa_normalize``); the official
evaluation then (1) turns newlines/tabs into spaces, strips, and applies
its punctuation and digit/article steps to that answer; (2) applies the
punctuation step (only) to the ground-truth answers, and only when they are
not all identical; (3) for each of the n (10) ground-truth answers, acc_i =
min(1, #(the other n-1 answers equal to the answer) / 3); the question's
score is the mean of acc_i.  Reported in percent, overall and per
``answer_type``.  (TextVQA's m4c rule, ``vqa_accuracy``, normalises every
ground-truth answer fully; the two differ only on ground truth that is not
already in normal form.)

Inputs: ``--result-file`` (answers JSONL, question ids = VQAv2 question ids),
``--annotation-file`` (official ``v2_mscoco_val2014_annotations.json``) for
accuracy and/or ``--question-file`` (LLaVA question JSONL).  The question set
is the question file when given, else every annotated question.

``--submission-out`` writes ``[{"question_id": int, "answer": str}]`` for every
question of the question file (for the test server: the full test2015 list,
as LLaVA's ``convert_vqav2_for_submission.py`` does), answers in the EvalAI
normal form, unanswered questions filled with "" and counted.
"""

from __future__ import annotations

from collections import defaultdict

from .common import (
    ScorerInputError,
    load_answers,
    mean,
    qid_key,
    read_json,
    read_questions,
    write_json,
)
from .vqa_normalize import digits_and_articles, normalize_answer, strip_punctuation

BENCHMARK = "vqav2"


def _soft_accuracy(answer, gts):
    accs = []
    for i in range(len(gts)):
        matches = sum(1 for j, gt in enumerate(gts) if j != i and gt == answer)
        accs.append(min(1.0, matches / 3))
    return sum(accs) / len(accs)


def official_vqa_accuracy(prediction: str, gt_answers) -> float:
    """The official VQA evaluation's accuracy (0..1) of the answer LLaVA submits."""
    answer = normalize_answer(prediction).replace("\n", " ").replace("\t", " ").strip()
    answer = digits_and_articles(strip_punctuation(answer))
    gts = list(gt_answers)
    if len(set(gts)) > 1:
        gts = [strip_punctuation(gt) for gt in gts]
    return _soft_accuracy(answer, gts)


def vqa_accuracy(prediction: str, gt_answers) -> float:
    """VQA soft accuracy (0..1), TextVQA's m4c rule: prediction and every ground-truth answer
    in the EvalAI normal form, then the leave-one-out soft score."""
    return _soft_accuracy(normalize_answer(prediction), [normalize_answer(a) for a in gt_answers])


def score_questions(answers, gt_of, type_of):
    """Accuracy over the answered questions.

    ``gt_of``: key -> list of ground-truth answer strings; ``type_of``: key ->
    answer type (or None).
    """
    per_type = defaultdict(list)
    scores = []
    for key, record in answers.by_key.items():
        acc = official_vqa_accuracy(record["text"], gt_of[key])
        scores.append(acc)
        if type_of.get(key) is not None:
            per_type[type_of[key]].append(acc)
    accuracy = mean(scores)
    return {"accuracy": None if accuracy is None else 100.0 * accuracy,
            "per_answer_type": {t: 100.0 * mean(v) for t, v in sorted(per_type.items())}}


def submission(question_keys, answers, make_entry):
    """Entries for every question key, "" for unanswered ones."""
    return [make_entry(key, normalize_answer(answers.by_key[key]["text"])
                       if key in answers.by_key else "")
            for key in question_keys]


def _load_annotations(path):
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ScorerInputError(f"{path}: missing field 'annotations'")
    gt_of, type_of = {}, {}
    for i, ann in enumerate(data["annotations"]):
        for field in ("question_id", "answers"):
            if not isinstance(ann, dict) or field not in ann:
                raise ScorerInputError(f"{path}: annotations[{i}]: missing field '{field}'")
        answers = ann["answers"]
        if not isinstance(answers, list) or not answers or not all(
                isinstance(a, dict) and isinstance(a.get("answer"), str)
                for a in answers):
            raise ScorerInputError(f"{path}: annotations[{i}]: field 'answers' must be a "
                                   "non-empty list of {'answer': str}")
        key = qid_key(ann["question_id"])
        gt_of[key] = [a["answer"] for a in answers]
        type_of[key] = ann.get("answer_type")
    return gt_of, type_of


def _int_id(value, path):
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ScorerInputError(f"{path}: question_id {value!r} is not an integer "
                               "(the VQAv2 server takes integer ids)") from None


def score(result_file, annotation_file=None, question_file=None, submission_out=None):
    if not annotation_file and not question_file:
        raise ScorerInputError("vqav2: give --annotation-file and/or --question-file")
    if submission_out and not question_file:
        raise ScorerInputError("vqav2: --submission-out needs --question-file (all test ids)")
    gt_of, type_of = _load_annotations(annotation_file) if annotation_file else ({}, {})
    if question_file:
        questions = read_questions(question_file, {"question_id": (int, str)})
        ids = {qid_key(q["question_id"]): q["question_id"] for q in questions}
        keys = list(ids)
    else:
        keys = list(gt_of)
    answers = load_answers(result_file, keys)
    result = {"benchmark": BENCHMARK, "accuracy": None}
    if annotation_file:
        lacking = [k for k in keys if k not in gt_of]
        if lacking:
            raise ScorerInputError(f"{annotation_file}: no annotation for question_id "
                                   f"{lacking[0]!r} of {question_file}")
        result.update(score_questions(answers, gt_of, type_of))
    coverage = answers.coverage()
    if submission_out:
        entries = submission(keys, answers, lambda key, ans: {
            "question_id": _int_id(ids[key], question_file), "answer": ans})
        write_json(submission_out, entries)
        result["submission"] = submission_out
        result["n_submission_filled_empty"] = len(answers.missing)
    return {**result, **coverage}


def add_arguments(parser):
    parser.add_argument("--result-file", required=True)
    parser.add_argument("--annotation-file", help="v2_mscoco_val2014_annotations.json")
    parser.add_argument("--question-file", help="question JSONL (the question set)")
    parser.add_argument("--submission-out", help="write the test-server JSON here")


def from_args(args):
    return score(args.result_file, args.annotation_file, args.question_file, args.submission_out)
