"""Stopping the demo stops its worker processes too: a signal to its main process alone (`kill
PID`, a scheduler's SIGTERM, a SIGINT not from a terminal) or the main process killed outright.
Real runs of `clipmoe-demo encoder --quick`, stopped once its pool workers are training, and the real
DeepSpeed launcher started as the chain starts a LLaVA stage."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from clipmoe_demo.interrupt import ended

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HANG_LIMIT_S = 120  # far above the seconds an interrupt takes; only a hang reaches it


def start_demo_until_workers_run(out: str):
    """The quick encoder demo in a process of its own, returned once a job runs in a pool worker,
    with the pool workers (spawned multiprocessing children, not its resource tracker)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "clipmoe_demo", "encoder", "--quick", "--out", out], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("[demo] ") and line.rstrip().endswith(": running"):
            break
    else:
        pytest.fail(f"the demo ended before any job ran (exit {proc.wait()}):\n{''.join(seen)}{proc.stderr.read()}")
    for _ in range(HANG_LIMIT_S * 10):  # the line is logged as the job is submitted, its worker starts then
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "multiprocessing" in " ".join(p.cmdline()) and "resource_tracker" not in " ".join(p.cmdline())]
        if workers:
            return proc, workers
        time.sleep(0.1)
    proc.kill()
    pytest.fail("no pool worker started")


def still_running(processes) -> list[str]:
    """The command lines of those still running after HANG_LIMIT_S. Those are then killed, so a
    failing test leaves no orphan that goes on using the cores or holds the demo's pipes open."""
    _, alive = psutil.wait_procs(processes, timeout=HANG_LIMIT_S)
    running = []
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            running.append(" ".join(p.cmdline()))
            p.kill()
    return running


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_main_process_alone_stops_the_workers_at_once(tmp_path, sig):
    proc, workers = start_demo_until_workers_run(str(tmp_path / "demo"))
    descendants = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(sig)  # the main process only: not its process group, as Ctrl-C would
    try:
        code = proc.wait(timeout=HANG_LIMIT_S)  # before: it waited for the running jobs to finish
    except subprocess.TimeoutExpired:
        code = None
        proc.kill()
    running = still_running(workers + descendants)  # before: SIGTERM left the workers running
    stderr = proc.stderr.read()
    assert code == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert not running


def test_workers_die_with_a_main_process_killed_outright(tmp_path):
    proc, workers = start_demo_until_workers_run(str(tmp_path / "demo"))
    proc.kill()  # SIGKILL: no handler runs; before, the workers went on as orphans
    proc.wait()
    assert not still_running(workers)


def test_ending_the_tree_reaches_grandchildren_and_those_that_ignore_sigterm():
    """What the handler does: SIGTERM to every descendant, SIGKILL after the grace period. In a
    process of its own (here it would also end the test session's other children)."""
    ender = """
import json, subprocess, sys, time, psutil
from clipmoe_demo.interrupt import end_process_tree
stubborn = "import signal, subprocess, time; subprocess.Popen(['sleep', '300']); signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
child = subprocess.Popen([sys.executable, '-c', stubborn])
while len(psutil.Process().children(recursive=True)) < 2:  # until the grandchild exists
    time.sleep(0.1)
tree = [p.pid for p in psutil.Process().children(recursive=True)]
killed = end_process_tree(grace=1.0)
print(json.dumps({"tree": tree, "child": child.pid, "killed": killed}))
"""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", ender], env=env, capture_output=True, text=True, timeout=HANG_LIMIT_S)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert len(result["tree"]) == 2
    assert result["killed"] == [result["child"]]  # it ignored SIGTERM; its child did not
    assert all(ended(pid) for pid in result["tree"])


def test_a_main_thread_that_does_not_unwind_is_exited_after_the_deadline():
    """Python 3.11's ProcessPoolExecutor can hang for good in its shutdown once its workers are
    killed (seen with SIGTERM on the quick demo); here a block that swallows the interrupt and
    sleeps stands in for it: the process still exits with 130 and the interrupted line."""
    code = ("import time; from clipmoe_demo.interrupt import process_tree_ends_on_interrupt\n"
            "with process_tree_ends_on_interrupt('stopped: rerun to resume', unwind_seconds=1):\n"
            "    try:\n"
            "        print('ready', flush=True)\n"  # in the try: a signal right after it is caught too
            "        time.sleep(60)\n"
            "    except KeyboardInterrupt:\n"
            "        time.sleep(HANG)\n").replace("HANG", str(HANG_LIMIT_S * 2))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    try:
        exit_code = proc.wait(timeout=HANG_LIMIT_S)
    except subprocess.TimeoutExpired:
        exit_code = None
        proc.kill()
    assert exit_code == 130 and proc.stderr.read().strip() == "stopped: rerun to resume"


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM", "Ctrl-C"])
def test_a_launched_stage_and_its_children_end_with_the_main_process(tmp_path, stop):
    """The chain launches each LLaVA stage from a thread (llava_runs._run_logged) as bash -> DeepSpeed
    launcher -> rank process, in a process group of its own (tied_child). Killed outright, the
    chain's main process used to leave that tree training as orphans; SIGTERM to it alone reaches
    the tree through its handler (process_tree_ends_on_interrupt, as the CLI runs); Ctrl-C (SIGINT
    to the terminal's process group, which the stage's own group is not in) through that handler
    and tied_child's. Here the real launcher, on CPU, starts a rank that only sleeps."""
    (tmp_path / "rank.py").write_text("import time\ntime.sleep(300)\n")
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    chain = f"""
import os, sys, threading, time
from clipmoe_demo.chain.llava_runs import _free_port, _run_logged, child_env
from clipmoe_demo.interrupt import process_tree_ends_on_interrupt
launch = {deepspeed!r} + " --num_gpus 1 --master_port " + str(_free_port()) + " " + {str(tmp_path / "rank.py")!r}
env = child_env(dict(DS_ACCELERATOR="cpu"))
with process_tree_ends_on_interrupt("stopped"):
    threading.Thread(target=_run_logged, args=(["bash", "-c", launch], env, {str(tmp_path / "stage.log")!r}, "stage"), daemon=True).start()
    time.sleep(300)
"""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # A session of its own: the process group Ctrl-C would signal, without this test's processes.
    proc = subprocess.Popen([sys.executable, "-c", chain], env=env, start_new_session=True)
    for _ in range(HANG_LIMIT_S * 10):  # until the launcher has started the rank
        tree = psutil.Process(proc.pid).children(recursive=True)
        with contextlib.suppress(psutil.NoSuchProcess):
            if any("--local_rank=0" in p.cmdline() for p in tree):
                break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("the launcher did not start its rank:\n" + (tmp_path / "stage.log").read_text())
    if stop == "Ctrl-C":
        os.killpg(proc.pid, signal.SIGINT)
    else:  # the main process alone; after SIGKILL no handler of its runs
        proc.send_signal(getattr(signal, stop))
    try:
        proc.wait(timeout=HANG_LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
    assert not still_running(tree)


@pytest.mark.parametrize("script, status", [("exit 3", 3), ("kill -TERM $$", 128 + signal.SIGTERM), ("exit 0", 0)])
def test_a_tied_command_passes_its_exit_status_on(script, status):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    tied = [sys.executable, "-m", "clipmoe_demo.tied_child", str(os.getpid()), "bash", "-c", script]
    assert subprocess.run(tied, env=env, timeout=HANG_LIMIT_S).returncode == status
