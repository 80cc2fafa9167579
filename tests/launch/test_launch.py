"""launch/: the templates' resources, argument splitting, and the `local` executor (no SLURM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import launch  # noqa: E402
from trixmed.testing import TINY_OVERRIDES  # noqa: E402

# the tiny model without its worker count (the shape's), four workers splitting a batch of 8
TINY = [o for o in TINY_OVERRIDES if not o.startswith("distributed.num_workers=")] + [
    "warmup.micro_batch_size=2", "experts.micro_batch_size=2"]


def test_resources_come_from_the_sbatch_templates():
    for command in ("run", "tune"):
        res = launch.sbatch_resources(command)
        assert res["nodes"] == "2" and res["ntasks-per-node"] == "1" and res["signal"] == "B:USR1@300"
        assert "requeue" in res and res["open-mode"] == "append"
    assert launch.sbatch_resources("run")["job-name"] == "trixmed-train"
    assert launch.sbatch_resources("tune")["job-name"] == "trixmed-tune"
    with pytest.raises(ValueError, match="command must be one of run, tune, got 'evaluate'"):
        launch.sbatch_resources("evaluate")


@pytest.mark.parametrize("text,expected", [("90", 90), ("5:30", 6), ("24:00:00", 1440), ("1:30:00", 90),
                                           ("2-00", 2880), ("1-02:03", 1563), ("0-00:10:01", 11)])
def test_slurm_time_formats_in_minutes(text, expected):
    assert launch.minutes(text) == expected


def test_trixmed_parses_the_command_line_and_the_plan_derives_the_overrides(tmp_path):
    """launch/ passes trixmed's command line on whole: trixmed's parser finds the run directory,
    `trixmed plan --job` the overrides for the shape (a command-line override wins over its own)."""
    args = ["tune_spaces/demo_2x2.yaml", "--config", "configs/demo_cpu.yaml", "--force", "seed=3", "--run-dir", str(tmp_path)]
    assert launch.resolve_run_dir("tune", args) == str(tmp_path)
    assert launch.resolve_run_dir("tune", ["--no-such-flag"]) is None
    run = ["--config", "configs/demo_cpu.yaml", *TINY, f"run_dir={tmp_path}", "plan.gpus_per_node=2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert launch.plan_job("run", run, ["--nodes", "2", "--gpus-per-node", "2"], env) == \
        ["distributed.use_gpu=true", "distributed.num_workers=4"]


def test_slurm_executor_without_slurm_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))   # no sbatch
    with pytest.raises(RuntimeError, match="SLURM is not available here \\(no sbatch on PATH\\): use executor='local'"):
        launch.submit("run", ["--config", "configs/demo_cpu.yaml"], folder=tmp_path)


@pytest.mark.timeout(300)
def test_local_executor_runs_plan_then_trixmed(tmp_path):
    """`python -m launch … --executor local --wait`: submitit's local executor runs the plan and the
    command on this machine (a dry run here: the same path as a training run, in seconds)."""
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "launch", "run", "--executor", "local", "--wait", "--folder", str(tmp_path / "sub"),
                           "--config", "configs/demo_cpu.yaml", "--dry-run", f"run_dir={run_dir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=280, env={**os.environ})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result == {"command": "run", "returncode": 0, "log_dir": None, "run_dir": str(run_dir)}
    out = next((tmp_path / "sub").glob("*/*_0_log.out")).read_text()
    # the plan (one node, CPU) before the command, then the command's own dry-run plan
    assert "configs/demo_cpu.yaml on 1 node(s), CPU only: world size 2" in out
    assert out.count(f"plan for {run_dir}") == 2


@pytest.mark.timeout(300)
def test_local_executor_reports_a_refused_plan(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "launch", "run", "--executor", "local", "--wait", "--folder", str(tmp_path / "sub"),
                           "--config", "configs/demo_cpu.yaml", "distributed.num_workers=3", f"run_dir={tmp_path / 'run'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 1
    assert ("trixmed plan refused the job: trixmed plan: error: configs/demo_cpu.yaml: warmup.effective_batch_size: 4 is not "
            "a multiple of micro_batch_size × workers = 2 × 3; smallest that fits: distributed.num_workers=1") in proc.stderr


def test_pyproject_installs_launch_with_the_package():
    """setuptools' own reading of pyproject.toml: the packages a wheel or an install gets."""
    from setuptools.config.pyprojecttoml import read_configuration

    packages = read_configuration(REPO / "pyproject.toml")["tool"]["setuptools"]["packages"]
    assert "launch" in packages and "trixmed" in packages and not [p for p in packages if p.startswith("tests")]


def installed_copy(tmp_path: Path) -> Path:
    """launch/ alone in a site folder, as a wheel installs it: no slurm/ beside it."""
    site = tmp_path / "site"
    (site / "launch").mkdir(parents=True)
    for f in (REPO / "launch").glob("*.py"):
        (site / "launch" / f.name).write_text(f.read_text())
    return site


@pytest.mark.parametrize("where", ["cwd", "env"])
def test_installed_launch_finds_the_templates_in_the_checkout(tmp_path, where):
    site = installed_copy(tmp_path)
    checkout = tmp_path / "checkout"
    (checkout / "slurm").mkdir(parents=True)
    for name in ("job.sh", "train.sbatch", "tune.sbatch"):
        (checkout / "slurm" / name).write_text((REPO / "slurm" / name).read_text())
    env = {k: v for k, v in os.environ.items() if k != "TRIXMED_CHECKOUT"} | {"PYTHONPATH": str(site)}
    if where == "env":
        env["TRIXMED_CHECKOUT"] = str(checkout)
    proc = subprocess.run([sys.executable, "-c", "import launch; print(launch.__file__); print(launch.slurm_dir()); "
                           "print(launch.sbatch_resources('tune')['job-name'])"],
                          cwd=checkout if where == "cwd" else tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(site / "launch" / "__init__.py"), str(checkout / "slurm"), "trixmed-tune"]


def test_installed_launch_without_a_checkout_says_so_in_one_line(tmp_path):
    site = installed_copy(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "TRIXMED_CHECKOUT"} | {"PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-m", "launch", "run", "--executor", "local", "--config", "c.yaml"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (f"python -m launch: error: no trixmed checkout (a folder with slurm/job.sh) in {tmp_path / 'site'}, "
                           f"{tmp_path}: run from the checkout's root or set TRIXMED_CHECKOUT\n")


def test_stop_grace_fits_the_signal_window():
    assert launch.stop_grace(300) == 300 - launch.STOP_FALLBACK_S - launch.REQUEUE_MARGIN_S
    assert launch.stop_grace(300, "60") == 60
    with pytest.raises(ValueError, match="a stop signalled 300 s before the time limit leaves 180 s"):
        launch.stop_grace(300, "200")
    with pytest.raises(ValueError, match="signal earlier"):
        launch.stop_grace(120)


def checkpoint_while_waiting(job: launch.TrixmedJob, status: int) -> tuple[dict, int]:
    """Run `job.checkpoint` the way submitit does, from a signal handler that interrupts the same
    thread's `Popen.wait()` on a stand-in job.sh that stops a second after USR1 with `status`."""
    import signal
    import time

    job._proc = subprocess.Popen(["bash", "-c", f"trap 'sleep 1; kill $!; exit {status}' USR1; sleep 60 & wait"])
    time.sleep(0.5)
    outcome = {}

    def handler(signum, frame):
        t0 = time.monotonic()
        try:
            outcome["next"] = job.checkpoint()
        finally:
            outcome["seconds"] = time.monotonic() - t0

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.alarm(1)
        try:
            rc = job._proc.wait()   # as __call__ waits: no timeout, so the wait holds the Popen's lock
        except RuntimeError as exc:
            outcome["error"] = str(exc)
            rc = job._proc.wait()
    finally:
        signal.signal(signal.SIGALRM, previous)
    return outcome, rc


def test_checkpoint_sees_job_sh_exit_while_its_own_thread_waits():
    """It must see job.sh exit at once (not wait out its deadline), and leave the exit status to
    the interrupted wait."""
    job = launch.TrixmedJob("run", ["--config", "configs/demo_cpu.yaml"], {"TRIXMED_STOP_GRACE": "30"})
    outcome, rc = checkpoint_while_waiting(job, 143)
    assert outcome["seconds"] < 5 and rc == 143
    assert isinstance(outcome["next"].function, launch.TrixmedJob) and outcome["next"].function.env == job.env


def test_checkpoint_does_not_requeue_a_job_that_cannot_progress(tmp_path):
    job = launch.TrixmedJob("run", ["--config", "configs/demo_cpu.yaml"], {"TRIXMED_STOP_GRACE": "30"})
    job._log_dir = tmp_path
    (tmp_path / "job.log").write_text("3 attempts in a row saved no work (no new checkpoint, no finished stage): ...\n")
    outcome, rc = checkpoint_while_waiting(job, launch.CANNOT_PROGRESS)
    assert rc == launch.CANNOT_PROGRESS and "next" not in outcome and outcome["seconds"] < 5
    assert outcome["error"] == ("trixmed run exited with status 3; job.log ends:\n"
                                "3 attempts in a row saved no work (no new checkpoint, no finished stage): ...")
