"""MMBench-EN dev: single pass, or circular over the option rotations (`all_rounds`)."""

from ..prompts import MULTIPLE_CHOICE
from ..scorers import mmbench
from ..scorers.common import read_table
from .base import Benchmark, Row, mean_pct


def chance(question_file):
    """(circular, single-pass) chance accuracy, from one read of the (large) TSV."""
    counts = [len(mmbench.options_of(row, "ABCD"))
              for row in read_table(question_file, ("index", "question", "A", "B"))
              if row.get("answer", "").strip()]
    # circular: all n rotations right by luck
    return mean_pct([(1.0 / n) ** n for n in counts]), mean_pct([1.0 / n for n in counts])


def rows(m, paths):
    circular_chance, single_chance = chance(paths.question_file)
    label = "accuracy, circular (all rotations)" if m["circular"] else "accuracy, single pass"
    return [Row(label, m["accuracy"], circular_chance if m["circular"] else single_chance),
            Row("accuracy, round 0 only", m["accuracy_round0"], single_chance)]


BENCHMARK = Benchmark(
    name="mmbench", scorer=mmbench, question_file="mmbench/mmbench_dev_20230712.tsv", question_format="mmbench",
    prompt=MULTIPLE_CHOICE, headline="MMBench", headline_metric="accuracy", lmms_task="mmbench_en_dev_local",
    submission="mmbench_submission.tsv", rows=rows)
