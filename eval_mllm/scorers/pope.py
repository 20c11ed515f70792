"""POPE (object hallucination), following LLaVA's ``llava/eval/eval_pope.py``.

Inputs: ``--annotation-dir`` with ``coco_pope_<split>.json`` label files
(JSON lines ``{"question_id", "image", "text", "label": "yes"|"no"}``),
``--question-file`` (JSONL with ``question_id`` and ``category`` = split) and
``--result-file`` (answers JSONL).

LLaVA zips the answers of a split with the label file by position; we match
by id instead.  The label of a question is its own ``label`` field when the
question file has one, else the label-file line of its split with the same
image and question text (the first line of the question's ``text``: LLaVA's
question file appends an instruction line and numbers questions across the
three splits, while each label file numbers its own questions from 1).

Answer parsing as LLaVA: keep the text before the first '.', drop commas,
split on spaces; the answer is "no" if a word is "No", "not" or "no", else
"yes".  Per split: accuracy, precision, recall, F1 (positive = yes) and the
yes-ratio, all in percent; overall: the mean F1 (the "POPE" figure of the
LLaVA-1.5 paper) and the mean accuracy over the splits.
"""

from __future__ import annotations

import os
import re

from .common import ScorerInputError, load_answers, mean, pct, qid_key, read_questions

BENCHMARK = "pope"
LABEL_FILE = re.compile(r"^coco_pope_(.+)\.json$")


def parse_yes_no(text: str) -> str:
    """LLaVA's reading of a POPE answer: "yes" or "no"."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def question_text(text: str) -> str:
    """The question as the label files key it: the first line (the instruction line dropped)."""
    return text.split("\n")[0].strip()


def load_labels(annotation_dir):
    """``{split: {(image, question text): label}}`` from the label files."""
    if not os.path.isdir(annotation_dir):
        raise ScorerInputError(f"{annotation_dir}: annotation directory not found")
    labels = {}
    for name in sorted(os.listdir(annotation_dir)):
        match = LABEL_FILE.match(name)
        if not match:
            continue
        path = os.path.join(annotation_dir, name)
        fields = {"image": str, "text": str, "label": str}
        split = labels.setdefault(match.group(1), {})
        for i, rec in enumerate(read_questions(path, fields)):
            key = (rec["image"], question_text(rec["text"]))
            label = rec["label"].strip().lower()
            if label not in ("yes", "no"):
                raise ScorerInputError(f"{path}: record {i + 1}: field 'label' must be yes or no")
            if split.get(key, label) != label:
                raise ScorerInputError(f"{path}: record {i + 1}: conflicting labels for {key}")
            split[key] = label
    if not labels:
        raise ScorerInputError(f"{annotation_dir}: no coco_pope_<split>.json label files")
    return labels


def split_metrics(pairs):
    """Metrics of one split from (prediction, label) pairs."""
    tp = sum(pred == "yes" and label == "yes" for pred, label in pairs)
    fp = sum(pred == "yes" and label == "no" for pred, label in pairs)
    tn = sum(pred == "no" and label == "no" for pred, label in pairs)
    fn = sum(pred == "no" and label == "yes" for pred, label in pairs)
    precision = pct(tp, tp + fp)
    recall = pct(tp, tp + fn)
    if precision is None or recall is None:
        f1 = None  # no predicted or no actual positives: undefined
    elif precision + recall == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return {"n_scored": len(pairs), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "accuracy": pct(tp + tn, len(pairs)), "precision": precision,
            "recall": recall, "f1": f1, "yes_ratio": pct(tp + fp, len(pairs))}


def question_labels(annotation_dir, question_file):
    """``{question key: (split, label)}`` in question-file order: each question's split (its
    category) and its label, inline or from the split's label file, checked as the scorer needs."""
    labels = load_labels(annotation_dir)
    questions = read_questions(question_file, {"question_id": (int, str), "category": str})
    labelled = {}
    for i, q in enumerate(questions):
        key = qid_key(q["question_id"])
        if key in labelled:
            raise ScorerInputError(f"{question_file}: line {i + 1}: duplicate question_id {key!r}")
        split = q["category"]
        if split not in labels:
            raise ScorerInputError(f"{question_file}: line {i + 1}: category {split!r} has no "
                                   f"label file coco_pope_{split}.json in {annotation_dir}")
        if "label" in q:
            label = str(q["label"]).strip().lower()
            if label not in ("yes", "no"):
                raise ScorerInputError(
                    f"{question_file}: line {i + 1}: field 'label' must be yes or no")
        else:
            for field in ("image", "text"):
                if not isinstance(q.get(field), str):
                    raise ScorerInputError(f"{question_file}: line {i + 1}: missing field '{field}'")
            label = labels[split].get((q["image"], question_text(q["text"])))
            if label is None:
                raise ScorerInputError(
                    f"{question_file}: line {i + 1}: no label in coco_pope_{split}.json for "
                    f"image {q['image']!r} and question {question_text(q['text'])!r}")
        labelled[key] = (split, label)
    return labelled


def score(annotation_dir, question_file, result_file):
    labelled = question_labels(annotation_dir, question_file)
    answers = load_answers(result_file, list(labelled))
    pairs = {split: [] for split in sorted({split for split, _ in labelled.values()})}
    for key, record in answers.by_key.items():
        split, label = labelled[key]
        pairs[split].append((parse_yes_no(record["text"]), label))
    splits = {split: split_metrics(p) for split, p in pairs.items()}
    scored = [m for m in splits.values() if m["n_scored"]]
    return {"benchmark": BENCHMARK,
            "f1_mean": mean([m["f1"] for m in scored]),
            "accuracy_mean": mean([m["accuracy"] for m in scored]),
            "splits": splits,
            **answers.coverage()}


def add_arguments(parser):
    parser.add_argument("--annotation-dir", required=True,
                        help="folder with coco_pope_{adversarial,popular,random}.json")
    parser.add_argument("--question-file", required=True)
    parser.add_argument("--result-file", required=True)


def from_args(args):
    return score(args.annotation_dir, args.question_file, args.result_file)
