"""Ray Tune sweeps: the paper's 12-point grid (clusters K × top-n) through `trixmed tune`.

    python benchmarks/tune.py                  # the bundled demo → benchmarks/results/tune.json (+ .md)
    python benchmarks/tune.py --mimic          # mimic3_safedrug131, codes backbone → tune_mimic3.json, heatmap PNG
    python benchmarks/tune.py --smoke [--out F]   # demo_2x2 with one training epoch, temp dirs

Measures, in one run on this machine: the sweep's wall time and trials per minute, and where a
trial's time goes. A trial's own training time is the time its training ranks spend in training
and validation epochs (history.json: train_s + val_s); everything else the sweep spends is
overhead, split in two:

- once per sweep: the clusterings (one per K, before the trials), Ray Tune starting and the first
  trial's process, the worker group's start (`tune.trainer: workers`), the first trial's start-up
  beyond a later trial's (fresh processes importing the stage, trainer and scoring code, DeepSpeed's
  first engine), Tune's wrap-up after the last trial;
- per trial: Tune's gap between trials, linking the clusters, setting up the trainer (data, model,
  DeepSpeed engine), per-epoch reports (and checkpoints under `ray_train`, whose Ray Train and
  DeepSpeed start-up is per trial), the export and the validation scoring.

`overhead_share` = (sweep wall time − Σ own training time) ÷ Σ own training time;
`per_trial_overhead_share` = Σ per-trial overhead ÷ Σ own training time (the issue's target).
Compare the trainers side by side with `tune.trainer=ray_train` as an override.

With `--mimic` it also records the best K × top-n on validation and copies the sweep report's
heatmap to benchmarks/results/. The warm-up and features are computed once (or reused with
`--run-dir` from an earlier run of the same config); the sweep wall time excludes them and the
total includes them. MIMIC data are credentialed-derived and read in place from ../shared/data.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT as REPO
from _common import add_output_args, machine, output_path, write_report

SPACE = REPO / "tune_spaces" / "paper_grid.yaml"
DEMO = REPO / "configs" / "demo_cpu.yaml"
MIMIC = REPO / "configs" / "mimic3_codes.yaml"
SMOKE_SPACE = REPO / "tune_spaces" / "demo_2x2.yaml"
SMOKE_OVERRIDES = ["warmup.epochs=1", "experts.epochs=1"]
TARGETS = {"overhead_share_max": 0.30, "mimic_wall_min_max": 25.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_args(parser, "tune.json")
    parser.add_argument("--mimic", action="store_true", help="mimic3_safedrug131 with configs/mimic3_codes.yaml")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="run directory whose warm-up and features to reuse (default: a fresh temp dir)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    if args.mimic and args.smoke:
        parser.error("--smoke runs the demo; drop --mimic")
    if args.mimic and args.out is None:
        args.out = REPO / "benchmarks" / "results" / "tune_mimic3.json"

    from trixmed.config import load_config
    from trixmed.console import Console
    from trixmed.report.sweep_report import build_sweep_report
    from trixmed.run_dir import RunDir
    from trixmed.train.ray_session import ray_session
    from trixmed.tune.space import load_space
    from trixmed.tune.sweep import run_sweep

    config = MIMIC if args.mimic else DEMO
    space_path = SMOKE_SPACE if args.smoke else SPACE
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="trixmed-bench-tune-"))
    overrides = [*(SMOKE_OVERRIDES if args.smoke else []), *args.overrides, f"run_dir={run_dir}"]
    cfg = load_config(config, overrides)
    if args.mimic and not Path(cfg.data.path or "").exists():
        print(f"skipped: {cfg.data.path} is absent (the MIMIC benchmarks are read in place from ../shared/data)")
        return 0
    space = load_space(space_path)
    console = Console()
    t0 = time.perf_counter()
    with ray_session(cfg):
        result = run_sweep(cfg, space, force=True, console=console)
    total = time.perf_counter() - t0
    if result.summary is None:
        print("the sweep was interrupted; no results", file=sys.stderr)
        return 1
    exp = result.experiment
    written = build_sweep_report(exp, console)
    summary = result.summary
    shared = {name: entry["wall_s"] for name, entry in RunDir(cfg.run_dir).state()["stages"].items()
              if name in ("prepare", "warmup", "extract")}

    trials = []
    for t in summary["trials"]:
        clock = t["timings"]
        trials.append({"params": t["params"], "status": t["status"], "epochs_run": t["epochs_run"],
                       "own_training_s": t["train_s"], **clock,
                       "val_jaccard": t["scores"]["jaccard"] if t["scores"] else None})
    n = len(trials)
    sweep_wall = summary["wall_s"]
    own_total = sum(t["own_training_s"] for t in trials)
    overhead = (sweep_wall - own_total) / own_total if own_total else None
    costs = summary["sweep_costs"]
    by_start = sorted(trials, key=lambda t: t["started_at"])
    group_starts = sum(costs["worker_group_starts_s"])
    first_excess = _first_trial_excess(by_start, group_starts)   # (training, scoring)
    once = {
        "clusterings": costs["clusterings_s"],
        "tune_start_and_first_trial_process": round(by_start[0]["started_at"] - costs["trials_started_at"], 3),
        "worker_group_starts": round(group_starts, 3),
        "first_trial_start_up": round(sum(first_excess), 3),
        "tune_wrap_up": round(costs["trials_ended_at"] - max(t["ended_at"] for t in trials), 3),
    }
    per_trial_total = sweep_wall - own_total - sum(once.values())

    def mean(key: str) -> float:
        return round(sum(t.get(key, 0.0) for t in trials) / n, 2)

    report = {
        "benchmark": "tune", "smoke": args.smoke, "machine": machine(),
        "dataset": "mimic3_safedrug131" if args.mimic else "mimic3_demo (bundled)",
        "config": str(config.relative_to(REPO)), "overrides": overrides[:-1], "space": str(space_path.relative_to(REPO)),
        "scheduler": summary["scheduler"],
        "command": "python benchmarks/tune.py" + (" --mimic" if args.mimic else "") + (" --smoke" if args.smoke else ""),
        "trials": n,
        "statuses": {s: sum(t["status"] == s for t in trials) for s in ("completed", "stopped", "error")},
        "total_wall_s": round(total, 1),
        "shared_stages_s": shared,
        "sweep_wall_s": sweep_wall,
        "trials_per_min": summary["trials_per_min"],
        "own_training_s": round(own_total, 3),
        "trainer": costs["trainer"],
        "overhead_share": round(overhead, 3) if overhead is not None else None,
        "per_trial_overhead_share": round(per_trial_total / own_total, 3) if own_total else None,
        "overhead_once_s": once,
        "overhead_per_trial_s": {
            "all": round(per_trial_total / n, 2),
            # Tune's bookkeeping between one trial's end and the next one's start
            "tune_gaps": round((sum(b["started_at"] - a["ended_at"] for a, b in zip(by_start, by_start[1:])))
                               / n, 2),
            "clusters_linked": mean("stratify_s"),
            "trainer_setup_reports_export": round(
                mean("experts_s") - (own_total + group_starts + first_excess[0]) / n, 2),
            "validation_scoring": round(mean("scoring_s") - first_excess[1] / n, 2),
        },
        "targets": TARGETS,
        "best": summary["best"],
        "per_trial": trials,
    }
    out = output_path(args)
    if args.mimic:
        heatmap = out.with_name(out.stem + "_heatmap.png")
        figures = sorted(Path(written["figures"]).glob("*jaccard*.png"))
        if figures:
            shutil.copyfile(figures[0], heatmap)
            report["heatmap"] = heatmap.name
        report["total_wall_min"] = round(total / 60, 1)
    write_report(args, report, {k: report[k] for k in ("trials", "statuses", "total_wall_s", "sweep_wall_s",
                                                       "trials_per_min", "trainer", "overhead_share",
                                                       "per_trial_overhead_share", "overhead_once_s",
                                                       "overhead_per_trial_s", "best")})
    out.with_suffix(".md").write_text(_markdown(report), encoding="utf-8")
    return 0


def _first_trial_excess(by_start: list[dict], group_starts: float) -> tuple[float, float]:
    """What the first trial spends beyond a later one, its worker-group start aside, in training and
    in scoring: fresh processes (the trial's, and the group's ranks under `workers`) importing the
    stage, trainer and scoring code, and DeepSpeed's first engine. Paid once per process, not per
    trial: the first trial is compared with the median later one."""
    import statistics

    first, later = by_start[0], by_start[1:]
    if not later:
        return 0.0, 0.0
    training = statistics.median(t["experts_s"] - t["own_training_s"] for t in later)
    scored = [t["scoring_s"] for t in later if t.get("scoring_s") is not None]
    scoring = statistics.median(scored) if scored else 0.0
    return (max(first["experts_s"] - first["own_training_s"] - group_starts - training, 0.0),
            max((first.get("scoring_s") or 0.0) - scoring, 0.0))


def _markdown(r: dict) -> str:
    o, once = r["overhead_per_trial_s"], r["overhead_once_s"]
    lines = [
        f"# Ray Tune sweep: {r['space']} on {r['dataset']}", "",
        f"`{r['command']}` on {r['machine']['cpus']} CPUs; {r['trials']} trials "
        f"({', '.join(f'{v} {k}' for k, v in r['statuses'].items())}), scheduler {r['scheduler']['kind']}, "
        f"trainer `{r['trainer']}`.", "",
        "| measure | value |", "|---|---|",
        f"| sweep wall time | {r['sweep_wall_s']:.1f} s |",
        f"| total wall time (with the shared warm-up and features) | {r['total_wall_s']:.1f} s |",
        f"| trials per minute | {r['trials_per_min']} |",
        f"| own training time (Σ epochs: train + validation) | {r['own_training_s']:.1f} s |",
        f"| per-trial overhead ÷ own training time (target ≤ {r['targets']['overhead_share_max']}) | "
        f"{r['per_trial_overhead_share']} |",
        f"| all overhead ÷ own training time | {r['overhead_share']} |",
        f"| overhead per trial | {o['all']} s |",
        f"| — Tune's gap between trials | {o['tune_gaps']} s |",
        f"| — clusters linked | {o['clusters_linked']} s |",
        f"| — trainer set-up, per-epoch reports, export | {o['trainer_setup_reports_export']} s |",
        f"| — validation scoring | {o['validation_scoring']} s |",
        f"| overhead once per sweep | {round(sum(once.values()), 1)} s |",
        f"| — clusterings (one per K) | {once['clusterings']} s |",
        f"| — Ray Tune start and the first trial's process | {once['tune_start_and_first_trial_process']} s |",
        f"| — worker group start | {once['worker_group_starts']} s |",
        f"| — the first trial's start-up (fresh processes import the code; DeepSpeed's first engine) | "
        f"{once['first_trial_start_up']} s |",
        f"| — Tune's wrap-up | {once['tune_wrap_up']} s |",
    ]
    if r["best"]:
        lines += ["", f"Best on validation: {r['best']['params']} — Jaccard {r['best']['scores']['jaccard']:.4f}, "
                      f"F1 {r['best']['scores']['f1']:.4f}."]
    if r.get("heatmap"):
        lines += ["", f"![validation Jaccard over K × top-n]({r['heatmap']})"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
