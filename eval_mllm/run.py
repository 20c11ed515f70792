"""`python -m eval_mllm run`: generate (or reuse) answers for several benchmarks, score them with
eval_mllm.scorers and write OUT/results.json and OUT/results.md.

Data layout under --data-root: the one of LLaVA's docs/Evaluation.md (see docs/eval.md).
Answers go to OUT/answers/<benchmark>.jsonl; a rerun resumes them (eval_mllm.generate).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field

from .errors import EvalInputError
from .generate import check_image_files, check_resumable, generate, n_unanswered
from .questions import read_questions

# Short-answer / multiple-choice instructions are already in LLaVA's question files.


@dataclass
class Benchmark:
    name: str
    question_file: str           # relative to the data root
    image_folder: str
    fmt: str = "jsonl"
    extra_files: tuple = ()      # other files the scorer needs (checked before generating)
    max_new_tokens: int = 128
    all_rounds: bool = False


BENCHMARKS = {b.name: b for b in [
    Benchmark("pope", "pope/llava_pope_test.jsonl", "pope/val2014", extra_files=("pope/coco",)),
    Benchmark("mme", "MME/llava_mme.jsonl", "MME/MME_Benchmark_release_version",
              extra_files=("MME/MME_Benchmark_release_version",)),
    Benchmark("textvqa", "textvqa/llava_textvqa_val_v051_ocr.jsonl", "textvqa/train_images",
              extra_files=("textvqa/TextVQA_0.5.1_val.json",)),
    Benchmark("gqa", "gqa/llava_gqa_testdev_balanced.jsonl", "gqa/images",
              extra_files=("gqa/testdev_balanced_questions.json",)),
    Benchmark("scienceqa", "scienceqa/llava_test_CQM-A.json", "scienceqa/images/test", fmt="scienceqa",
              extra_files=("scienceqa/problems.json", "scienceqa/pid_splits.json")),
    Benchmark("mmbench", "mmbench/mmbench_dev_20230712.tsv", "", fmt="mmbench"),
    Benchmark("vqav2", "vqav2/llava_vqav2_mscoco_test-dev2015.jsonl", "vqav2/test2015"),
    Benchmark("vizwiz", "vizwiz/llava_test.jsonl", "vizwiz/test"),
    Benchmark("mmvet", "mm-vet/llava-mm-vet.jsonl", "mm-vet/images", max_new_tokens=1024),
]}


@dataclass
class Row:
    """One line of the results table."""
    metric: str
    value: float | None
    chance: float | None = None
    note: str = ""


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


def _limited_copy(bench, src, out_dir, limit, data_root):
    """The first `limit` questions of `src` as a file of the same format (so the scorer's
    question set is the generated set). Returns (question file, scienceqa base dir or None)."""
    os.makedirs(out_dir, exist_ok=True)
    dst = os.path.join(out_dir, os.path.basename(src))
    if bench.fmt == "jsonl":
        with open(src, encoding="utf-8-sig") as f:
            lines = [line for line in f if line.strip()][:limit]
        with open(dst, "w", encoding="utf-8") as f:
            f.writelines(line if line.endswith("\n") else line + "\n" for line in lines)
        return dst, None
    if bench.fmt == "mmbench":
        from .scorers.common import raise_csv_field_limit

        raise_csv_field_limit()
        with open(src, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        with open(dst, "w", encoding="utf-8", newline="") as f:
            csv.writer(f, delimiter="\t", lineterminator="\n").writerows(rows[:limit + 1])
        return dst, None
    # ScienceQA: the scorer's problem set is pid_splits.json["test"]: restrict it too.
    with open(src, encoding="utf-8") as f:
        entries = json.load(f)[:limit]
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(entries, f)
    base = os.path.join(data_root, "scienceqa")
    with open(os.path.join(base, "problems.json"), encoding="utf-8") as f:
        problems = json.load(f)
    with open(os.path.join(out_dir, "problems.json"), "w", encoding="utf-8") as f:
        json.dump(problems, f)
    with open(os.path.join(out_dir, "pid_splits.json"), "w", encoding="utf-8") as f:
        json.dump({"test": [str(e["id"]) for e in entries]}, f)
    return dst, out_dir


# --------------------------------------------------------------------------- MME ground truth


def _mme_ground_truth(release_dir):
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


def _mme_gt_for(gt, subtask, stem, prompt):
    """The ground truth of an MME answer, keyed as LLaVA's convert_answer_to_mme.py keys it: its
    prompt without the short-answer instruction, ending in "Please answer yes or no." (the
    release has a few questions with two spaces before it)."""
    question = prompt.replace("Answer the question using a single word or phrase.", "").strip()
    candidates = [question, question.split("\n")[0].strip()]
    if "Please answer yes or no." not in question:
        candidates += [question + " Please answer yes or no.", question + "  Please answer yes or no."]
    for text in candidates:
        if (subtask, stem, text) in gt:
            return text, gt[(subtask, stem, text)]
    return None, None


def _mme_results_dir(answers_file, release_dir, out_dir):
    """Our MME answers as the official tool's results folder (<subtask>.txt lines: image,
    question, ground truth, prediction). LLaVA's question ids are image paths shared by the two
    questions of an image, so answers are told apart (and matched to the truth) by prompt."""
    from .generate import repair_and_read

    gt = _mme_ground_truth(release_dir)
    records, _ = repair_and_read(answers_file)
    rows = {}
    for lineno, rec in enumerate(records, 1):
        qid = str(rec["question_id"])
        subtask, image = qid.split("/")[0], os.path.basename(qid)
        question, answer = _mme_gt_for(gt, subtask, os.path.splitext(image)[0], str(rec.get("prompt", "")))
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


# --------------------------------------------------------------------------- chance levels


def _mean_pct(levels):
    return 100.0 * sum(levels) / len(levels) if levels else None


def _mmbench_chance(question_file):
    """(circular, single-pass) chance accuracy, from one read of the (large) TSV."""
    from .scorers.common import read_table
    from .scorers.mmbench import options_of

    counts = [len(options_of(row, "ABCD")) for row in read_table(question_file, ("index", "question", "A", "B"))
              if row.get("answer", "").strip()]
    # circular: all n rotations right by luck
    return _mean_pct([(1.0 / n) ** n for n in counts]), _mean_pct([1.0 / n for n in counts])


def _scienceqa_chance(base_dir):
    """(IMG, all test problems) chance accuracy, from one read of problems.json."""
    with open(os.path.join(base_dir, "problems.json"), encoding="utf-8") as f:
        problems = json.load(f)
    with open(os.path.join(base_dir, "pid_splits.json"), encoding="utf-8") as f:
        pids = [str(p) for p in json.load(f)["test"]]
    with_choices = [problems[p] for p in pids if problems[p].get("choices")]
    return (_mean_pct([1.0 / len(p["choices"]) for p in with_choices if p.get("image")]),
            _mean_pct([1.0 / len(p["choices"]) for p in with_choices]))


# --------------------------------------------------------------------------- scoring


def _score(bench, data_root, question_file, answers_file, work_dir, sqa_base):
    """(headline, rows, metrics) of one benchmark, by the scorers' Python API."""
    from .scorers import (
        gqa,
        judged,
        mmbench,
        mme,
        pope,
        scienceqa,
        textvqa,
        vizwiz,
        vqav2,
    )

    root = lambda rel: os.path.join(data_root, rel)
    if bench.name == "pope":
        m = pope.score(root("pope/coco"), question_file, answers_file)
        return m["f1_mean"], [Row("F1, mean over splits (LLaVA's POPE number)", m["f1_mean"], None,
                                  "answering always 'yes' gives F1 66.7"),
                              Row("accuracy, mean over splits", m["accuracy_mean"], 50.0)] + [
            Row(f"{split} F1 / yes-ratio", s["f1"], None, f"yes-ratio {s['yes_ratio']:.1f}"
                if s["yes_ratio"] is not None else "") for split, s in m["splits"].items()], m
    if bench.name == "mme":
        results_dir = _mme_results_dir(answers_file, root("MME/MME_Benchmark_release_version"),
                                       os.path.join(work_dir, "mme_results"))
        m = mme.score(results_dir=results_dir)
        m["n_questions"] = len(read_questions(question_file))  # the results folder only has answers
        m["n_missing"] = m["n_questions"] - m["n_scored"]
        n_p = sum(n in m["subtasks"] for n in mme.PERCEPTION)
        n_c = sum(n in m["subtasks"] for n in mme.COGNITION)
        # Random yes/no: acc 50 + acc+ 25 per subtask.
        return m["perception"], [Row(f"perception ({n_p}/10 subtasks)", m["perception"], 75.0 * n_p),
                                 Row(f"cognition ({n_c}/4 subtasks)", m["cognition"], 75.0 * n_c)], m
    if bench.name == "textvqa":
        m = textvqa.score(root("textvqa/TextVQA_0.5.1_val.json"), answers_file, question_file)
        return m["accuracy"], [Row("accuracy (VQA soft, with OCR tokens in the prompt)", m["accuracy"])], m
    if bench.name == "gqa":
        m = gqa.score(question_file, answers_file, root("gqa/testdev_balanced_questions.json"))
        return m["accuracy"], [Row("accuracy (test-dev balanced)", m["accuracy"])], m
    if bench.name == "scienceqa":
        base = sqa_base or root("scienceqa")
        m = scienceqa.score(base, answers_file)
        img_chance, all_chance = _scienceqa_chance(base)
        return m["img_accuracy"], [
            Row("IMG accuracy (LLaVA's SQA-IMG number)", m["img_accuracy"], img_chance),
            Row("accuracy, all test problems", m["accuracy"], all_chance)], m
    if bench.name == "mmbench":
        m = mmbench.score(question_file, answers_file, os.path.join(work_dir, "mmbench_submission.tsv"))
        label = "accuracy, circular (all rotations)" if m["circular"] else "accuracy, single pass"
        circular_chance, single_chance = _mmbench_chance(question_file)
        return m["accuracy"], [Row(label, m["accuracy"], circular_chance if m["circular"] else single_chance),
                               Row("accuracy, round 0 only", m["accuracy_round0"], single_chance)], m
    if bench.name in ("vqav2", "vizwiz"):
        module = vqav2 if bench.name == "vqav2" else vizwiz
        sub = os.path.join(work_dir, f"{bench.name}_submission.json")
        m = module.score(answers_file, question_file=question_file, submission_out=sub)
        return None, [Row("test-dev: submit to the evaluation server", None, None, sub)], m
    if bench.name == "mmvet":
        sub = os.path.join(work_dir, "mmvet_submission.json")
        m = judged.score_mmvet(answers_file, sub, question_file)
        return None, [Row("needs the MM-Vet GPT-4 grader", None, None, sub)], m
    raise EvalInputError(f"no scorer wired for {bench.name!r}")


# --------------------------------------------------------------------------- the command


def _check_data(benches, data_root):
    missing = []
    for b in benches:
        for rel in (b.question_file, *b.extra_files):
            if not os.path.exists(os.path.join(data_root, rel)):
                missing.append(os.path.join(data_root, rel))
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


def run(args) -> dict:
    from .report import write_reports

    names = [n.strip().lower().replace("-", "") for n in args.benchmarks.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise EvalInputError(f"--benchmarks: unknown {unknown}; known: {', '.join(BENCHMARKS)}")
    benches = [BENCHMARKS[n] for n in names]
    data_root, out = os.path.abspath(args.data_root), os.path.abspath(args.out)
    from .models import checkpoint_kind

    checkpoint_kind(os.path.expanduser(args.model_path))  # a checkpoint folder, even if all is answered
    _check_data(benches, data_root)
    _check_out_folder(out, getattr(args, "overwrite", False))
    os.makedirs(os.path.join(out, "answers"), exist_ok=True)
    # Read every question file (and check image files) before loading the model: bad input
    # should fail in seconds, not after the first benchmark's generation.
    plans = []
    for bench in benches:
        work = os.path.join(out, "work", bench.name)
        os.makedirs(work, exist_ok=True)
        qfile, sqa_base = os.path.join(data_root, bench.question_file), None
        if args.limit:
            qfile, sqa_base = _limited_copy(bench, qfile, os.path.join(work, "limited"), args.limit, data_root)
        all_rounds = bench.name == "mmbench" and args.all_rounds
        questions = read_questions(qfile, bench.fmt, all_rounds=all_rounds)
        check_resumable(os.path.join(out, "answers", f"{bench.name}.jsonl"), questions,
                        getattr(args, "overwrite", False))
        if not args.skip_bad_images:
            check_image_files(questions, os.path.join(data_root, bench.image_folder))
        plans.append((bench, work, qfile, sqa_base, questions))
    model = None
    results = []
    for bench, work, qfile, sqa_base, questions in plans:
        answers = os.path.join(out, "answers", f"{bench.name}.jsonl")
        if model is None and n_unanswered(questions, answers):  # all answered (merged chunks): no model
            from .models import load_model

            model = load_model(args.model_path, args.model_base, args.conv_mode,
                               min_new_tokens=args.min_new_tokens, device=args.device)
        if model is not None:
            # --max-new-tokens overrides every benchmark's own budget (MM-Vet's long answers: 1024)
            model.max_new_tokens = args.max_new_tokens or bench.max_new_tokens
        stats = generate(questions, model, answers, os.path.join(data_root, bench.image_folder),
                         args.batch_size, skip_bad_images=args.skip_bad_images, progress=args.progress)
        headline, rows, metrics = _score(bench, data_root, qfile, answers, work, sqa_base)
        results.append(BenchmarkResult(bench.name, headline, rows, metrics, asdict(stats), answers, qfile))
    summary = {
        "out": out,
        "model": args.model_name or os.path.basename(os.path.abspath(args.model_path).rstrip("/")),
        "model_path": os.path.abspath(args.model_path),
        "conv_mode": args.conv_mode,
        "limit": args.limit,
        "benchmarks": {r.name: {"headline": r.headline, "rows": [asdict(x) for x in r.rows],
                                "metrics": r.metrics, "generation": r.generation,
                                "answers_file": r.answers_file, "question_file": r.question_file}
                       for r in results},
    }
    write_reports(summary, out)
    return summary
