"""Stopping the demo stops all of it: its worker processes, DeepSpeed launchers and trainers.

Ctrl-C in a terminal signals the whole process group, but `kill PID` or a scheduler's SIGTERM
reaches the demo's main process alone: that process then waited for its pool workers to finish
their jobs (minutes) or, killed, left them running as orphans. Here the main process ends its
process tree itself on SIGINT or SIGTERM, and each pool worker asks the kernel to end it when the
main process dies in a way no handler sees (SIGKILL, the OOM killer).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1  # linux/prctl.h
GRACE_SECONDS = 10.0  # for a child to exit on SIGTERM before it is killed


def die_with_parent(parent_pid: int) -> None:
    """In a child process (a pool's initializer): SIGTERM from the kernel when the parent dies.
    Linux only (elsewhere a no-op). The kernel ties it to the parent *thread* that started the
    child; a ProcessPoolExecutor starts its workers from the thread that submits, which outlives
    them (the pool is shut down before that thread ends)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def end_process_tree(grace: float = GRACE_SECONDS) -> list[int]:
    """SIGTERM to every descendant of this process, SIGKILL to those still alive after `grace` s;
    returns the pids that needed SIGKILL.
    Not multiprocessing's resource tracker: it cleans up after the workers and ends by itself
    with this process (ended first, it relaunches and reports leaks)."""
    from multiprocessing import resource_tracker

    import psutil

    tracker = resource_tracker._resource_tracker._pid  # None until a pool started it
    children = [p for p in psutil.Process().children(recursive=True) if p.pid != tracker]
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace)
    alive = [p for p in alive if not ended(p.pid)]
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=grace)
    return [p.pid for p in alive]


def ended(pid: int) -> bool:
    """Gone, or a zombie: ended, its exit status waiting for a parent (not this process) to collect."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


UNWIND_SECONDS = 15.0  # for the main thread to unwind after an interrupt before the process exits


@contextlib.contextmanager
def process_tree_ends_on_interrupt(exit_line: str, unwind_seconds: float = UNWIND_SECONDS):
    """Within: SIGINT and SIGTERM end this process's descendants first, then raise
    KeyboardInterrupt in the main thread (so that pools shut down at once, finding their workers
    gone, instead of waiting for them). Called from another thread (Python delivers signals to
    the main thread only, and only it may set handlers) it changes nothing.

    If the main thread has not left the block unwind_seconds later, the process prints exit_line
    and exits with 130: on Python 3.11 a ProcessPoolExecutor whose workers were killed can hang
    in its shutdown for good (measured: the quick encoder demo stopped by SIGTERM never exited).
    Every stage the demo finished is on disk (written atomically), so nothing is lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = False
    deadline = threading.Timer(unwind_seconds, _exit_now, (exit_line,))
    deadline.daemon = True

    def stop(signum, frame):
        nonlocal stopping
        if stopping:  # a second Ctrl-C while the children are ending
            return
        stopping = True
        end_process_tree()
        deadline.start()
        raise KeyboardInterrupt(signal.Signals(signum).name)

    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        deadline.cancel()
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _exit_now(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    os._exit(130)
