"""One writer per run directory: the lock a command holds while it writes into one.

Two commands writing into the same run directory (two `trixmed run`, a requeued SLURM job beside a
manual resubmission) would overwrite each other's stages and checkpoints. Every command that writes
into a run directory holds its lock file (`RunDir.lock`) for its whole duration
(trixmed/commands/common.py); what runs under that command (Ray's workers and actors, a sweep's
trials) never takes it.

The lock is a JSON record of its owner: the command, host, pid namespace, pid and the process's
start time (so a recycled pid is not taken for the owner), when it was taken, and the SLURM job and
restart count when there is one. It appears whole or not at all, and only where no lock is (a
complete temporary file hard-linked to the name). A second writer is refused in one line naming the
owner, unless the owner is known to be gone; then the lock is taken over, with a console line:

- an owner on this host (in this pid namespace) whose process has ended, or whose pid belongs to
  another process now;
- an earlier attempt of this SLURM job (a requeued job keeps its id and restarts on any node; SLURM
  ends an attempt's processes before it requeues the job);
- an owner whose SLURM job has left the queue (`squeue`).

An owner outside SLURM on another host, or in another pid namespace (a container), cannot be
checked from here: the refusal names the file to remove once it has ended. Deciding on a takeover
holds an flock of `RunDir.lock_guard`, so two processes that find the same stale lock cannot both
take it. Linux only: start times come from /proc.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from trixmed.errors import TrixmedError
from trixmed.io import read_json, write_json
from trixmed.run_dir import RunDir

if TYPE_CHECKING:
    from trixmed.console import Console

# squeue's states of a job that has ended (the controller keeps such a job listed for a while)
_ENDED = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                    "PREEMPTED", "REVOKED", "TIMEOUT"})


@dataclass(frozen=True)
class Owner:
    """The process that holds a run directory's lock, as its lock file records it."""

    command: str                  # "trixmed run", as the messages name it
    argv: list[str]               # its whole command line, for whoever reads the file
    host: str
    pid_namespace: str            # /proc/self/ns/pid: a container on this host may number processes apart
    pid: int
    started: int                  # /proc/<pid>/stat field 22: clock ticks after boot
    since: str                    # when the lock was taken: ISO 8601 with the owner's UTC offset
    slurm_job: str | None         # SLURM_JOB_ID
    slurm_restart: int | None     # SLURM_RESTART_COUNT: set from a job's first requeue on

    @classmethod
    def this_process(cls, command: str) -> Owner:
        restart = os.environ.get("SLURM_RESTART_COUNT")
        return cls(command=command, argv=sys.argv, host=socket.gethostname(),
                   pid_namespace=os.readlink("/proc/self/ns/pid"), pid=os.getpid(), started=_start_time(os.getpid()),
                   since=datetime.now().astimezone().isoformat(timespec="seconds"),
                   slurm_job=os.environ.get("SLURM_JOB_ID") or None, slurm_restart=int(restart) if restart else None)

    def describe(self) -> str:
        job = f", SLURM job {self.slurm_job}" if self.slurm_job else ""
        since = datetime.fromisoformat(self.since).strftime("%Y-%m-%d %H:%M:%S")
        return f"{self.command} (pid {self.pid} on {self.host}{job}, since {since})"


@contextlib.contextmanager
def hold_run_dir(rd: RunDir, command: str, console: Console) -> Iterator[None]:
    """Hold `rd`'s lock for the block, or raise a one-line `TrixmedError` naming its owner. A stale
    lock is taken over with a line on `console`. SIGTERM ends the block as Ctrl-C does, so the lock
    is released then too (a SIGKILL leaves it behind, stale, for the next command to take over)."""
    me = Owner.this_process(command)
    created = not rd.root.exists()
    with _sigterm_exits():
        try:
            _take(rd, me, console)
            yield
        finally:
            _release(rd, me)
            if created:
                _remove_if_unused(rd)


def _take(rd: RunDir, me: Owner, console: Console) -> None:
    while True:
        try:
            write_json(rd.lock, dataclasses.asdict(me), exclusive=True)
            return
        except FileExistsError:
            pass
        with _guard(rd):
            owner = _read(rd)
            if owner is None:
                continue   # released since: create it anew
            gone = _why_gone(rd, owner, me)
            write_json(rd.lock, dataclasses.asdict(me))
        console.line(f"[lock] {rd.root}: taking over from {owner.describe()}, {gone}")
        return


def _release(rd: RunDir, me: Owner) -> None:
    # only our own record: a refused command, or one whose lock was taken over, leaves the lock alone
    with contextlib.suppress(FileNotFoundError, ValueError):
        if read_json(rd.lock) == dataclasses.asdict(me):
            rd.lock.unlink()


def _remove_if_unused(rd: RunDir) -> None:
    """A run directory the lock alone created (a command that failed before writing, e.g. on a
    mistyped --run-dir) is not left behind."""
    with contextlib.suppress(OSError):
        if {p.name for p in rd.root.iterdir()} <= {rd.lock_guard.name}:
            rd.lock_guard.unlink(missing_ok=True)
            rd.root.rmdir()


@contextlib.contextmanager
def _guard(rd: RunDir) -> Iterator[None]:
    # never deleted: unlinking a file others may be waiting to flock would let two of them hold it
    with open(rd.lock_guard, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield   # closing the file releases the flock


def _read(rd: RunDir) -> Owner | None:
    """The lock's owner; None when there is no lock (any more)."""
    try:
        return Owner(**read_json(rd.lock))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        raise TrixmedError(rd.lock, f"not a trixmed lock; if no trixmed command is writing into {rd.root}, "
                                    "remove it and run again") from None


def _why_gone(rd: RunDir, owner: Owner, me: Owner) -> str:
    """Why `owner` no longer holds its lock, for the takeover's line; raises the refusal when it may."""
    if owner.host == me.host and owner.pid_namespace == me.pid_namespace:
        try:
            started = _start_time(owner.pid)
        except ProcessLookupError:
            return "which is no longer running"
        if started != owner.started:
            return f"which is no longer running (pid {owner.pid} is another process now)"
        raise _in_use(rd, owner)
    if owner.slurm_job is None:
        raise _unknown(rd, owner, me, " (another pid namespace)" if owner.host == me.host else "")
    if owner.slurm_job == me.slurm_job:
        if (owner.slurm_restart or 0) < (me.slurm_restart or 0):
            return "an earlier attempt of this SLURM job"
        # the same attempt, on another node: the queue lists the job because this process runs in it
        raise _unknown(rd, owner, me, " (another node of this SLURM job)")
    queued = _in_queue(owner.slurm_job)
    if queued is None:
        raise _unknown(rd, owner, me, f" (squeue cannot tell whether job {owner.slurm_job} is still queued)")
    if queued:
        raise _in_use(rd, owner)
    return "whose SLURM job is no longer in the queue"


def _in_use(rd: RunDir, owner: Owner) -> TrixmedError:
    stop = f"scancel {owner.slurm_job}" if owner.slurm_job else f"kill {owner.pid}"
    return TrixmedError(rd.root, f"in use by {owner.describe()}; wait for it to end, or stop it: {stop}")


def _unknown(rd: RunDir, owner: Owner, me: Owner, why: str) -> TrixmedError:
    return TrixmedError(rd.root, f"in use by {owner.describe()}, which cannot be checked from {me.host}{why}; "
                                 f"if it has ended, remove {rd.lock} and run again")


def _start_time(pid: int) -> int:
    """When process `pid` started (/proc/<pid>/stat field 22, clock ticks after boot). Raises
    ProcessLookupError when no such process runs; a zombie has ended too (only its exit status
    waits for its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessLookupError(pid) from None
    fields = stat.rsplit(")", 1)[1].split()   # field 2, the name in parentheses, may hold spaces and ")"
    if fields[0] == "Z":
        raise ProcessLookupError(pid)
    return int(fields[19])


def _in_queue(job: str) -> bool | None:
    """Whether SLURM job `job` is still pending, running or otherwise unfinished; None when squeue
    cannot tell (not installed here, no controller)."""
    try:
        done = subprocess.run(["squeue", "--noheader", f"--jobs={job}", "--states=all", "--format=%T"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        # the controller forgets a finished job after a while (MinJobAge), then refuses its id
        return False if "Invalid job id" in done.stderr else None
    return any(state not in _ENDED for state in done.stdout.split())


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM (a plain `kill`, job.sh's fallback after SIGINT) raises SystemExit, so that `finally`
    blocks run as they do on Ctrl-C; Ray's driver does the same once connected. Only the main
    thread can set a handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
