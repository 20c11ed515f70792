"""scripts/eval/prepare_data.sh in dry-run mode: it prints every download and target of the
layout that `eval_mllm run` reads, and creates nothing."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from eval_mllm.benchmarks import runnable

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "scripts", "eval", "prepare_data.sh")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def dry_run(root, benchmarks=None):
    env = dict(os.environ, DRY_RUN="1")
    if benchmarks:
        env["BENCHMARKS"] = benchmarks
    return subprocess.run(["bash", SCRIPT, root], check=False, capture_output=True, text=True, env=env, timeout=60)


def test_dry_run_covers_the_layout(tmp_path):
    root = str(tmp_path / "data")
    proc = dry_run(root)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "http://images.cocodataset.org/zips/val2014.zip" in out
    assert "mmbench_dev_20230712.tsv" in out and "TextVQA_0.5.1_val.json" in out
    # every question / annotation file that `run` checks is a target of the script
    for bench in runnable().values():
        if bench.name == "mme":
            assert "MME/llava_mme.jsonl" in out and "MME_ZIP" in out  # release given out on request
            continue
        for rel in (bench.question_file, *bench.files.values()):
            assert os.path.join(root, rel) in out, rel
    assert not os.path.exists(root)


def test_unknown_benchmark(tmp_path):
    proc = dry_run(str(tmp_path / "d"), "pope nope")
    assert proc.returncode == 2 and "unknown benchmark 'nope'" in proc.stdout


def test_every_download_shows_progress(tmp_path):
    """Archives of tens of GB: each wget/curl call shows a progress bar (wget -q alone printed nothing)."""
    out = dry_run(str(tmp_path / "data")).stdout
    fetches = [line for line in out.splitlines() if "(dry run) wget" in line or "(dry run) curl" in line]
    assert fetches
    for line in fetches:
        assert "--show-progress" in line or "--progress-bar" in line, line
