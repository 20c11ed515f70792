"""ScienceQA test, LLaVA's SQA-IMG number (problems with an image) and all test problems."""

import json
import os

from ..prompts import MULTIPLE_CHOICE
from ..scorers import scienceqa
from .base import Benchmark, Row, mean_pct


def chance(base_dir):
    """(IMG, all test problems) chance accuracy: 1/#choices averaged, one read of problems.json."""
    with open(os.path.join(base_dir, "problems.json"), encoding="utf-8") as f:
        problems = json.load(f)
    with open(os.path.join(base_dir, "pid_splits.json"), encoding="utf-8") as f:
        pids = [str(p) for p in json.load(f)["test"]]
    with_choices = [problems[p] for p in pids if problems[p].get("choices")]
    return (mean_pct([1.0 / len(p["choices"]) for p in with_choices if p.get("image")]),
            mean_pct([1.0 / len(p["choices"]) for p in with_choices]))


def rows(m, paths):
    img_chance, all_chance = chance(paths.files["base_dir"])
    return [Row("IMG accuracy (LLaVA's SQA-IMG number)", m["img_accuracy"], img_chance),
            Row("accuracy, all test problems", m["accuracy"], all_chance)]


BENCHMARK = Benchmark(
    name="scienceqa", scorer=scienceqa, question_file="scienceqa/llava_test_CQM-A.json",
    image_folder="scienceqa/images/test", question_format="scienceqa", files={"base_dir": "scienceqa"},
    prompt=MULTIPLE_CHOICE, headline="SQA-IMG", headline_metric="img_accuracy", lmms_task="scienceqa_img_local",
    scorer_reads_question_file=False, rows=rows)
