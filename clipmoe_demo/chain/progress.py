"""Console progress of the chain's long phases: one line per phase or run (step/total, loss, ETA),
every few seconds, instead of minutes of silence. Answering prints answered/total questions.

The LLaVA stages run as DeepSpeed child processes whose output goes to a stage log; their progress
is read back from that log: the HF Trainer's tqdm bar ("812/1200 [03:10<02:40, ...]") and its
per-step log dicts ("{'loss': '0.61', ...}", --logging_steps 1).
"""

from __future__ import annotations

import os
import re
import threading
import time

# The Trainer's tqdm bar has no description: " 67%|██████▋   | 812/1200 [03:10<02:40,  4.2it/s]"
# (remaining "?" before the first step); other bars in the log are named ("Loading weights: 3%|...").
_BAR = re.compile(r"(?:^|[\r\n]) *\d+%\|[^|\r\n]*\| (\d+)/(\d+) \[([\d:]+)<([\d:?]+)")
# HF Trainer log line; the values are quoted strings in transformers 5, numbers in 4.x
_LOSS = re.compile(r"'loss': '?([0-9.eE+-]+)'?")
TAIL_BYTES = 8192  # a bar update is ~60 bytes and a log dict ~100: the last few are enough


def _seconds(clock: str) -> float | None:
    """tqdm's "MM:SS" or "H:MM:SS" as seconds; None for "?"."""
    if "?" in clock:
        return None
    seconds = 0.0
    for part in clock.split(":"):
        seconds = 60 * seconds + int(part)
    return seconds


def parse_trainer_output(text: str) -> dict | None:
    """The last progress-bar position and the last logged loss in a Trainer's console output:
    {"step", "total", "eta_s" (None before a rate is known), "loss" (None before the first log)};
    None when no bar has been printed yet."""
    bars = _BAR.findall(text)
    if not bars:
        return None
    step, total, _, remaining = bars[-1]
    losses = _LOSS.findall(text)
    return {"step": int(step), "total": int(total), "eta_s": _seconds(remaining),
            "loss": float(losses[-1]) if losses else None}


def read_log_tail(path: str, size: int = TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - size))
            return f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_line(what: str, step: int, total: int, loss: float | None, eta_s: float | None,
                  unit: str = "step") -> str:
    """ "[chain] WHAT: step 812/1200, loss 0.612, ETA 2:40" (training) or, for another unit,
    "[chain] WHAT: 812/1942 questions, ETA 2:40"."""
    if unit != "step":
        return f"[chain] {what}: {step}/{total} {unit}, ETA {clock(eta_s)}"
    loss_text = f"loss {loss:.3f}" if loss is not None else "loss -"
    return f"[chain] {what}: step {step}/{total}, {loss_text}, ETA {clock(eta_s)}"


def trainer_log_state(path: str) -> dict | None:
    """A DeepSpeed stage's progress, from its log file."""
    return parse_trainer_output(read_log_tail(path))


class AnswerCounter:
    """Progress of answering: lines in the answers files (eval_mllm appends one per question)
    against the number of questions; the ETA from the rate since the first look, so answers kept
    from an earlier run (resume) do not count as speed."""

    def __init__(self, files: list[str], total: int):
        self.files, self.total = files, total
        self.start, self.first = time.monotonic(), None

    def _answered(self) -> int:
        n = 0
        for path in self.files:
            try:
                with open(path, "rb") as f:
                    n += sum(1 for line in f if line.strip())
            except FileNotFoundError:
                pass
        return n

    def __call__(self) -> dict:
        done = self._answered()
        if self.first is None:
            self.first, self.start = done, time.monotonic()
        rate = (done - self.first) / max(time.monotonic() - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else None
        return {"step": done, "total": self.total, "loss": None, "eta_s": eta, "unit": "questions"}


def whole_lines(log):
    """log, made safe for threads that print side by side: print writes a line and its newline
    separately, so two threads' lines ran together ("...training (dense)[chain] llava-clip-moe: ...")."""
    lock = threading.Lock()

    def locked(line: str) -> None:
        with lock:
            log(line)

    return locked


class Throttle:
    """Lets a caller in a training loop print at most every `every` seconds (and at the end)."""

    def __init__(self, every: float):
        self.every, self.start, self.last = every, time.monotonic(), None

    def due(self, final: bool = False) -> bool:
        now = time.monotonic()
        if final or self.last is None or now - self.last >= self.every:
            self.last = now
            return True
        return False

    def eta(self, step: int, total: int) -> float | None:
        """Remaining seconds at the mean rate so far."""
        elapsed = time.monotonic() - self.start
        return elapsed / step * (total - step) if step else None


class ProgressFollower:
    """A daemon thread that, every `every` seconds, prints one progress line per entry of
    `current` ({run: (phase label, read)}, updated by the runs as they move from phase to phase;
    an entry removed = that run is done) whose read() shows progress not printed yet. read()
    returns {"step", "total", "loss", "eta_s"[, "unit"]} or None (nothing to show yet)."""

    def __init__(self, current: dict, log, every: float):
        self.current, self.log, self.every = current, log, every
        self._printed: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chain-progress", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def poll(self) -> None:
        for run, (phase, read) in list(self.current.items()):
            state = read()
            if state is None or self._printed.get(run) == (phase, state["step"]):
                continue
            self._printed[run] = (phase, state["step"])
            self.log(progress_line(f"{run} {phase}", state["step"], state["total"], state["loss"], state["eta_s"],
                                   state.get("unit", "step")))

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.poll()
