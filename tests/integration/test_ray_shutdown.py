"""A command's local Ray leaves no process behind: one that outlives Ray's shutdown (an actor that
exited on its own and then hung in its interpreter's exit, as a Ray Train controller once did in
CI) is ended, and the run's Ray log names it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import ray
    from trixmed.config import load_config
    from trixmed.train.ray_session import ensure_ray, ray_session

    @ray.remote
    class Hangs:
        def pid(self):
            import atexit
            atexit.register(time.sleep, 3600)   # its process never finishes exiting
            return os.getpid()

    @ray.remote
    class Exits:
        def pid(self):
            return os.getpid()

    cfg = load_config(None, [f"run_dir={sys.argv[1]}"])
    with ray_session(cfg):
        ensure_ray(cfg)
        hangs, exits = Hangs.remote(), Exits.remote()
        pids = ray.get([hangs.pid.remote(), exits.pid.remote()])
        print("PIDS", *pids, flush=True)
        hangs_id = hangs._actor_id.hex()
        del hangs   # its last handle: the actor exits on its own, as a Ray Train controller does
        deadline = time.monotonic() + 60
        while ray._private.state.actors(hangs_id)["State"] != "DEAD" and time.monotonic() < deadline:
            time.sleep(0.2)
        print("STATE", ray._private.state.actors(hangs_id)["State"], flush=True)
""")


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_process_that_outlives_ray_shutdown_is_ended_and_logged(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # a local Ray of its own
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=240, env=env)
    pids = [int(p) for line in proc.stdout.splitlines() if line.startswith("PIDS ") for p in line.split()[1:]]
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "STATE DEAD" in proc.stdout, proc.stdout
        hangs, exits = pids
        assert not _running(hangs) and not _running(exits)
        log = (tmp_path / "logs" / "ray.log").read_text()
        assert f"ended pid {hangs} (ray::Hangs): still running 2 s after Ray's shutdown" in log, log[-2000:]
        assert f"ended pid {exits} " not in log
    finally:
        for pid in pids:   # only on failure: the processes this test's Ray started
            if _running(pid):
                psutil.Process(pid).kill()
