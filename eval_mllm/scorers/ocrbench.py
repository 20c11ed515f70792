"""OCRBench, following the official OCRBench scoring.

Inputs: ``--question-file``, a JSON list (or JSONL) of ``{"id" or
"question_id", "dataset_name", "question", "answers": [str] or str, "type"}``
and ``--result-file`` (answers JSONL matched by that id).

A prediction is correct if ANY ground-truth answer is a substring of it,
after lower-casing, stripping and turning newlines into spaces on both sides.
For HME100k (handwritten math expressions: ``dataset_name`` "HME100k" or type
"Handwritten Mathematical Expression Recognition") all spaces and newlines
are removed from both and, as in the official code, case is kept.

Score = number correct (max 1000 on the full set).  Also reported: the score
scaled to 1000 when fewer questions were scored, the per-type counts and the
five groups of the official report (the six recognition types together form
"Text Recognition").
"""

from __future__ import annotations

from collections import Counter

from .common import ScorerInputError, load_answers, qid_key, read_records

BENCHMARK = "ocrbench"
HME_TYPE = "Handwritten Mathematical Expression Recognition"
RECOGNITION_TYPES = ["Regular Text Recognition", "Irregular Text Recognition",
                     "Artistic Text Recognition", "Handwriting Recognition",
                     "Digit String Recognition", "Non-Semantic Text Recognition"]
GROUPS = {"Text Recognition": RECOGNITION_TYPES,
          "Scene Text-centric VQA": ["Scene Text-centric VQA"],
          "Doc-oriented VQA": ["Doc-oriented VQA"],
          "Key Information Extraction": ["Key Information Extraction"],
          HME_TYPE: [HME_TYPE]}


def is_correct(prediction: str, answers, hme: bool) -> bool:
    if hme:
        def norm(s):
            return s.strip().replace("\n", "").replace(" ", "")
    else:
        def norm(s):
            return s.lower().strip().replace("\n", " ")
    pred = norm(prediction)
    return any(norm(answer) in pred for answer in answers)


def load_questions(path):
    records = read_records(path, {"answers": (list, str), "type": str})
    questions = {}
    for i, rec in enumerate(records):
        if "question_id" in rec:
            qid = rec["question_id"]
        elif "id" in rec:
            qid = rec["id"]
        else:
            raise ScorerInputError(f"{path}: entry {i}: missing field 'id' (or 'question_id')")
        key = qid_key(qid)
        if key in questions:
            raise ScorerInputError(f"{path}: entry {i}: duplicate id {key!r}")
        answers = rec["answers"] if isinstance(rec["answers"], list) else [rec["answers"]]
        if not all(isinstance(a, str) for a in answers):
            raise ScorerInputError(f"{path}: entry {i}: field 'answers' must hold strings")
        hme = rec.get("dataset_name") == "HME100k" or rec["type"] == HME_TYPE
        questions[key] = (answers, rec["type"], hme)
    return questions


def score(question_file, result_file):
    questions = load_questions(question_file)
    answers = load_answers(result_file, list(questions))
    per_type = Counter()
    for key, record in answers.by_key.items():
        gts, qtype, hme = questions[key]
        per_type[qtype] += is_correct(record["text"], gts, hme)
    correct = sum(per_type.values())
    n_scored = len(answers.by_key)
    return {"benchmark": BENCHMARK, "score": correct,
            "score_scaled_1000": None if n_scored == 0 else 1000.0 * correct / n_scored,
            "per_group": {g: sum(per_type[t] for t in types) for g, types in GROUPS.items()},
            "per_type": dict(sorted(per_type.items())),
            **answers.coverage()}


def add_arguments(parser):
    parser.add_argument("--question-file", required=True, help="OCRBench JSON list (or JSONL)")
    parser.add_argument("--result-file", required=True)


def from_args(args):
    return score(args.question_file, args.result_file)
