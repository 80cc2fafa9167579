"""What running through SLURM costs: on the local 2-node SLURM (slurm/local-cluster.sh), the seconds
from `sbatch slurm/train.sbatch` to the first training step, and the share of the demo run's wall
time spent starting the cluster (the plan + the Ray head and worker) and stopping it.

    python benchmarks/slurm.py            # the demo main job (configs/demo_cpu.yaml), 2 nodes
    python benchmarks/slurm.py --smoke    # tiny model, one epoch per phase: the same measurements

The job's own timeline comes from slurm/job.sh (`timeline.jsonl` in the job's log directory:
job start, plan done, Ray up, trixmed start/end, Ray stopped); the first training step is the
first `step` event of rank 0's progress file, seen by polling it every 0.1 s. Needs root and
Debian's slurm-wlm (slurm/local-cluster.sh install); the cluster is started and stopped here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, add_output_args, machine, write_report

sys.path.insert(0, str(ROOT))   # launch/ is a folder of the checkout

from launch.local_slurm import LocalSlurm, unavailable_reason  # noqa: E402

CONFIG = "configs/demo_cpu.yaml"
# one CPU per node and per training worker: Ray places one worker on each emulated node
SPREAD = ["distributed.cpus_per_worker=1"]


def smoke_overrides() -> list[str]:
    from trixmed.testing import TINY_OVERRIDES

    return [*TINY_OVERRIDES, "warmup.epochs=1", "experts.epochs=1"]


def timeline(log_dir: Path) -> dict[str, float]:
    """The last attempt's events of slurm/job.sh: {event: unix time}."""
    events: dict[str, float] = {}
    for line in (log_dir / "timeline.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "job_start":
            events = {}
        events[e["event"]] = e["t"]
    return events


def measure(slurm: LocalSlurm, work: Path, overrides: list[str], timeout: float) -> dict[str, float]:
    run_dir, logs = work / "run", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)   # sbatch's --output folder must exist before the job starts
    env = {"PATH": f"{Path(sys.executable).parent}:{slurm.env['PATH']}", "TRIXMED_LOG_ROOT": str(logs)}
    progress = run_dir / "logs" / "warmup-progress.jsonl"
    t_submit = time.time()
    job_id = slurm.sbatch(["--nodes=2", "--cpus-per-task=1", f"--output={logs}/%x-%j.out", "slurm/train.sbatch",
                           "--config", CONFIG, *overrides, *SPREAD, f"run_dir={run_dir}"], env=env)
    t_first_step = None
    deadline = time.monotonic() + timeout
    while True:
        if t_first_step is None and progress.is_file() and '"kind": "step"' in progress.read_text():
            t_first_step = time.time()
        state = slurm.job(job_id).get("JobState")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} still {state} after {timeout:g} s")
        time.sleep(0.1)
    log_dir = logs / f"trixmed-train-{job_id}"
    if state != "COMPLETED" or t_first_step is None:
        # the work folder goes away with the cluster: show the job's own account now
        tail = [(log_dir / "job.log"), logs / f"trixmed-train-{job_id}.out"]
        text = "\n".join(f"--- {p}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:]) for p in tail if p.is_file())
        raise SystemExit(f"job {job_id} ended {state} (first step seen: {t_first_step is not None})\n{text}")
    t = timeline(log_dir)
    startup = t["ray_up"] - t["job_start"]
    shutdown = t["job_end"] - t["trixmed_end"]
    wall = t["job_end"] - t["job_start"]
    return {
        "sbatch_to_first_step_s": t_first_step - t_submit,
        "queue_s": t["job_start"] - t_submit,
        "plan_s": t["plan_done"] - t["job_start"],
        "ray_start_s": t["ray_up"] - t["plan_done"],
        "startup_s": startup,
        "trixmed_s": t["trixmed_end"] - t["trixmed_start"],
        "shutdown_s": shutdown,
        "job_wall_s": wall,
        "startup_share": startup / wall,
        "startup_and_shutdown_share": (startup + shutdown) / wall,
        "train_worker_ips": json.loads((log_dir / "placement.json").read_text())["train_worker_ips"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_output_args(parser, "slurm.json")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one job may take (default 900)")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"benchmarks/slurm.py: {reason}", file=sys.stderr)
        return 1
    overrides = smoke_overrides() if args.smoke else []
    with tempfile.TemporaryDirectory(prefix="trixmed-bench-slurm-") as tmp:
        work = Path(tmp)
        with LocalSlurm.start(work / "slurm", nodes=2) as slurm:
            result = measure(slurm, work, overrides, args.timeout)
    report = {
        "smoke": args.smoke,
        "config": CONFIG,
        "overrides": [*overrides, *SPREAD],
        "nodes": 2,
        "machine": machine(),
        "result": result,
        "note": "local SLURM: 2 emulated nodes on one host (loopback addresses 127.0.0.11/12); "
                "startup = job start to Ray cluster up (trixmed plan + Ray head + worker); shutdown = trixmed end to job end",
    }
    shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items()}
    write_report(args, report, shown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
