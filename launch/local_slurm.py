"""The single-host SLURM of slurm/local-cluster.sh, driven from Python (tests, benchmarks/slurm.py).

    with LocalSlurm.start(tmp_dir, nodes=2, gpus=2) as slurm:   # raises SlurmUnavailable with the reason
        job = slurm.sbatch(["slurm/train.sbatch", "--config", "configs/demo_cpu.yaml"])
        state = slurm.wait(job, timeout=300)                  # "COMPLETED"

Each instance has its own state directory and ports, so it neither sees nor disturbs another
SLURM on the machine, and stopping it ends only the daemons whose PID files it wrote.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from launch.locate import checkout, slurm_dir

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


class SlurmUnavailable(RuntimeError):
    """SLURM cannot run here (not installed, not root); the message says which."""


def unavailable_reason() -> str | None:
    missing = [c for c in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(c) is None
               and not Path("/usr/sbin", c).exists()]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing): slurm/local-cluster.sh install (Debian slurm-wlm, munge)"
    if os.geteuid() != 0:
        return "the local SLURM's daemons run as root and this is not root"
    return None


def _free_port_block(size: int, start: int = 16800, stop: int = 17800) -> int:
    """The first port p in [start, stop) with p … p+size-1 all free (slurmctld + one slurmd per node)."""
    for base in range(start, stop, size + 1):
        try:
            socks = []
            for port in range(base, base + size):
                s = socket.socket()
                socks.append(s)
                s.bind(("", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise SlurmUnavailable(f"no {size} free consecutive ports in {start}-{stop} for a local SLURM")


class LocalSlurm:
    def __init__(self, state_dir: Path, nodes: int, port: int, cpus: int | None, gpus: int = 0):
        self.state_dir = Path(state_dir)
        self.nodes = nodes
        self.port = port
        self.cpus = cpus
        self.gpus = gpus

    @property
    def env(self) -> dict[str, str]:
        """The environment for sbatch/squeue/scontrol against this cluster (and for the jobs,
        which inherit it): SLURM_CONF, and none of the caller's Ray settings (address, auth mode:
        job.sh starts its own cluster with its own token)."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN") and not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.state_dir / "slurm.conf")
        return env

    def _script(self, action: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SLURM_LOCAL_DIR": str(self.state_dir), "SLURM_LOCAL_NODES": str(self.nodes),
               "SLURM_LOCAL_PORT": str(self.port), "SLURM_LOCAL_GPUS": str(self.gpus)}
        if self.cpus:
            env["SLURM_LOCAL_CPUS"] = str(self.cpus)
        return subprocess.run(["bash", str(slurm_dir() / "local-cluster.sh"), action], env=env, capture_output=True, text=True,
                              timeout=timeout)

    @classmethod
    @contextmanager
    def start(cls, state_dir: Path, nodes: int = 2, cpus: int | None = None, gpus: int = 0) -> Iterator["LocalSlurm"]:
        reason = unavailable_reason()
        if reason:
            raise SlurmUnavailable(reason)
        slurm = cls(state_dir, nodes, _free_port_block(nodes + 1), cpus, gpus)
        proc = slurm._script("start")
        if proc.returncode:
            raise RuntimeError(f"slurm/local-cluster.sh start failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        try:
            yield slurm
        finally:
            slurm._script("stop")

    def run(self, *cmd: str, timeout: float = 30) -> str:
        proc = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout, cwd=checkout())
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def sbatch(self, args: list[str], env: dict[str, str] | None = None) -> str:
        """Submit from the repository root; returns the job id."""
        proc = subprocess.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=30, cwd=checkout())
        if proc.returncode:
            raise RuntimeError(f"sbatch {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as {Key: value} (JobState, Restarts, NodeList, StdOut …)."""
        out = self.run("scontrol", "show", "job", "-o", job_id)
        fields = {}
        for item in out.split():
            key, sep, value = item.partition("=")
            if sep:
                fields[key] = value
        return fields

    def wait(self, job_id: str, timeout: float, until: set[str] | None = None, poll: float = 0.5) -> str:
        """Poll until the job's state is one of `until` (default: any end state); returns it."""
        until = until or TERMINAL
        deadline = time.monotonic() + timeout
        while True:
            state = self.job(job_id).get("JobState", "?")
            if state in until:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {state} after {timeout:g} s")
            time.sleep(poll)
