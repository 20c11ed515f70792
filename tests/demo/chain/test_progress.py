"""The chain's console progress: parsing a Trainer's console output (as the DeepSpeed stages write
it to their logs), the follower thread over a log being written, and the LM training's lines."""

from dataclasses import asdict, replace
from functools import partial

from clipmoe_demo import world as W
from clipmoe_demo.chain import data as D
from clipmoe_demo.chain import language_model as L
from clipmoe_demo.chain import llava_runs
from clipmoe_demo.chain import progress as P

# As transformers 5's Trainer writes it with --logging_steps 1 (bars end in \r, log dicts in \n),
# with the named bars of model loading and saving around it.
LOG = (
    "Loading weights:   0%|          | 0/21 [00:00<?, ?it/s]\rLoading weights: 100%|██████████| 21/21 [00:00<00:00]\n"
    "  0%|          | 0/144 [00:00<?, ?it/s]\r  1%|          | 1/144 [00:00<01:10,  2.03it/s]\n"
    "{'loss': '2.31', 'grad_norm': '3.1', 'learning_rate': '0.003', 'epoch': '0.04'}\n"
    "  1%|▏         | 2/144 [00:01<00:52,  2.70it/s]\n"
    "{'loss': '2.2', 'grad_norm': '3.0', 'learning_rate': '0.003', 'epoch': '0.08'}\n"
    " 86%|████████▌ | 124/144 [01:02<1:01:05,  5.19it/s]\r"
)


def test_parse_takes_the_trainers_bar_and_its_last_loss():
    assert P.parse_trainer_output(LOG) == {"step": 124, "total": 144, "eta_s": 3665.0, "loss": 2.2}
    saving = LOG + "\n{'train_runtime': '30.4', 'train_loss': '0.96'}\nWriting model shards: 100%|█| 1/1 [00:00<00:00]\r"
    assert P.parse_trainer_output(saving)["step"] == 124  # the named saving bar is not the training
    start = LOG[:LOG.index("  1%")]
    assert P.parse_trainer_output(start) == {"step": 0, "total": 144, "eta_s": None, "loss": None}
    assert P.parse_trainer_output(LOG[:LOG.index("  0%")]) is None  # only loading bars so far
    # transformers 4.x logs numbers, not strings
    assert P.parse_trainer_output(" 50%|█  | 1/2 [00:01<00:01, 1.0it/s]\n{'loss': 0.5, 'epoch': 1.0}\n")["loss"] == 0.5


def test_line_and_clock():
    assert P.progress_line("llava-dense stage 2", 124, 144, 2.2, 65.4) == \
        "[chain] llava-dense stage 2: step 124/144, loss 2.200, ETA 1:05"
    assert P.progress_line("language model", 0, 10, None, None) == "[chain] language model: step 0/10, loss -, ETA ?"
    assert P.clock(3725) == "1:02:05"


def test_follower_prints_each_runs_new_progress_once(tmp_path):
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    log_a.write_text(LOG)
    lines = []
    current = {"llava-dense": ("stage 2", partial(P.trainer_log_state, str(log_a))),
               "llava-clip-moe": ("stage 1", partial(P.trainer_log_state, str(log_b)))}  # b: not started
    follower = P.ProgressFollower(current, lines.append, every=3600)
    follower.poll()
    assert lines == ["[chain] llava-dense stage 2: step 124/144, loss 2.200, ETA 1:01:05"]
    follower.poll()
    assert len(lines) == 1  # no new step: no new line
    log_b.write_text("  0%|          | 0/10 [00:00<?, ?it/s]\r 10%|█         | 1/10 [00:01<00:09,  1.0it/s]\n"
                     "{'loss': '4.0'}\n")
    with open(log_a, "a") as f:
        f.write(" 87%|████████▋ | 125/144 [01:03<00:04,  5.19it/s]\r")
    del current["llava-dense"]  # done
    follower.poll()
    assert lines[1:] == ["[chain] llava-clip-moe stage 1: step 1/10, loss 4.000, ETA 0:09"]


def test_follower_thread_stops_on_exit(tmp_path):
    path = tmp_path / "a.log"
    path.write_text(LOG)
    lines = []
    with P.ProgressFollower({"run": ("stage 1", partial(P.trainer_log_state, str(path)))}, lines.append,
                            every=0.01) as follower:
        while not lines:
            follower._stop.wait(0.01)
    assert not follower._thread.is_alive() and lines[0].startswith("[chain] run stage 1: step 124/144")


def test_language_model_training_logs_progress(tmp_path):
    root = str(tmp_path / "world")
    W.write_world(root, W.WorldSettings(image_size=32, n_train=16, n_test=2))
    paths = D.write_training_data(root, str(tmp_path / "data"), n_train=16)
    plan = replace(llava_runs.make_plan(quick=True), lm_steps=20, batch=4)
    lines = []
    result = L.build_language_model(str(tmp_path / "llm"), root, paths, plan, log=lines.append, progress_every=0)
    # every logged step (10, 20) with its logged loss; ETA 0 at the end
    assert lines[0].startswith("[chain] language model: step 10/20, loss ")
    assert lines[-1] == P.progress_line("language model", 20, 20, result["history"][-1]["loss"], 0.0)


def test_answer_counter_counts_answers_and_times_only_new_ones(tmp_path, monkeypatch):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"  # b: not started yet
    a.write_text('{"question_id": 1}\n{"question_id": 2}\n')  # kept from an earlier run
    now = [100.0]
    monkeypatch.setattr(P.time, "monotonic", lambda: now[0])
    counter = P.AnswerCounter([str(a), str(b)], total=12)
    assert counter() == {"step": 2, "total": 12, "loss": None, "eta_s": None, "unit": "questions"}
    with open(a, "a") as f:
        f.write('{"question_id": 3}\n')
    b.write_text('{"question_id": 1}\n\n')
    now[0] = 110.0
    # 2 new answers in 10 s: 8 left at 0.2 per second
    assert counter() == {"step": 4, "total": 12, "loss": None, "eta_s": 40.0, "unit": "questions"}
    assert P.progress_line("llava-dense answering", 4, 12, None, 40.0, "questions") == \
        "[chain] llava-dense answering: 4/12 questions, ETA 0:40"


def test_a_redone_stage_starts_in_an_empty_folder_and_its_log_parses(tmp_path):
    """A stage folder left by an older chain (its marker with other settings, no training-run
    record) is cleared, not refused by the training's output-folder check; the stage log the
    console follows parses to the stage's last step and loss."""
    import json

    import pytest

    pytest.importorskip("deepspeed")
    from clipmoe_demo import tiny_llava

    world = tiny_llava.build_world(str(tmp_path / "tiny"))
    out = tmp_path / "stage1"
    out.mkdir()
    (out / llava_runs.DONE_MARKER).write_text(json.dumps({"seconds": 1.0, "settings": {"old": True}}))
    plan = llava_runs.make_plan(quick=True)
    log = str(tmp_path / "stage1.log")
    env = {"TINY_ROOT": world.root, "TINY_OUTPUT_DIR": str(out), "TINY_STEPS": "2"}
    followed = []
    inputs = llava_runs.input_digests(world.llm, world.pretrain_json)
    _, reused = llava_runs._stage("pretrain.sh", str(out), env, [], log, plan, followed.append, inputs)
    assert not reused and followed == [log]
    with open(out / llava_runs.DONE_MARKER) as f:  # the old marker replaced by one with this stage's settings
        assert json.load(f)["settings"] == {"script": "pretrain.sh", "env": env, "args": [], "plan": asdict(plan),
                                            "inputs": inputs}
    with open(out / "trainer_state.json") as f:
        history = [h for h in json.load(f)["log_history"] if "loss" in h]
    state = P.trainer_log_state(log)
    assert state["step"] == state["total"] == 2 and state["loss"] == pytest.approx(history[-1]["loss"], rel=1e-3)
    trained = (out / "trainer_state.json").stat().st_mtime_ns
    _, reused = llava_runs._stage("pretrain.sh", str(out), env, [], log, plan, followed.append, inputs)
    assert reused and followed == [log]  # the same settings: not run again (no new start, the checkpoint untouched)
    assert (out / "trainer_state.json").stat().st_mtime_ns == trained

    with open(world.pretrain_json, "a") as f:  # the data edited in place: same name, other content
        f.write("\n")
    changed = llava_runs.input_digests(world.llm, world.pretrain_json)
    assert changed != inputs and changed.keys() == inputs.keys()
    _, reused = llava_runs._stage("pretrain.sh", str(out), env, [], log, plan, followed.append, changed)
    assert not reused and followed == [log, log]


def test_lines_logged_from_threads_side_by_side_stay_whole():
    """A log that writes a line and its newline separately (as print does) runs lines together
    when two threads use it at once; whole_lines serialises it."""
    import io
    import threading
    import time

    out = io.StringIO()

    def two_writes(line):
        out.write(line)
        time.sleep(0.002)
        out.write("\n")

    log = P.whole_lines(two_writes)
    threads = [threading.Thread(target=lambda k=k: [log(f"[chain] run{k} line {i}") for i in range(20)]) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = out.getvalue().splitlines()
    assert sorted(lines) == sorted(f"[chain] run{k} line {i}" for k in range(2) for i in range(20))
