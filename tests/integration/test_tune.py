"""`trixmed tune` end to end on the bundled demo with a tiny model and real Ray Tune / Ray Train /
DeepSpeed: a 2×2 sweep under ASHA, its trials training one after another on the sweep's one worker
group, writes the summary, the report and a best config that `trixmed run --dry-run` accepts, its
best trial the one the evaluate stage ranks first on validation; a
rank lost in a trial breaks only that trial and its worker group; a failing trial leaves the other
complete while, with `tune.trainer=ray_train`, the trials' Ray Train runs show in the dashboard; an
interrupted sweep resumes without re-running its finished trials, and its unfinished trial from the
checkpoint of its last epoch, under either trainer."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from browser import check_page

from trixmed.cli import main
from trixmed.config import load_config
from trixmed.data.dataset import Dataset
from trixmed.eval.evaluate import evaluate_predictions
from trixmed.pipeline.stages import run_pipeline, run_stage
from trixmed.run_dir import ExperimentDir, RunDir
from trixmed.testing import TINY_OVERRIDES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]
DEMO = [str(REPO / "configs" / "demo_cpu.yaml")]
# three epochs, so that ASHA's rungs (1, 2) come before the end of training
TINY = [*TINY_OVERRIDES, "experts.epochs=3"]
TRIXMED = str(Path(sys.executable).parent / "trixmed")


@pytest.fixture(scope="module")
def base(ray_session, tmp_path_factory) -> Path:
    """The demo prepared, warmed up and its features extracted once: every sweep here shares them."""
    root = tmp_path_factory.mktemp("tune-run")
    run_pipeline(load_config(DEMO[0], [*TINY, f"run_dir={root}"]), stages=["prepare", "warmup", "extract"])
    return root


def _args(root: Path, *extra: str) -> list[str]:
    return ["--config", *DEMO, *TINY, f"run_dir={root}", *extra]


def _space(tmp_path: Path, name: str, grid: dict[str, list]) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "grid": grid}))   # JSON is YAML
    return path


def test_demo_2x2_sweep_gives_summary_report_and_a_runnable_best_config(base, tmp_path, capfd):
    # α chosen on validation too: the trials are scored by the whole decision rule
    assert main(["tune", str(REPO / "tune_spaces" / "demo_2x2.yaml"), *_args(base, "eval.ddi_alpha=null")]) == 0
    out = capfd.readouterr().out
    exp = RunDir(base).experiment("demo_2x2")
    summary = json.loads(exp.summary.read_text())
    trials = summary["trials"]

    params = sorted((t["params"]["stratify.num_clusters"], t["params"]["model.moe.top_n"]) for t in trials)
    assert params == [(2, 1), (2, 2), (4, 1), (4, 2)]
    assert all(t["params"]["model.moe.num_experts"] == t["params"]["stratify.num_clusters"] for t in trials)
    assert {t["status"] for t in trials} <= {"completed", "stopped"} and trials[0]["status"] == "completed"
    # the best is chosen among completed trials on validation scores, and nothing scored test
    completed = [t for t in trials if t["status"] == "completed"]
    assert summary["best"]["trial_id"] == max(completed, key=lambda t: t["scores"]["jaccard"])["trial_id"]
    assert summary["selected_on"] == "val" and not [k for k in summary if "test" in k]
    assert all(set(t["scores"]) == {"jaccard", "f1", "prauc", "ddi_rate", "avg_drugs", "threshold", "ddi_alpha"}
               for t in completed)
    for t in trials:
        rd = RunDir(t["run_dir"])
        assert not rd.eval.exists(), "a sweep never evaluates test"
        assert t["epochs_run"] == len(t["curve"]) >= 1
        assert (t["scores"] is not None) == (t["status"] == "completed") == rd.model("experts").is_dir()
        steps = {"stratify_s", "experts_s", "total_s", "started_at", "ended_at"} | ({"scoring_s"} if t["scores"] else set())
        assert set(t["timings"]) == steps and t["timings"]["experts_s"] < t["timings"]["total_s"]
    # each trial's scores are what the evaluate stage makes of its validation predictions, so the
    # best trial is the one evaluate ranks first (evaluated here, after the sweep, for the check only)
    val_jaccard = {}
    for t in completed:
        cfg = load_config(DEMO[0], [*TINY, f"run_dir={t['run_dir']}", "eval.ddi_alpha=null",
                                    *[f"{k}={v}" for k, v in t["params"].items()]])
        run_stage(cfg, "evaluate")
        rd = RunDir(t["run_dir"])
        scored = evaluate_predictions(Dataset(rd.dataset), rd.predictions("val"), "val", cfg.eval)
        val_jaccard[t["trial_id"]] = scored["metrics"]["jaccard"]["point"]
        assert t["scores"]["jaccard"] == pytest.approx(val_jaccard[t["trial_id"]], abs=1e-9)
    assert summary["best"]["trial_id"] == max(val_jaccard, key=val_jaccard.get)
    # one clustering per K, shared by the trials that use it
    assert len(list((exp.root / "shared").iterdir())) == 2 + 2   # two run dirs and their lock files
    # one worker group, started once and lent to every trial in turn
    costs = summary["sweep_costs"]
    assert costs["trainer"] == "workers" and len(costs["worker_group_starts_s"]) == 1
    for t in trials:
        log = (RunDir(t["run_dir"]).logs / "trial.log").read_text()
        assert "on the sweep's worker group 0 (2 ranks)" in log, log[-2000:]

    # the console: one line per trial start and end and the outcome, none of Tune's tables or Ray's chatter
    assert sum("[tune] trial" in line and "started" in line for line in out.splitlines()) == 4
    assert "[tune] best on validation: " in out and f"[tune] best config: {exp.best_config}" in out
    for noise in ("Trial status", "View detailed results", "(raylet)", "ImplicitFunc", "Traceback"):
        assert noise not in out

    # the best config runs as it is
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["run", "--config", str(exp.best_config), "--dry-run"]) == 0
    best = load_config(exp.best_config)
    assert best.run_dir == str(base) and best.stratify.num_clusters == summary["best"]["params"]["stratify.num_clusters"]

    # the report renders in a real browser
    check_page(exp.report_html, tmp_path / "sweep.png", figures=len(list(exp.report_figures.glob("*.png"))))


_DASHBOARD = textwrap.dedent("""
    import json, sys, urllib.request
    from pathlib import Path
    from trixmed.config import load_config
    from trixmed.train.ray_session import dashboard_url, ray_session
    from trixmed.tune.space import load_space
    from trixmed.tune.sweep import run_sweep

    root, space, config, *overrides = sys.argv[1:]
    cfg = load_config(config, [*overrides, f"run_dir={root}"])

    def get(path):
        request = urllib.request.Request(dashboard_url() + path)
        token = Path.home() / ".ray" / "auth_token"
        if token.is_file():
            request.add_header("Authorization", "Bearer " + token.read_text().strip())
        return json.loads(urllib.request.urlopen(request, timeout=60).read().decode())

    with ray_session(cfg, dashboard=True):
        result = run_sweep(cfg, load_space(space))
        runs = [r["name"] for r in get("/api/train/v2/runs/v1")["train_runs"]]
        actors = [a["class_name"] for a in get("/api/v0/actors?limit=1000")["data"]["result"]["result"]]
    print("DASHBOARD " + json.dumps({"runs": runs, "actors": actors}))
""")


def test_a_failing_trial_leaves_the_other_complete_and_trials_show_in_the_dashboard(base, tmp_path):
    space = _space(tmp_path, "one_fails", {"stratify.num_clusters": [2], "model.moe.top_n": [1],
                                           "test_hooks.fail_trial": [False, True]})
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    proc = subprocess.run([sys.executable, "-c", _DASHBOARD, str(base), str(space), *DEMO, *TINY, "tune.trainer=ray_train"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("DASHBOARD "))[10:])
    summary = json.loads(RunDir(base).experiment("one_fails").summary.read_text())
    by_status = {t["status"]: t for t in summary["trials"]}
    assert sorted(by_status) == ["completed", "error"]
    assert by_status["error"]["params"]["test_hooks.fail_trial"] is True
    assert by_status["error"]["error"].startswith("RuntimeError: test_hooks.fail_trial is set: trial ")
    assert by_status["completed"]["scores"]["jaccard"] > 0 and summary["best"]["trial_id"] == by_status["completed"]["trial_id"]
    # the dashboard: the trials are actors (Tune reuses one process for both), and the completed
    # trial's Ray Train run is named after it
    assert "ImplicitFunc" in seen["actors"], seen["actors"]
    # a trial's Ray Train runs keep the cleaner that frees a dead controller's placement group: the
    # sweep's driver lives on to the next trial (ray_fit._trainer_class)
    assert "PlacementGroupCleaner" in seen["actors"] and "DatasetManager" not in seen["actors"], seen["actors"]
    assert any(r.startswith(f"trial_{by_status['completed']['trial_id']}-experts-") for r in seen["runs"]), seen["runs"]


def test_a_rank_lost_in_a_trial_breaks_only_that_trial_and_its_worker_group(base, tmp_path):
    # the first trial's last rank exits at step 1 while the other may wait for it in a collective
    space = _space(tmp_path, "lost_rank", {"stratify.num_clusters": [2], "test_hooks.fail_at_step": [1, -1]})
    assert main(["tune", str(space), *_args(base, "tune.scheduler=fifo")]) == 0
    summary = json.loads(RunDir(base).experiment("lost_rank").summary.read_text())
    by_status = {t["status"]: t for t in summary["trials"]}
    assert sorted(by_status) == ["completed", "error"]
    assert by_status["error"]["params"]["test_hooks.fail_at_step"] == 1
    assert by_status["error"]["error"].startswith("RuntimeError: training rank 1 of the worker group died during epoch"), \
        by_status["error"]["error"]
    assert by_status["completed"]["scores"]["jaccard"] > 0
    # the broken group was ended, and the next trial trained on a new one
    assert len(summary["sweep_costs"]["worker_group_starts_s"]) == 2


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(base, tmp_path):
    space = _space(tmp_path, "resume_3", {"stratify.num_clusters": [2, 3, 4]})
    command = [TRIXMED, "tune", str(space), *_args(base, "tune.scheduler=fifo")]
    exp = RunDir(base).experiment("resume_3")
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    # interrupt once Tune has recorded a trial as finished: the driver's line "... (1/3)"
    seen, deadline = [], time.monotonic() + 400
    while not any(line.rstrip().endswith("(1/3)") for line in seen):
        assert time.monotonic() < deadline, "no trial finished:\n" + "".join(seen)
        ready, _, _ = select.select([first.stdout], [], [], 1.0)
        if ready:
            line = first.stdout.readline()
            assert line or first.poll() is None, "trixmed tune ended early:\n" + "".join(seen)
            seen.append(line)
    first.send_signal(signal.SIGINT)
    out = "".join(seen) + first.communicate(timeout=300)[0]
    assert first.returncode == 130, out[-3000:]
    assert "[tune] interrupted: " in out and not exp.summary.exists()
    # finished = reported complete on the console (a trial interrupted after writing its scores is not)
    done = re.findall(r"^\[tune\] trial (\S+) val jaccard .*\(\d/3\)$", out, flags=re.M)
    finished = {f"trial_{i}": ((exp.root / f"trial_{i}/run/val_scores.json").stat().st_mtime_ns,
                               (exp.root / f"trial_{i}/result.json").read_text()) for i in done}
    assert 1 <= len(finished) < 3

    second = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary = json.loads(exp.summary.read_text())
    assert sorted(t["params"]["stratify.num_clusters"] for t in summary["trials"]) == [2, 3, 4]
    assert all(t["status"] == "completed" for t in summary["trials"])
    for name, (mtime, results) in finished.items():
        scores = ExperimentDir.trial_run(exp.root / name).root / "val_scores.json"
        assert scores.stat().st_mtime_ns == mtime and (exp.root / name / "result.json").read_text() == results, \
            f"{name} ran again"
    # only the unfinished trials started in the second run
    assert second.stdout.count("started: ") == 3 - len(finished)


def _rows(trial_dir: Path) -> list[dict]:
    """The epochs a trial has reported to Tune (result.json; the scoring report has no train loss)."""
    path = trial_dir / "result.json"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [row for row in map(json.loads, lines) if "train_loss" in row]


# the slow trial's step: its epochs after the first must outlast the test's reaction to that epoch's
# report (with 0.5 s a sweep on 2 cores twice finished before its SIGINT)
SLOW_STEP_S = 1.5


@pytest.mark.parametrize("trainer", ["workers", "ray_train"])
def test_a_restored_trial_resumes_from_its_last_epoch(base, tmp_path, trainer):
    # The same trial twice (test hooks are in no stage's hash): one straight through, then one with
    # slow steps, interrupted with the sweep once Tune has its first epoch (reported after the
    # epoch's checkpoint is saved; the next takes seconds, and may be saved before the sweep ends).
    name = f"resume_epoch_{trainer}"
    space = _space(tmp_path, name, {"stratify.num_clusters": [2], "test_hooks.step_delay_s": [0.0, SLOW_STEP_S]})
    command = [TRIXMED, "tune", str(space), *_args(base, "tune.scheduler=fifo", f"tune.trainer={trainer}")]
    exp = RunDir(base).experiment(name)
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 400
    while True:
        slow = [d for d in exp.root.glob("trial_*") if (d / "params.json").is_file()
                and json.loads((d / "params.json").read_text())["test_hooks.step_delay_s"] == SLOW_STEP_S]
        if slow and _rows(slow[0]):
            break
        assert first.poll() is None, "trixmed tune ended early:\n" + first.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the slow trial reported no epoch"
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)
    out = first.communicate(timeout=300)[0]
    assert first.returncode == 130, out[-3000:]
    before = _rows(slow[0])

    second = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary = json.loads(exp.summary.read_text())
    by_delay = {t["params"]["test_hooks.step_delay_s"]: t for t in summary["trials"]}
    assert [t["status"] for t in by_delay.values()] == ["completed", "completed"]
    resumed, straight = (RunDir(by_delay[d]["run_dir"]) for d in (SLOW_STEP_S, 0.0))
    events = [json.loads(line) for line in resumed.progress("experts").read_text().splitlines()]
    said = [e["text"] for e in events if e["kind"] == "message" and "resumed" in e["text"]]
    assert len(said) == 1, said
    k = int(re.fullmatch(r"\[experts\] resumed from its checkpoint after epoch (\d) \(step \d+\)", said[0]).group(1))
    # the group may finish the epochs it was in while the sweep shuts down: resumed after its last
    # one, it trains nothing and exports; either way no epoch is trained twice (below)
    assert before[-1]["epoch"] <= k <= 3
    # every epoch trained once, across the two attempts: those Tune had from the first are its records
    trained = [int(re.search(r"epoch (\d+)/", e["text"]).group(1)) for e in events if e["kind"] == "epoch"]
    assert trained == [1, 2, 3]
    history = json.loads(resumed.history("experts").read_text())
    for row in before:
        record = history["epochs"][row["epoch"] - 1]
        assert {key: record[key] for key in ("train_loss", "train_s", "val_jaccard")} == \
               {key: row[key] for key in ("train_loss", "train_s", "val_jaccard")}
    # Tune's record of the restored trial starts over: the epochs before its checkpoint are reported again
    assert [c["epoch"] for c in by_delay[SLOW_STEP_S]["curve"]] == [1, 2, 3]
    assert by_delay[SLOW_STEP_S]["train_s"] == pytest.approx(sum(e["train_s"] + e["val_s"] for e in history["epochs"]), abs=0.01)
    # and the whole run is the uninterrupted one's
    reference = json.loads(straight.history("experts").read_text())
    for key in ("step_losses", "val_jaccard"):
        np.testing.assert_allclose([e[key] for e in history["epochs"]], [e[key] for e in reference["epochs"]], atol=1e-6)
    assert by_delay[SLOW_STEP_S]["scores"]["jaccard"] == pytest.approx(by_delay[0.0]["scores"]["jaccard"], abs=1e-6)
    if trainer == "workers":   # a worker group's checkpoints go once the phase is exported
        assert not list(resumed.ray_storage.glob("*/checkpoint-*"))
