"""95 % bootstrap intervals of the chain's headline scores, over questions, and of the difference
between the two runs (paired: both runs' answers to the same resampled questions).

Per question, right or wrong is read with eval_mllm's own scorer rules (POPE's yes/no parsing, GQA's
normalisation, MMBench's option matching), so each interval's point value is the scorer's figure.
A score that averages strata (POPE: the mean of its three splits' accuracies) is resampled within
each stratum. Seeded percentile bootstrap: the 2.5th and 97.5th percentiles (numpy's linear
interpolation) of the statistic over `n_resamples` resamples.
"""

from __future__ import annotations

import json

import numpy as np

N_RESAMPLES = 2000
# (benchmark, label of its headline score) in the report's order
# (labels differ from the score table's rows: a reader, or a test, tells the two tables apart)
HEADLINES = (("pope", "POPE accuracy, mean of 3 splits"), ("gqa", "GQA-style accuracy, all questions"),
             ("mmbench", "MMBench-style accuracy, single pass"))


# ---------------------------------------------------------------------------------------------
# per-question correctness (1/0), grouped in strata, questions in question-file order

def pope_correct(question_file: str, annotation_dir: str, answers_file: str) -> dict[str, list[int]]:
    """{split: [right?]}: POPE's label of each question and LLaVA's yes/no reading of its answer."""
    from eval_mllm.scorers.common import load_answers
    from eval_mllm.scorers.pope import parse_yes_no, question_labels

    labelled = question_labels(annotation_dir, question_file)
    answers = load_answers(answers_file, list(labelled))
    out: dict[str, list[int]] = {}
    for key, (split, label) in labelled.items():
        out.setdefault(split, []).append(int(parse_yes_no(answers.text(key)) == label))
    return dict(sorted(out.items()))


def gqa_correct(question_file: str, annotation_file: str, answers_file: str) -> dict[str, list[int]]:
    from eval_mllm.scorers.common import load_answers, qid_key, read_questions
    from eval_mllm.scorers.gqa import normalize_prediction

    with open(annotation_file) as f:
        annotations = json.load(f)
    keys = [qid_key(q["question_id"]) for q in read_questions(question_file, {"question_id": (int, str)})]
    answers = load_answers(answers_file, keys)
    return {"all": [int(normalize_prediction(answers.text(k)) == annotations[k]["answer"]) for k in keys]}


def mmbench_correct(question_file: str, answers_file: str) -> dict[str, list[int]]:
    """Single pass (round 0) of each question."""
    from eval_mllm.scorers.common import load_answers, qid_key, read_table
    from eval_mllm.scorers.mmbench import LETTERS, is_round_correct, options_of

    rows = read_table(question_file, ("index", "question", "A", "B"))
    answers = load_answers(answers_file, [qid_key(r["index"]) for r in rows])
    return {"all": [int(is_round_correct(answers.text(qid_key(r["index"])), options_of(r), 0,
                                         LETTERS.index(r["answer"].strip()))) for r in rows]}


def correctness(benchmarks: dict, answers_files: dict[str, str]) -> dict[str, dict[str, list[int]]]:
    """{benchmark: {stratum: [right?]}} of one run; answers_files: {benchmark: its answers JSONL}."""
    pope, gqa, mmbench = benchmarks["pope"], benchmarks["gqa"], benchmarks["mmbench"]
    return {"pope": pope_correct(pope["question_file"], pope["annotation_dir"], answers_files["pope"]),
            "gqa": gqa_correct(gqa["question_file"], gqa["annotation_file"], answers_files["gqa"]),
            "mmbench": mmbench_correct(mmbench["question_file"], answers_files["mmbench"])}


# ---------------------------------------------------------------------------------------------
# the bootstrap

def mean_of_strata(strata: list[np.ndarray]) -> float:
    """The score in percent: the mean over strata of each stratum's share of right answers."""
    return 100.0 * float(np.mean([s.mean() for s in strata]))


def bootstrap(runs: dict[str, dict[str, list[int]]], n_resamples: int = N_RESAMPLES, seed: int = 0,
              level: float = 95.0) -> dict:
    """runs: {run: {stratum: [right?]}} over the same questions. Each resample draws, per stratum,
    as many question indices as the stratum has, with replacement, the same for every run.
    Returns {"runs": {run: {"value", "low", "high"}}, "difference": {"of": [a, b], "value", "low",
    "high"} (a - b, first two runs), "n_resamples", "seed", "level"}."""
    names = list(runs)
    strata = list(runs[names[0]])
    data = {r: [np.asarray(runs[r][s], dtype=float) for s in strata] for r in names}
    for r in names:
        if [len(a) for a in data[r]] != [len(a) for a in data[names[0]]]:
            raise ValueError(f"run {r!r}: not the same questions as run {names[0]!r}")
    rng = np.random.default_rng(seed)
    stats = {r: np.empty(n_resamples) for r in names}
    for i in range(n_resamples):
        picks = [rng.integers(0, len(a), len(a)) for a in data[names[0]]]
        for r in names:
            stats[r][i] = mean_of_strata([a[p] for a, p in zip(data[r], picks)])
    tail = (100.0 - level) / 2

    def interval(value, samples):
        low, high = np.percentile(samples, [tail, 100.0 - tail])
        return {"value": value, "low": float(low), "high": float(high)}

    out = {"runs": {r: interval(mean_of_strata(data[r]), stats[r]) for r in names},
           "n_resamples": n_resamples, "seed": seed, "level": level}
    if len(names) >= 2:
        a, b = names[:2]
        out["difference"] = {"of": [a, b], **interval(mean_of_strata(data[a]) - mean_of_strata(data[b]),
                                                       stats[a] - stats[b])}
    return out


def headline_intervals(benchmarks: dict, answers_files: dict[str, dict[str, str]], seed: int = 0,
                       n_resamples: int = N_RESAMPLES) -> dict:
    """{benchmark: bootstrap(...)} for the three headline scores; answers_files: {run: {benchmark: path}}."""
    per_run = {run: correctness(benchmarks, files) for run, files in answers_files.items()}
    return {name: bootstrap({run: per_run[run][name] for run in per_run}, n_resamples, seed)
            for name, _ in HEADLINES}
