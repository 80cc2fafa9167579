"""Submit trixmed's SLURM jobs from Python with submitit: the same jobs as `sbatch slurm/*.sbatch`.

    import launch
    job = launch.submit("run", ["--config", "configs/demo_cpu.yaml"], nodes=2)
    print(job.result())          # {"returncode": 0, "log_dir": ..., "run_dir": ...}

    python -m launch run --config configs/demo_cpu.yaml --nodes 2 --wait      (the same from a shell)

The same job: the function submitit runs on the job's first node is slurm/job.sh itself (plan,
Ray head + srun workers, trixmed, shutdown), and the resources default to the `#SBATCH` lines of
slurm/train.sbatch or slurm/tune.sbatch, so a change to a template changes both ways of submitting.
Preemption goes through submitit's own mechanism instead of job.sh's: submitit signals the job
(USR2, `signal_delay_s` before the limit), `TrixmedJob.checkpoint` stops job.sh as on its own
signal (USR1 with TRIXMED_REQUEUE=0: trixmed checkpoints a step within two, Ray steps ended, no
`scontrol requeue` of its own), waits for it, and hands submitit the same call to requeue; the
next attempt resumes from that step. job.sh's grace is sized so that its worst-case stop ends
inside the signal's window; a job that saves no work for `max_stalled_attempts` attempts in a row
is not requeued (job.sh exits 3, and the job's result is that error).

`executor="local"` runs the job on this machine without SLURM (submitit's LocalExecutor): the
plan, then trixmed with a local Ray, as `trixmed run` would.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from launch.locate import checkout, slurm_dir

TEMPLATES = {"run": "train.sbatch", "tune": "tune.sbatch"}
# job.sh's stop after its grace, at worst: INT 15 s, TERM 15 s, the Ray steps 60 s, and a margin
STOP_FALLBACK_S = 95
# what submitit needs after job.sh has stopped and before the time limit: `scontrol requeue`, exit
REQUEUE_MARGIN_S = 25
CANNOT_PROGRESS = 3   # job.sh's status when the job saved no work too many attempts in a row (slurm/attempt.py)


def sbatch_resources(command: str) -> dict[str, str]:
    """The `#SBATCH --key=value` lines of the command's template, as {key: value}."""
    if command not in TEMPLATES:
        raise ValueError(f"command must be one of {', '.join(TEMPLATES)}, got {command!r}")
    found: dict[str, str] = {}
    for line in (slurm_dir() / TEMPLATES[command]).read_text().splitlines():
        m = re.match(r"#SBATCH\s+--([\w-]+)(?:=(\S+))?", line)
        if m:
            found[m.group(1)] = m.group(2) or ""
    return found


def minutes(value: str) -> int:
    """SLURM's time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) → whole minutes."""
    days, _, rest = value.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:
        h, m, s = (parts + [0, 0])[:3]
        return int(days) * 1440 + h * 60 + m + (1 if s else 0)
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[0] + (1 if parts[1] else 0)
    return parts[0] * 60 + parts[1] + (1 if parts[2] else 0)


class TrixmedJob:
    """What submitit runs: slurm/job.sh on the job's first node (SLURM), or plan + trixmed (local).

    Checkpointable in submitit's sense (it has `checkpoint`): on submitit's preemption signal the
    running job.sh is stopped and the same call is returned for requeueing."""

    def __init__(self, command: str, args: list[str], env: dict[str, str] | None = None):
        self.command = command
        self.args = list(args)
        self.env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_dir: Path | None = None   # job.sh's log directory while it runs

    def __getstate__(self) -> dict[str, Any]:
        # a process does not pickle, and neither belongs to the next attempt
        return {k: v for k, v in self.__dict__.items() if k not in ("_proc", "_log_dir")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._proc, self._log_dir = None, None

    def __call__(self) -> dict[str, Any]:
        in_slurm = "SLURM_JOB_ID" in os.environ and os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
        if in_slurm and int(os.environ.get("SLURM_PROCID", "0")) != 0:
            return {"rank": int(os.environ["SLURM_PROCID"])}   # job.sh starts the other nodes' Ray itself
        env = {**os.environ, **self.env, "TRIXMED_PYTHON": sys.executable}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        if in_slurm:
            # submitit owns the requeue; job.sh only stops cleanly on USR1
            env["TRIXMED_REQUEUE"] = "0"
            cmd = ["bash", str(slurm_dir() / "job.sh"), self.command, *self.args]
            log_dir = Path(env.get("TRIXMED_LOG_ROOT") or Path(env.get("SLURM_SUBMIT_DIR", os.getcwd())) / "logs") \
                / f"{env.get('SLURM_JOB_NAME', 'trixmed')}-{env['SLURM_JOB_ID']}"
        else:
            cmd = [sys.executable, "-m", "trixmed.cli", self.command, *self.args,
                   *plan_job(self.command, self.args, ["--nodes", "1", "--gpus-per-node", "0",
                                                       "--cpus-per-node", str(os.cpu_count())], env)]
            log_dir = None
        self._log_dir = log_dir
        self._proc = subprocess.Popen(cmd, env=env, cwd=checkout())
        rc = self._proc.wait()
        self._proc = None
        result = {"command": self.command, "returncode": rc, "log_dir": str(log_dir) if log_dir else None,
                  "run_dir": resolve_run_dir(self.command, self.args)}
        if rc != 0:
            raise self._failure(rc)
        return result

    def _failure(self, rc: int) -> RuntimeError:
        tail = ""
        if self._log_dir and (self._log_dir / "job.log").is_file():
            tail = "\n".join((self._log_dir / "job.log").read_text(errors="replace").splitlines()[-20:])
        return RuntimeError(f"trixmed {self.command} exited with status {rc}" + (f"; job.log ends:\n{tail}" if tail else ""))

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's preemption hook: stop job.sh (trixmed checkpoints a step within two, Ray ends) and
        give submitit this same call to requeue, unless job.sh says the job cannot progress.

        submitit calls it from its signal handler, in the thread that `__call__` has blocked in
        `Popen.wait()`: that wait holds the Popen's lock, so `poll()` here could never see the
        exit. The child is watched with waitid(WNOWAIT) instead, which leaves it for that wait."""
        import submitit

        proc = self._proc
        if proc is not None and _exit_status(proc.pid) is None:
            proc.send_signal(signal.SIGUSR1)
            grace = float({**os.environ, **self.env}.get("TRIXMED_STOP_GRACE", 60))
            deadline = time.monotonic() + grace + STOP_FALLBACK_S
            while _exit_status(proc.pid) is None and time.monotonic() < deadline:
                time.sleep(0.2)
            if _exit_status(proc.pid) == CANNOT_PROGRESS:
                raise self._failure(CANNOT_PROGRESS)
        return submitit.helpers.DelayedSubmission(TrixmedJob(self.command, self.args, self.env))


def _exit_status(pid: int) -> int | None:
    """The exit status of our child `pid` once it has ended (None while it runs), without reaping it."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:   # already reaped
        return -1
    return None if info is None else info.si_status


def plan_job(command: str, args: list[str], shape: list[str], env: dict[str, str]) -> list[str]:
    """`trixmed plan SHAPE --job COMMAND ARGS`: print the plan, raise its refusal, and return the
    overrides it derives (trixmed parses its own command line; launch/ only passes it on)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="trixmed-plan-") as tmp:
        job_file = Path(tmp) / "plan.job"
        plan = subprocess.run([sys.executable, "-m", "trixmed.cli", "plan", *shape, "--job-file", str(job_file),
                               "--job", command, *args], env=env, cwd=checkout(), capture_output=True, text=True)
        print(plan.stdout + plan.stderr, flush=True)
        if plan.returncode:
            raise RuntimeError(f"trixmed plan refused the job: {plan.stderr.strip()}")
        return [line.split(" ", 1)[1] for line in job_file.read_text().splitlines() if line.startswith("override ")]


def resolve_run_dir(command: str, args: list[str]) -> str | None:
    """The run directory the command uses (config + overrides + --run-dir): for the job's result,
    and for job.sh's record of each attempt (slurm/attempt.py)."""
    from trixmed.cli import build_parser, parse_args
    from trixmed.commands.common import load_run_config
    from trixmed.errors import TrixmedError

    try:
        return str(Path(load_run_config(parse_args(build_parser(), [command, *args])).run_dir).resolve())
    except (TrixmedError, SystemExit):   # the job itself reports a bad command line in one line
        return None


def stop_grace(signal_delay_s: int, wanted: str | None = None) -> int:
    """job.sh's grace (TRIXMED_STOP_GRACE) for a signal `signal_delay_s` before the limit: what is
    left once its fallbacks and submitit's requeue are counted; a grace asked for must fit too."""
    room = signal_delay_s - STOP_FALLBACK_S - REQUEUE_MARGIN_S
    grace = int(wanted) if wanted else room
    if grace > room or grace < 10:
        raise ValueError(f"a stop signalled {signal_delay_s} s before the time limit leaves {room} s for trixmed "
                         f"to stop by itself (TRIXMED_STOP_GRACE, at least 10): signal earlier (#SBATCH --signal)")
    return grace


def submit(command: str, args: list[str], *, executor: str = "slurm", folder: str | Path | None = None,
           nodes: int | None = None, gpus_per_node: int | None = None, cpus_per_task: int | None = None,
           time_min: int | None = None, partition: str | None = None, account: str | None = None,
           job_name: str | None = None, env: dict[str, str] | None = None,
           additional: dict[str, Any] | None = None, max_requeues: int = 3,
           max_stalled_attempts: int = 3) -> Any:
    """Submit `trixmed COMMAND ARGS` as the template's job; returns the submitit Job.

    Resources not given come from the template's `#SBATCH` lines; `additional` is passed to sbatch
    as is (e.g. {"mem": "0", "constraint": "a100"}). `max_requeues`: requeues after the time limit
    (submitit's max_num_timeout; a preemption is always requeued); `max_stalled_attempts`: attempts
    in a row that save no work before the job ends (TRIXMED_MAX_STALLED_ATTEMPTS)."""
    import submitit

    res = sbatch_resources(command)
    env = {"TRIXMED_MAX_STALLED_ATTEMPTS": str(max_stalled_attempts), **(env or {})}
    folder = Path(folder or checkout() / "logs" / "submitit")
    if executor not in ("slurm", "local"):
        raise ValueError(f"executor must be slurm or local, got {executor!r}")
    if executor == "slurm" and shutil.which("sbatch") is None:
        raise RuntimeError("SLURM is not available here (no sbatch on PATH): use executor='local'")
    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=executor,
                               **({"slurm_max_num_timeout": max_requeues} if executor == "slurm" else {}))
    if executor == "slurm":
        signal_spec = res.get("signal", "B:USR1@300")
        delay = int(signal_spec.rsplit("@", 1)[1]) if "@" in signal_spec else 300
        env["TRIXMED_STOP_GRACE"] = str(stop_grace(delay, env.get("TRIXMED_STOP_GRACE")))
        extra: dict[str, Any] = {"requeue": True, "chdir": str(checkout())}
        if partition:
            extra["partition"] = partition
        if account:
            extra["account"] = account
        extra.update(additional or {})
        params: dict[str, Any] = dict(
            nodes=nodes or int(res.get("nodes", 1)),
            tasks_per_node=int(res.get("ntasks-per-node", 1)),
            cpus_per_task=cpus_per_task or int(res.get("cpus-per-task", 1)),
            timeout_min=time_min or minutes(res.get("time", "60")),
            name=job_name or res.get("job-name", f"trixmed-{command}"),
            slurm_signal_delay_s=delay,
            slurm_additional_parameters=extra,
        )
        if "mem" in res and "mem" not in extra:
            params["slurm_mem"] = res["mem"]   # submitit: "mem" is deprecated
        gpus = gpus_per_node if gpus_per_node is not None else int(res.get("gpus-per-node", 0) or 0)
        if gpus:
            params["gpus_per_node"] = gpus
        ex.update_parameters(**params)
    else:
        ex.update_parameters(timeout_min=time_min or minutes(res.get("time", "60")),
                             name=job_name or res.get("job-name", f"trixmed-{command}"))
    return ex.submit(TrixmedJob(command, args, env))
