"""`trixmed tune SPACE --config C [key=value ...]`: a Ray Tune sweep of a search space over the
run's shared warm-up, then the sweep report and the best configuration (chosen on validation)."""

from __future__ import annotations

import argparse

from trixmed.commands.common import add_force, add_run_dir, load_run_config, writing_run_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("space", metavar="SPACE", help="search space: dotted config keys in YAML (tune_spaces/*.yaml)")
    add_run_dir(parser, "run directory whose warm-up and features the trials share (default: the config's run_dir)")
    parser.add_argument("--name", help="experiment name under <run_dir>/tune/ (default: the space's name)")
    add_force(parser, "start the experiment over instead of resuming it (deletes its directory)")
    parser.add_argument("--dashboard", action="store_true", help="start the Ray dashboard with a local Ray and print its URL")


def main(args: argparse.Namespace) -> int:
    from trixmed.console import Console
    from trixmed.report.sweep_report import build_sweep_report
    from trixmed.train.ray_session import dashboard_url, ray_session
    from trixmed.tune.space import load_space
    from trixmed.tune.sweep import run_sweep

    cfg = load_run_config(args)
    space = load_space(args.space)
    console = Console(verbose=args.verbose)
    with writing_run_dir(args, cfg.run_dir):
        with ray_session(cfg, verbose=args.verbose, dashboard=args.dashboard):
            if args.dashboard:
                console.line(f"Ray dashboard: {dashboard_url() or 'not served by the connected Ray'}")
            result = run_sweep(cfg, space, name=args.name, force=args.force, verbose=args.verbose, console=console)
        if result.summary is not None:
            build_sweep_report(result.experiment, console)
    exp = result.experiment
    if result.summary is None:
        console.line(f"[tune] interrupted: {result.unfinished} trials unfinished; the same command resumes "
                     f"{exp.root}")
        return 130
    summary = result.summary
    counts = {s: sum(t["status"] == s for t in summary["trials"]) for s in ("completed", "stopped", "error")}
    console.line(f"[tune] {len(summary['trials'])} trials in {summary['wall_s']:.1f} s: "
                 + ", ".join(f"{n} {s}" for s, n in counts.items()))
    best = summary["best"]
    if best is None:
        console.line("[tune] no trial completed: no best configuration")
        return 1
    params = ", ".join(f"{k}={v}" for k, v in best["params"].items())
    console.line(f"[tune] best on validation: {params}: jaccard {best['scores']['jaccard']:.4f}, "
                 f"f1 {best['scores']['f1']:.4f}")
    console.line(f"[tune] report: {exp.report_html}")
    console.line(f"[tune] best config: {exp.best_config} (`trixmed run --config {exp.best_config}` trains it and "
                 "scores test once)")
    return 0
