"""Ray Tune sweeps: the paper's 12-point grid (clusters K × top-n) through `trixmed tune`.

    python benchmarks/tune.py                  # the bundled demo → benchmarks/results/tune.json (+ .md)
    python benchmarks/tune.py --mimic          # mimic3_safedrug131, codes backbone → tune_mimic3.json, heatmap PNG
    python benchmarks/tune.py --smoke [--out F]   # demo_2x2 with one training epoch, temp dirs

Measures, in one run on this machine: the sweep's wall time and trials per minute, and where a
trial's time goes. A trial's own training time is the time its Ray Train workers spend in
training and validation epochs (history.json: train_s + val_s); everything else the sweep spends
is overhead: Ray Tune starting the trial's process, the shared clustering, Ray Train and DeepSpeed
starting the worker group, per-epoch checkpoints and reports, and the final validation scoring.
`overhead_share` = (sweep wall time − Σ own training time) ÷ Σ own training time.

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
        "overhead_share": round(overhead, 3) if overhead is not None else None,
        "overhead_per_trial_s": {
            "all": round((sweep_wall - own_total) / n, 2),
            # Tune starting each trial's process and its bookkeeping between trials
            "tune_trial_startup_and_gaps": round((sweep_wall - sum(t.get("total_s", 0.0) for t in trials)) / n, 2),
            "stratify_shared_per_k": mean("stratify_s"),
            "train_startup_checkpoints_export": round(mean("experts_s") - own_total / n, 2),
            "validation_scoring": mean("scoring_s"),
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
                                                       "trials_per_min", "overhead_share", "overhead_per_trial_s",
                                                       "best")})
    out.with_suffix(".md").write_text(_markdown(report), encoding="utf-8")
    return 0


def _markdown(r: dict) -> str:
    o = r["overhead_per_trial_s"]
    lines = [
        f"# Ray Tune sweep: {r['space']} on {r['dataset']}", "",
        f"`{r['command']}` on {r['machine']['cpus']} CPUs; {r['trials']} trials "
        f"({', '.join(f'{v} {k}' for k, v in r['statuses'].items())}), scheduler {r['scheduler']['kind']}.", "",
        "| measure | value |", "|---|---|",
        f"| sweep wall time | {r['sweep_wall_s']:.1f} s |",
        f"| total wall time (with the shared warm-up and features) | {r['total_wall_s']:.1f} s |",
        f"| trials per minute | {r['trials_per_min']} |",
        f"| own training time (Σ epochs: train + validation) | {r['own_training_s']:.1f} s |",
        f"| overhead ÷ own training time (target ≤ {r['targets']['overhead_share_max']}) | {r['overhead_share']} |",
        f"| overhead per trial | {o['all']} s |",
        f"| — Tune trial start-up and gaps | {o['tune_trial_startup_and_gaps']} s |",
        f"| — clustering (computed once per K, or waited for; averaged over trials) | {o['stratify_shared_per_k']} s |",
        f"| — Ray Train + DeepSpeed start-up, checkpoints, export | {o['train_startup_checkpoints_export']} s |",
        f"| — validation scoring | {o['validation_scoring']} s |",
    ]
    if r["best"]:
        lines += ["", f"Best on validation: {r['best']['params']} — Jaccard {r['best']['scores']['jaccard']:.4f}, "
                      f"F1 {r['best']['scores']['f1']:.4f}."]
    if r.get("heatmap"):
        lines += ["", f"![validation Jaccard over K × top-n]({r['heatmap']})"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
