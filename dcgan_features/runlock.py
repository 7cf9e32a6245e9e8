"""One writer per run folder: ``pretrain`` holds ``run.lock`` while it trains there.

The lock is an advisory ``flock`` on ``run.lock``, which the kernel releases when its holder dies, however it dies
(SIGKILL included), so a lock can never outlive its process. The file also says who holds it (host, PID, command,
since when): a second ``pretrain`` on the folder is refused with that, and a newcomer that finds the file naming a
holder but can take the lock knows that holder died without releasing it, and says so. A clean release empties
the file rather than removing it: a process that had opened the old file could otherwise lock a removed file
while a third locked a new one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .artifacts import launch
from .errors import UserError

LOCK_FILE = "run.lock"


class RunLock:
    """An exclusive hold on a run folder; :meth:`release` (or the process's end) lets it go."""

    def __init__(self, run_dir: Path, handle, took_over: dict | None):
        self.run_dir, self.handle, self.took_over = run_dir, handle, took_over

    def release(self) -> None:
        if self.handle.closed:
            return
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.flush()
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def describe(holder: dict) -> str:
    return (f"PID {holder.get('pid', '?')} on {holder.get('host', '?')} (since {holder.get('since', '?')}: "
            f"{holder.get('command') or 'a library call'})")


def acquire(run_dir: str | Path, echo: Callable[[str], None] = print) -> RunLock:
    """Take the run folder's lock, or refuse with a one-line error naming the process that holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = read_holder(handle)
        handle.close()
        raise UserError(f"run {run_dir} is being trained by {describe(holder)}; wait for it to finish or stop it "
                        "(two processes training one run would both write its checkpoints)") from None
    left = read_holder(handle)
    if left:
        echo(f"warning: {run_dir / LOCK_FILE} names {describe(left)}, which is gone without releasing it; "
             "taking the run over")
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "command": launch()["command"]}) + "\n")
    handle.flush()
    return RunLock(run_dir, handle, left or None)


def read_holder(handle) -> dict:
    """What the lock file says of its holder ({} when empty, or when cut short by a kill mid-write)."""
    handle.seek(0)
    try:
        holder = json.loads(handle.read() or "{}")
    except ValueError:
        return {"pid": "?", "host": "?", "command": "a process killed while taking the lock"}
    return holder if isinstance(holder, dict) else {}
