"""The benchmark registry is the one source: every consumer (score CLI, run, report, lmms-eval
task YAMLs) agrees with it; the keyword API `eval_mllm.score`; the command line's parser is
built without torch."""

from __future__ import annotations

import glob
import importlib.util
import inspect
import json
import os
import subprocess
import sys

import pytest
import yaml

import eval_mllm
from eval_mllm.benchmarks import REGISTRY, get, runnable
from eval_mllm.benchmarks.base import _score_with_files
from eval_mllm.errors import EvalInputError
from eval_mllm.scorers.common import ScorerInputError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASKS = os.path.join(ROOT, "eval_mllm", "lmms_tasks")
# LLaVA-1.5's instructions, written out here (not read from eval_mllm.prompts)
SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."


class _TaskLoader(yaml.SafeLoader):
    """lmms-eval's YAMLs name functions with `!function module.name`: read them as strings."""


_TaskLoader.add_constructor("!function", lambda loader, node: "!function " + loader.construct_scalar(node))


def task_yamls() -> dict[str, dict]:
    out = {}
    for path in glob.glob(os.path.join(TASKS, "*.yaml")):
        with open(path, encoding="utf-8") as f:
            out[os.path.basename(path)] = yaml.load(f, Loader=_TaskLoader)
    return out


def test_every_benchmark_declares_what_its_consumers_need():
    for name, bench in REGISTRY.items():
        assert bench.name == name and bench.headline, name
        for attr in ("score", "add_arguments", "from_args"):
            assert callable(getattr(bench.scorer, attr)), (name, attr)
        if bench.headline_metric is None:
            assert bench.submission or not bench.question_file, name  # scored elsewhere
    for name, bench in runnable().items():
        assert bench.question_format in ("jsonl", "scienceqa", "mmbench") and bench.rows, name
        if bench.score_answers is _score_with_files:  # the declared files are the scorer's keywords
            params = inspect.signature(bench.scorer.score).parameters
            assert set(bench.files) <= set(params) and "result_file" in params, name
            assert bench.scorer_reads_question_file == ("question_file" in params), name
    assert {n: b.prompt for n, b in REGISTRY.items() if b.prompt} == {
        "pope": SHORT, "textvqa": SHORT, "gqa": SHORT, "vqav2": SHORT, "vizwiz": SHORT,
        "scienceqa": LETTER, "mmbench": LETTER}


def test_lmms_task_yamls_agree_with_the_registry():
    yamls = task_yamls()
    declared = {b.lmms_task: b for b in REGISTRY.values() if b.lmms_task}
    assert {f"{task}.yaml" for task in declared} == set(yamls)  # no YAML without a benchmark
    for task, bench in declared.items():
        config = yamls[f"{task}.yaml"]
        assert config["task"] == task
        post = config.get("lmms_eval_specific_kwargs", {}).get("default", {}).get("post_prompt")
        if bench.name == "textvqa":  # the prompt is built by the scorer's build_textvqa_prompt
            assert post is None
            continue
        assert post == ("\n" + bench.prompt if bench.prompt else ""), task


def test_lmms_utils_defaults_are_the_prompts():
    spec = importlib.util.spec_from_file_location("lmms_tasks_utils", os.path.join(TASKS, "utils.py"))
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = {"question": "What colour?", "answer": "red"}
    assert utils.gqa_doc_to_text(doc) == "What colour?\n" + SHORT
    assert utils.sqa_doc_to_text({"question": "Q?", "choices": ["a", "b"]}).endswith("(B) b\n" + LETTER)


def test_unknown_benchmark_names_the_known_ones():
    with pytest.raises(EvalInputError, match="unknown benchmark 'nope'; known: pope, mme"):
        get("nope")
    assert get("MM-Vet") is REGISTRY["mmvet"]


def test_paths_under_the_data_root_and_overrides(tmp_path):
    pope = REGISTRY["pope"]
    paths = pope.paths(str(tmp_path), str(tmp_path / "work"), {"annotation_dir": "/labels"})
    assert paths.question_file == str(tmp_path / "pope" / "llava_pope_test.jsonl")
    assert paths.image_folder == str(tmp_path / "pope" / "val2014")
    assert paths.files == {"annotation_dir": "/labels"}
    with pytest.raises(EvalInputError, match="pope: unknown file.*'annotation_file'.*annotation_dir"):
        pope.paths(str(tmp_path), str(tmp_path), {"annotation_file": "x"})


def _gqa_files(h, tmp_path):
    h.write_jsonl(tmp_path / "q.jsonl", [{"question_id": str(i)} for i in range(4)])
    h.write_json(tmp_path / "ann.json", {str(i): {"answer": a} for i, a in enumerate(["yes", "no", "red", "two"])})
    h.answers_file(tmp_path / "a.jsonl", [("0", "Yes."), ("1", "yes"), ("2", "Red"), ("3", "2")])
    return {"question_file": str(tmp_path / "q.jsonl"), "result_file": str(tmp_path / "a.jsonl"),
            "annotation_file": str(tmp_path / "ann.json")}


def test_score_keyword_api(h, tmp_path, cli_json):
    files = _gqa_files(h, tmp_path)
    metrics = eval_mllm.score("gqa", **files)
    # by hand: "Yes." -> yes (right), "yes" vs no (wrong), "Red" -> red (right), "2" vs two (wrong)
    assert metrics["accuracy"] == 50.0 and metrics["n_scored"] == 4
    assert cli_json("gqa", *[a for k, v in files.items() for a in (f"--{k.replace('_', '-')}", v)]) == \
        json.loads(json.dumps(metrics))  # the CLI prints the same metrics


def test_score_bad_input(h, tmp_path):
    files = _gqa_files(h, tmp_path)
    with pytest.raises(ScorerInputError, match="gqa: .*annotation_dir.*its files are: question_file, "
                                               "result_file, annotation_file"):
        eval_mllm.score("gqa", annotation_dir="x", **files)
    with pytest.raises(ScorerInputError, match="unknown benchmark 'gq'"):
        eval_mllm.score("gq", **files)
    h.answers_file(tmp_path / "a.jsonl", [("0", "Yes.")])
    h.write_jsonl(tmp_path / "q.jsonl", [{"question_id": "1"}])  # the one answer is not in the set
    with pytest.raises(ScorerInputError, match=r"a\.jsonl: nothing to score"):
        eval_mllm.score("gqa", **files)


FRESH = """
import sys
{code}
heavy = sorted(m for m in ("torch", "transformers", "numpy", "PIL", "sklearn", "llava", "lmms_eval") if m in sys.modules)
print("HEAVY", heavy)
"""


@pytest.mark.parametrize("code", [
    "import eval_mllm.__main__ as m; m.build_parser()",
    "from eval_mllm import score_cli; score_cli.main(['pope', '--help'])",
    "import eval_mllm; eval_mllm.score, eval_mllm.run",
])
def test_parser_and_api_import_no_torch(code):
    proc = subprocess.run([sys.executable, "-c", FRESH.format(code=code)], capture_output=True, text=True, check=False,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout


def test_help_answers_without_torch():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "eval_mllm", "--help"], capture_output=True,
                          text=True, check=False, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert proc.returncode == 0 and "generate" in proc.stdout and "score" in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "eval_mllm.scorers.common" in imported and not {"torch", "transformers"} & imported
