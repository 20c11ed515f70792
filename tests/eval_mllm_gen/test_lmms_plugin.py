"""The lmms-eval plugin end to end: `python -m lmms_eval` in a subprocess on tiny models and a tiny
local POPE task (a DatasetDict saved to disk, as docs/eval.md describes for real data)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from .conftest import COLOURS, build_hf_llava, make_image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASKS = os.path.join(REPO, "eval_mllm", "lmms_tasks")


@pytest.fixture(scope="module")
def pope_task(tmp_path_factory):
    """A 6-question POPE-format dataset on disk and a task YAML that includes ours."""
    from datasets import Dataset, DatasetDict, Features, Image, Value

    root = tmp_path_factory.mktemp("lmms")
    rows = {"question_id": [], "question": [], "answer": [], "image": [], "category": []}
    for i in range(6):
        rows["question_id"].append(str(i))
        rows["question"].append(f"Is there a {'dog' if i % 2 else 'car'} in the image?")
        rows["answer"].append("yes" if i % 2 else "no")
        rows["image"].append(make_image(None, COLOURS[i]))
        rows["category"].append(("adversarial", "popular", "random")[i % 3])
    features = Features({"question_id": Value("string"), "question": Value("string"), "answer": Value("string"),
                         "image": Image(), "category": Value("string")})
    DatasetDict({"test": Dataset.from_dict(rows, features=features)}).save_to_disk(str(root / "pope_ds"))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "pope_tiny.yaml").write_text(
        f"include: {os.path.join(TASKS, 'pope_local.yaml')}\ntask: pope_tiny\ndataset_path: {root / 'pope_ds'}\n")
    return str(tasks)


def lmms_eval(model, model_args, tasks_dir, out, limit=4, extra=()):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=REPO,
               OMP_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "lmms_eval", "--model", model, "--model_args", model_args,
           "--tasks", "pope_tiny", "--include_path", tasks_dir, "--limit", str(limit),
           "--gen_kwargs", "max_new_tokens=3", "--output_path", out, "--log_samples", *extra]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=400, cwd=REPO, env=env)


def samples(out):
    files = glob.glob(os.path.join(out, "**", "*_samples_pope_tiny.jsonl"), recursive=True)
    assert len(files) == 1, files
    return [json.loads(line) for line in open(files[0])]


def assert_results_table(proc, out, n):
    """A results table with our three metrics, over `n` scored docs (one logged sample each)."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|pope_tiny")]
    assert {line.split("|")[4].strip() for line in table} == {"pope_f1", "pope_accuracy", "pope_yes_ratio"}
    recs = samples(out)
    assert len(recs) == n and all("pope_accuracy" in r for r in recs)
    return recs


@pytest.mark.slow
def test_lmms_eval_clipmoe_llava(tiny_llava, pope_task, tmp_path):
    out = str(tmp_path / "out")
    proc = lmms_eval("clipmoe_llava", f"pretrained={tiny_llava},device=cpu,min_new_tokens=2", pope_task, out)
    recs = assert_results_table(proc, out, 4)
    assert all(r["filtered_resps"].strip() for r in recs)  # non-empty answers
    assert [r["pope_accuracy"]["label"] for r in recs] == ["no", "yes", "no", "yes"]


@pytest.mark.slow
def test_lmms_eval_clipmoe_llava_hf(tiny_world, pope_task, tmp_path):
    path = build_hf_llava(tiny_world, str(tmp_path / "hf-llava-tiny-clipmoe"), "clipmoe")
    out = str(tmp_path / "out")
    proc = lmms_eval("clipmoe_llava_hf", f"pretrained={path},device=cpu,min_new_tokens=2", pope_task, out, limit=2)
    recs = assert_results_table(proc, out, 2)
    assert all(r["filtered_resps"].strip() for r in recs)


@pytest.mark.slow
def test_lmms_eval_model_error_fails_loudly(tiny_world, pope_task, tmp_path):
    # A real broken checkpoint: its processor expands <image> to 15 tokens, the tower gives 16
    # features, so transformers raises in generate. Upstream llava_hf would log it and score "".
    path = build_hf_llava(tiny_world, str(tmp_path / "hf-llava-broken"), "clipmoe", num_additional_image_tokens=0)
    out = str(tmp_path / "out")
    # lmms-eval's CLI logs an exception and exits 0 unless --verbosity DEBUG (then it re-raises).
    proc = lmms_eval("clipmoe_llava_hf", f"pretrained={path},device=cpu", pope_task, out, limit=2,
                     extra=("--verbosity", "DEBUG"))
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "ModelGenerationError: ClipMoeLlavaHf: generation failed" in log
    assert "do not match" in log  # transformers' own message is passed on
    assert not glob.glob(os.path.join(out, "**", "*_samples_pope_tiny.jsonl"), recursive=True)
