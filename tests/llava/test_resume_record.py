"""Which checkpoint a resume takes, and the run record that refuses a resume with other inputs
(llava_integration/resume.py), without training: folders laid out as transformers leaves them."""

import json
import os
import subprocess
import sys

import pytest

from clipmoe_encoder.errors import CLIPMoEError
from llava_integration.resume import (
    RUN_FILE,
    check_resume,
    claim_output_dir,
    complete_checkpoints,
    newest_complete_checkpoint,
    parse_arguments,
)

pytestmark = pytest.mark.legacy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def checkpoint(out, step, state=True, state_step=None):
    path = out / f"checkpoint-{step}"
    (path / f"global_step{step}").mkdir(parents=True)
    if state is True:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step if state_step is None else state_step}))
    elif state:
        (path / "trainer_state.json").write_text(state)
    return str(path)


def test_the_newest_complete_checkpoint_is_taken(tmp_path):
    out = tmp_path / "run"
    assert newest_complete_checkpoint(str(out)) is None  # no folder yet
    old = checkpoint(out, 2)
    newest = checkpoint(out, 10)
    checkpoint(out, 12, state=False)  # killed while saving: no trainer_state.json yet
    checkpoint(out, 14, state='{"global_st')  # killed while writing it
    checkpoint(out, 16, state_step=8)  # not this checkpoint's state
    (out / "tmp-checkpoint-18").mkdir()  # transformers 4.37's staging folder
    (out / "checkpoint-20").write_text("a file")
    assert [p for _, p in complete_checkpoints(str(out))] == [old, newest]  # 10 after 2: by step, not by name
    assert newest_complete_checkpoint(str(out)) == newest


def test_parse_arguments_last_value_wins_and_bare_flags():
    argv = ["--lr", "1", "--x=2", "--flag", "--mm_vision_select_layer", "-2", "--lr", "3", "--last"]
    assert parse_arguments(argv) == {"--lr": "3", "--x": "2", "--flag": "True", "--mm_vision_select_layer": "-2",
                                     "--last": "True"}


@pytest.fixture
def run_inputs(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    data = tmp_path / "data.json"
    data.write_text('[{"id": 1}]')
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    out = tmp_path / "out"
    argv = ["--data_path", str(data), "--model_name_or_path", str(model), "--output_dir", str(out),
            "--learning_rate", "1e-3", "--logging_steps", "1", "--local_rank=0"]
    return argv, data, model, out


def refusal(argv):
    with pytest.raises(CLIPMoEError) as err:
        check_resume(argv)
    return str(err.value)


def test_a_resume_with_other_inputs_is_refused_naming_the_change(run_inputs, monkeypatch, tmp_path):
    argv, data, model, out = run_inputs
    claim_output_dir(argv)  # a fresh run records itself
    assert json.loads((out / RUN_FILE).read_text())["arguments"]["--learning_rate"] == "1e-3"
    checkpoint(out, 4)
    check_resume(argv)  # the same command resumes
    # output-only settings may change; a moved copy of the same data and a touched model file resume
    moved = tmp_path / "moved.json"
    moved.write_bytes(data.read_bytes())
    os.utime(model / "model.safetensors", (1, 1))
    same = [a if a != str(data) else str(moved) for a in argv] + ["--logging_steps", "5", "--report_to", "wandb"]
    check_resume(same)

    assert "--learning_rate was 1e-3, now 2e-3" in refusal(argv + ["--learning_rate", "2e-3"])
    assert "--max_steps was not given, now 7" in refusal(argv + ["--max_steps", "7"])
    (model / "model.safetensors").write_bytes(b"other weights")
    assert f"--model_name_or_path {model}: file 'model.safetensors' differs" in refusal(argv)
    (model / "model.safetensors").write_bytes(b"weights")
    data.write_text('[{"id": 2}]')  # same size, other content
    message = refusal(argv)
    assert message.startswith(f"--output_dir {out}: holds checkpoints of a run started with other inputs")
    assert f"--data_path {data}: content changed since the run started" in message
    data.write_text('[{"id": 1}]')
    monkeypatch.setenv("WORLD_SIZE", "2")
    claim_output_dir(argv)  # a resume keeps the record it started with (no world size known then) ...
    assert "world_size" not in json.loads((out / RUN_FILE).read_text())


def test_only_a_folder_with_a_complete_checkpoint_is_checked(run_inputs):
    argv, data, _, out = run_inputs
    claim_output_dir(argv)
    checkpoint(out, 2, state=False)  # killed before its first checkpoint completed: starts afresh
    check_resume(argv + ["--learning_rate", "5"])
    claim_output_dir(argv + ["--learning_rate", "5"])  # ... and records the new run
    assert json.loads((out / RUN_FILE).read_text())["arguments"]["--learning_rate"] == "5"
    (out / RUN_FILE).write_text("{damaged")  # nothing to resume: a damaged record is replaced
    claim_output_dir(argv)
    assert json.loads((out / RUN_FILE).read_text())["arguments"]["--learning_rate"] == "1e-3"


def test_world_size_change_is_refused(run_inputs, monkeypatch):
    argv, _, _, out = run_inputs
    monkeypatch.setenv("WORLD_SIZE", "8")
    claim_output_dir(argv)
    checkpoint(out, 2)
    monkeypatch.setenv("WORLD_SIZE", "16")
    assert "the run had 8 ranks, now 16" in refusal(argv)


def test_command_line_refusal_is_one_line_and_exit_2(run_inputs):
    argv, _, _, out = run_inputs
    claim_output_dir(argv)
    checkpoint(out, 2)
    (out / RUN_FILE).write_text("{not json")
    proc = subprocess.run([sys.executable, "-m", "llava_integration.resume", *argv], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=REPO), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {out / RUN_FILE}: not valid JSON"), proc.stderr


def test_a_foreign_non_empty_output_dir_is_refused_unless_overwrite_is_asked(run_inputs):
    argv, _, _, out = run_inputs
    out.mkdir()
    (out / "notes.txt").write_text("a user's file")
    message = refusal(argv)
    assert message.startswith(f"--output_dir {out}: not empty and not a training run's output (holds 'notes.txt')")
    assert "--overwrite_output_dir True" in message
    with pytest.raises(CLIPMoEError):
        claim_output_dir(argv)  # the training entry point refuses it too, before writing anything
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert refusal(argv + ["--overwrite_output_dir", "maybe"]) == "--overwrite_output_dir maybe: expected True or False"
    with pytest.raises(CLIPMoEError):
        check_resume(argv + ["--overwrite_output_dir", "false"])  # read as transformers reads a bool
    claim_output_dir(argv + ["--overwrite_output_dir", "True"])  # asked for: recorded and used
    assert (out / RUN_FILE).is_file() and (out / "notes.txt").read_text() == "a user's file"
    check_resume(argv)  # from now on it is this run's own folder


def test_empty_own_and_checkpoint_folders_are_accepted(run_inputs, tmp_path):
    argv, _, _, out = run_inputs
    out.mkdir()
    check_resume(argv)  # empty
    checkpoint(out, 3)  # LLaVA's own or an older version's run: resumable without a record
    check_resume(argv)
