"""MME, following the official ``eval_tool/calculation.py``.

Two inputs:

* ``--results-dir DIR``: the official format, one ``<subtask>.txt`` per
  subtask with tab-separated lines ``image_name  question  ground_truth
  prediction`` (what LLaVA's ``convert_answer_to_mme.py`` writes);
* ``--question-file Q --result-file R``: our question JSONL (``question_id``,
  ``image`` = "<subtask>/<...>/<name>", ``text``, ``category`` = subtask,
  ``answer`` = Yes/No) and an answers JSONL matched by ``question_id``.

A prediction is lower-cased (not stripped: the official tool reads it with
its line's newline); "yes"/"no" are taken as they are, otherwise "yes" (then
"no") inside its first 4 characters decides, else it is "other" and counts
as wrong (so "  yes" with two leading spaces is "other", as officially).  Per subtask: acc = correct/total*100, acc+ =
percentage of images whose questions (two per image) are all correct, score =
acc + acc+.  Perception sums the 10 perception subtasks (max 2000), cognition
the 4 cognition subtasks (max 800).  The official tool pairs consecutive lines
into images; we group by image name, which is the same for well-formed files
and does not depend on line order.  With a question file, images with an
unanswered question are left out of acc+ (their answered questions still
count in acc).
"""

from __future__ import annotations

import os
from collections import defaultdict

from .common import (
    ScorerInputError,
    index_unique,
    load_answers,
    pct,
    read_questions,
    read_text,
)

BENCHMARK = "mme"
PERCEPTION = ["existence", "count", "position", "color", "posters", "celebrity",
              "scene", "landmark", "artwork", "OCR"]
COGNITION = ["commonsense_reasoning", "numerical_calculation", "text_translation",
             "code_reasoning"]
SUBTASKS = PERCEPTION + COGNITION


def parse_yes_no(text: str) -> str:
    """The official reading of a prediction: "yes", "no" or "other"."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    if "yes" in text[:4]:
        return "yes"
    if "no" in text[:4]:
        return "no"
    return "other"


def _gt(value, path, where):
    gt = str(value).strip().lower()
    if gt not in ("yes", "no"):
        raise ScorerInputError(f"{path}: {where}: ground truth must be Yes or No, got {value!r}")
    return gt


def subtask_metrics(rows, incomplete_images=()):
    """Metrics of one subtask from ``(image, ground truth, prediction)`` rows."""
    per_image = defaultdict(list)
    n_other = 0
    for image, gt, prediction in rows:
        parsed = parse_yes_no(prediction)
        n_other += parsed == "other"
        per_image[image].append(parsed == gt)
    correct = sum(sum(v) for v in per_image.values())
    images = [img for img in per_image if img not in incomplete_images]
    acc = pct(correct, len(rows))
    acc_plus = pct(sum(all(per_image[img]) for img in images), len(images))
    return {"acc": acc, "acc_plus": acc_plus,
            "score": None if acc is None or acc_plus is None else acc + acc_plus,
            "n_questions": len(rows), "n_images": len(images), "n_other": n_other}


def _summary(subtasks, coverage):
    def total(names):
        return sum(subtasks[n]["score"] or 0.0 for n in names if n in subtasks)
    perception, cognition = total(PERCEPTION), total(COGNITION)
    return {"benchmark": BENCHMARK, "perception": perception, "cognition": cognition,
            "total": perception + cognition,
            "missing_subtasks": [n for n in SUBTASKS if n not in subtasks],
            "subtasks": subtasks, **coverage}


def _read_results_dir(results_dir):
    """``{subtask: [(image, gt, prediction)]}`` from the official .txt files."""
    if not os.path.isdir(results_dir):
        raise ScorerInputError(f"{results_dir}: results directory not found")
    rows, warnings, n_duplicates = {}, [], 0
    for name in sorted(os.listdir(results_dir)):
        stem, ext = os.path.splitext(name)
        if ext != ".txt":
            continue
        path = os.path.join(results_dir, name)
        if stem not in SUBTASKS:
            warnings.append(f"{path}: not an MME subtask name; ignored")
            continue
        seen, rows[stem] = set(), []
        for lineno, line in enumerate(read_text(path).split("\n"), 1):
            if not line.strip():
                continue
            fields = line.split("\t", 3)  # a prediction may itself hold a tab
            if len(fields) != 4:
                raise ScorerInputError(
                    f"{path}: line {lineno}: expected 4 tab-separated fields "
                    "(image, question, ground truth, prediction)")
            image, question, gt, prediction = fields
            if (image, question) in seen:
                n_duplicates += 1
                continue
            seen.add((image, question))
            rows[stem].append((image, _gt(gt, path, f"line {lineno}"), prediction))
    if not rows:
        raise ScorerInputError(f"{results_dir}: no <subtask>.txt result files")
    if n_duplicates:
        warnings.append(f"{results_dir}: {n_duplicates} repeated (image, question) line(s) "
                        "ignored, first kept")
    return rows, warnings, n_duplicates


def score_results_dir(results_dir):
    rows, warnings, n_duplicates = _read_results_dir(results_dir)
    subtasks = {name: subtask_metrics(r) for name, r in rows.items()}
    n = sum(len(r) for r in rows.values())
    coverage = {"n_questions": n, "n_scored": n, "n_missing": 0, "n_duplicates": n_duplicates,
                "n_unknown": 0, "n_truncated_lines": 0, "warnings": warnings}
    return _summary(subtasks, coverage)


def score_answers(question_file, result_file):
    fields = {"question_id": (int, str), "image": str, "category": str, "answer": str}
    questions = index_unique(read_questions(question_file, fields), "question_id", question_file)
    answers = load_answers(result_file, list(questions))
    rows, incomplete = defaultdict(list), defaultdict(set)
    for key, q in questions.items():
        where = f"question_id {q['question_id']!r}"
        gt = _gt(q["answer"], question_file, where)
        if key in answers.by_key:
            rows[q["category"]].append((q["image"], gt, answers.text(key)))
        else:
            incomplete[q["category"]].add(q["image"])
    subtasks = {name: subtask_metrics(r, incomplete[name]) for name, r in sorted(rows.items())}
    unknown = [name for name in subtasks if name not in SUBTASKS]
    coverage = answers.coverage()
    if unknown:
        coverage["warnings"].append(f"{question_file}: categories {unknown} are not MME "
                                    "subtask names; left out of perception/cognition")
    return _summary(subtasks, coverage)


def score(results_dir=None, question_file=None, result_file=None):
    if results_dir:
        return score_results_dir(results_dir)
    if question_file and result_file:
        return score_answers(question_file, result_file)
    raise ScorerInputError("mme: give --results-dir, or --question-file and --result-file")


def add_arguments(parser):
    parser.add_argument("--results-dir", help="official format: one <subtask>.txt per subtask")
    parser.add_argument("--question-file", help="MME question JSONL with 'answer' (Yes/No)")
    parser.add_argument("--result-file", help="answers JSONL (with --question-file)")


def from_args(args):
    return score(args.results_dir, args.question_file, args.result_file)
