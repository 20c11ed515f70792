"""A LLaVA stage killed with SIGKILL after a checkpoint resumes when the same script command is rerun.

Each stage runs through its script under the DeepSpeed launcher on CPU (tiny LLaVA; the tower's
routers train in stage 1, routers and experts in stage 2, with their own learning rate): once uninterrupted, once killed (the whole process group, as a lost
node or an out-of-memory kill would) as soon as a complete checkpoint exists, then rerun. Stage 1
(pretrain.sh) runs ZeRO-2, stage 2 (finetune.sh) ZeRO-3. The run spans two epochs, so the resume
also crosses an epoch boundary (a reshuffle) after skipping the batches already seen.

Tolerance: bitwise. The resumed run computes the same operations in the same order on CPU from the
restored fp32 weights, Adam moments, LR schedule, RNG state and data position, so any difference at
all means something was not restored.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from llava_integration.resume import RUN_FILE, complete_checkpoints

from .test_scripts import REPO, _free_port

pytestmark = [pytest.mark.slow, pytest.mark.legacy]

STEPS, SAVE_STEPS, BATCH = 12, 2, 2  # 12 pretrain samples / batch 2: two epochs of 6 steps
ROUTERS = ("--mm_vision_moe_tune", "routers", "--mm_vision_moe_lr", "1e-2")
EXPERTS = ("--mm_vision_moe_tune", "routers_experts", "--mm_vision_moe_lr", "1e-2")
LOG_LINE = re.compile(r"\{'loss': [^}]*\}")


def script_env(world, out_dir, data, **extra):
    env = dict(os.environ)
    env.update(
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""), PYTHON=sys.executable,
        PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""), CLIPMOE_LLAVA_TINY="1", TINY_ROOT=world.root,
        DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TINY_STEPS=str(STEPS), TINY_BATCH=str(BATCH),
        SAVE_STEPS=str(SAVE_STEPS), TINY_OUTPUT_DIR=out_dir, TINY_DATA_PATH=data, MASTER_PORT=str(_free_port()),
        **extra)
    return env


def start(script, env, *args, stdout=subprocess.PIPE):
    return subprocess.Popen(["bash", os.path.join(REPO, "scripts", "llava", script), *args], cwd=REPO, env=env,
                            stdout=stdout, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def run(script, env, *args):
    proc = start(script, env, *args)
    log, _ = proc.communicate(timeout=600)
    return proc.returncode, log


def losses(log):
    """The logged loss of every step, in order (each log line is a dict printed by the Trainer)."""
    return [eval(m.group(0))["loss"] for m in LOG_LINE.finditer(log)]  # noqa: S307 - our own trainer's log lines


def kill_after_first_checkpoint(script, tune, env, out_dir):
    """Start the stage, SIGKILL its process group once a complete checkpoint exists; the checkpoint's step."""
    log_path = out_dir + ".log"  # a file, not a pipe: nobody reads while polling, and a full pipe would stall the run
    with open(log_path, "w") as log:
        proc = start(script, env, *tune, stdout=log)
    while not complete_checkpoints(out_dir):  # the run ends on its own after STEPS steps: no time limit needed
        if proc.poll() is not None:
            with open(log_path) as f:
                pytest.fail(f"the run ended before its first checkpoint:\n{f.read()[-3000:]}")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    step = complete_checkpoints(out_dir)[-1][0]
    # killed mid-run: LLaVA writes trainer_state.json into the output folder only when training ends
    assert not os.path.exists(os.path.join(out_dir, "trainer_state.json")) and step < STEPS, step
    return step


def simulate_kill_while_saving(out_dir, step):
    """What transformers 5 leaves when killed while writing checkpoint-N (in place, trainer_state.json last)."""
    partial = os.path.join(out_dir, f"checkpoint-{step}")
    os.makedirs(os.path.join(partial, f"global_step{step}"))
    with open(os.path.join(partial, "latest"), "w") as f:
        f.write(f"global_step{step}")
    return partial


def check_stage_resumes(script, tune, world, tmp_path, data, read_result, compare_keys, **extra_env):
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    code, log_whole = run(script, script_env(world, whole, data, **extra_env), *tune)
    assert code == 0, log_whole[-4000:]

    env = script_env(world, killed, data, **extra_env)
    step = kill_after_first_checkpoint(script, tune, env, killed)
    partial = simulate_kill_while_saving(killed, step + 1)

    # a rerun with other settings or other data content is refused before the launcher starts
    code, log = run(script, env, *tune, "--mm_vision_moe_lr", "2e-2")
    assert code == 2 and log.count("\n") == 1 and log.startswith("error: --output_dir"), log[-2000:]
    assert "--mm_vision_moe_lr was 1e-2, now 2e-2" in log, log
    with open(data) as f:
        original = f.read()
    records = json.loads(original)
    records[0]["conversations"][-1]["value"] += " (edited)"
    with open(data, "w") as f:
        json.dump(records, f)
    code, log = run(script, env, *tune)
    assert code == 2 and f"--data_path {data}: content changed since the run started" in log, log[-2000:]
    with open(data, "w") as f:
        f.write(original)

    code, log = run(script, env, *tune)  # the same command again
    assert code == 0, log[-4000:]
    assert f"resume: skipping {partial}" in log and f"resume: continuing from {killed}/checkpoint-{step}" in log, log[-4000:]
    resumed_losses = losses(log)
    assert len(resumed_losses) == STEPS - step
    assert resumed_losses == losses(log_whole)[step:]  # same batches in the same order, same weights before each

    expected, got = read_result(whole), read_result(killed)
    assert compare_keys(expected) and set(expected) == set(got)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key  # bitwise (see the module docstring)
    assert os.path.isfile(os.path.join(killed, RUN_FILE))
    return expected


@pytest.fixture
def data_copy(world, tmp_path):
    def copy(name):
        path = str(tmp_path / name)
        shutil.copy(os.path.join(world.root, name), path)
        return path
    return copy


def _projector_and_routers(out_dir):
    return torch.load(os.path.join(out_dir, "mm_projector.bin"), weights_only=True)


def _full_model(out_dir):
    from safetensors.torch import load_file

    return load_file(os.path.join(out_dir, "model.safetensors"))


def test_pretrain_zero2_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(world, tmp_path, data_copy):
    def trained(state):
        routers = [k for k in state if ".mlp.router." in k]
        return len(routers) == 2 and any("mm_projector" in k for k in state)

    check_stage_resumes("pretrain.sh", ROUTERS, world, tmp_path, data_copy("pretrain.json"), _projector_and_routers, trained)


def test_finetune_zero3_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(world, tmp_path, data_copy):
    from safetensors.torch import load_file

    source = load_file(os.path.join(world.tower, "model.safetensors"))

    def trained(state):  # the experts trained: they moved away from the tower checkpoint's
        prefix = "model.vision_tower.vision_tower."
        experts = [k for k in state if k.startswith(prefix) and ".experts." in k]
        moved = [k for k in experts if not torch.equal(state[k], source[k[len(prefix):]].to(state[k].dtype))]
        return moved and any(".mlp.router." in k for k in state) and any("mm_projector" in k for k in state)

    # from the base LLM with a fresh projector (seeded: both runs start from the same one)
    check_stage_resumes("finetune.sh", EXPERTS, world, tmp_path, data_copy("finetune.json"), _full_model, trained,
                        PRETRAIN_DIR_TINY="none")
