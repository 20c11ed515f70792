"""GQA test-dev balanced: exact match after LLaVA's answer normalisation."""

from ..prompts import SHORT_ANSWER
from ..scorers import gqa
from .base import Benchmark, Row


def rows(m, paths):
    return [Row("accuracy (test-dev balanced)", m["accuracy"])]


BENCHMARK = Benchmark(
    name="gqa", scorer=gqa, question_file="gqa/llava_gqa_testdev_balanced.jsonl", image_folder="gqa/images",
    files={"annotation_file": "gqa/testdev_balanced_questions.json"}, prompt=SHORT_ANSWER,
    headline="GQA", headline_metric="accuracy", lmms_task="gqa_local", rows=rows)
