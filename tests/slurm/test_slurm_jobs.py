"""sbatch slurm/train.sbatch and slurm/tune.sbatch, and launch/ (submitit), on a real 2-node SLURM.

One module fixture submits the same tiny `trixmed run` twice at once on the same two nodes, once
with sbatch and once through submitit (launch/): the sbatch job is the reference every other test
compares metrics with, the submitit job must match it, and the pair is the collision test. The
requeue and tune tests start from a copy of the reference's finished early stages (dataset,
warm-up, features, clusters), so they spend their time on what they test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trixmed.run_dir import RunDir
from trixmed.testing import TINY_OVERRIDES

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
# The tiny demo job of every test: one CPU per node and per training worker, so Ray places one
# worker on each node; 5 expert epochs leave a window to signal the job in the middle of a phase.
JOB_ARGS = ["--config", "configs/demo_cpu.yaml", *TINY_OVERRIDES, "distributed.cpus_per_worker=1", "experts.epochs=5"]
NODE_IPS = ["127.0.0.11", "127.0.0.12"]
SBATCH = ["--nodes=2", "--cpus-per-task=1", "--time=20"]
# the nodes' fake GPUs (tests/slurm/conftest.py): SLURM allocates them, `trixmed plan` plans on them,
# and TRIXMED_FAKE_GPUS=1 makes the run it derives train on CPU
GPUS = 2
FAKE_GPUS = {"TRIXMED_FAKE_GPUS": "1"}


def job_env(logs: Path) -> dict[str, str]:
    """Beyond the cluster's environment: this venv's trixmed on PATH, the job logs in the test's folder."""
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "TRIXMED_LOG_ROOT": str(logs)}


def log_dir(logs: Path, name: str, job_id: str) -> Path:
    return logs / f"{name}-{job_id}"


def job_log(logs: Path, name: str, job_id: str) -> str:
    path = log_dir(logs, name, job_id) / "job.log"
    return path.read_text(errors="replace") if path.is_file() else f"<no {path}>"


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "eval" / "metrics.json").read_text())["metrics"]


def assert_same_metrics(got: Path, ref: Path) -> None:
    a, b = metrics(got), metrics(ref)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name]["point"] == pytest.approx(b[name]["point"], abs=1e-6), name


def submit_train(slurm, logs: Path, run_dir: Path, *extra: str) -> str:
    return slurm.sbatch([*SBATCH, f"--output={logs}/%x-%j.out", "slurm/train.sbatch", *JOB_ARGS, f"run_dir={run_dir}", *extra],
                        env=job_env(logs))


def seed_run_dir(src: Path, dst: Path, stages: tuple[str, ...]) -> None:
    """A run directory whose `stages` are the reference's, finished: `trixmed run` skips them."""
    s, d = RunDir(src), RunDir(dst)
    dst.mkdir(parents=True)
    for stage in stages:
        shutil.copytree(s.stage_dir(stage), d.stage_dir(stage))
    state = json.loads(s.run_file.read_text())
    state["stages"] = {k: v for k, v in state["stages"].items() if k in stages}
    d.run_file.write_text(json.dumps(state))


@pytest.fixture(scope="module")
def pair(slurm, job_logs, tmp_path_factory):
    """The same tiny `trixmed run`, submitted with sbatch ("sbatch") and through submitit ("submitit")
    at the same moment, on the same two nodes."""
    import launch

    root = tmp_path_factory.mktemp("pair")
    first = submit_train(slurm, job_logs, root / "sbatch")
    # submitit calls sbatch with this process's environment: the cluster's, plus trixmed's PATH
    saved = dict(os.environ)
    os.environ.update({"SLURM_CONF": slurm.env["SLURM_CONF"], **job_env(job_logs)})
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        os.environ.pop(key, None)
    try:
        sub = launch.submit("run", [*JOB_ARGS, f"run_dir={root / 'submitit'}"], nodes=2, cpus_per_task=1, time_min=20,
                            folder=root / "submitit-folder")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    jobs = {"sbatch": (first, root / "sbatch"), "submitit": (sub.job_id, root / "submitit")}
    for name, (job_id, _) in jobs.items():
        state = slurm.wait(job_id, timeout=600)
        assert state == "COMPLETED", f"{name} job {job_id} ended {state}:\n{job_log(job_logs, 'trixmed-train', job_id)[-4000:]}"
    out = {name: {"id": job_id, "run_dir": run_dir, "info": slurm.job(job_id),
                  "logs": log_dir(job_logs, "trixmed-train", job_id)} for name, (job_id, run_dir) in jobs.items()}
    out["submitit"]["job"] = sub
    out["submitit"]["folder"] = root / "submitit-folder"
    return out


def test_train_sbatch_spans_both_nodes_and_completes_with_metrics(pair):
    job = pair["sbatch"]
    logs = job["logs"]
    text = (logs / "job.log").read_text()
    # the plan ran first, then a 2-node Ray cluster, then the run
    assert text.index("world size 2 on CPU (gloo)") < text.index("Ray cluster up") < text.index("[warmup] running")
    assert "trixmed run exited with status 0" in text
    # both nodes' IPs took part: each node's Ray joined with its own address, and Ray Train placed
    # a training worker on each
    nodes = json.loads((logs / "nodes.json").read_text())["nodes"]
    assert sorted(n["ip"] for n in nodes) == NODE_IPS
    assert [json.loads((logs / f"ray-node-node{i}.json").read_text())["ip"] for i in (1, 2)] == NODE_IPS
    placement = json.loads((logs / "placement.json").read_text())
    assert placement["train_worker_ips"] == NODE_IPS
    # the nodes started with trixmed's Ray settings (the plan's `env` lines): no preemption watcher
    # (the job's signals stop trixmed) and, without --dashboard, no Train state actor
    assert "RayTrainWorker" in placement["actors"]
    assert not {"PreemptionWatcher", "TrainStateActor"} & set(placement["actors"])
    # Ray's own logs of each node were kept before the node-local temp dir went away
    for node in ("node1", "node2"):
        assert (logs / "ray" / node / "raylet.out").is_file()
        assert not Path(f"/tmp/trixmed-ray-{job['id']}-{node}").exists()
    m = metrics(job["run_dir"])
    assert 0 < m["jaccard"]["point"] <= 1 and 0 < m["f1"]["point"] <= 1
    history = json.loads((job["run_dir"] / "experts" / "history.json").read_text())
    assert history["world_size"] == 2 and len(history["epochs"]) == 5


def test_two_jobs_at_once_on_the_same_nodes_do_not_collide(pair):
    a, b = pair["sbatch"], pair["submitit"]
    assert a["info"]["NodeList"] == b["info"]["NodeList"] == "node[1-2]"

    def interval(job):
        fmt = "%Y-%m-%dT%H:%M:%S"
        return (time.mktime(time.strptime(job["info"]["StartTime"], fmt)), time.mktime(time.strptime(job["info"]["EndTime"], fmt)))

    (a0, a1), (b0, b1) = interval(a), interval(b)
    assert a0 < b1 and b0 < a1, "the two jobs did not run at the same time"

    def ports(job):
        node_files = [json.loads((job["logs"] / f"ray-node-node{i}.json").read_text()) for i in (1, 2)]
        head = re.search(r"Ray head \S+:(\d+) on node1 \(client port (\d+), dashboard port (\d+)\)",
                         (job["logs"] / "job.log").read_text())
        return {int(p) for p in head.groups()} | {n["agent_port"] for n in node_files}, {n["temp_dir"] for n in node_files}

    (ports_a, tmp_a), (ports_b, tmp_b) = ports(a), ports(b)
    assert len(ports_a) == len(ports_b) == 5 and not ports_a & ports_b
    assert not tmp_a & tmp_b
    for job in (a, b):
        assert json.loads((job["logs"] / "placement.json").read_text())["train_worker_ips"] == NODE_IPS
    # same config, same seed, each on its own cluster: the same model (checked in the submitit test)


# a signalled job's steps are slowed down, so that the signal lands in the middle of an epoch
SLOW_STEPS = "test_hooks.step_delay_s=0.4"


def json_lines(path: Path) -> list[dict]:
    """The complete lines of a JSON-lines file being appended to (none while it does not exist)."""
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    return [json.loads(line) for line in lines if line.endswith("\n")]


def signal_mid_epoch(slurm, logs: Path, name: str, job_id: str, run_dir: Path, send: list[str]) -> None:
    """Once the experts phase is past its first epoch and in the middle of one, run `send`."""
    deadline = time.monotonic() + 300
    while True:
        events = json_lines(RunDir(run_dir).progress("experts"))
        total = [e["total_steps"] for e in events if e["kind"] == "phase"]
        steps = [e["position"] for e in events if e["kind"] == "step"]
        if total and steps:
            per_epoch = total[-1] // 5
            if steps[-1] > per_epoch and 2 <= steps[-1] % per_epoch <= per_epoch - 3:
                break
        assert time.monotonic() < deadline, f"experts never got going:\n{job_log(logs, name, job_id)[-3000:]}"
        assert slurm.job(job_id)["JobState"] in ("PENDING", "RUNNING"), job_log(logs, name, job_id)[-3000:]
        time.sleep(0.1)
    slurm.run(*send)


def assert_resumed_at_the_step_it_stopped(text: str, run_dir: Path, ref: Path) -> None:
    """The first attempt stopped at a step inside an epoch with its checkpoint, the second resumed
    at that very step (nothing trained twice, nothing skipped), and the run ends as the reference."""
    assert "trixmed stopped at a step, with its checkpoint (status 75)" in text, text[-4000:]
    (stopped,) = [int(n) for n in re.findall(r"\[experts\] stop requested: stopped at step (\d+)", text)]
    (resumed,) = re.findall(r"\[experts\] resumed from its checkpoint at step (\d+) \(epoch \d+, step (\d+) of (\d+)\)", text)
    assert int(resumed[0]) == stopped and 0 < int(resumed[1]) < int(resumed[2]), (stopped, resumed)
    history = json.loads((run_dir / "experts" / "history.json").read_text())
    reference = json.loads((ref / "experts" / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3, 4, 5]
    for got, want in zip(history["epochs"], reference["epochs"], strict=True):
        assert got["step_losses"] == pytest.approx(want["step_losses"], abs=1e-6)
    assert_same_metrics(run_dir, ref)


@pytest.mark.parametrize("sig", ["USR1", "TERM"])
def test_signalled_job_stops_at_a_step_requeues_and_resumes_from_it(pair, slurm, job_logs, tmp_path, sig):
    """USR1: what `#SBATCH --signal=B:USR1@300` sends before the time limit; TERM: a preemption
    (sent to the batch shell, as `scancel --batch` and PreemptParameters=send_user_signal do)."""
    ref = pair["sbatch"]["run_dir"]
    run_dir = tmp_path / "run"
    seed_run_dir(ref, run_dir, ("prepare", "warmup", "extract", "stratify"))
    job_id = submit_train(slurm, job_logs, run_dir, SLOW_STEPS)
    signal_mid_epoch(slurm, job_logs, "trixmed-train", job_id, run_dir, ["scancel", "--batch", f"--signal={sig}", job_id])
    state = slurm.wait(job_id, timeout=420)
    text = job_log(job_logs, "trixmed-train", job_id)
    info = slurm.job(job_id)
    assert state == "COMPLETED" and info["Restarts"] == "1", f"{state}, restarts {info['Restarts']}:\n{text[-4000:]}"
    assert f"SIG{sig} received" in text and f"requeueing job {job_id}" in text and "attempt 2 on node1 node2" in text
    assert_resumed_at_the_step_it_stopped(text, run_dir, ref)


def test_a_job_that_saves_no_work_stops_requeueing_after_the_cap(pair, slurm, job_logs, tmp_path):
    """Signalled before it trains a step, attempt after attempt: the second such attempt in a row
    (TRIXMED_MAX_STALLED_ATTEMPTS=2) ends the job instead of requeueing it again."""
    run_dir = tmp_path / "run"
    seed_run_dir(pair["sbatch"]["run_dir"], run_dir, ("prepare", "warmup", "extract", "stratify"))
    job_id = slurm.sbatch([*SBATCH, f"--output={job_logs}/%x-%j.out", "slurm/train.sbatch", *JOB_ARGS, f"run_dir={run_dir}"],
                          env={**job_env(job_logs), "TRIXMED_MAX_STALLED_ATTEMPTS": "2"})
    timeline = log_dir(job_logs, "trixmed-train", job_id) / "timeline.jsonl"
    deadline = time.monotonic() + 300
    for attempt in (1, 2):
        # the plan is done (the signal handler is in place), Ray is starting: no training yet
        while ("plan_done", attempt) not in [(e["event"], e["attempt"]) for e in json_lines(timeline)]:
            assert time.monotonic() < deadline, job_log(job_logs, "trixmed-train", job_id)[-3000:]
            time.sleep(0.2)
        slurm.run("scancel", "--batch", "--signal=USR1", job_id)
    state = slurm.wait(job_id, timeout=300)
    text = job_log(job_logs, "trixmed-train", job_id)
    assert state == "FAILED" and slurm.job(job_id)["Restarts"] == "1", text[-4000:]
    assert ("2 attempts in a row saved no work (no new checkpoint, no finished stage): not requeueing again "
            "(TRIXMED_MAX_STALLED_ATTEMPTS=2)") in text
    assert text.count(f"requeueing job {job_id}") == 1


def test_submitit_runs_the_same_job(pair):
    job, sub = pair["submitit"], pair["submitit"]["job"]
    result = sub.results()[0]
    assert result == {"command": "run", "returncode": 0, "log_dir": str(job["logs"]), "run_dir": str(job["run_dir"])}
    # the template's resources, in submitit's own sbatch script
    script = (job["folder"] / job["id"] / f"{job['id']}_submission.sh").read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --requeue", "#SBATCH --signal=USR2@300",
                 "#SBATCH --job-name=trixmed-train"):
        assert line in script
    # job.sh ran on the first node: plan, a 2-node Ray cluster, trixmed, shutdown
    text = (job["logs"] / "job.log").read_text()
    assert "world size 2 on CPU (gloo)" in text and "trixmed run exited with status 0" in text
    assert json.loads((job["logs"] / "placement.json").read_text())["train_worker_ips"] == NODE_IPS
    assert_same_metrics(job["run_dir"], pair["sbatch"]["run_dir"])


def test_submitit_job_preempted_mid_epoch_requeues_and_resumes_from_its_step(pair, slurm, job_logs, tmp_path):
    """submitit's own preemption signal (USR2 to every step, as `#SBATCH --signal=USR2@300` or
    `job._interrupt()` sends it): TrixmedJob.checkpoint stops job.sh at a step and submitit requeues."""
    import launch

    ref = pair["sbatch"]["run_dir"]
    run_dir = tmp_path / "run"
    seed_run_dir(ref, run_dir, ("prepare", "warmup", "extract", "stratify"))
    saved = dict(os.environ)
    os.environ.update({"SLURM_CONF": slurm.env["SLURM_CONF"], **job_env(job_logs)})
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        os.environ.pop(key, None)
    try:
        sub = launch.submit("run", [*JOB_ARGS, f"run_dir={run_dir}", SLOW_STEPS], nodes=2, cpus_per_task=1, time_min=20,
                            folder=tmp_path / "submitit-folder", max_requeues=1)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    signal_mid_epoch(slurm, job_logs, "trixmed-train", sub.job_id, run_dir, ["scancel", sub.job_id, "--signal", "USR2"])
    state = slurm.wait(sub.job_id, timeout=420)
    text = job_log(job_logs, "trixmed-train", sub.job_id)
    info = slurm.job(sub.job_id)
    assert state == "COMPLETED" and info["Restarts"] == "1", f"{state}, restarts {info['Restarts']}:\n{text[-4000:]}"
    assert "SIGUSR1 received" in text and "requeueing job" not in text   # submitit requeued it
    submitit_log = "".join(p.read_text() for p in (tmp_path / "submitit-folder" / sub.job_id).glob("*_0_log.*"))
    assert "this job is preempted" in submitit_log and "Requeued job" in submitit_log
    assert sub.results()[0]["returncode"] == 0
    assert_resumed_at_the_step_it_stopped(text, run_dir, ref)


def test_tune_sbatch_runs_the_2x2_sweep(pair, slurm, job_logs, tmp_path):
    run_dir = tmp_path / "run"
    seed_run_dir(pair["sbatch"]["run_dir"], run_dir, ("prepare", "warmup", "extract"))
    # two CPUs per node, half a CPU per training worker: two trials train at once; two expert
    # epochs give ASHA one rung (none of these keys changes the shared warm-up)
    # on the nodes' fake GPUs: planned as the trials run (2 workers each, 2 at once on 2 × 2 GPUs)
    job_id = slurm.sbatch(["--nodes=2", "--cpus-per-task=2", f"--gpus-per-node={GPUS}", "--time=20",
                           f"--output={job_logs}/%x-%j.out", "slurm/tune.sbatch", "tune_spaces/demo_2x2.yaml", *JOB_ARGS,
                           f"run_dir={run_dir}", "experts.epochs=2", "distributed.cpus_per_worker=0.5",
                           "tune.max_concurrent_trials=2"],
                          env={**job_env(job_logs), **FAKE_GPUS})
    state = slurm.wait(job_id, timeout=600)
    text = job_log(job_logs, "trixmed-tune", job_id)
    assert state == "COMPLETED", text[-4000:]
    assert ("configs/demo_cpu.yaml on 2 node(s) × 2 GPUs: world size 2, ZeRO stage 2, fp32; tune: 2 trial(s) at a time, "
            "each with this world size (4 workers in all)") in text
    assert "derived overrides: distributed.use_gpu=false plan.gpus_per_node=2\n" in text
    assert "trixmed tune exited with status 0" in text
    summary = json.loads((run_dir / "tune" / "demo_2x2" / "summary.json").read_text())
    assert len(summary["trials"]) == 4
    nodes = json.loads((log_dir(job_logs, "trixmed-tune", job_id) / "nodes.json").read_text())["nodes"]
    assert sorted(n["ip"] for n in nodes) == NODE_IPS


def test_plan_refusal_stops_the_job_before_ray_starts(slurm, job_logs, tmp_path):
    job_id = submit_train(slurm, job_logs, tmp_path / "run", "distributed.num_workers=3")
    state = slurm.wait(job_id, timeout=120)
    text = job_log(job_logs, "trixmed-train", job_id)
    assert state == "FAILED", text
    assert ("trixmed plan: error: configs/demo_cpu.yaml: warmup.effective_batch_size: 8 is not a multiple of "
            "micro_batch_size × workers = 4 × 3; smallest that fits: distributed.num_workers=1") in text
    assert "trixmed plan refused this job's shape: not starting Ray" in text and "Ray head" not in text
    assert not (tmp_path / "run").exists()


def test_local_cluster_script_status_lists_both_nodes(slurm):
    out = subprocess.run(["bash", "slurm/local-cluster.sh", "status"], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "SLURM_LOCAL_DIR": str(slurm.state_dir)}, timeout=30)
    assert out.returncode == 0, out.stderr
    assert re.search(r"node1\s+1\s+debug\*\s+\w+", out.stdout) and re.search(r"node2\s+1\s+debug\*\s+\w+", out.stdout)


def test_a_tune_job_whose_trials_do_not_fit_the_gpus_is_refused(slurm, job_logs, tmp_path):
    job_id = slurm.sbatch(["--nodes=2", "--cpus-per-task=2", f"--gpus-per-node={GPUS}", "--time=20",
                           f"--output={job_logs}/%x-%j.out", "slurm/tune.sbatch", "tune_spaces/demo_2x2.yaml", *JOB_ARGS,
                           f"run_dir={tmp_path / 'run'}", "tune.max_concurrent_trials=3"],
                          env={**job_env(job_logs), **FAKE_GPUS})
    state = slurm.wait(job_id, timeout=120)
    text = job_log(job_logs, "trixmed-tune", job_id)
    assert state == "FAILED", text
    assert ("trixmed plan: error: configs/demo_cpu.yaml: tune.max_concurrent_trials: 3 trials at a time × 2 workers "
            "(distributed.num_workers) = 6 workers of 1 GPU + 1 CPU each; 2 node(s) × 2 GPUs + 2 CPUs hold 4; "
            "smallest shape that fits: --nodes 3 --gpus-per-node 2") in text
    assert "Ray head" not in text


def test_a_job_asking_more_cpus_than_it_was_given_is_refused_within_2_min(slurm, job_logs, tmp_path):
    t0 = time.monotonic()
    job_id = submit_train(slurm, job_logs, tmp_path / "run", "distributed.cpus_per_worker=2")
    state = slurm.wait(job_id, timeout=120)
    text = job_log(job_logs, "trixmed-train", job_id)
    assert state == "FAILED" and time.monotonic() - t0 < 120, text
    assert ("trixmed plan: error: configs/demo_cpu.yaml: distributed.cpus_per_worker: 1 workers per node × 2 CPUs = 2 CPUs, "
            "but a node has 1; fix: sbatch --cpus-per-task=2, or distributed.cpus_per_worker=1") in text
    assert "trixmed plan refused this job's shape: not starting Ray" in text and "Ray head" not in text


def test_readme_flagship_command_on_fake_gpus_plans_and_trains_one_worker_per_gpu(slurm, job_logs, tmp_path):
    """`sbatch --nodes=2 --gpus-per-node=8 slurm/train.sbatch --config …`, scaled to 2 × 2 fake GPUs,
    with the dashboard: one worker per GPU (derived by the plan), each Ray node given its step's GPUs."""
    run_dir = tmp_path / "run"
    # the tiny model without its worker count (the shape's): 4 workers split a batch of 8 in 2s; a
    # whole CPU each fills both nodes' 2 CPUs, so Ray places two on each as GPUs would (CPU-only
    # workers of half a CPU would all be packed on one node)
    tiny = [o for o in JOB_ARGS if not o.startswith("distributed.num_workers=")]
    # through the container hook, as under apptainer: a runtime that records each call, then runs it
    runtime = tmp_path / "runtime"
    runtime.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "container-calls"}\nshift\nexec "$@"\n')
    runtime.chmod(0o755)
    job_id = slurm.sbatch(["--nodes=2", f"--gpus-per-node={GPUS}", "--cpus-per-task=2", "--time=20",
                           f"--output={job_logs}/%x-%j.out", "slurm/train.sbatch", "--dashboard", *tiny, f"run_dir={run_dir}",
                           "warmup.micro_batch_size=2", "experts.micro_batch_size=2", "experts.epochs=2"],
                          env={**job_env(job_logs), **FAKE_GPUS, "TRIXMED_CONTAINER": f"{runtime} --image=trixmed.sif"})
    state = slurm.wait(job_id, timeout=600)
    logs = log_dir(job_logs, "trixmed-train", job_id)
    text = job_log(job_logs, "trixmed-train", job_id)
    assert state == "COMPLETED", text[-4000:]
    assert re.search(rf"allocation \(SLURM job {job_id}\): 2 node\(s\), 2 CPUs, 2 fake GPUs \(TRIXMED_FAKE_GPUS=1: planned as "
                     r"80 GiB GPUs, trained on CPU\), [\d.]+ GiB memory per node", text)
    assert "configs/demo_cpu.yaml on 2 node(s) × 2 GPUs: world size 4, ZeRO stage 2, fp32" in text
    assert "  training 2 × (1 GPU + 1 CPU) = 2 GPU + 2 CPU of 2 CPUs" in text
    assert "derived overrides: distributed.use_gpu=false plan.gpus_per_node=2 distributed.num_workers=4" in text
    # every Ray node was started with its own step's GPUs (CUDA_VISIBLE_DEVICES of the srun step)
    assert [json.loads((logs / f"ray-node-node{i}.json").read_text())["gpus"] for i in (1, 2)] == [GPUS, GPUS]
    assert [n["gpus"] for n in json.loads((logs / "nodes.json").read_text())["nodes"]] == [GPUS, GPUS]
    placement = json.loads((logs / "placement.json").read_text())
    assert placement["train_worker_ips"] == NODE_IPS
    assert "TrainStateActor" in placement["actors"]   # --dashboard: the Train view has its runs
    assert json.loads((run_dir / "experts" / "history.json").read_text())["world_size"] == 4
    # the plan, both Ray nodes and the driver ran in the container
    calls = (tmp_path / "container-calls").read_text().splitlines()
    assert all(c.startswith("--image=trixmed.sif ") for c in calls)
    assert sum(" plan --slurm " in c for c in calls) == 1
    assert sorted(c.split()[-2] for c in calls if "ray-node.sh" in c) == ["head", "worker"]
    assert sum(c.split()[1:3] == ["trixmed", "run"] for c in calls) == 1
    # the dashboard: where it is, how to reach it, and the job's token (its owner's only)
    head = re.search(r"Ray head \S+ on node1 \(client port \d+, dashboard port (\d+)\)", text)
    url = f"http://127.0.0.11:{head.group(1)}"
    info = (logs / "dashboard.txt").read_text().splitlines()
    token = logs / "dashboard-token"
    assert info[:2] == [f"url: {url}", "head node: node1 (127.0.0.11)"]
    # forwarded through the host the job was submitted from
    assert re.fullmatch(rf"from your machine: ssh -N -L 8265:127\.0\.0\.11:{head.group(1)} \S+@{re.escape(socket.gethostname())}"
                        r"   then open http://localhost:8265", info[2])
    assert info[3] == f"token: {token} (mode 0600): paste it when the dashboard asks for a token"
    assert token.stat().st_mode & 0o777 == 0o600 and re.fullmatch(r"[0-9a-f]{64}\n", token.read_text())
    assert f"Ray dashboard url: {url}" in text and f"Ray dashboard: {url}" in text


def test_local_cluster_nodes_have_fake_gpus(slurm):
    assert slurm.run("sinfo", "-h", "-N", "-o", "%N %G").split("\n")[:2] == ["node1 gpu:2", "node2 gpu:2"]
