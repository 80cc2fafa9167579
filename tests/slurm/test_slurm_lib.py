"""slurm/lib.sh (addresses, ports, GPUs) and job.sh's own refusals: no SLURM cluster needed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def lib(call: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("SLURM") and k not in ("CUDA_VISIBLE_DEVICES", "TRIXMED_NODE_IFACE")}
    return subprocess.run(["bash", "-c", f"source slurm/lib.sh; {call}"], cwd=REPO, capture_output=True, text=True,
                          env={**base, "TRIXMED_PYTHON": sys.executable, **env}, timeout=60)


def test_free_port_skips_a_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = lib(f"free_port {port}")
        assert out.returncode == 0, out.stderr
        found = int(out.stdout)
    assert found > port
    with socket.socket() as s:
        s.bind(("", found))   # really free


def test_job_ports_start_ten_apart_per_job_id():
    assert lib("job_port_base", SLURM_JOB_ID="1234").stdout.strip() == "22340"
    assert lib("job_port_base", SLURM_JOB_ID="1235").stdout.strip() == "22350"
    assert lib("job_port_base", SLURM_JOB_ID="2234").stdout.strip() == "22340"   # same block: free_port moves on


def test_node_ip_from_an_interface_or_the_host():
    assert lib("node_ip", TRIXMED_NODE_IFACE="lo").stdout.strip() == "127.0.0.1"
    # no slurmctld to ask for NodeAddr: the host's first address
    first = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()[0]
    assert lib("node_ip nosuchnode").stdout.strip() == first
    bad = lib("node_ip", TRIXMED_NODE_IFACE="nosuchif0")
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith("error: TRIXMED_NODE_IFACE=nosuchif0: no IPv4 address on node " + os.uname().nodename.split(".")[0])


def test_gpu_count_from_the_allocation():
    assert lib("gpu_count", CUDA_VISIBLE_DEVICES="0,1,3").stdout.strip() == "3"
    assert lib("gpu_count", SLURM_GPUS_ON_NODE="2").stdout.strip() == "2"
    assert lib("gpu_count").stdout.strip() == "0"


def test_job_sh_refuses_to_run_outside_slurm():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    out = subprocess.run(["bash", "slurm/job.sh", "run", "--config", "configs/demo_cpu.yaml"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "error: job.sh runs inside a SLURM job: sbatch slurm/train.sbatch --config C (see docs/cluster.md)" in out.stderr
    out = subprocess.run(["bash", "slurm/job.sh", "evaluate"], cwd=REPO, env={**env, "SLURM_JOB_ID": "1"},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "error: usage: job.sh run|tune [trixmed arguments], got 'evaluate'" in out.stderr


def test_slurm_tests_skip_where_slurm_cannot_run_but_fail_where_it_is_expected(monkeypatch):
    import pytest

    from trixmed.testing import slurm_unavailable

    monkeypatch.delenv("TRIXMED_REQUIRE_SLURM", raising=False)
    with pytest.raises(pytest.skip.Exception, match="^no sbatch$"):
        slurm_unavailable("no sbatch")
    monkeypatch.setenv("TRIXMED_REQUIRE_SLURM", "1")
    with pytest.raises(pytest.fail.Exception,
                       match=r"^SLURM is expected here \(TRIXMED_REQUIRE_SLURM=1\) but cannot run: no sbatch$"):
        slurm_unavailable("no sbatch")


def test_in_container_runs_the_command_through_the_prefix_or_on_the_host(tmp_path):
    wrapper = tmp_path / "runtime"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\nshift\nexec "$@"\n')
    wrapper.chmod(0o755)
    inside = lib("in_container echo hello world", TRIXMED_CONTAINER=f"{wrapper} --image=trixmed.sif")
    assert inside.returncode == 0 and inside.stdout == "hello world\n"
    assert (tmp_path / "calls").read_text() == "--image=trixmed.sif echo hello world\n"
    host = lib("in_container echo on the host")
    assert host.stdout == "on the host\n" and (tmp_path / "calls").read_text().count("\n") == 1
