"""MM-Vet and LLaVA-Bench (in-the-Wild): benchmarks scored by a GPT judge.

Nothing here computes a score: these modules only write the files the judges
take and return ``{"benchmark", "score": None, "status": "needs GPT judge:
submit <file>"}`` with the coverage counts.

* MM-Vet: one JSON object ``{"v1_<question_id>": answer_text}`` for the
  official MM-Vet grader (as LLaVA's ``convert_mmvet_for_eval.py``; ids that
  already start with "v1_" are kept).
* LLaVA-Bench: the answers JSONL in LLaVA's format, one line per question in
  question-file order, for ``llava/eval/eval_gpt_review_bench.py`` (which
  pairs questions and answers by line position, hence the order).

With a question file, unanswered questions get an empty answer (so the
judge sees the whole set and the files line up) and are counted.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

from .common import (
    ScorerInputError,
    index_unique,
    load_answers,
    qid_key,
    read_answers,
    read_questions,
    write_atomic,
    write_json,
)


def _status(benchmark, path, coverage):
    return {"benchmark": benchmark, "score": None,
            "status": f"needs GPT judge: submit {path}", "submission": path, **coverage}


def _answers(question_file, result_file):
    """(ordered question keys or None, matched answers)."""
    if question_file:
        questions = index_unique(read_questions(question_file, {"question_id": (int, str)}),
                                 "question_id", question_file)
        return questions, load_answers(result_file, list(questions))
    records, _, _ = read_answers(result_file)
    keys = list(dict.fromkeys(qid_key(r["question_id"]) for r in records))
    return None, load_answers(result_file, keys)


def score_mmvet(result_file, submission_out, question_file=None):
    questions, answers = _answers(question_file, result_file)
    out = {}
    for key in (questions if questions is not None else answers.by_key):
        name = key if key.startswith("v1_") else f"v1_{key}"
        out[name] = answers.text(key) if key in answers.by_key else ""
    write_json(submission_out, out)
    return _status("mmvet", submission_out, answers.coverage())


def score_llavabench(result_file, submission_out, question_file):
    if not question_file:
        raise ScorerInputError("llavabench: --question-file is needed (the judge pairs by order)")
    questions, answers = _answers(question_file, result_file)

    def write(f):
        for key, q in questions.items():
            record = answers.by_key.get(key) or {
                "question_id": q["question_id"], "prompt": q.get("text", ""), "text": "",
                "answer_id": None, "model_id": None, "metadata": {"missing": True}}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    write_atomic(submission_out, write, "--submission-out")
    return _status("llavabench", submission_out, answers.coverage())


def _add_common(parser, question_required):
    parser.add_argument("--result-file", required=True)
    parser.add_argument("--question-file", required=question_required)
    parser.add_argument("--submission-out", required=True, help="file to write for the judge")


mmvet = SimpleNamespace(
    __doc__="MM-Vet: write the {v1_<id>: answer} JSON for the GPT grader (no score).",
    score=score_mmvet,
    add_arguments=lambda parser: _add_common(parser, question_required=False),
    from_args=lambda args: score_mmvet(args.result_file, args.submission_out, args.question_file),
)

llavabench = SimpleNamespace(
    __doc__="LLaVA-Bench: write the answers JSONL for eval_gpt_review_bench.py (no score).",
    score=score_llavabench,
    add_arguments=lambda parser: _add_common(parser, question_required=True),
    from_args=lambda args: score_llavabench(args.result_file, args.submission_out,
                                            args.question_file),
)
