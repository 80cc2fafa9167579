"""One writer per run directory (trixmed/run_lock.py): a second writer is refused naming the owner,
a stale lock is taken over with a console line, a requeued SLURM job reclaims its own lock, and
every writing command releases the lock when it ends, however it ends."""

from __future__ import annotations

import fcntl
import io
import os
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from trixmed.cli import main
from trixmed.console import Console
from trixmed.errors import TrixmedError
from trixmed.io import read_json, write_json
from trixmed.run_dir import RunDir
from trixmed.run_lock import hold_run_dir

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo_cpu.yaml")
HOST = socket.gethostname()
PID_NS = os.readlink("/proc/self/ns/pid")
SINCE = "2026-12-04T20:31:05+01:00"   # shown as the owner's local time: 2026-12-04 20:31:05


@pytest.fixture(autouse=True)
def outside_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)


@pytest.fixture
def rd(tmp_path) -> RunDir:
    return RunDir(tmp_path / "run")


@pytest.fixture
def squeue(tmp_path, monkeypatch):
    """PATH holding only a fake `squeue` that prints `out` to stdout, `err` to stderr and exits with
    `rc`; squeue(None): no squeue at all."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))

    def install(out: str | None, err: str = "", rc: int = 0) -> None:
        if out is None:
            return
        script = bin_dir / "squeue"
        script.write_text(f"#!/bin/sh\nprintf '%s' '{out}'\nprintf '%s' '{err}' >&2\nexit {rc}\n")
        script.chmod(0o755)

    return install


def start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def write_lock(rd: RunDir, **owner) -> None:
    record = {"command": "trixmed run", "argv": ["trixmed", "run"], "host": HOST, "pid_namespace": PID_NS,
              "pid": 4321, "started": 1,
              "since": SINCE, "slurm_job": None, "slurm_restart": None, **owner}
    rd.root.mkdir(parents=True, exist_ok=True)
    write_json(rd.lock, record)


def take(rd: RunDir, command: str = "trixmed prepare") -> str:
    """Hold the lock once (checking that this process owns it meanwhile); the console's output."""
    out = io.StringIO()
    with hold_run_dir(rd, command, Console(stream=out)):
        assert read_json(rd.lock)["pid"] == os.getpid()
    assert not rd.lock.exists()
    return out.getvalue()


def refusal(rd: RunDir) -> str:
    before = rd.lock.read_bytes()
    with pytest.raises(TrixmedError) as info:
        take(rd)
    assert rd.lock.read_bytes() == before   # the owner's lock is left as it was
    return str(info.value)


def shown(since: str) -> str:
    return datetime.fromisoformat(since).strftime("%Y-%m-%d %H:%M:%S")


def test_a_fresh_lock_records_its_owner_and_is_released(rd, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "567")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    with hold_run_dir(rd, "trixmed run", Console(stream=io.StringIO())):
        owner = read_json(rd.lock)
    assert not rd.lock.exists()
    assert (owner["command"], owner["host"], owner["pid_namespace"], owner["pid"]) == ("trixmed run", HOST, PID_NS,
                                                                                     os.getpid())
    assert owner["started"] == start_time(os.getpid())
    assert (owner["slurm_job"], owner["slurm_restart"]) == ("567", 2)
    assert abs(datetime.fromisoformat(owner["since"]).timestamp() - time.time()) < 60


def test_a_second_writer_is_refused_while_the_owner_runs_and_sigterm_releases_the_lock(rd):
    holder = ("import sys, time\n"
              "from trixmed.console import Console\nfrom trixmed.run_dir import RunDir\n"
              "from trixmed.run_lock import hold_run_dir\n"
              "with hold_run_dir(RunDir(sys.argv[1]), 'trixmed run', Console()):\n"
              "    print('held', flush=True)\n    time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", holder, str(rd.root)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline() == "held\n"
        since = shown(read_json(rd.lock)["since"])
        assert refusal(rd) == (f"{rd.root}: in use by trixmed run (pid {proc.pid} on {HOST}, since {since}); "
                               f"wait for it to end, or stop it: kill {proc.pid}")
    finally:
        proc.terminate()
        rc = proc.wait(timeout=30)
    assert rc == 128 + 15 and not rd.lock.exists()


def test_a_live_slurm_owner_on_this_host_is_named_with_its_job(rd):
    write_lock(rd, pid=os.getpid(), started=start_time(os.getpid()), slurm_job="567")
    assert refusal(rd) == (f"{rd.root}: in use by trixmed run (pid {os.getpid()} on {HOST}, SLURM job 567, "
                           "since 2026-12-04 20:31:05); wait for it to end, or stop it: scancel 567")


def test_a_dead_owners_lock_is_taken_over(rd):
    pid = dead_pid()
    write_lock(rd, pid=pid, started=start_time(os.getpid()))
    assert take(rd) == (f"[lock] {rd.root}: taking over from trixmed run (pid {pid} on {HOST}, "
                        "since 2026-12-04 20:31:05), which is no longer running\n")


def test_a_recycled_pid_is_not_the_owner(rd):
    # a live pid that started at another time than the lock's owner did: the owner has ended
    write_lock(rd, pid=os.getpid(), started=start_time(os.getpid()) + 1)
    assert take(rd) == (f"[lock] {rd.root}: taking over from trixmed run (pid {os.getpid()} on {HOST}, "
                        f"since 2026-12-04 20:31:05), which is no longer running (pid {os.getpid()} is another "
                        "process now)\n")


def test_a_requeued_slurm_job_reclaims_its_earlier_attempts_lock(rd, squeue, monkeypatch):
    squeue(None)   # decided without asking SLURM: the job itself is running again
    write_lock(rd, host="node07", slurm_job="567")
    monkeypatch.setenv("SLURM_JOB_ID", "567")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert take(rd) == (f"[lock] {rd.root}: taking over from trixmed run (pid 4321 on node07, SLURM job 567, "
                        "since 2026-12-04 20:31:05), an earlier attempt of this SLURM job\n")


def test_another_node_of_the_same_slurm_job_attempt_cannot_be_checked(rd, squeue, monkeypatch):
    squeue("RUNNING")   # this very job: the queue says nothing about the owner's process
    write_lock(rd, host="node07", slurm_job="567", slurm_restart=1)
    monkeypatch.setenv("SLURM_JOB_ID", "567")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert refusal(rd) == (f"{rd.root}: in use by trixmed run (pid 4321 on node07, SLURM job 567, "
                           f"since 2026-12-04 20:31:05), which cannot be checked from {HOST} (another node of this "
                           f"SLURM job); if it has ended, remove {rd.lock} and run again")


@pytest.mark.parametrize(("out", "err", "rc"), [
    ("", "", 0),                                                   # no longer listed
    ("COMPLETED", "", 0),                                          # listed, ended
    ("", "slurm_load_jobs error: Invalid job id specified", 1),    # forgotten by the controller
])
def test_a_lock_whose_slurm_job_left_the_queue_is_taken_over(rd, squeue, out, err, rc):
    squeue(out, err, rc)
    write_lock(rd, host="node07", slurm_job="567")
    assert take(rd) == (f"[lock] {rd.root}: taking over from trixmed run (pid 4321 on node07, SLURM job 567, "
                        "since 2026-12-04 20:31:05), whose SLURM job is no longer in the queue\n")


@pytest.mark.parametrize("state", ["RUNNING", "PENDING"])   # PENDING: requeued, its next attempt will reclaim it
def test_a_lock_whose_slurm_job_is_queued_is_refused(rd, squeue, state):
    squeue(state)
    write_lock(rd, host="node07", slurm_job="567")
    assert refusal(rd) == (f"{rd.root}: in use by trixmed run (pid 4321 on node07, SLURM job 567, "
                           "since 2026-12-04 20:31:05); wait for it to end, or stop it: scancel 567")


def test_an_owner_that_cannot_be_checked_is_refused_with_the_file_to_remove(rd, squeue):
    squeue(None)
    write_lock(rd, host="node07")
    assert refusal(rd) == (f"{rd.root}: in use by trixmed run (pid 4321 on node07, since 2026-12-04 20:31:05), "
                           f"which cannot be checked from {HOST}; if it has ended, remove {rd.lock} and run again")
    # this host, but a container that numbers its processes apart: its pid says nothing here
    pid = dead_pid()
    write_lock(rd, pid=pid, pid_namespace="pid:[1]")
    assert refusal(rd) == (f"{rd.root}: in use by trixmed run (pid {pid} on {HOST}, since 2026-12-04 20:31:05), "
                           f"which cannot be checked from {HOST} (another pid namespace); if it has ended, remove "
                           f"{rd.lock} and run again")
    write_lock(rd, host="node07", slurm_job="567")
    assert refusal(rd) == (f"{rd.root}: in use by trixmed run (pid 4321 on node07, SLURM job 567, "
                           f"since 2026-12-04 20:31:05), which cannot be checked from {HOST} (squeue cannot tell "
                           f"whether job 567 is still queued); if it has ended, remove {rd.lock} and run again")


def test_a_file_that_is_not_a_lock_is_refused(rd):
    rd.root.mkdir()
    rd.lock.write_text("busy\n")
    assert refusal(rd) == (f"{rd.lock}: not a trixmed lock; if no trixmed command is writing into {rd.root}, "
                           "remove it and run again")


@pytest.mark.parametrize("error", [TrixmedError("x", "failed"), KeyboardInterrupt()])
def test_the_lock_is_released_when_the_block_fails(rd, error):
    with pytest.raises(type(error)), hold_run_dir(rd, "trixmed run", Console(stream=io.StringIO())):
        assert rd.lock.exists()
        raise error
    assert not rd.lock.exists()


def test_two_processes_finding_one_stale_lock_decide_in_turn(rd):
    """The takeover re-reads the lock under the guard's flock: whoever decides second sees the first
    one's lock, not the stale one it found."""
    write_lock(rd, pid=dead_pid())
    taker = ("import sys\nfrom trixmed.console import Console\nfrom trixmed.run_dir import RunDir\n"
             "from trixmed.run_lock import hold_run_dir\n"
             "with hold_run_dir(RunDir(sys.argv[1]), 'trixmed prepare', Console()):\n    pass\n")
    with open(rd.lock_guard, "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        proc = subprocess.Popen([sys.executable, "-c", taker, str(rd.root)], stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 30
        while not _waits_for_flock(proc.pid):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        # meanwhile this process took the stale lock over (as the first of two would)
        write_lock(rd, pid=os.getpid(), started=start_time(os.getpid()))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and err.rstrip().endswith(
        f"{rd.root}: in use by trixmed run (pid {os.getpid()} on {HOST}, since 2026-12-04 20:31:05); "
        f"wait for it to end, or stop it: kill {os.getpid()}")
    assert read_json(rd.lock)["pid"] == os.getpid()


def _waits_for_flock(pid: int) -> bool:
    # /proc/locks lists a process waiting for a lock as "N: -> FLOCK ADVISORY WRITE <pid> ..."
    return any(fields[1:3] == ["->", "FLOCK"] and fields[5] == str(pid)
               for fields in map(str.split, Path("/proc/locks").read_text().splitlines()))


# --------------------------------------------------------------------------------------------
# the commands: writers take the lock, readers do not


def test_writing_commands_are_refused_and_readers_are_not(rd, capsys, tmp_path):
    write_lock(rd, pid=os.getpid(), started=start_time(os.getpid()))
    busy = (f"{rd.root}: in use by trixmed run (pid {os.getpid()} on {HOST}, since 2026-12-04 20:31:05); "
            f"wait for it to end, or stop it: kill {os.getpid()}")
    space = str(ROOT / "tune_spaces" / "demo_2x2.yaml")
    for argv in (["prepare"], ["warmup"], ["evaluate"], ["baseline", "lr"], ["report"], ["tune", space],
                 ["transfer", "--from", str(tmp_path)], ["run"]):
        assert main([*argv, "--config", DEMO, f"run_dir={rd.root}"]) == 2
        assert capsys.readouterr().err == f"trixmed {argv[0]}: error: {busy}\n"
    assert main(["report", "--tune", str(rd.experiment("k").root)]) == 2
    assert capsys.readouterr().err == f"trixmed report: error: {busy}\n"
    # readers: the plan, and a patient's prediction or explanation (here: of a run not trained yet)
    assert main(["run", "--dry-run", "--config", DEMO, f"run_dir={rd.root}"]) == 0
    patient = tmp_path / "patient.json"
    patient.write_text('{"visits": []}')
    for argv in (["predict", "--input", str(patient)], ["explain", "--patient", str(patient)]):
        assert main([*argv, "--config", DEMO, f"run_dir={rd.root}"]) == 2
        assert capsys.readouterr().err == (f"trixmed {argv[0]}: error: {rd.metrics}: missing; {argv[0]} needs a "
                                           "trained and evaluated run (`trixmed run`)\n")
    assert read_json(rd.lock)["pid"] == os.getpid()


def test_a_command_releases_the_lock_when_it_ends_or_fails(rd, capsys):
    assert main(["prepare", "--config", DEMO, f"run_dir={rd.root}"]) == 0
    assert rd.dataset.is_dir() and not rd.lock.exists()
    assert main(["extract", "--config", DEMO, f"run_dir={rd.root}"]) == 2
    assert capsys.readouterr().err == (f"trixmed extract: error: {rd.root}/warmup: missing; stage extract needs it "
                                       "(run the earlier stages or `trixmed run`)\n")
    assert not rd.lock.exists()


def test_two_trixmed_writers_on_one_run_directory(rd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "trixmed.cli"]
    first = subprocess.Popen([*cli, "run", "--config", DEMO, f"run_dir={rd.root}"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not rd.lock.exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        since = shown(read_json(rd.lock)["since"])
        second = subprocess.run([*cli, "prepare", "--config", DEMO, f"run_dir={rd.root}"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert second.stderr.splitlines()[-1] == (
            f"trixmed prepare: error: {rd.root}: in use by trixmed run (pid {first.pid} on {HOST}, since {since}); "
            f"wait for it to end, or stop it: kill {first.pid}")
    finally:
        first.terminate()
        first.wait(timeout=120)
    assert not rd.lock.exists()


def test_a_run_directory_the_lock_alone_created_is_not_left_behind(tmp_path, capsys):
    """`trixmed report` on a mistyped run directory fails and leaves nothing; one that exists stays."""
    typo = tmp_path / "typo"
    assert main(["report", "--config", DEMO, f"run_dir={typo}"]) == 2
    assert "missing" in capsys.readouterr().err and not typo.exists()
    typo.mkdir()
    assert main(["report", "--config", DEMO, f"run_dir={typo}"]) == 2
    assert typo.is_dir() and not (typo / ".lock").exists()
