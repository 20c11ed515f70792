"""MME (perception: 10 subtasks, cognition: 4), scored by the official calculation.py rules.

LLaVA's llava_mme.jsonl has no answers and gives the two questions of an image one question_id
(the image path): the ground truth is read from the release's txt files and our answers are
written as the official tool's results folder (`<subtask>.txt`), which is what gets scored.
"""

import os

from ..errors import EvalInputError
from ..prompts import SHORT_ANSWER, YES_NO
from ..scorers import mme
from .base import Benchmark, Row

RANDOM_SUBTASK_SCORE = 75.0  # random yes/no: accuracy 50 + accuracy+ 25 per subtask


def ground_truth(release_dir):
    """{(subtask, image stem, question): "Yes"/"No"} from the MME release's txt files
    (`<subtask>/questions_answers_YN/*.txt` or `<subtask>/*.txt`, lines "question<TAB>answer")."""
    if not os.path.isdir(release_dir):
        raise EvalInputError(f"{release_dir}: MME release folder not found")
    gt = {}
    for subtask in sorted(os.listdir(release_dir)):
        folder = os.path.join(release_dir, subtask)
        if not os.path.isdir(folder):
            continue
        qa = os.path.join(folder, "questions_answers_YN")
        qa = qa if os.path.isdir(qa) else folder
        for name in sorted(os.listdir(qa)):
            if not name.endswith(".txt"):
                continue
            with open(os.path.join(qa, name), encoding="utf-8") as f:
                for line in f:
                    if "\t" in line:
                        question, answer = line.rstrip("\n").split("\t")[:2]
                        gt[(subtask, os.path.splitext(name)[0], question.strip())] = answer.strip()
    return gt


def truth_for(gt, subtask, stem, prompt):
    """The ground truth of an MME answer, keyed as LLaVA's convert_answer_to_mme.py keys it: its
    prompt without the short-answer instruction, ending in "Please answer yes or no." (the
    release has a few questions with two spaces before it)."""
    question = prompt.replace(SHORT_ANSWER, "").strip()
    candidates = [question, question.split("\n")[0].strip()]
    if YES_NO not in question:
        candidates += [f"{question} {YES_NO}", f"{question}  {YES_NO}"]
    for text in candidates:
        if (subtask, stem, text) in gt:
            return text, gt[(subtask, stem, text)]
    return None, None


def write_results_dir(answers_file, release_dir, out_dir):
    """Our MME answers as the official tool's results folder (<subtask>.txt lines: image,
    question, ground truth, prediction). Answers are told apart (and matched to the truth) by prompt."""
    from ..generate import repair_and_read

    gt = ground_truth(release_dir)
    records, _ = repair_and_read(answers_file)
    rows = {}
    for lineno, rec in enumerate(records, 1):
        qid = str(rec["question_id"])
        subtask, image = qid.split("/")[0], os.path.basename(qid)
        question, answer = truth_for(gt, subtask, os.path.splitext(image)[0], str(rec.get("prompt", "")))
        if answer is None:
            raise EvalInputError(f"{answers_file}: line {lineno}: no ground truth in {release_dir} for "
                                 f"{qid}: {str(rec.get('prompt', '')).splitlines()[:1]}")
        prediction = " ".join(str(rec["text"]).split("\n"))  # one line per answer in the .txt
        rows.setdefault(subtask, []).append(f"{image}\t{question}\t{answer}\t{prediction}\n")
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):  # a rerun rewrites the folder from the answers
        os.remove(os.path.join(out_dir, name))
    for subtask, lines in rows.items():
        with open(os.path.join(out_dir, f"{subtask}.txt"), "w", encoding="utf-8") as f:
            f.writelines(lines)
    return out_dir


def score_answers(bench, paths, answers_file):
    from ..questions import read_questions

    results_dir = write_results_dir(answers_file, paths.files["release_dir"],
                                    os.path.join(paths.work_dir, "mme_results"))
    m = mme.score(results_dir=results_dir)
    m["n_questions"] = len(read_questions(paths.question_file))  # the results folder only has answers
    m["n_missing"] = m["n_questions"] - m["n_scored"]
    return m


def rows(m, paths):
    n_p = sum(n in m["subtasks"] for n in mme.PERCEPTION)
    n_c = sum(n in m["subtasks"] for n in mme.COGNITION)
    return [Row(f"perception ({n_p}/10 subtasks)", m["perception"], RANDOM_SUBTASK_SCORE * n_p),
            Row(f"cognition ({n_c}/4 subtasks)", m["cognition"], RANDOM_SUBTASK_SCORE * n_c)]


BENCHMARK = Benchmark(
    name="mme", scorer=mme, question_file="MME/llava_mme.jsonl", image_folder="MME/MME_Benchmark_release_version",
    files={"release_dir": "MME/MME_Benchmark_release_version"}, headline="MME-P", headline_metric="perception",
    lmms_task="mme_local", score_answers=score_answers, rows=rows)
