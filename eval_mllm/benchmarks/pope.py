"""POPE (COCO, three splits): yes/no object hallucination; LLaVA reports F1 averaged over splits."""

from ..prompts import SHORT_ANSWER
from ..scorers import pope
from .base import Benchmark, Row

ALWAYS_YES_F1 = 66.7  # balanced labels: precision 50, recall 100


def rows(m, paths):
    return [Row("F1, mean over splits (LLaVA's POPE number)", m["f1_mean"], None,
                f"answering always 'yes' gives F1 {ALWAYS_YES_F1}"),
            Row("accuracy, mean over splits", m["accuracy_mean"], 50.0)] + [
        Row(f"{split} F1 / yes-ratio", s["f1"], None,
            f"yes-ratio {s['yes_ratio']:.1f}" if s["yes_ratio"] is not None else "")
        for split, s in m["splits"].items()]


BENCHMARK = Benchmark(
    name="pope", scorer=pope, question_file="pope/llava_pope_test.jsonl", image_folder="pope/val2014",
    files={"annotation_dir": "pope/coco"}, prompt=SHORT_ANSWER, headline="POPE F1",
    headline_metric="f1_mean", lmms_task="pope_local", rows=rows)
