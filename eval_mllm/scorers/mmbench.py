"""MMBench (dev: circular evaluation; test: submission file).

Inputs: ``--question-file``, the official TSV (columns index, question, hint,
A, B, C, D, optional E, answer (absent on test), category, l2-category,
split, image as base64) and ``--result-file``, answers JSONL written by
LLaVA's ``model_vqa_mmbench.py`` (``question_id`` = the TSV index, plus
``round_id`` -- we also accept ``round_idx`` -- and ``options``).

Rotation convention (LLaVA ``--all-rounds``): a question with n options is
asked n times; before round r+1 the options are rotated left by one
(``options = options[1:] + options[:1]``), so in round r the option shown
under letter i is original option (i + r) mod n, and the letter the model
picks in round r maps back to original index (picked_index + r) mod n.

Circular evaluation: when any answer has a round > 0, every question is
expected to have its n rounds, and it is correct only if every round's
answer, mapped back, is the ground-truth option.  A question missing any
round is unscored (``n_missing``; ``n_partial`` of them had some rounds, whose
answers are counted as dropped for ``other_rounds_missing``).
Otherwise (one round per question) this is plain single-pass accuracy.

Reading the option from an answer: a leading letter ("B", "B.", "(B)",
"B)", ...) among the question's letters; else the text equal (case-folded,
trailing period dropped) to exactly one of the options shown that round.

The official evaluation is OpenCompass's (the MMBench server, which scores
LLaVA-1.5's published numbers from the ``--submission-out`` table): circular
evaluation as above, reading each answer by option matching first and asking
an LLM (ChatGPT) only for answers that matching cannot place.  This scorer is
that rule without the LLM step: an answer only the LLM could place counts as
wrong here, so a model that answers with the bare letter (as LLaVA-1.5 is
prompted to) scores the same, and a chattier one can score lower.  An answer
whose round is not one of its question's rounds is an error (naming the line).

Test split: ``--submission-out`` writes the round-0 answers as a table with
columns index, question, A, B, C, D (E if present), prediction; a ``.csv``
path gives comma-separated values, anything else tab-separated.  OpenCompass
takes it after saving it as .xlsx (e.g. opening it in a spreadsheet program).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict

from .common import (
    ScorerInputError,
    leading_option_letter,
    match_answers,
    pct,
    qid_key,
    read_answers,
    read_table,
    write_atomic,
)

BENCHMARK = "mmbench"
LETTERS = "ABCDE"


def absent(value) -> bool:
    """An empty cell: pandas (LLaVA, lmms-eval docs) reads one as NaN, and LLaVA skips "nan"/"none"."""
    if isinstance(value, float):
        return math.isnan(value)
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "nan", "none"))


def options_of(row, letters=LETTERS):
    """The option texts of a row (TSV row or dataset doc), A first, up to the first absent one."""
    options = []
    for letter in letters:
        if absent(row.get(letter)):
            break
        options.append(row[letter])
    return options


def _norm(text: str) -> str:
    return text.strip().rstrip(".").strip().casefold()


def picked_index(text: str, shown_options):
    """Index (into the options as shown) that an answer picks, or None."""
    letters = LETTERS[:len(shown_options)]
    letter = leading_option_letter(text, letters)
    if letter:
        return letters.index(letter)
    hits = [i for i, option in enumerate(shown_options) if _norm(option) == _norm(text)]
    return hits[0] if len(hits) == 1 else None


def round_field(record) -> str:
    return "round_idx" if "round_idx" in record and "round_id" not in record else "round_id"


def round_of(record):
    """The answer's round (0 when it has none: a single pass); ``check_round`` vouches for it."""
    return record.get(round_field(record), 0)


def check_round(record, where, path, n_options):
    """Refuse an answer whose round is not 0 .. n_options - 1 of its question, naming the line
    and question id: one bad round would otherwise switch the whole file to circular
    evaluation, or hide its answer among the unknown questions. ``n_options`` is None for an
    answer to a question not in the TSV (counted as unknown, any round >= 0 accepted)."""
    value = record.get(round_field(record), 0)
    valid = isinstance(value, int) and not isinstance(value, bool) and value >= 0 and (
        n_options is None or value < n_options)
    if not valid:
        allowed = ("an integer >= 0" if n_options is None else
                   f"0 to {n_options - 1} (the question has {n_options} options)")
        raise ScorerInputError(f"{path}: {where}: question_id {record['question_id']!r}: field "
                               f"'{round_field(record)}' must be {allowed}, got {value!r}")


def is_round_correct(text, options, round_idx, gt_index):
    shown = options[round_idx:] + options[:round_idx]
    picked = picked_index(text, shown)
    return picked is not None and (picked + round_idx) % len(options) == gt_index


def _write_submission(path, header, rows, answers):
    option_cols = [c for c in LETTERS if c in header]
    delimiter = "," if path.lower().endswith(".csv") else "\t"

    def write(f):
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(["index", "question", *option_cols, "prediction"])
        for row in rows:
            record = answers.by_key.get((qid_key(row["index"]), 0))
            writer.writerow([row["index"], row["question"], *(row[c] for c in option_cols),
                             record["text"] if record else ""])

    write_atomic(path, write, "--submission-out")


def score(question_file, result_file, submission_out=None):
    rows = read_table(question_file, ("index", "question", "A", "B"))
    header = list(rows[0]) if rows else []
    questions = {}
    for lineno, row in enumerate(rows, 2):
        key = qid_key(row["index"])
        if key in questions:
            raise ScorerInputError(f"{question_file}: line {lineno}: duplicate index {key!r}")
        options = options_of(row)
        if not options:
            raise ScorerInputError(f"{question_file}: line {lineno}: no options (column 'A' empty)")
        gt = None if absent(row.get("answer")) else row["answer"].strip()
        if gt is not None and gt not in LETTERS[:len(options)]:
            raise ScorerInputError(f"{question_file}: line {lineno}: answer {gt!r} is not "
                                   "one of the question's option letters")
        questions[key] = (options, None if gt is None else LETTERS.index(gt), row)

    def check(record, where):
        question = questions.get(qid_key(record["question_id"]))
        check_round(record, where, result_file, len(question[0]) if question else None)

    records, n_truncated, warnings = read_answers(result_file, check)
    circular = any(round_of(r) > 0 for r in records)
    expected = [(key, r) for key, (options, _, _) in questions.items()
                for r in range(len(options) if circular else 1)]
    answers = match_answers(records, expected,
                            lambda rec: (qid_key(rec["question_id"]), round_of(rec)),
                            n_truncated, warnings, result_file)

    n_missing = n_partial = n_complete = 0
    total, first_round = defaultdict(list), []
    for key, (options, gt_index, row) in questions.items():
        rounds = range(len(options) if circular else 1)
        got = [answers.by_key.get((key, r)) for r in rounds]
        if not all(got):
            n_missing += 1
            n_partial += any(got)
            answers.drop("other_rounds_missing", sum(map(bool, got)))
            continue
        n_complete += 1
        if gt_index is None:  # test split: the answer goes to the submission only
            continue
        oks = [is_round_correct(rec["text"], options, r, gt_index)
               for r, rec in zip(rounds, got, strict=True)]
        first_round.append(oks[0])
        total["all"].append(all(oks))
        for prefix, column in (("category:", "category"), ("l2:", "l2-category")):
            if row.get(column):
                total[prefix + row[column]].append(all(oks))

    def accuracy(group):
        return pct(sum(total[group]), len(total[group]))

    def per(prefix):
        return {g[len(prefix):]: accuracy(g) for g in sorted(total) if g.startswith(prefix)}

    # n_scored: the questions whose answers count (in the accuracy, or the test submission)
    coverage = answers.coverage(n_scored=n_complete, n_questions=len(questions))
    coverage.update(n_missing=n_missing, n_partial=n_partial)
    n_no_gt = sum(gt is None for _, gt, _ in questions.values())
    result = {"benchmark": BENCHMARK, "circular": circular, "accuracy": accuracy("all"),
              "accuracy_round0": pct(sum(first_round), len(first_round)),
              "per_category": per("category:"), "per_l2_category": per("l2:"),
              "n_no_ground_truth": n_no_gt}
    if n_no_gt:
        coverage["warnings"].append(f"{question_file}: {n_no_gt} question(s) without an "
                                    "'answer' (test split?) are not scored")
    if submission_out:
        _write_submission(submission_out, header, rows, answers)
        result["submission"] = submission_out
    return {**result, **coverage}


def add_arguments(parser):
    parser.add_argument("--question-file", required=True, help="official MMBench TSV")
    parser.add_argument("--result-file", required=True)
    parser.add_argument("--submission-out", help="write index/question/options/prediction here")


def from_args(args):
    return score(args.question_file, args.result_file, args.submission_out)
