"""The declaration of one benchmark: everything `run`, `score`, the report, the lmms-eval tasks and
the demo need to know about it. One module per benchmark (eval_mllm/benchmarks/<name>.py) creates
one `Benchmark`; eval_mllm.benchmarks collects them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import EvalInputError


@dataclass
class Row:
    """One line of the results table."""
    metric: str
    value: float | None
    chance: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Paths:
    """A benchmark's files for one run, absolute: the question file, the image folder and the
    scorer's other inputs (keyed by the scorer's keyword, e.g. annotation_dir)."""
    question_file: str
    image_folder: str
    files: dict
    work_dir: str  # this run's scratch folder (submission files, MME's results folder)


def _score_with_files(bench: Benchmark, paths: Paths, answers_file: str) -> dict:
    """The scorer's Python API on the benchmark's files (the default `score_answers`)."""
    kwargs = dict(paths.files, result_file=answers_file)
    if bench.scorer_reads_question_file:
        kwargs["question_file"] = paths.question_file
    if bench.submission:
        kwargs["submission_out"] = os.path.join(paths.work_dir, bench.submission)
    return bench.scorer.score(**kwargs)


@dataclass(frozen=True)
class Benchmark:
    name: str
    scorer: Any                  # eval_mllm.scorers module: score(), add_arguments(), from_args()
    # What `run` generates from (relative to --data-root); None: scored only (`eval-mllm score`).
    question_file: str | None = None
    image_folder: str = ""
    question_format: str = "jsonl"   # the question reader (eval_mllm.questions.read_questions)
    # input name -> path under --data-root: the scorer keyword it is passed as (MME: see its module)
    files: dict = field(default_factory=dict)
    prompt: str = ""             # the instruction LLaVA's question file appends (eval_mllm.prompts)
    max_new_tokens: int = 128    # LLaVA's script for this benchmark
    headline: str = ""           # column name in the published tables (report), e.g. "POPE F1"
    headline_metric: str | None = None  # key of the scorer's metrics that goes in that column
    lmms_task: str | None = None  # eval_mllm/lmms_tasks/<lmms_task>.yaml
    scorer_reads_question_file: bool = True
    submission: str | None = None  # file written for a server / judge (in the run's work folder)
    # (metrics, paths) -> rows of the results table, each with its chance level where defined
    rows: Callable[[dict, Paths], list] | None = None
    # (benchmark, paths, answers file) -> metrics; default: the scorer on the declared files
    score_answers: Callable[[Benchmark, Paths, str], dict] = _score_with_files

    @property
    def answers_file(self) -> str:
        """File name of the answers: `run` writes OUT/answers/<this>."""
        return f"{self.name}.jsonl"

    def paths(self, data_root: str, work_dir: str, overrides: dict | None = None) -> Paths:
        """The files of this benchmark under `data_root`; `overrides` ({keyword: path}, keywords
        question_file, image_folder or a scorer file) replaces any of them."""
        overrides = dict(overrides or {})
        unknown = set(overrides) - {"question_file", "image_folder", *self.files}
        if unknown:
            raise EvalInputError(f"{self.name}: unknown file(s) {sorted(unknown)}; this benchmark reads "
                             f"question_file, image_folder{''.join(', ' + k for k in self.files)}")
        root = lambda rel: os.path.abspath(os.path.join(data_root, rel))
        files = {k: os.path.abspath(overrides.get(k) or root(rel)) for k, rel in self.files.items()}
        return Paths(os.path.abspath(overrides.get("question_file") or root(self.question_file)),
                     os.path.abspath(overrides.get("image_folder") or root(self.image_folder)), files, work_dir)

    def score(self, paths: Paths, answers_file: str) -> dict:
        return self.score_answers(self, paths, answers_file)

    def headline_value(self, metrics: dict):
        return metrics.get(self.headline_metric) if self.headline_metric else None


def submission_rows(label: str, submission: str):
    """`rows` of a benchmark scored elsewhere (evaluation server, GPT judge): where its file is."""
    return lambda metrics, paths: [Row(label, None, None, os.path.join(paths.work_dir, submission))]


def mean_pct(levels):
    """Mean of per-question chance levels (fractions), in percent."""
    return 100.0 * sum(levels) / len(levels) if levels else None
