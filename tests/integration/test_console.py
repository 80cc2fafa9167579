"""What a person sees: `trixmed run` on the demo prints one line per stage start and end, one line
per epoch and the final table; Ray's and DeepSpeed's internals go to the run's log files. With the
dashboard on, its Train view lists the training runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]

# what library internals look like on a console: Ray's forwarded actor output, its C++ core,
# DeepSpeed's and Python's log/warning records, Ray Train's reporting chatter
INTERNALS = re.compile(
    r"\(\w+ pid=\d+\)|core_worker|raylet|\[(WARNING|INFO|ERROR|DEBUG)\]|\b(WARNING|INFO|ERROR)\b|Warning\b|"
    r"Token authentication|real_accelerator|Setting up process group|Checkpoint successfully|Reporting training result|"
    r"Started a local Ray|Traceback"
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)   # a fresh local Ray, as for a user at a terminal
    env.pop("RAY_AUTH_MODE", None)
    return env


def test_demo_console_shows_stages_epochs_and_the_table_only(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "trixmed.cli", "run", "--config", str(REPO / "configs" / "demo_cpu.yaml"),
         f"run_dir={run_dir}", "warmup.epochs=2", "experts.epochs=2"],
        capture_output=True, text=True, timeout=550, env=_env(), cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    noise = [line for line in lines if INTERNALS.search(line)]
    assert not noise, "library internals on the console:\n" + "\n".join(noise[:20])
    for stage in ("prepare", "warmup", "extract", "stratify", "experts", "evaluate"):
        assert sum(line.startswith(f"[{stage}] running → ") for line in lines) == 1, stage
        assert sum(line.startswith(f"[{stage}] done in ") for line in lines) == 1, stage
    for phase in ("warmup", "experts"):
        for epoch in (1, 2):
            assert sum(line.startswith(f"[{phase}] epoch {epoch}/2: loss ") for line in lines) == 1, (phase, epoch)
    assert any(line.startswith("Jaccard ") for line in lines)
    assert any(line.startswith(f"artifacts in {run_dir.resolve()}") for line in lines)
    # the internals are kept, in the run directory
    logs = run_dir / "logs"
    assert "accelerator" in (logs / "warmup-rank0.log").read_text()
    assert (logs / "experts-rank1.log").is_file() and (logs / "ray.log").is_file()


_DASHBOARD = textwrap.dedent("""
    import json, sys, urllib.request
    from pathlib import Path
    from trixmed.config import load_config
    from trixmed.pipeline.stages import run_pipeline
    from trixmed.testing import TINY_OVERRIDES, make_tiny_dataset
    from trixmed.train.ray_session import dashboard_url, ray_session

    root = Path(sys.argv[1])
    make_tiny_dataset(root)
    cfg = load_config(None, [*TINY_OVERRIDES, f"run_dir={root}", "warmup.epochs=1"])
    with ray_session(cfg, dashboard=True):
        run_pipeline(cfg, stages=["warmup"])
        request = urllib.request.Request(dashboard_url() + "/api/train/v2/runs/v1")
        token = Path.home() / ".ray" / "auth_token"
        if token.is_file():
            request.add_header("Authorization", "Bearer " + token.read_text().strip())
        print("RUNS " + urllib.request.urlopen(request, timeout=60).read().decode())
""")


def test_dashboard_train_view_lists_the_training_run(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _DASHBOARD, str(tmp_path)], capture_output=True, text=True,
                          timeout=550, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    body = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RUNS "))[5:])
    runs = body["train_runs"]
    names = [r["name"] for r in runs]
    assert any(name.startswith("warmup-") for name in names), names
    run = next(r for r in runs if r["name"].startswith("warmup-"))
    assert run["status"] == "FINISHED", run["status"]
