"""ScienceQA (test split; IMG subset), exactly as LLaVA's ``llava/eval/eval_science_qa.py``.

Inputs: ``--base-dir`` holding ``problems.json`` (``{pid: {"question",
"choices", "answer": int, "image": name or null, "split", ...}}``) and
``pid_splits.json`` (``{"test": [pid, ...]}``), ``--result-file`` (answers
JSONL, ``question_id`` = pid, ``prompt`` as written by the generator) and
``--split`` (default test).

The official rule (LLaVA), applied to the answer text as written:

1. the whole text is one of the letters A-E (no stripping: "A\\n" is not);
2. else the text is at least 3 characters, starts with one of A-E and then
   ". " ("B. cat");
3. else the pattern ``The answer is ([A-Z]).`` -- a capital letter followed
   by one more character other than a newline -- occurs exactly once in the
   text; no match ("... The answer is C" at the very end, or before a
   newline) or two matches give no letter.

A letter beyond the problem's choices, or no letter, is wrong.  A problem
without an answer counts as wrong: the accuracy divides by all problems of
the split (``n_missing`` says how many were unanswered).  IMG accuracy is
over the *answered* problems whose answer ``prompt`` holds ``<image>``
(unanswered problems have no prompt, so LLaVA leaves them out of IMG).

``--img-subset problems`` is a deliberately different, named rule: IMG is
every split problem with an ``image`` in problems.json, unanswered ones
counted wrong.  Its numbers are not comparable with LLaVA's published IMG.
"""

from __future__ import annotations

import os
import re

from .common import ScorerInputError, check_fields, load_answers, pct, read_json

BENCHMARK = "scienceqa"
OPTIONS = "ABCDE"
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")
IMG_SUBSETS = ("prompt", "problems")


def parse_letter(text: str):
    """The letter LLaVA's eval_science_qa.py reads from a prediction, or None."""
    if text in OPTIONS:
        return text if text else None
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    matches = _ANSWER_IS.findall(text)
    return matches[0] if len(matches) == 1 else None


def is_correct(text: str, problem) -> bool:
    letter = parse_letter(text)
    if letter is None or letter not in OPTIONS[:len(problem["choices"])]:
        return False
    return OPTIONS.index(letter) == problem["answer"]


def _load_problems(base_dir, split):
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
        check_fields(problem, {"choices": list, "answer": int}, problems_path, f"problem {pid!r}")
    return problems, pids


def score(base_dir, result_file, split="test", img_subset="prompt"):
    if img_subset not in IMG_SUBSETS:
        raise ScorerInputError(f"--img-subset {img_subset!r}: expected one of {IMG_SUBSETS}")
    problems, pids = _load_problems(base_dir, split)
    answers = load_answers(result_file, pids)
    correct = {pid for pid, rec in answers.by_key.items() if is_correct(rec["text"], problems[pid])}
    if img_subset == "prompt":
        no_prompt = [pid for pid, rec in answers.by_key.items() if not isinstance(rec.get("prompt"), str)]
        if no_prompt:
            raise ScorerInputError(
                f"{result_file}: question_id {no_prompt[0]!r}: missing field 'prompt' (the official "
                "IMG subset is read from it); pass --img-subset problems to use problems.json")
        with_image = [pid for pid, rec in answers.by_key.items() if "<image>" in rec["prompt"]]
    else:
        with_image = [pid for pid in pids if problems[pid].get("image")]
    n_img_correct = sum(pid in correct for pid in with_image)
    return {"benchmark": BENCHMARK,
            "accuracy": pct(len(correct), len(pids)),
            "img_accuracy": pct(n_img_correct, len(with_image)),
            "n_correct": len(correct), "n_img": len(with_image), "n_img_correct": n_img_correct,
            "img_subset": img_subset, "missing_counted_wrong": True,
            **answers.coverage()}


def add_arguments(parser):
    parser.add_argument("--base-dir", required=True, help="folder with problems.json, pid_splits.json")
    parser.add_argument("--result-file", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--img-subset", choices=IMG_SUBSETS, default="prompt",
                        help="prompt (official, LLaVA): answered problems whose prompt has <image>; "
                             "problems: problems.json's image field, unanswered counted wrong")


def from_args(args):
    return score(args.base_dir, args.result_file, args.split, args.img_subset)
