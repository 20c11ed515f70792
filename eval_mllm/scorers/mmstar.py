"""MMStar: multiple choice (A-D), accuracy overall and per category.

The official rule: none that runs offline.  MMStar's authors score with
VLMEvalKit (option matching, then an LLM judge for the answers it cannot
match), and lmms-eval with its own letter-extraction heuristics (which, for
one, read "A cat" as option A).  This scorer applies the rule-based reading
below, the one of our other multiple-choice scorers, for models prompted as
LLaVA-1.5 is ("Answer with the option's letter from the given choices
directly"); on free-form answers it can score lower than either toolkit, so
compare MMStar numbers only with rows scored the same way.

Inputs: ``--question-file``, MMStar's TSV (columns index, question, answer,
category, l2_category, image) or a JSON/JSONL list of records with the same
fields, and ``--result-file`` (answers JSONL, ``question_id`` = index).

The ground truth is one letter A-D.  The prediction's letter is, first of:
the answer text is the letter or starts with "(A)", "A.", "A)" (also "A:",
"A,"); else the text contains "answer is A" (optionally "answer is: (A)").
No letter counts as wrong.  Per-category accuracy uses ``category`` (coarse
perception, fine-grained perception, instance reasoning, logical reasoning,
science & technology, math) and ``l2_category`` when present; all percent.
"""

from __future__ import annotations

import re
from collections import defaultdict

from .common import (
    ScorerInputError,
    index_unique,
    leading_option_letter,
    load_answers,
    pct,
    read_records,
    read_table,
)

BENCHMARK = "mmstar"
LETTERS = "ABCD"
# Case-insensitive phrase, capital letter: "the answer is a cat" is no "A".
_ANSWER_IS = re.compile(r"(?i:answer is):?\s*\(?([A-D])\b")


def parse_letter(text: str):
    letter = leading_option_letter(text, LETTERS)
    if letter:
        return letter
    match = _ANSWER_IS.search(text)
    return match.group(1) if match else None


def load_questions(path):
    fields = ("index", "answer", "category")
    if path.lower().endswith((".tsv", ".csv")):
        records = read_table(path, fields)
    else:
        records = read_records(path, {name: None for name in fields})
    questions = index_unique(records, "index", path)
    for key, q in questions.items():
        if str(q["answer"]).strip() not in LETTERS:
            raise ScorerInputError(f"{path}: index {key!r}: field 'answer' must be one of A-D")
    return questions


def score(question_file, result_file):
    questions = load_questions(question_file)
    answers = load_answers(result_file, list(questions))
    groups = defaultdict(list)
    for key, record in answers.by_key.items():
        q = questions[key]
        ok = parse_letter(record["text"]) == str(q["answer"]).strip()
        groups["all"].append(ok)
        groups["category:" + str(q["category"])].append(ok)
        if q.get("l2_category"):
            groups["l2:" + str(q["l2_category"])].append(ok)

    def per(prefix):
        return {g[len(prefix):]: pct(sum(v), len(v)) for g, v in sorted(groups.items())
                if g.startswith(prefix)}

    return {"benchmark": BENCHMARK, "accuracy": pct(sum(groups["all"]), len(groups["all"])),
            "per_category": per("category:"), "per_l2_category": per("l2:"),
            **answers.coverage()}


def add_arguments(parser):
    parser.add_argument("--question-file", required=True, help="MMStar TSV, JSON or JSONL")
    parser.add_argument("--result-file", required=True)


def from_args(args):
    return score(args.question_file, args.result_file)
