"""ScienceQA (test split; IMG subset), following LLaVA's ``llava/eval/eval_science_qa.py``.

Inputs: ``--base-dir`` holding ``problems.json`` (``{pid: {"question",
"choices", "answer": int, "image": name or null, "split", ...}}``) and
``pid_splits.json`` (``{"test": [pid, ...]}``), ``--result-file`` (answers
JSONL, ``question_id`` = pid) and ``--split`` (default test).

Letter parsing as LLaVA (newlines first become ". "): the whole stripped text
is one of A-E; else the text starts with "<letter>. "; else it contains
"The answer is <letter>".  A letter beyond the problem's choices, or no
letter, is wrong.  As in LLaVA, a problem without an answer counts as wrong,
so both accuracies divide by all problems of the split (``n_missing`` says
how many were unanswered).  IMG accuracy is over the problems with an image.
"""

from __future__ import annotations

import os
import re

from .common import ScorerInputError, load_answers, pct, read_json

BENCHMARK = "scienceqa"
OPTIONS = "ABCDE"
_ANSWER_IS = re.compile(r"The answer is ([A-E])")


def parse_letter(text: str):
    """The option letter LLaVA reads from a prediction, or None."""
    text = text.replace("\n", ". ")
    if len(text.strip()) == 1 and text.strip() in OPTIONS:
        return text.strip()
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    match = _ANSWER_IS.search(text)
    return match.group(1) if match else None


def is_correct(text: str, problem) -> bool:
    letter = parse_letter(text)
    if letter is None or OPTIONS.index(letter) >= len(problem["choices"]):
        return False
    return OPTIONS.index(letter) == problem["answer"]


def score(base_dir, result_file, split="test"):
    problems_path = os.path.join(base_dir, "problems.json")
    splits_path = os.path.join(base_dir, "pid_splits.json")
    problems, splits = read_json(problems_path), read_json(splits_path)
    if not isinstance(splits, dict) or split not in splits:
        raise ScorerInputError(f"{splits_path}: missing field '{split}'")
    pids = [str(pid) for pid in splits[split]]
    for pid in pids:
        problem = problems.get(pid) if isinstance(problems, dict) else None
        if problem is None:
            raise ScorerInputError(f"{problems_path}: no problem {pid!r} (listed in {splits_path})")
        for field in ("choices", "answer"):
            if field not in problem:
                raise ScorerInputError(f"{problems_path}: problem {pid!r}: missing field '{field}'")
    answers = load_answers(result_file, pids)
    correct = {pid for pid, rec in answers.by_key.items() if is_correct(rec["text"], problems[pid])}
    with_image = [pid for pid in pids if problems[pid].get("image")]
    n_img_correct = sum(pid in correct for pid in with_image)
    return {"benchmark": BENCHMARK,
            "accuracy": pct(len(correct), len(pids)),
            "img_accuracy": pct(n_img_correct, len(with_image)),
            "n_correct": len(correct), "n_img": len(with_image), "n_img_correct": n_img_correct,
            "missing_counted_wrong": True,
            **answers.coverage()}


def add_arguments(parser):
    parser.add_argument("--base-dir", required=True, help="folder with problems.json, pid_splits.json")
    parser.add_argument("--result-file", required=True)
    parser.add_argument("--split", default="test")


def from_args(args):
    return score(args.base_dir, args.result_file, args.split)
