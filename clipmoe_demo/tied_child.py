"""A command that ends, with everything it started, when the process that launched it dies.

    python -m clipmoe_demo.tied_child PARENT_PID COMMAND [ARG ...]

The chain launches each LLaVA stage as `bash script` -> DeepSpeed launcher -> trainer. Killed
outright (SIGKILL, the OOM killer), the chain's main process runs no handler, and that tree went
on training as orphans. The kernel's parent-death signal (interrupt.die_with_parent) reaches only
a process's direct child, so this small process stands between: it asks for SIGTERM when
PARENT_PID dies, runs COMMAND in a process group of its own, and on SIGTERM or SIGINT ends that
whole group (SIGTERM, then SIGKILL after a grace period). Otherwise it exits with COMMAND's
status (128 + N for a command ended by signal N, as a shell reports it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from .interrupt import GRACE_SECONDS, die_with_parent


def end_group(pgid: int, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM to every process of the group, SIGKILL to the group if any is left after `grace` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)  # anyone left in the group?
            except ProcessLookupError:
                return
            time.sleep(0.05)


def exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m clipmoe_demo.tied_child PARENT_PID COMMAND [ARG ...]", file=sys.stderr)
        return 2
    child: subprocess.Popen | None = None
    stopped_by: list[int] = []

    def stop(signum, frame):
        stopped_by.append(signum)
        if child is None:  # Popen has not returned: the group is ended right after it does
            return
        end_group(child.pid)
        sys.exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    die_with_parent(int(argv[0]))  # after the handler: the signal it may send at once is handled
    # Its own group (and session): one killpg reaches the launcher, its ranks and their workers.
    child = subprocess.Popen(argv[1:], start_new_session=True)
    if stopped_by:
        end_group(child.pid)
        return 128 + stopped_by[0]
    return exit_status(child.wait())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
