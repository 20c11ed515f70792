"""`eval_mllm.run(...)` / `python -m eval_mllm run`: generate (or reuse) answers for several
benchmarks, score them as each benchmark declares (eval_mllm.benchmarks) and write
OUT/results.json and OUT/results.md.

Data layout under --data-root: the one of LLaVA's docs/Evaluation.md (see docs/eval.md).
Answers go to OUT/answers/<benchmark>.jsonl; a rerun resumes them (eval_mllm.generate).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field, replace

from . import benchmarks as registry
from .errors import EvalInputError
from .generate import check_image_files, check_resumable, generate, n_unanswered
from .questions import read_questions


@dataclass
class BenchmarkResult:
    name: str
    headline: float | None
    rows: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    generation: dict = field(default_factory=dict)
    answers_file: str = ""
    question_file: str = ""


# --------------------------------------------------------------------------- limiting


def _limited_copy(bench, paths, limit):
    """The first `limit` questions as a file of the same format in the work folder (so the
    scorer's question set is the generated set); the benchmark's paths with it."""
    out_dir = os.path.join(paths.work_dir, "limited")
    os.makedirs(out_dir, exist_ok=True)
    src = paths.question_file
    dst = os.path.join(out_dir, os.path.basename(src))
    if bench.question_format == "jsonl":
        with open(src, encoding="utf-8-sig") as f:
            lines = [line for line in f if line.strip()][:limit]
        with open(dst, "w", encoding="utf-8") as f:
            f.writelines(line if line.endswith("\n") else line + "\n" for line in lines)
        return replace(paths, question_file=dst)
    if bench.question_format == "mmbench":
        from .scorers.common import raise_csv_field_limit

        raise_csv_field_limit()
        with open(src, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        with open(dst, "w", encoding="utf-8", newline="") as f:
            csv.writer(f, delimiter="\t", lineterminator="\n").writerows(rows[:limit + 1])
        return replace(paths, question_file=dst)
    # ScienceQA: the scorer's problem set is pid_splits.json["test"]: restrict it too.
    with open(src, encoding="utf-8") as f:
        entries = json.load(f)[:limit]
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(entries, f)
    with open(os.path.join(paths.files["base_dir"], "problems.json"), encoding="utf-8") as f:
        problems = json.load(f)
    with open(os.path.join(out_dir, "problems.json"), "w", encoding="utf-8") as f:
        json.dump(problems, f)
    with open(os.path.join(out_dir, "pid_splits.json"), "w", encoding="utf-8") as f:
        json.dump({"test": [str(e["id"]) for e in entries]}, f)
    return replace(paths, question_file=dst, files=dict(paths.files, base_dir=out_dir))


# --------------------------------------------------------------------------- the command


def _benchmarks(names) -> list:
    """`names`: a list or a comma-separated string; each a benchmark `run` can generate for."""
    names = names.split(",") if isinstance(names, str) else list(names)
    names = [n.strip().lower().replace("-", "") for n in names if n.strip()]
    runnable = registry.runnable()
    if not names:
        raise EvalInputError(f"--benchmarks: none given; known: {', '.join(runnable)}")
    scored_only = [n for n in names if n in registry.REGISTRY and n not in runnable]
    if scored_only:
        raise EvalInputError(f"--benchmarks: {', '.join(scored_only)}: scored only (no question file "
                             "to generate from): use `eval-mllm score` or eval_mllm.score")
    unknown = [n for n in names if n not in runnable]
    if unknown:
        raise EvalInputError(f"--benchmarks: unknown {unknown}; known: {', '.join(runnable)}")
    return [runnable[n] for n in names]


def _check_data(plans):
    missing = [path for _, paths in plans for path in (paths.question_file, *paths.files.values())
               if not os.path.exists(path)]
    if missing:
        raise EvalInputError("benchmark data not found (layout: docs/eval.md; scripts/eval/prepare_data.sh): "
                             + ", ".join(missing))


RUN_FOLDER_ENTRIES = {"answers", "work", "results.json", "results.md"}


def _check_out_folder(out, overwrite):
    """`--out` is a new or empty folder, or one this command wrote (resumed); a folder holding
    something else is refused unless `overwrite` (which writes beside it and deletes nothing)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise EvalInputError(f"--out {out}: is a file; give a folder")
    entries = set(os.listdir(out)) if os.path.isdir(out) else set()
    if entries and not entries & RUN_FOLDER_ENTRIES and not overwrite:
        raise EvalInputError(f"--out {out}: not empty and not a folder this command wrote; pass "
                             "--overwrite to write into it anyway, or choose another --out")
    if os.path.isdir(out) and not os.access(out, os.W_OK | os.X_OK):
        raise EvalInputError(f"--out {out}: not writable (permission denied)")


def run(model, benchmarks, out, data_root="", *, files=None, limit=None, all_rounds=False,
        model_name=None, overwrite=False, model_base=None, conv_mode="vicuna_v1", max_new_tokens=None,
        min_new_tokens=0, batch_size=1, device=None, skip_bad_images=False, progress=True) -> dict:
    """Answer and score `benchmarks` with the checkpoint `model`; returns the summary that
    OUT/results.json holds ({"benchmarks": {name: {"headline", "rows", "metrics", ...}}, ...}).

    Each benchmark's files are its declared paths under `data_root` (docs/eval.md);
    `files={benchmark: {name: path}}` replaces any of them (question_file, image_folder or a
    scorer input such as annotation_dir). `max_new_tokens` overrides every benchmark's budget.
    Bad input raises EvalInputError (or ScorerInputError) before the model is loaded."""
    from .models import checkpoint_kind
    from .report import write_reports

    files = files or {}
    benches = _benchmarks(benchmarks)
    stray = set(files) - {b.name for b in benches}
    if stray:
        raise EvalInputError(f"files: {sorted(stray)} not among the benchmarks run")
    out = os.path.abspath(out)
    plans = [(b, b.paths(data_root, os.path.join(out, "work", b.name), files.get(b.name))) for b in benches]
    checkpoint_kind(os.path.expanduser(model))  # a checkpoint folder, even if all is answered
    _check_data(plans)
    _check_out_folder(out, overwrite)
    os.makedirs(os.path.join(out, "answers"), exist_ok=True)
    # Read every question file (and check image files) before loading the model: bad input
    # should fail in seconds, not after the first benchmark's generation.
    prepared = []
    for bench, paths in plans:
        os.makedirs(paths.work_dir, exist_ok=True)
        if limit:
            paths = _limited_copy(bench, paths, limit)
        questions = read_questions(paths.question_file, bench.question_format,
                                   all_rounds=all_rounds and bench.question_format == "mmbench")
        answers = os.path.join(out, "answers", bench.answers_file)
        check_resumable(answers, questions, overwrite)
        if not skip_bad_images:
            check_image_files(questions, paths.image_folder)
        prepared.append((bench, paths, questions, answers))
    loaded = None
    results = []
    for bench, paths, questions, answers in prepared:
        if loaded is None and n_unanswered(questions, answers):  # all answered (merged chunks): no model
            from .models import load_model

            loaded = load_model(model, model_base, conv_mode, min_new_tokens=min_new_tokens, device=device)
        if loaded is not None:
            # max_new_tokens overrides every benchmark's own budget (MM-Vet's long answers: 1024)
            loaded.max_new_tokens = max_new_tokens or bench.max_new_tokens
        stats = generate(questions, loaded, answers, paths.image_folder, batch_size,
                         skip_bad_images=skip_bad_images, progress=progress)
        metrics = bench.score(paths, answers)
        results.append(BenchmarkResult(bench.name, bench.headline_value(metrics), bench.rows(metrics, paths),
                                       metrics, asdict(stats), answers, paths.question_file))
    summary = {
        "out": out,
        "model": model_name or os.path.basename(os.path.abspath(model).rstrip("/")),
        "model_path": os.path.abspath(model),
        "conv_mode": conv_mode,
        "limit": limit,
        "benchmarks": {r.name: {"headline": r.headline, "rows": [asdict(x) for x in r.rows],
                                "metrics": r.metrics, "generation": r.generation,
                                "answers_file": r.answers_file, "question_file": r.question_file}
                       for r in results},
    }
    write_reports(summary, out)
    return summary
