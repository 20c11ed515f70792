"""Launch-level guarantees, through the real CLI in subprocesses:
- a run killed with SIGKILL mid-stage and rerun ends bitwise equal to an uninterrupted run;
- a 2-process gloo run (torchrun) of the MCL stages equals the 1-process run with the same global batch.
"""

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from .helpers import make_base, make_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETTINGS = ["--num-experts", "3", "--batch-size", "4", "--warmup-steps", "2", "--lr-mcl", "1e-3", "--small-clusters", "merge",
            "--router-epochs", "2", "--save-every", "1", "--expert-dropout", "0.1"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")


def _cli(base, data, out, launcher=(sys.executable, "-m")):
    return [*launcher, "clipmoe_encoder.cli", "dmu", "run", "--base", base, "--data", data, "--out", out, *SETTINGS]


def _run(cmd, timeout=300):
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    base = make_base(str(root / "base"))
    data = make_dataset(str(root / "data"), n=24)
    out = str(root / "uninterrupted")
    _run(_cli(base, data, out))
    return base, data, out, root


def _kill_after_checkpoint(cmd, pattern, timeout=240):
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while not glob.glob(pattern):
            assert proc.poll() is None, "the run ended before writing the checkpoint"
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _weights(path):
    return load_file(os.path.join(path, "model.safetensors"))


@pytest.mark.slow
def test_sigkill_mid_stage_and_rerun_is_bitwise_equal(reference):
    base, data, ref_out, root = reference
    out = str(root / "killed")
    cmd = _cli(base, data, out)
    _kill_after_checkpoint(cmd, os.path.join(out, "mcl2", "checkpoints", "ckpt-*[0-9]"))
    assert not os.path.exists(os.path.join(out, "mcl2", "done.json"))  # killed inside the stage
    _kill_after_checkpoint(cmd, os.path.join(out, "router", "checkpoints", "ckpt-*[0-9]"))
    assert not os.path.exists(os.path.join(out, "final"))  # killed inside the router stage (expert dropout on)
    _run(cmd)
    ref, got = _weights(os.path.join(ref_out, "final")), _weights(os.path.join(out, "final"))
    assert ref.keys() == got.keys()
    different = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    # the logs were cut back to the checkpoint and continued: one line per step
    with open(os.path.join(out, "router", "log.jsonl")) as f:
        steps = [int(line.split('"step": ')[1].split(",")[0]) for line in f]
    assert steps == list(range(1, len(steps) + 1))


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process(reference):
    base, data, ref_out, root = reference
    out = str(root / "two_procs")
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000), "-m")
    _run(_cli(base, data, out, torchrun))
    for s in (0, 1):
        a = load_file(os.path.join(ref_out, "clusters", f"labels_stage{s}.safetensors"))["labels"]
        b = load_file(os.path.join(out, "clusters", f"labels_stage{s}.safetensors"))["labels"]
        assert torch.equal(a, b)
    start = load_file(os.path.join(base, "model.safetensors"))
    for stage in ("mcl1", "mcl2"):
        ref, got = _weights(os.path.join(ref_out, stage, "model")), _weights(os.path.join(out, stage, "model"))
        worst = max((ref[k] - got[k]).abs().max().item() for k in ref)
        print(f"{stage}: 2-process vs 1-process max |diff| {worst:.1e}")
        assert worst < 1e-5, f"{stage}: max difference {worst}"
        changed = max((ref[k] - start[k]).abs().max().item() for k in ref)
        assert changed > 1e-3  # the comparison is not between two untrained models
