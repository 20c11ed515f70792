"""Bad input to `eval-mllm score` / `merge` / `generate` / `run`: exit code 2, one `error:` line that names
the file (and the line, field or flag), no traceback, and no user file changed.

Each case builds its files in a fresh folder and returns the command line, the fragments the
error line must hold, and the files that must come out unchanged (compared by hash)."""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from eval_mllm.__main__ import main

QUESTIONS = [{"question_id": q, "image": f"{q}.jpg", "text": f"question {q}"} for q in (1, 2, 3)]
GQA_ANNOTATIONS = {"1": {"answer": "yes"}, "2": {"answer": "no"}, "3": {"answer": "red"}}
MMBENCH_ROWS = [["index", "question", "A", "B", "C", "answer", "category"],
                ["10", "Which animal?", "cat", "dog", "bird", "B", "attr"],
                ["11", "Which colour?", "red", "green", "", "A", "color"]]


def _answer(qid, text="yes", **extra):
    return {"question_id": qid, "prompt": f"question {qid}", "text": text, **extra}


def _lines(*records, tail=""):
    return "".join(json.dumps(r) + "\n" for r in records) + tail


class Files:
    """The files of one case, in ``root``."""

    def __init__(self, root):
        self.root = root

    def text(self, name, text, encoding="utf-8"):
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
        return str(path)

    def jsonl(self, name, *records, tail=""):
        return self.text(name, _lines(*records, tail=tail))

    def tsv(self, name, rows):
        path = self.root / name
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f, delimiter="\t").writerows(rows)
        return str(path)

    def folder(self, name):
        (self.root / name).mkdir(parents=True, exist_ok=True)
        return str(self.root / name)

    def gqa(self, answers_text, **paths):
        """A gqa command line over good questions and annotations and ``answers_text``."""
        return ["score", "gqa",
                "--question-file", paths.get("q") or self.jsonl("q.jsonl", *QUESTIONS),
                "--annotation-file", paths.get("ann") or self.text("ann.json", json.dumps(GQA_ANNOTATIONS)),
                "--result-file", paths.get("a") or self.text("a.jsonl", answers_text)]

    def mmbench(self, *answers, rows=MMBENCH_ROWS, extra=()):
        qfile = self.tsv("mmb.tsv", rows)
        return ["score", "mmbench", "--question-file", qfile,
                "--result-file", self.jsonl("a.jsonl", *answers), *extra]

    def generate(self, q=None, a=None):
        return ["generate", "--model-path", str(self.root / "no-model"), "--question-file",
                q or self.jsonl("q.jsonl", *QUESTIONS), "--answers-file", a or str(self.root / "a.jsonl"),
                "--device", "cpu"]

    def run(self, model, benchmarks="pope"):
        return ["run", "--model", model, "--benchmarks", benchmarks, "--data-root", self.folder("data"),
                "--out", str(self.root / "out")]

    def scienceqa(self, problems):
        """A ScienceQA base folder whose test split is every problem of ``problems``."""
        self.text("sqa/pid_splits.json", json.dumps({"test": list(problems)}))
        return os.path.dirname(self.text("sqa/problems.json", json.dumps(problems)))

    def good_answers(self):
        return self.jsonl("a.jsonl", *(_answer(q) for q in (1, 2, 3)))


GOOD = _lines(*(_answer(q) for q in (1, 2, 3)))
LATIN1 = (_lines(_answer(1)) + json.dumps(_answer(2, "café"), ensure_ascii=False) + "\n").encode("latin-1")
ROUND0 = {"question_id": 10, "round_id": 0, "text": "B"}


def _round(value):
    return {"question_id": 11, "round_id": value, "text": "A"}


# (id, build(files) -> (argv, [fragments the error names], [files that must stay unchanged]))
CASES = [
    # --- score: the answers file
    ("answers-missing", lambda f: (f.gqa("", a=str(f.root / "nope.jsonl")), ["nope.jsonl", "not found"], [])),
    ("answers-is-directory", lambda f: (f.gqa("", a=f.folder("a.jsonl")), ["a.jsonl", "directory"], [])),
    ("answers-not-utf8", lambda f: (f.gqa(LATIN1), ["a.jsonl", "line 2", "UTF-8"], [])),
    ("answers-cut-line-in-middle", lambda f: (
        f.gqa(_lines(_answer(1)) + '{"question_id": 2, "te\n' + _lines(_answer(3))),
        ["a.jsonl", "line 2", "not valid JSON"], [])),
    ("answers-empty", lambda f: (f.gqa(""), ["a.jsonl", "nothing to score", "no answer"], [])),
    ("answers-only-a-cut-line", lambda f: (f.gqa('{"question_id": 1, "te'),
                                           ["a.jsonl", "nothing to score", "cut write"], [])),
    ("answers-no-matching-id", lambda f: (f.gqa(_lines(_answer(7), _answer(8))),
                                          ["a.jsonl", "nothing to score", "question_id 7"], [])),
    ("answers-blank-lines-only", lambda f: (f.gqa("\n \n\n"), ["a.jsonl", "nothing to score"], [])),
    ("answer-without-text", lambda f: (f.gqa(_lines(_answer(1), {"question_id": 2})),
                                       ["a.jsonl", "line 2", "'text'"], [])),
    ("answer-text-null", lambda f: (f.gqa(_lines(_answer(1, None))), ["a.jsonl", "line 1", "'text'", "null"], [])),
    ("answer-id-bool", lambda f: (f.gqa(_lines(_answer(True))), ["a.jsonl", "line 1", "'question_id'"], [])),
    ("answer-is-a-list", lambda f: (f.gqa(_lines(_answer(1), [1, 2])), ["a.jsonl", "line 2", "JSON object"], [])),
    ("answers-nested-too-deeply", lambda f: (f.gqa(GOOD + "[" * 100000 + "]" * 100000 + "\n"),
                                             ["a.jsonl", "line 4", "nested too deeply"], [])),
    # --- score: annotation values of the wrong type (they gave tracebacks or silently wrong scores)
    ("gqa-annotation-answer-not-str", lambda f: (
        f.gqa(GOOD, ann=f.text("ann.json", json.dumps(dict(GQA_ANNOTATIONS, **{"2": {"answer": 5}})))),
        ["ann.json", "question '2'", "'answer'"], [])),
    ("textvqa-question-not-str", lambda f: (
        ["score", "textvqa", "--annotation-file", f.text("val.json", json.dumps({"data": [
            {"question_id": 1, "image_id": "i", "question": 5, "answers": ["a"]}]})),
         "--result-file", f.good_answers()], ["val.json", "data[0]", "'question'"], [])),
    ("textvqa-answers-a-string", lambda f: (
        ["score", "textvqa", "--annotation-file", f.text("val.json", json.dumps({"data": [
            {"question_id": 1, "image_id": "i", "question": "q", "answers": "abc"}]})),
         "--result-file", f.good_answers()], ["val.json", "data[0]", "'answers'"], [])),
    ("vqav2-answer-not-str", lambda f: (
        ["score", "vqav2", "--annotation-file", f.text("ann.json", json.dumps({"annotations": [
            {"question_id": 1, "answers": [{"answer": 5}]}]})), "--result-file", f.good_answers()],
        ["ann.json", "annotations[0]", "'answers'"], [])),
    ("vizwiz-answers-not-list", lambda f: (
        ["score", "vizwiz", "--annotation-file", f.text("val.json", json.dumps([{"image": "1.jpg", "answers": 5}])),
         "--result-file", f.good_answers()], ["val.json", "entry 0", "'answers'"], [])),
    ("scienceqa-answer-not-int", lambda f: (
        ["score", "scienceqa", "--base-dir", f.scienceqa({"1": {"choices": ["a", "b"], "answer": "A"}}),
         "--result-file", f.good_answers()],
        ["problems.json", "problem '1'", "'answer'"], [])),
    ("mme-results-not-utf8", lambda f: (
        ["score", "mme", "--results-dir", os.path.dirname(f.text("mme/existence.txt", b"a.jpg\tq?\tYes\tyes\n"
                                                                 + "b.jpg\tq?\tNo\tnon café\n".encode("latin-1")))],
        ["existence.txt", "line 2", "UTF-8"], [])),
    ("mme-results-three-fields", lambda f: (
        ["score", "mme", "--results-dir", os.path.dirname(f.text("mme/count.txt", "a.jpg\tq?\tYes\n"))],
        ["count.txt", "line 1", "4 tab-separated fields"], [])),
    # --- score: MMBench rounds (one bad round must not switch the file to circular evaluation)
    ("mmbench-round-string", lambda f: (f.mmbench(ROUND0, _round("1")),
                                        ["a.jsonl", "line 2", "question_id 11", "'round_id'", "'1'"], [])),
    ("mmbench-round-too-large", lambda f: (f.mmbench(ROUND0, _round(7)),
                                           ["a.jsonl", "line 2", "question_id 11", "0 to 1", "got 7"], [])),
    ("mmbench-round-negative", lambda f: (f.mmbench(ROUND0, _round(-1)),
                                          ["a.jsonl", "line 2", "question_id 11", "got -1"], [])),
    ("mmbench-round-null", lambda f: (f.mmbench(_round(None), ROUND0), ["a.jsonl", "line 1", "question_id 11", "None"], [])),
    ("mmbench-round-idx-float", lambda f: (
        f.mmbench({"question_id": 10, "round_idx": 1.0, "text": "B"}),
        ["a.jsonl", "line 1", "question_id 10", "'round_idx'"], [])),
    # --- score: question / annotation files
    ("mmbench-tsv-missing-column", lambda f: (
        f.mmbench(ROUND0, rows=[r[:3] + r[4:] for r in MMBENCH_ROWS]),
        ["mmb.tsv", "line 1", "'B'"], [])),
    ("mmbench-tsv-bad-answer-letter", lambda f: (
        f.mmbench(ROUND0, rows=MMBENCH_ROWS[:2] + [MMBENCH_ROWS[2][:5] + ["C", "color"]]),
        ["mmb.tsv", "line 3", "'C'"], [])),
    ("mmbench-tsv-duplicate-index", lambda f: (
        f.mmbench(ROUND0, rows=MMBENCH_ROWS + [MMBENCH_ROWS[1]]), ["mmb.tsv", "line 4", "duplicate"], [])),
    ("gqa-annotation-not-json", lambda f: (f.gqa(GOOD, ann=f.text("ann.json", "{'1': ")),
                                           ["ann.json", "not valid JSON"], [])),
    ("gqa-questions-duplicate-id", lambda f: (f.gqa(GOOD, q=f.jsonl("q.jsonl", *QUESTIONS, QUESTIONS[0])),
                                              ["q.jsonl", "duplicate", "'1'"], [])),
    ("gqa-questions-cut-last-line", lambda f: (f.gqa(GOOD, q=f.jsonl("q.jsonl", *QUESTIONS, tail='{"quest')),
                                               ["q.jsonl", "line 4", "not valid JSON"], [])),
    ("pope-annotation-dir-missing", lambda f: (
        ["score", "pope", "--annotation-dir", str(f.root / "coco"), "--question-file",
         f.jsonl("q.jsonl", *QUESTIONS), "--result-file", f.good_answers()], ["coco"], [])),
    ("textvqa-annotation-without-data", lambda f: (
        ["score", "textvqa", "--annotation-file", f.text("val.json", "{}"), "--result-file", f.good_answers()],
        ["val.json", "'data'"], [])),
    ("scienceqa-base-dir-empty", lambda f: (
        ["score", "scienceqa", "--base-dir", f.folder("sqa"), "--result-file", f.good_answers()],
        ["sqa", "problems.json"], [])),
    # --- score: --submission-out, checked before anything is scored
    ("submission-out-is-directory", lambda f: (
        f.mmbench(ROUND0, extra=["--submission-out", f.folder("sub")]), ["--submission-out", "sub", "directory"], [])),
    ("submission-out-below-a-file", lambda f: (
        f.mmbench(ROUND0, extra=["--submission-out", os.path.join(f.text("file", "x"), "sub.tsv")]),
        ["--submission-out", "file", "not a folder"], [])),
    ("submission-out-unwritable-before-scoring", lambda f: (
        # the answers are bad too: the unwritable output must be the error, before any scoring
        ["score", "mmbench", "--question-file", f.tsv("mmb.tsv", MMBENCH_ROWS), "--result-file",
         f.text("a.jsonl", "not json\nat all\n"), "--submission-out", "/proc/sub.tsv"],
        ["--submission-out", "/proc/sub.tsv"], [])),
    ("submission-out-is-the-answers", lambda f: (
        f.mmbench(ROUND0, extra=["--submission-out", str(f.root / "a.jsonl")]),
        ["--submission-out", "a.jsonl", "--result-file"], ["a.jsonl"])),
    ("submission-out-exists", lambda f: (
        f.mmbench(ROUND0, extra=["--submission-out", f.text("sub.tsv", "someone's table\n")]),
        ["--submission-out", "sub.tsv", "--overwrite"], ["sub.tsv"])),
    # --- merge
    ("merge-part-missing", lambda f: (["merge", str(f.root / "out.jsonl"), f.good_answers(),
                                       str(f.root / "p1.jsonl")], ["p1.jsonl", "not found"], [])),
    ("merge-part-is-directory", lambda f: (["merge", str(f.root / "out.jsonl"), f.folder("p0.jsonl")],
                                           ["p0.jsonl", "directory"], [])),
    ("merge-part-not-utf8", lambda f: (["merge", str(f.root / "out.jsonl"), f.text("p0.jsonl", LATIN1)],
                                       ["p0.jsonl", "line 2", "UTF-8"], [])),
    ("merge-part-cut-line-in-middle", lambda f: (
        ["merge", str(f.root / "out.jsonl"), f.good_answers(),
         f.text("p1.jsonl", '{"question_id": 4\n' + _lines(_answer(5)))], ["p1.jsonl", "line 1", "JSON"], [])),
    ("merge-part-answer-without-id", lambda f: (
        ["merge", str(f.root / "out.jsonl"), f.jsonl("p0.jsonl", {"text": "yes"})],
        ["p0.jsonl", "line 1", "'question_id'"], [])),
    ("merge-out-is-directory", lambda f: (["merge", f.folder("out"), f.good_answers()], ["out", "directory"], [])),
    ("merge-out-is-a-part", lambda f: (["merge", str(f.root / "a.jsonl"), f.good_answers()],
                                       ["a.jsonl", "one of the parts"], ["a.jsonl"])),
    ("merge-out-holds-other-content", lambda f: (
        ["merge", f.text("out.jsonl", "my notes\n"), f.good_answers()], ["out.jsonl", "--overwrite"], ["out.jsonl"])),
    ("merge-out-unwritable", lambda f: (["merge", "/proc/merged.jsonl", f.good_answers()],
                                        ["/proc/merged.jsonl"], [])),
    ("merge-question-file-missing", lambda f: (
        ["merge", str(f.root / "out.jsonl"), f.good_answers(), "--question-file", str(f.root / "q.jsonl")],
        ["q.jsonl"], [])),
    # --- generate: refused before the model is loaded (the model path does not even exist)
    ("generate-question-file-not-utf8", lambda f: (
        f.generate(q=f.text("q.jsonl", _lines(QUESTIONS[0]).encode() + LATIN1)), ["q.jsonl", "line 3", "UTF-8"], [])),
    ("generate-question-file-cut-line", lambda f: (
        f.generate(q=f.text("q.jsonl", _lines(QUESTIONS[0]) + '{"question_id": 2,\n' + _lines(QUESTIONS[2]))),
        ["q.jsonl", "line 2", "not valid JSON"], [])),
    ("generate-question-without-text", lambda f: (
        f.generate(q=f.jsonl("q.jsonl", QUESTIONS[0], {"question_id": 2})), ["q.jsonl", "line 2", "'text'"], [])),
    ("generate-scienceqa-not-json", lambda f: (f.generate(q=f.text("q.json", '[{"id": "1",\n')),
                                               ["q.json", "line 2", "not valid JSON"], [])),
    ("generate-answers-file-is-directory", lambda f: (f.generate(a=f.folder("answers")),
                                                      ["--answers-file", "answers", "directory"], [])),
    ("generate-answers-file-unwritable", lambda f: (f.generate(a="/proc/answers.jsonl"),
                                                   ["--answers-file", "/proc/answers.jsonl"], [])),
    ("generate-answers-file-not-answers", lambda f: (f.generate(a=f.text("a.jsonl", "my notes\nmore notes\n")),
                                                     ["--answers-file", "a.jsonl", "--overwrite"], ["a.jsonl"])),
    # one line of text is no cut answer line: resuming would have cut it off the file
    ("generate-answers-file-one-line-of-text", lambda f: (f.generate(a=f.text("a.jsonl", "my notes")),
                                                          ["--answers-file", "a.jsonl", "--overwrite"], ["a.jsonl"])),
    ("answers-last-line-not-json-at-all", lambda f: (f.gqa(GOOD + "Traceback (most recent call last):\n"),
                                                     ["a.jsonl", "line 4", "not valid JSON"], [])),
    ("generate-answers-file-other-benchmark", lambda f: (
        f.generate(a=f.jsonl("a.jsonl", _answer(7), _answer(8))), ["--answers-file", "a.jsonl", "--overwrite"],
        ["a.jsonl"])),
    # --- run: refused before any model is loaded
    ("run-model-config-not-json", lambda f: (
        f.run(model=os.path.dirname(f.text("model/config.json", '{"model_type": llava'))),
        ["config.json", "not valid JSON"], [])),
    ("run-model-without-config", lambda f: (f.run(model=f.folder("model")), ["model", "no config.json"], [])),
    ("run-data-missing", lambda f: (f.run(model=os.path.dirname(f.text("model/config.json", "{}"))),
                                    ["benchmark data not found"], [])),
    ("run-unknown-benchmark", lambda f: (
        ["run", "--model", str(f.root / "model"), "--benchmarks", "pope,nosuchbench", "--data-root",
         f.folder("data"), "--out", str(f.root / "out")], ["--benchmarks", "nosuchbench"], [])),
]


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize("build", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line(build, tmp_path, capsys):
    argv, fragments, protected = build(Files(tmp_path))
    protected = [str(tmp_path / name) for name in protected]
    before = {p: _sha(p) for p in protected}
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert {p: _sha(p) for p in protected} == before


def test_the_table_is_wide_enough():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


def test_submission_out_overwrite_flag_replaces(tmp_path, capsys):
    f = Files(tmp_path)
    sub = f.text("sub.tsv", "someone's table\n")
    assert main(f.mmbench(ROUND0, extra=["--submission-out", sub, "--overwrite"])) == 0
    with open(sub, encoding="utf-8") as table:
        assert table.readline().split("\t")[0] == "index"


def test_merge_loses_no_answer(tmp_path, capsys):
    """Every answer read is written or counted as dropped, by reason; a complete last line
    without its newline is an answer like any other."""
    f = Files(tmp_path)
    p0 = f.text("p0.jsonl", _lines(_answer(1), _answer(2)) + json.dumps(_answer(3)))  # no final newline
    p1 = f.text("p1.jsonl", _lines(_answer(4), _answer(2, "again")) + '{"question_id": 5, "te')  # cut write
    p2 = f.text("p2.jsonl", json.dumps(_answer(6)))  # one complete line, no newline
    out = str(tmp_path / "out.jsonl")
    assert main(["merge", out, p0, p1, p2]) == 0
    printed = capsys.readouterr().out
    with open(out, encoding="utf-8") as merged:
        records = [json.loads(line) for line in merged]
    assert [r["question_id"] for r in records] == [1, 2, 3, 4, 6]
    assert next(r for r in records if r["question_id"] == 2)["text"] == "again"  # the last answer, as the scorers read it
    assert "5 answers written of 7 read" in printed
    assert "1 dropped (duplicate_answer)" in printed and "1 dropped (truncated_last_line)" in printed


def _cli_variants():
    """`python -m eval_mllm` and, where installed, the `eval-mllm` console script."""
    variants = [[sys.executable, "-m", "eval_mllm"]]
    script = shutil.which("eval-mllm") or os.path.join(os.path.dirname(sys.executable), "eval-mllm")
    if os.path.exists(script):
        variants.append([script])
    return variants


@pytest.mark.parametrize("command", _cli_variants(), ids=lambda c: os.path.basename(c[-1]))
def test_entry_points_share_the_error_path(command, tmp_path):
    f = Files(tmp_path)
    argv = [*command, *f.mmbench(ROUND0, _round(7))]
    env = {k: v for k, v in os.environ.items() if k != "EVAL_MLLM_DEBUG"}
    # this checkout first: the console script may belong to another (editable) install
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
         env.get("PYTHONPATH", "")])
    plain = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert plain.returncode == 2 and plain.stdout == ""
    assert plain.stderr.count("\n") == 1 and "line 2" in plain.stderr, plain.stderr
    for debug_argv, debug_env in ((argv + ["--debug"], env), (argv, {**env, "EVAL_MLLM_DEBUG": "1"})):
        shown = subprocess.run(debug_argv, capture_output=True, text=True, env=debug_env, timeout=120,
                               check=False)
        assert shown.returncode != 0 and "Traceback" in shown.stderr
        assert "ScorerInputError" in shown.stderr and "line 2" in shown.stderr


def test_run_command_reports_user_errors_only(capsys, monkeypatch):
    """A file the system refuses is the user's to fix (one line naming it); a bug keeps its
    traceback; --debug / EVAL_MLLM_DEBUG re-raise the user error too."""
    from eval_mllm.errors import run_command

    def refused():
        raise PermissionError(13, "Permission denied", "/data/answers.jsonl")

    monkeypatch.delenv("EVAL_MLLM_DEBUG", raising=False)
    assert run_command(refused) == 2
    assert capsys.readouterr().err == "error: [Errno 13] Permission denied: '/data/answers.jsonl'\n"
    with pytest.raises(PermissionError):
        run_command(refused, debug=True)
    monkeypatch.setenv("EVAL_MLLM_DEBUG", "1")
    with pytest.raises(PermissionError):
        run_command(refused)
    with pytest.raises(ZeroDivisionError):
        run_command(lambda: 1 / 0)
